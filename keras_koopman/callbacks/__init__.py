"""Keras callbacks that watch and steer ``model.fit`` through the Koopman spectrum.

:class:`KoopmanMonitor` gathers and analyses (its work is a :class:`KoopmanTracker`'s);
decision callbacks are built on :class:`KoopmanCallback` and read the monitor's records.
"""

import importlib

import keras

# Loaded on first use: the monitor and every decision callback run on every Keras backend;
# KoopmanTracker is TensorFlow's (on JAX and PyTorch the monitor runs PortableTracker).
_WHERE = {
    "KoopmanTracker": "tracker",
    "KoopmanMonitor": "monitor",
    "SpectrumRecord": "monitor",
    "KoopmanCallback": "base",
    "layer_activity": "activity",
    "KoopmanAccelerator": "accelerator",
    "KoopmanEarlyStopping": "early_stopping",
    "convergence": "early_stopping",
    "forecast_gain": "early_stopping",
    "progress_gain": "early_stopping",
    "KoopmanRestart": "restart",
    "diagnose": "restart",
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'keras_koopman.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_koopman.callbacks.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


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
if keras.backend.backend() != "tensorflow":  # star imports get what loads here
    __all__.remove("KoopmanTracker")
