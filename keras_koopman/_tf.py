"""The TensorFlow seam: what the callback layer needs from TensorFlow, in one place.

Here: one process-wide cache of traced functions (keyed by what a trace depends on), nested
outputs packed into one vector so that they reach the host in one transfer, the value
behind a Keras variable, checkpoints of variables, a compiled loss, the distribution strategy's
chief check and the environment failures of file I/O. TensorFlow is otherwise used by the
engine (``dmd.py``, ``spectrum.py``, ``buffers/``: variables, XLA in-place updates), the
tracker (the compiled gather and analysis), the logger (``tf.summary``), the pruning wrapper
(its guard), ``losses.py`` and ``tensorboard/``. The decision callbacks (``base.py``,
``early_stopping.py``, ``restart.py``, ``accelerator.py``, ``monitor.py``) import no
TensorFlow: another Keras backend would replace this layer and the engine, not them.
"""

from __future__ import annotations

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

import math
import threading

import numpy as np
import tensorflow as tf

from keras_koopman._backend import io_failures, is_chief

__all__ = ["IO_FAILURES", "cached_function", "compiled_loss", "pack_outputs", "read_variables",
           "trace_count", "unpack_outputs", "value_of", "write_variables", "writes_summaries"]

IO_FAILURES = io_failures()  # OSError and TensorFlow's file errors

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


# Host-side layouts of packed outputs: (nesting with None leaves, (dtype, rank) per leaf), each
# registered once; a packed vector starts with its layout's index.
_LAYOUTS = []
_LAYOUT_INDEX = {}
_LAYOUT_LOCK = threading.Lock()


def _layout_index(structure, leaves):
    nesting = tf.nest.map_structure(lambda _: None, structure)
    layout = (nesting, tuple((leaf.dtype, leaf.shape.rank) for leaf in leaves))
    key = (repr(nesting), layout[1])
    with _LAYOUT_LOCK:
        if key not in _LAYOUT_INDEX:
            _LAYOUT_INDEX[key] = len(_LAYOUTS)
            _LAYOUTS.append(layout)
        return _LAYOUT_INDEX[key]


def pack_outputs(structure):
    """Graph side: every tensor of a nested ``structure`` in one float64 vector, so that the
    host reads them all with one device-to-host copy (:func:`unpack_outputs` rebuilds them).

    Layout: the index of the structure's host layout (registered at trace time), the shape of
    every leaf, then every leaf's values (complex ones as their real parts, then imaginary
    parts). Integers and booleans travel exactly below 2**53 (counts, ranks and flags here).
    """
    leaves = tf.nest.flatten(structure)
    parts = [tf.constant([_layout_index(structure, leaves)], tf.float64)]
    parts += [tf.cast(tf.shape(leaf), tf.float64) for leaf in leaves]
    for leaf in leaves:
        flat = tf.reshape(leaf, [-1])
        if leaf.dtype.is_complex:
            parts += [tf.math.real(flat), tf.math.imag(flat)]
        else:
            parts.append(tf.cast(flat, tf.float64))
    return tf.concat([tf.cast(part, tf.float64) for part in parts], 0)


def unpack_outputs(vector):
    """Host side of :func:`pack_outputs`: the NumPy arrays in the packed structure."""
    values = np.asarray(vector)  # the one transfer
    structure, leaves = _LAYOUTS[int(values[0])]
    position, shapes = 1, []
    for _, rank in leaves:
        shapes.append(tuple(int(d) for d in values[position:position + rank]))
        position += rank
    arrays = []
    for (dtype, _), shape in zip(leaves, shapes):
        size = math.prod(shape)
        if dtype.is_complex:
            array = values[position:position + size] + 1j * values[position + size:
                                                                  position + 2 * size]
            size *= 2
        else:
            array = values[position:position + size]
        arrays.append(array.astype(dtype.as_numpy_dtype).reshape(shape))
        position += size
    return tf.nest.pack_sequence_as(structure, arrays)


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


writes_summaries = is_chief  # the chief check of keras_koopman._backend


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
