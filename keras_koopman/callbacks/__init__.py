"""Keras callbacks that watch and steer ``model.fit`` through the Koopman spectrum."""

from keras_koopman.callbacks.monitor import KoopmanMonitor, SpectrumRecord

__all__ = ["KoopmanMonitor", "SpectrumRecord"]
