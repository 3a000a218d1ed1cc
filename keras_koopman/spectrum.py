"""Metrics of a Koopman spectrum: the numbers the callbacks decide on and log.

One tolerance (``tolerance``, 0.01 by default; the monitor's ``tolerance``) puts every
eigenvalue in exactly one region, everywhere in keras-koopman (metrics, verdicts, demo, plots,
the Koopman tab):

* **at 1**: ``|lambda - 1| <= tolerance``, where training is heading (a fixed point);
* **outside** the unit circle: ``|lambda| > 1 + tolerance`` (and not at 1), a growing direction;
* **inside**: every other eigenvalue, a direction that dies out (or, on the circle away from 1,
  one that turns without growing).

Every metric takes a :class:`keras_koopman.DMDResult` or a plain array of eigenvalues and returns
a scalar: on TensorFlow a tensor (so it also runs inside a ``tf.function``), on JAX and PyTorch a
NumPy scalar (no TensorFlow needed); ``float(...)`` gives a Python number either way.

Example:

>>> import numpy as np, keras_koopman as kk
>>> eigenvalues = np.array([1.0, 0.999, 0.5 + 0.5j, 1.2])
>>> float(kk.spectrum.spectral_radius(eigenvalues))
1.2
>>> float(kk.spectrum.near_one_fraction(eigenvalues, tolerance=0.01))
0.5
>>> int(kk.spectrum.unstable_count(eigenvalues))
1
>>> kk.spectrum.regions(eigenvalues).tolist()
['at 1', 'at 1', 'inside', 'outside']
"""

from __future__ import annotations

import importlib

import numpy as np


class _TensorFlow:
    """TensorFlow, imported at the first metric (``mode_share`` needs none, so that this
    module loads on every Keras backend; the metrics need TensorFlow installed)."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("tensorflow"), name)


tf = _TensorFlow()

from keras_koopman._validation import check_number
__all__ = [
    "regions",
    "spectral_radius",
    "near_one_fraction",
    "unstable_count",
    "max_residual",
    "summary",
    "mode_share",
]


def _numpy():
    """On JAX and PyTorch the metrics are NumPy scalars (no TensorFlow needed there)."""
    import keras

    return keras.backend.backend() != "tensorflow"


def _host(values):
    from keras_koopman.portable.device import to_host

    return to_host(values).reshape(-1)


def _eigenvalues_host(result_or_eigenvalues):
    values = getattr(result_or_eigenvalues, "eigenvalues", result_or_eigenvalues)
    return _host(values).astype(np.complex128)


def _eigenvalues(result_or_eigenvalues):
    values = getattr(result_or_eigenvalues, "eigenvalues", result_or_eigenvalues)
    values = tf.convert_to_tensor(values)
    if not values.dtype.is_complex:
        values = tf.complex(tf.cast(values, tf.float64), tf.zeros_like(values, tf.float64))
    return tf.reshape(tf.cast(values, tf.complex128), [-1])


def spectral_radius(result_or_eigenvalues):
    """Largest eigenvalue modulus ``max |lambda|`` (0 for an empty spectrum)."""
    if _numpy():
        return np.float64(np.max(np.abs(_eigenvalues_host(result_or_eigenvalues)), initial=0.0))
    moduli = tf.abs(_eigenvalues(result_or_eigenvalues))
    return tf.reduce_max(tf.concat([moduli, tf.zeros([1], tf.float64)], 0))


def near_one_fraction(result_or_eigenvalues, tolerance=0.01, amplitudes=None):
    """Fraction of eigenvalues with ``|lambda - 1| <= tolerance``.

    Args:
      result_or_eigenvalues: a ``DMDResult`` or eigenvalues.
      tolerance: distance to 1 counted as "at 1".
      amplitudes: optional weights; each eigenvalue then counts with ``|amplitude|`` (pass
        ``result.amplitudes`` to ask "how much of the motion sits at 1").

    Returns:
      float64 scalar in [0, 1]; 0 for an empty spectrum or zero total weight.
    """
    tolerance = check_number(tolerance, "tolerance")
    if _numpy():
        near = np.abs(_eigenvalues_host(result_or_eigenvalues) - 1.0) <= tolerance
        weights = (np.ones(near.shape) if amplitudes is None
                   else np.abs(_host(amplitudes)).astype(np.float64))
        if weights.shape != near.shape:
            raise ValueError(f"amplitudes must have one entry per eigenvalue ({near.size}); "
                             f"got {weights.size}")
        total = weights.sum()
        return np.float64(np.sum(near * weights) / total if total > 0 else 0.0)
    eigenvalues = _eigenvalues(result_or_eigenvalues)
    near = tf.cast(tf.abs(eigenvalues - 1.0) <= tolerance, tf.float64)
    if amplitudes is None:
        weights = tf.ones_like(near)
    else:
        weights = tf.reshape(tf.abs(tf.convert_to_tensor(amplitudes)), [-1])
        weights = tf.cast(weights, tf.float64)
        if weights.shape[0] is not None and near.shape[0] is not None:
            if weights.shape[0] != near.shape[0]:
                raise ValueError(
                    f"amplitudes must have one entry per eigenvalue ({near.shape[0]}); "
                    f"got {weights.shape[0]}"
                )
    total = tf.reduce_sum(weights)
    return tf.math.divide_no_nan(tf.reduce_sum(near * weights), total)




def regions(result_or_eigenvalues, tolerance=0.01):
    """Each eigenvalue's region, ``"at 1"``, ``"inside"`` or ``"outside"`` (see the module's
    docstring), as a NumPy array of strings.

    Args:
      result_or_eigenvalues: a ``DMDResult`` or eigenvalues.
      tolerance: the one tolerance (non-negative): at 1 within it, outside beyond
        ``1 + tolerance`` in modulus.

    Returns:
      ``[r]`` array of ``"at 1"``, ``"inside"``, ``"outside"``.

    Example:

    >>> import keras_koopman as kk
    >>> kk.spectrum.regions([1.005, 0.5j, 1.2, -1.0], tolerance=0.01).tolist()
    ['at 1', 'inside', 'outside', 'inside']
    """
    tolerance = check_number(tolerance, "tolerance")
    values = _eigenvalues_host(result_or_eigenvalues)  # from any backend's device
    return np.where(np.abs(values - 1.0) <= tolerance, "at 1",
                    np.where(np.abs(values) > 1.0 + tolerance, "outside", "inside"))


def unstable_count(result_or_eigenvalues, tolerance=0.01):
    """Number of eigenvalues outside the unit circle: ``|lambda| > 1 + tolerance`` (the same
    ``tolerance`` as "at 1", so no eigenvalue is both)."""
    tolerance = check_number(tolerance, "tolerance")
    if _numpy():
        return np.int32(np.sum(np.abs(_eigenvalues_host(result_or_eigenvalues)) > 1.0 + tolerance))
    moduli = tf.abs(_eigenvalues(result_or_eigenvalues))
    return tf.reduce_sum(tf.cast(moduli > 1.0 + tolerance, tf.int32))


def max_residual(result_or_residuals):
    """Largest data-driven residual, NaN where none is known."""
    residuals = getattr(result_or_residuals, "residuals", result_or_residuals)
    if _numpy():
        values = _host(residuals).astype(np.float64)
        finite = values[np.isfinite(values)]
        return np.float64(finite.max() if finite.size else np.nan)
    residuals = tf.reshape(tf.cast(tf.convert_to_tensor(residuals), tf.float64), [-1])
    finite = tf.boolean_mask(residuals, tf.math.is_finite(residuals))
    return tf.cond(
        tf.size(finite) > 0,
        lambda: tf.reduce_max(finite),
        lambda: tf.constant(float("nan"), tf.float64),
    )


def summary(result, tolerance=0.01, weighted=True):
    """The four scalars the callbacks log, as a dict of float64/int32 tensors.

    Keys: ``spectral_radius``, ``near_one_fraction`` (amplitude-weighted when ``weighted``),
    ``unstable_count``, ``max_residual``; ``tolerance`` decides both "at 1" and "outside".
    """
    return {
        "spectral_radius": spectral_radius(result),
        "near_one_fraction": near_one_fraction(
            result, tolerance, amplitudes=result.amplitudes if weighted else None
        ),
        "unstable_count": unstable_count(result, tolerance),
        "max_residual": max_residual(result),
    }


def mode_share(record, condition, empty=0.0):
    """The weighted share of a record's modes that meet ``condition``.

    Each mode ``j`` weighs ``w_j = |b_j| |lambda_j|^(s-1)``, the length of its component in the
    newest of the ``s`` snapshots (modes have unit norm; see
    :meth:`keras_koopman.callbacks.SpectrumRecord.current_weights`). The share is
    ``sum_j w_j c_j / sum_j w_j`` with ``c = condition(eigenvalues)``: a boolean array gives the
    share of the current weights in the modes where it holds (at 1, outside the unit circle,
    ...); a float array gives the weighted mean of those values. This is the one place the
    stopping rule, the restart diagnosis, the layer activity and the demo's verdicts weigh modes.

    Args:
      record: a :class:`~keras_koopman.callbacks.SpectrumRecord`.
      condition: ``eigenvalues [r] -> [r]`` booleans or numbers.
      empty: what to return when the total weight is zero or not finite (an empty spectrum).

    Returns:
      A Python float.

    Example:

    >>> import numpy as np
    >>> from keras_koopman.records import SpectrumRecord
    >>> record = SpectrumRecord(0, 2, "dense", np.array([1.0, 0.5]), np.array([3.0, 1.0]),
    ...                         np.zeros(2), 2, 2, {})
    >>> mode_share(record, lambda e: np.abs(e - 1) <= 0.01)  # 3 of 3 + 0.5
    0.8571428571428571
    """
    weights = record.current_weights()
    total = float(np.sum(weights))
    if not np.isfinite(total) or total <= 0:
        return float(empty)
    values = np.asarray(condition(record.eigenvalues), dtype=np.float64)
    return float(np.sum(weights * values) / total)
