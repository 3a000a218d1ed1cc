"""One set of argument checks for the whole package.

Every check names the argument and the value it got: ``TypeError`` for a value of the wrong
type, ``ValueError`` for a value of the right type that is out of range or not allowed. This
module imports nothing of the package, so any module can use it.
"""

import math
import numbers
import os

import numpy as np

__all__ = ["DataError", "check_int", "check_number", "check_choice", "check_dtype",
           "check_log_dir", "check_names", "check_int_or"]


class DataError(ValueError):
    """Data that the computation cannot use, as opposed to a bad argument: snapshots holding NaN
    or Inf or all zero, a saved state that is damaged or of other groups. Inside ``fit`` the
    Koopman callbacks survive it (one warning, a record); a ``ValueError`` of any other kind is
    a bad argument or a bug, and propagates."""


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


def check_int(value, name, minimum=None, maximum=None):
    """``value`` as an int: ``TypeError`` unless it is an int (bools refused), ``ValueError``
    unless ``minimum <= value <= maximum`` (either bound may be ``None``)."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {_bounds(minimum, maximum)}; got {value!r}")
    return int(value)


MAX_SNAPSHOTS = 2**14
"""The most snapshots one DMD takes: every engine forms their ``[m, m]`` float64 Gram matrix (2
GiB at this size) and solves its eigenproblem on the host (minutes at this size)."""


def check_window(value, minimum, name="window"):
    """``value`` as an int between ``minimum`` and :data:`MAX_SNAPSHOTS` (the errors of
    :func:`check_int`, the upper bound explained)."""
    value = check_int(value, name, minimum)
    if value > MAX_SNAPSHOTS:
        raise ValueError(f"{name} must be at most {MAX_SNAPSHOTS:,}: a DMD of a window forms its "
                         f"[{name}, {name}] float64 Gram matrix and solves its eigenproblem on "
                         f"the host; got {value!r}")
    return value


def check_number(value, name, low=0.0, high=None, *, open_low=False, open_high=False,
                 allow_inf=False):
    """``value`` as a float: ``TypeError`` unless it is a real number (bools refused),
    ``ValueError`` if it is NaN, infinite (unless ``allow_inf``) or outside ``[low, high]``
    (open ends on request; either bound may be ``None``)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; got {value!r} of type {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    too_low = low is not None and (number <= low if open_low else number < low)
    too_high = high is not None and (number >= high if open_high else number > high)
    if too_low or too_high:
        left = "(" if open_low else "["
        right = ")" if open_high else "]"
        if high is None:
            bounds = f"{'>' if open_low else '>='} {low}"
        elif low is None:
            bounds = f"{'<' if open_high else '<='} {high}"
        else:
            bounds = f"in {left}{low}, {high}{right}"
        raise ValueError(f"{name} must be {bounds}; got {value!r}")
    return number


def check_choice(value, name, choices):
    """``value`` if it is one of ``choices``: ``TypeError`` when it is of none of their types
    (``criterion=["loss"]``), ``ValueError`` listing them when it is another value."""
    types = tuple({type(choice) for choice in choices})
    if not isinstance(value, types) or _is_bool(value) and not any(
            _is_bool(choice) for choice in choices):
        raise TypeError(f"{name} must be one of {tuple(choices)}; got {value!r} of type "
                        f"{type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def check_int_or(value, name, literals, minimum=1):
    """``value`` if it is one of ``literals`` (strings or ``None``), else an int >= ``minimum``:
    ``ValueError`` for another string, ``TypeError`` for another type."""
    if value in literals and (value is None or isinstance(value, str)):
        return value
    allowed = " or ".join(repr(v) for v in literals)
    if isinstance(value, str):
        raise ValueError(f"{name} must be {allowed} or an int >= {minimum}; got {value!r}")
    return check_int(value, f"{name} (when not {allowed})", minimum)


def check_names(value, name, allow_none=True):
    """A non-empty list of strings (``None`` passes when ``allow_none``): ``TypeError`` for
    another type, a bare string included (``["dense"]``, not ``"dense"``); ``ValueError`` for
    an empty list."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) for item in value):
        raise TypeError(f"{name} must be a list of names{' or None' if allow_none else ''}; "
                        f"got {value!r}")
    if not value:
        raise ValueError(f"{name} must name at least one; got an empty list")
    return list(value)


def check_log_dir(log_dir, name="log_dir"):
    """``log_dir`` as a string (``None`` passes), created if needed; TypeError for a non-path,
    ValueError if it cannot be created or written: found before training starts, not at the
    first summary in the middle of ``fit``."""
    if log_dir is None:
        return None
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path or None; got {type(log_dir).__name__}")
    path = os.fspath(log_dir)
    if "://" in path:  # gs://, s3://, hdfs://: tf.summary writes there; nothing to check here
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{name} {path!r} cannot be created: {error}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path!r} is not writable by this process")
    return path


def _bounds(minimum, maximum):
    if maximum is None:
        return f">= {minimum}"
    if minimum is None:
        return f"<= {maximum}"
    return f"in [{minimum}, {maximum}]"


def check_dtype(dtype, name="dtype", allowed=("float32", "float64")):
    """``dtype`` as a ``tf.DType`` among ``allowed``: ``TypeError`` for something that is not a
    dtype, ``ValueError`` for a dtype not allowed."""
    import tensorflow as tf  # only the buffers check dtypes; keep this module import-light

    allowed = tuple(tf.as_dtype(d) for d in allowed)
    names = " or ".join(repr(d.name) for d in allowed)
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{name} must be {names}; got {dtype!r}") from error
    if dtype not in allowed:
        raise ValueError(f"{name} must be {names}; got {dtype.name!r}")
    return dtype
