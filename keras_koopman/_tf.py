"""The TensorFlow seam: what the callback layer needs from TensorFlow, in one place.

Here: one process-wide cache of traced functions (keyed by what a trace depends on), the value
behind a Keras variable, checkpoints of variables, a compiled loss, the distribution strategy's
chief check and the environment failures of file I/O. TensorFlow is otherwise used by the
engine (``dmd.py``, ``spectrum.py``, ``buffers/``: variables, XLA in-place updates), the
tracker (the compiled gather and analysis), the logger (``tf.summary``), the pruning wrapper
(its guard), ``losses.py`` and ``tensorboard/``. The decision callbacks (``base.py``,
``early_stopping.py``, ``restart.py``, ``accelerator.py``, ``monitor.py``) import no
TensorFlow: another Keras backend would replace this layer and the engine, not them.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["IO_FAILURES", "cached_function", "compiled_loss", "read_variables", "trace_count",
           "value_of", "write_variables", "writes_summaries"]

# Failures of writing or reading files (a full disk, a remote file system that went away):
# environment failures, which the callbacks survive. Not tf.errors.OpError as a whole: that
# is also the base of InvalidArgumentError and the like, which are bugs here.
IO_FAILURES = (OSError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
               tf.errors.ResourceExhaustedError, tf.errors.UnavailableError,
               tf.errors.DataLossError)

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


def write_variables(path, variables):
    """A checkpoint of ``variables`` (a list) at ``path``."""
    tf.train.Checkpoint(variables=list(variables)).write(path)


def read_variables(path, variables):
    """Restores the checkpoint at ``path`` into ``variables`` (the same list, in order)."""
    tf.train.Checkpoint(variables=list(variables)).read(path).assert_consumed()
