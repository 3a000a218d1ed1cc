"""The TensorFlow seam: the few things every module above it needs from TensorFlow itself.

Compiled functions (one process-wide cache, keyed by what a trace depends on), variables, the
value behind a Keras variable, in-place XLA updates, TensorBoard writers and the distribution
strategy's chief check live here or in the engine modules (``dmd.py``, ``buffers/``) that use
them. The callbacks reach TensorFlow only through those modules, the tracker and the logger:
another Keras backend would replace this layer, not the callbacks.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["IO_FAILURES", "cached_function", "compiled_loss", "trace_count", "value_of",
           "writes_summaries"]

# Failures of writing or reading files (a full disk, a remote file system that went away):
# environment failures, which the callbacks survive.
IO_FAILURES = (OSError, tf.errors.OpError)

_FUNCTIONS = {}


def cached_function(key, build):
    """The traced function cached under ``key`` (built by ``build()`` the first time).

    ``key`` must hold everything the trace depends on besides the input signature (method,
    dtypes, Python-level options): shapes are dynamic in every signature here, so one trace
    serves every model, buffer and window of that kind for the whole process.
    """
    function = _FUNCTIONS.get(key)
    if function is None:
        function = _FUNCTIONS[key] = build()
    return function


def trace_count(prefix=None):
    """How many concrete traces the cached functions hold (those whose key starts with
    ``prefix`` if given): for tests and benchmarks that check nothing retraces."""
    total = 0
    for key, function in _FUNCTIONS.items():
        if prefix is None or (isinstance(key, tuple) and key and key[0] == prefix):
            total += function.experimental_get_tracing_count()
    return total


def value_of(variable):
    """The tensor behind a Keras or TensorFlow variable."""
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


def writes_summaries(model=None):
    """False on the workers of a multi-worker strategy other than the chief: only the chief
    writes TensorBoard events (every worker gathers and analyses the same, all-reduced
    weights, so every worker takes the same decisions)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_save_summary", True))


def compiled_loss(model, x, y):
    """``model``'s training loss on ``(x, y)`` in inference mode, as one compiled call."""
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    y = tf.nest.map_structure(tf.convert_to_tensor, y)

    @tf.function(autograph=False)
    def loss():
        prediction = model(x, training=False)
        return model.compute_loss(x=x, y=y, y_pred=prediction, training=False)

    return loss
