"""Argument checks shared by the callbacks: clear ValueErrors/TypeErrors naming the argument."""

import numbers
import os


def check_int(value, name, minimum):
    """``value`` as an int, or ValueError unless it is an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_number(value, name, low=0.0, high=None):
    """``value`` as a float, or ValueError unless it is a real number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}; got {value!r}")
    return float(value)


def check_monitor(monitor):
    """The monitor a dependent callback reads, or TypeError."""
    from keras_koopman.callbacks.monitor import KoopmanMonitor

    if not isinstance(monitor, KoopmanMonitor):
        raise TypeError(
            f"monitor must be a kk.callbacks.KoopmanMonitor; got {type(monitor).__name__}"
        )
    return monitor


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
