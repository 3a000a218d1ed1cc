"""keras-koopman: Koopman mode analysis of Keras training.

Training is a dynamical system on weight space; Dynamic Mode Decomposition (DMD) of the
weight trajectory approximates its Koopman operator. This package provides the DMD engine
(:func:`dmd`), on-device snapshot buffers (:class:`SnapshotBuffer`) and spectrum metrics
(:mod:`keras_koopman.spectrum`).

Example:

>>> import numpy as np, keras_koopman as kk
>>> x = np.outer(0.9 ** np.arange(10), np.ones(3))   # x_k = 0.9**k * [1, 1, 1]
>>> result = kk.dmd(x, rank=1)
>>> round(float(result.eigenvalues[0].numpy().real), 12)
0.9
"""

import importlib
import sys
import types

from keras_koopman._backend import check_environment as _check_environment

_check_environment()  # KERAS_BACKEND set to another backend: ImportError now, TensorFlow unread

__version__ = "0.1.0"

# Loaded on first use (PEP 562), so that `import keras_koopman` and the command line
# (`keras-koopman --help`) do not wait for TensorFlow; the first use checks that Keras runs
# on TensorFlow.
_SUBMODULES = ("buffers", "callbacks", "depth", "losses", "pruning", "spectrum", "tensorboard")
_NAMES = {"DMDResult": "keras_koopman.result"}
# On JAX and PyTorch these come from the backend-neutral path (keras_koopman.portable).
_ENGINE = {"dmd": ("keras_koopman.dmd", "keras_koopman.portable.engine"),
           "dmd_batch": ("keras_koopman.dmd", "keras_koopman.portable.engine"),
           "SnapshotBuffer": ("keras_koopman.buffers", "keras_koopman.portable.buffer")}


def _engine(name):
    from keras_koopman._backend import implementation

    tensorflow, portable = _ENGINE[name]
    return implementation(f"{tensorflow}:{name}", f"{portable}:{name}")

__all__ = [
    "DMDResult",
    "SnapshotBuffer",
    "buffers",
    "callbacks",
    "depth",
    "dmd",
    "dmd_batch",
    "losses",
    "pruning",
    "spectrum",
    "tensorboard",
    "__version__",
]


class _Package(types.ModuleType):
    """The package's module type: ``keras_koopman.dmd`` is the function :func:`dmd`, while
    ``keras_koopman/dmd.py`` is also a submodule, which the import system records on the
    package (``setattr(package, "dmd", module)``) whenever it is imported; this property keeps
    the function there."""

    @property
    def dmd(self):
        return _engine("dmd")

    @dmd.setter
    def dmd(self, module):
        pass  # the submodule stays in sys.modules["keras_koopman.dmd"]


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _SUBMODULES:
        value = importlib.import_module(f"keras_koopman.{name}")
    elif name in _ENGINE:
        value = _engine(name)
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'keras_koopman' has no attribute {name!r}")
    globals()[name] = value  # once: later reads do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
