"""DMD on the backend's tensors (JAX, PyTorch): the engine behind :func:`keras_koopman.dmd`
there. Same algorithm and outputs as the TensorFlow engine (:mod:`keras_koopman.dmd`)."""

from __future__ import annotations

import numpy as np

from keras_koopman import host_dmd
from keras_koopman._validation import DataError
from keras_koopman.portable import device as dev
from keras_koopman.result import DMDResult

__all__ = ["dmd", "to_snapshots"]

_AUTO_GRAM_ELEMENTS = 2**20  # as keras_koopman.dmd: the SVD below this many elements
_FLOATS = ("float32", "float64")


def to_snapshots(snapshots, name="snapshots"):
    """Time-major ``[m, n]`` input as a float32 or float64 tensor of the backend, with the
    errors of :func:`keras_koopman.dmd.to_snapshots` (float16 and bfloat16 become float32;
    ints and bools float64)."""
    import keras

    if isinstance(snapshots, keras.Variable):
        snapshots = snapshots.value
    if keras.ops.is_tensor(snapshots):
        dtype = keras.backend.standardize_dtype(snapshots.dtype)
        if dtype in ("float16", "bfloat16"):
            snapshots = keras.ops.cast(snapshots, "float32")
        elif dtype.startswith(("int", "uint", "bool")):
            snapshots = keras.ops.cast(snapshots, "float64")
        elif dtype not in _FLOATS:
            raise TypeError(f"{name} must hold real numbers (float32 or float64); got dtype "
                            f"{dtype}")
        tensor = snapshots
    else:
        try:
            array = np.asarray(snapshots)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular array, time-major [m, n]; got a "
                             f"ragged {type(snapshots).__name__}") from error
        except Exception as error:
            raise TypeError(f"{name} must be an array or tensor [m, n]; got "
                            f"{type(snapshots).__name__}") from error
        kind = array.dtype.kind
        if kind in "biu":
            array = array.astype(np.float64)
        elif kind == "f" and array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64)
        elif kind != "f":
            raise TypeError(f"{name} must hold real numbers (float32 or float64); got dtype "
                            f"{array.dtype}")
        tensor = dev.to_tensor(array)
    shape = tuple(tensor.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D and time-major [m, n] (row k = state at step k); "
                         f"got shape {shape}")
    if shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 time steps (m >= 2 rows of the time-major "
                         f"[m, n]); got shape {shape}")
    if shape[1] < 1:
        raise ValueError(f"{name} needs at least 1 feature (n >= 1 columns of the time-major "
                         f"[m, n]); got shape {shape}")
    return tensor


def dmd(snapshots, rank=None, method="exact", dt=1.0, *, solver="auto", modes=True,
        device=None):
    """:func:`keras_koopman.dmd` on JAX or PyTorch (see there for the arguments).

    The Gram matrix ``X X^T`` (``solver="gram"``) or the snapshots (``"svd"``, only below
    ``2**20`` elements) reach the host once, in float64; the ``[m, m]`` eigenproblems run there
    in NumPy; the modes are one float64 product on the device. The fields of the result are
    tensors of the backend (complex128, float64), on its default device.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> x = np.outer(0.9 ** np.arange(10), np.ones(3))
    >>> round(float(np.asarray(kk.dmd(x, rank=1).eigenvalues)[0].real), 12)
    0.9
    """
    import keras

    code, value = host_dmd.parse_rank(rank)
    host_dmd.check_method(method)
    dt = host_dmd.check_dt(dt)
    host_dmd.check_solver(solver)
    if device is not None:
        raise ValueError(f"device is TensorFlow's placement and not used on the "
                         f"{keras.backend.backend()} backend (arrays stay on their own "
                         f"device); got {device!r}")
    x = to_snapshots(snapshots)
    m, n = (int(d) for d in x.shape)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if solver == "auto":
        solver = "gram" if m * n > _AUTO_GRAM_ELEMENTS else "svd"
    floor = host_dmd.floor_epsilon(np.dtype(dtype), solver)
    if solver == "gram":
        gram = dev.to_host(dev.gram(x))  # the one transfer of the Gram path
        _check_finite(np.all(np.isfinite(gram)))
        outputs = host_dmd.gram_solve(gram, n, code, value, floor, method)
    else:
        x64 = dev.to_host(x).astype(np.float64)
        _check_finite(np.all(np.isfinite(x64)))
        gram = x64 @ x64.T
        outputs = host_dmd.svd_solve(x64, code, value, floor, method)
    eigenvalues, combination, residuals, amplitudes, singular, k = outputs
    if singular.size == 0 or float(singular[0]) == 0.0:
        raise DataError("snapshots: the snapshots before the last are all zero; DMD is "
                        "undefined")
    combination, amplitudes = host_dmd.unit_modes(combination, amplitudes, gram)
    mode_tensor = None
    if modes:
        mode_tensor, norms = dev.modes(x, combination)
        amplitudes = amplitudes * norms
    return DMDResult(
        eigenvalues=dev.to_tensor(eigenvalues.astype(np.complex128)),
        modes=mode_tensor,
        amplitudes=dev.to_tensor(np.asarray(amplitudes, np.complex128)),
        residuals=dev.to_tensor(np.asarray(residuals, np.float64)),
        singular_values=dev.to_tensor(np.asarray(singular, np.float64)),
        rank=int(k), dt=dt, method=method)


def _check_finite(finite):
    if not finite:
        raise DataError("snapshots contains NaN or Inf (or values whose squares overflow)")
