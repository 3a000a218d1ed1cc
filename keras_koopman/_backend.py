"""Which Keras backend runs, and what keras-koopman does on it.

TensorFlow is the reference backend: every part of the package runs on it. On JAX and PyTorch
the backend-neutral path (:mod:`keras_koopman.portable`) serves :func:`keras_koopman.dmd`,
:class:`keras_koopman.SnapshotBuffer`, :class:`~keras_koopman.callbacks.KoopmanMonitor` and
:class:`~keras_koopman.callbacks.KoopmanEarlyStopping`, ``KoopmanRestart``,
``KoopmanAccelerator``, :class:`~keras_koopman.losses.NegativeSobolev` and the pruning
wrapper;
what is TensorFlow's alone (the ``KoopmanTracker`` class, ``tf.distribute``) says so when it
is first used (``ImportError``).

On JAX, float64 needs ``jax_enable_x64`` (without it JAX silently computes float64 requests in
float32, and a float32 Gram matrix of weight snapshots loses the small motions DMD is about):
:func:`check_backend` turns it on, with a warning that says how to turn it on yourself.
"""

import os
import warnings

BACKENDS = ("tensorflow", "jax", "torch")

_HOW_TO = (
    "Set the backend before importing keras or keras_koopman, e.g. `export "
    "KERAS_BACKEND=tensorflow` in the shell or `os.environ['KERAS_BACKEND'] = 'tensorflow'` at "
    "the top of your script (or set \"backend\" in ~/.keras/keras.json)."
)


def check_environment():
    """Raises ImportError with instructions if ``KERAS_BACKEND`` asks for a backend that
    keras-koopman does not support (without importing Keras: this runs when the package is
    imported)."""
    requested = os.environ.get("KERAS_BACKEND")
    if requested and requested.strip().lower() not in BACKENDS:
        raise ImportError(f"KERAS_BACKEND is {requested!r}; keras-koopman runs on the "
                          f"{', '.join(BACKENDS)} backends of Keras 3. {_HOW_TO}")


def backend():
    """The name of the Keras backend (``"tensorflow"``, ``"jax"`` or ``"torch"``), checked
    once: ``ImportError`` for another one; on JAX, float64 is switched on (see the module
    docstring)."""
    global _CHECKED
    if _CHECKED is None:
        check_environment()
        import keras

        name = keras.backend.backend()
        if name not in BACKENDS:
            raise ImportError(f"Keras is using the {name!r} backend; keras-koopman runs on the "
                              f"{', '.join(BACKENDS)} backends. {_HOW_TO}")
        if name == "jax":
            enable_jax_x64()
        _CHECKED = name
    return _CHECKED


_CHECKED = None


def implementation(tensorflow, portable):
    """The object named ``"module:name"`` by ``tensorflow`` on the TensorFlow backend, by
    ``portable`` on JAX and PyTorch (imported on first use): the one place where the package
    picks between its TensorFlow code and :mod:`keras_koopman.portable`."""
    import importlib

    module, name = (tensorflow if is_tensorflow() else portable).split(":")
    return getattr(importlib.import_module(module), name)


def is_tensorflow():
    """Whether Keras runs on TensorFlow (the backend every part of the package supports)."""
    return backend() == "tensorflow"


def enable_jax_x64():
    """Turns on JAX's float64 (``jax_enable_x64``) if it is off, with a warning saying how to
    turn it on before importing JAX (``JAX_ENABLE_X64=1``), which is what JAX recommends.
    Keras keeps its own float32 default for layers and variables either way."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
        warnings.warn(
            "keras_koopman turned on JAX's float64 (jax_enable_x64), which its Gram matrices and "
            "small eigenproblems need (without it JAX silently computes them in float32). Keras "
            "layers stay float32. To turn it on yourself before JAX starts, and silence this "
            "warning: `export JAX_ENABLE_X64=1`, or `jax.config.update('jax_enable_x64', True)` "
            "right after importing jax.", UserWarning, stacklevel=3)


def check_backend():
    """Raises ImportError with instructions unless Keras runs on TensorFlow: run by every
    module of the package that needs TensorFlow itself (the parts not ported to the other
    backends yet), before it imports TensorFlow."""
    name = backend()
    if name != "tensorflow":
        raise ImportError(
            f"this part of keras-koopman needs the TensorFlow backend of Keras 3 (Keras is "
            f"using {name!r}). On {name}, keras_koopman.dmd, SnapshotBuffer, KoopmanMonitor, "
            f"every decision callback, NegativeSobolev, dmd_batch, suggest_depth and pruning "
            f"work (sketched and bfloat16 buffers too); the TensorFlow tracker itself needs "
            f"TensorFlow. "
            f"{_HOW_TO}")


def io_failures():
    """Failures of writing or reading files, which the callbacks survive (a full disk, a
    remote file system that went away): ``OSError``, and TensorFlow's file errors where
    TensorFlow is loaded (it writes the summaries and checkpoints there). Not
    ``tf.errors.OpError`` as a whole: that is also the base of ``InvalidArgumentError`` and the
    like, which are bugs here."""
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "errors"):
        return (OSError,)
    errors = tf.errors
    return (OSError, errors.NotFoundError, errors.PermissionDeniedError,
            errors.ResourceExhaustedError, errors.UnavailableError, errors.DataLossError)


def is_chief(model=None):
    """False on the processes of a multi-process run other than the first: only the chief
    writes TensorBoard events (every process gathers and analyses the same, all-reduced
    weights, so every process takes the same decisions). TensorFlow: the distribution
    strategy's ``should_save_summary``; JAX: ``jax.process_index() == 0``; torch: rank 0 of
    ``torch.distributed`` when it is initialised."""
    name = backend()
    if name == "jax":
        import jax

        return jax.process_index() == 0
    if name == "torch":
        import torch.distributed as distributed

        return not (distributed.is_available() and distributed.is_initialized()
                    and distributed.get_rank() != 0)
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_save_summary", True))
