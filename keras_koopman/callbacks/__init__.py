"""Keras callbacks that watch and steer ``model.fit`` through the Koopman spectrum.

:class:`KoopmanMonitor` gathers and analyses (its work is a :class:`KoopmanTracker`'s);
decision callbacks are built on :class:`KoopmanCallback` and read the monitor's records.
"""

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

from keras_koopman.callbacks.tracker import KoopmanTracker
from keras_koopman.callbacks.monitor import KoopmanMonitor, SpectrumRecord
from keras_koopman.callbacks.base import KoopmanCallback
from keras_koopman.callbacks.activity import layer_activity
from keras_koopman.callbacks.accelerator import KoopmanAccelerator
from keras_koopman.callbacks.early_stopping import (
    KoopmanEarlyStopping,
    convergence,
    forecast_gain,
    progress_gain,
)
from keras_koopman.callbacks.restart import KoopmanRestart, diagnose

__all__ = [
    "KoopmanAccelerator",
    "KoopmanCallback",
    "KoopmanEarlyStopping",
    "KoopmanMonitor",
    "KoopmanRestart",
    "KoopmanTracker",
    "SpectrumRecord",
    "convergence",
    "diagnose",
    "forecast_gain",
    "layer_activity",
    "progress_gain",
]
