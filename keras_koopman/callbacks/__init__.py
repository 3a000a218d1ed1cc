"""Keras callbacks that watch and steer ``model.fit`` through the Koopman spectrum."""

from keras_koopman.callbacks.accelerator import KoopmanAccelerator

from keras_koopman.callbacks.early_stopping import (
    KoopmanEarlyStopping,
    convergence,
    forecast_gain,
)
from keras_koopman.callbacks.monitor import KoopmanMonitor, SpectrumRecord
from keras_koopman.callbacks.restart import KoopmanRestart, diagnose

__all__ = [
    "KoopmanAccelerator",
    "KoopmanEarlyStopping",
    "KoopmanMonitor",
    "KoopmanRestart",
    "SpectrumRecord",
    "convergence",
    "diagnose",
    "forecast_gain",
]
