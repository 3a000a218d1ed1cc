"""Imported first by every part of the package that uses TensorFlow: checks, once, that Keras
runs on TensorFlow (``ImportError`` with instructions otherwise), before that part imports it.
The package itself loads its parts on first use, so ``import keras_koopman`` stays light."""

from keras_koopman._backend import check_backend

check_backend()
