"""DMDResult: the result of a DMD on any Keras backend (no TensorFlow needed here)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from keras_koopman.portable.device import to_host, to_tensor

__all__ = ["DMDResult", "check_steps"]


def check_steps(steps):
    """``steps`` as a finite float64 vector (``ValueError`` naming the argument otherwise)."""
    t = np.atleast_1d(np.asarray(steps, dtype=np.float64))
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"steps must be a finite number or 1-D sequence; got {steps!r}")
    return t


def _to_backend(array):
    return to_tensor(np.asarray(array))


@dataclasses.dataclass(frozen=True)
class DMDResult:
    """The result of a DMD: the Koopman spectrum and modes of a snapshot sequence.

    Its fields are tensors of the Keras backend that computed it (TensorFlow tensors on
    TensorFlow, JAX arrays on JAX, torch tensors on PyTorch); ``keras.ops.convert_to_numpy``
    reads any of them (wherever they live), and :meth:`numpy` returns a copy whose fields are
    NumPy arrays.

    Attributes:
      eigenvalues: ``[r]`` complex128, discrete-time eigenvalues ``lambda`` (one step = ``dt``),
        sorted by modulus, largest first.
      modes: ``[n, r]`` complex128, DMD modes with unit-norm columns (``None`` when computed with
        ``modes=False``).
      amplitudes: ``[r]`` complex128, least-squares coefficients of the first snapshot in the
        modes: ``snapshots[0] ~= modes @ amplitudes``.
      residuals: ``[r]`` float64, data-driven residual ``||A z - lambda z||`` of each unit Ritz
        vector ``z`` (the refined Ritz vector for ``method="rrr"``).
      singular_values: float64, every singular value of ``snapshots[:-1]`` (descending).
      rank: number of modes kept (an int32 tensor ``[batch]`` for :func:`dmd_batch`).
      dt: time between snapshots.
      method: ``"exact"`` or ``"rrr"``.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> x = np.outer(0.5 ** np.arange(6), [1.0, 2.0])
    >>> result = kk.dmd(x, rank=1)
    >>> np.round(result.numpy().eigenvalues.real, 6)
    array([0.5])
    >>> np.round(np.asarray(result.predict([6])), 6)   # 0.5**6 * [1, 2]
    array([[0.015625, 0.03125 ]])
    """

    eigenvalues: Any
    modes: Any
    amplitudes: Any
    residuals: Any
    singular_values: Any
    rank: Any
    dt: float = 1.0
    method: str = "exact"

    @property
    def frequencies(self):
        """Oscillation frequencies ``angle(lambda) / (2 pi dt)`` in cycles per unit time."""
        return _to_backend(np.angle(to_host(self.eigenvalues)) / (2.0 * math.pi * self.dt))

    @property
    def growth_rates(self):
        """Continuous-time growth rates ``log|lambda| / dt`` (negative: decaying)."""
        with np.errstate(divide="ignore"):
            return _to_backend(np.log(np.abs(to_host(self.eigenvalues))) / self.dt)

    def predict(self, steps):
        """States at the given step indices, ``Re(modes diag(lambda^t) amplitudes)``.

        Args:
          steps: an int or a sequence of step indices (floats allowed), counted from the first
            snapshot (step 0). Step ``m`` is the first step after the data.

        Returns:
          float64 tensor ``[len(steps), n]``, time-major like the snapshots (``[batch,
          len(steps), n]`` for a :func:`dmd_batch` result).
        """
        if self.modes is None:
            raise ValueError("predict needs the modes: compute the DMD with modes=True")
        t = check_steps(steps)
        eigenvalues = to_host(self.eigenvalues)[..., None, :]  # [..., 1, r]
        with np.errstate(divide="ignore", invalid="ignore"):
            powers = np.exp(t[:, None] * np.log(eigenvalues.astype(np.complex128)))
        powers = np.where(eigenvalues == 0, (t == 0)[:, None].astype(np.complex128), powers)
        weights = powers * to_host(self.amplitudes)[..., None, :]
        modes = to_host(self.modes)
        return _to_backend(np.real(weights @ np.swapaxes(modes, -1, -2)))

    def numpy(self):
        """A copy whose tensor fields are NumPy arrays."""
        convert = {f.name: to_host(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None
                   and not isinstance(getattr(self, f.name), (int, float, str, np.ndarray))}
        return dataclasses.replace(self, **convert)
