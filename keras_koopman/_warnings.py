"""Warnings that point at the user's line."""

from __future__ import annotations

import os
import sys
import sysconfig

__all__ = ["user_stacklevel"]

# Top-level packages whose frames are never the user's (wherever they are installed: site- or
# dist-packages, a user install, a checkout on PYTHONPATH).
_LIBRARIES = frozenset({"keras_koopman", "keras", "jax", "jaxlib", "torch", "tensorflow",
                        "tf_keras", "optree", "tree", "numpy", "absl"})
_STDLIB = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep
                 for key in ("stdlib", "platstdlib")})


def _internal(frame):
    module = frame.f_globals.get("__name__") or ""
    if module.split(".")[0] in _LIBRARIES:
        return True
    filename = frame.f_code.co_filename
    if filename.startswith("<frozen"):
        return True
    # The standard library (contextlib, functools, threading around Keras's calls), but not a
    # script or a notebook cell (__main__, <stdin>, <ipython-input-...>).
    return module != "__main__" and os.path.abspath(filename).startswith(_STDLIB)


def user_stacklevel():
    """The ``stacklevel`` of a ``warnings.warn`` in the calling function that names the first
    frame outside keras-koopman, the frameworks (Keras, JAX, TensorFlow, torch) and the
    standard library: the user's ``fit`` line when a warning is raised inside Keras's train
    step. ``2`` (the caller's caller) when every frame is internal."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    return 2 if frame is None else level
