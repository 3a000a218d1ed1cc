"""Keras callbacks that watch and steer ``model.fit`` through the Koopman spectrum."""

from keras_koopman.callbacks.early_stopping import KoopmanEarlyStopping, convergence
from keras_koopman.callbacks.monitor import KoopmanMonitor, SpectrumRecord

__all__ = ["KoopmanEarlyStopping", "KoopmanMonitor", "SpectrumRecord", "convergence"]
