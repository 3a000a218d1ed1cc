"""Warnings that point at the user's line."""

from __future__ import annotations

import os
import sys
import sysconfig

__all__ = ["user_stacklevel"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARIES = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep
                    for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _internal(filename):
    if filename.startswith("<"):  # <frozen ...>, <string> of a traced function
        return True
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE) or path.startswith(_LIBRARIES)


def user_stacklevel():
    """The ``stacklevel`` of a ``warnings.warn`` in the calling function that names the first
    frame outside keras-koopman, the standard library and installed packages (Keras, JAX,
    TensorFlow, torch): the user's ``fit`` line when a warning is raised inside Keras's train
    step. ``2`` (the caller's caller) when every frame is internal."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return 2 if frame is None else level
