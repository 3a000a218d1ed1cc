"""DMD on the backend's tensors (JAX, PyTorch): the engine behind :func:`keras_koopman.dmd`
there. Same algorithm and outputs as the TensorFlow engine (:mod:`keras_koopman.dmd`)."""

from __future__ import annotations

import numpy as np

from keras_koopman import host_dmd
from keras_koopman._validation import DataError
from keras_koopman.portable import device as dev
from keras_koopman.result import DMDResult

__all__ = ["dmd", "dmd_batch", "gram_dmd", "to_snapshots"]

_AUTO_GRAM_ELEMENTS = 2**20  # as keras_koopman.dmd: the SVD below this many elements
_FLOATS = ("float32", "float64")


def to_snapshots(snapshots, name="snapshots", ndim=2):
    """Time-major ``[m, n]`` (``ndim=3``: ``[batch, m, n]``) input as a float32 or float64
    tensor of the backend, with the errors of :func:`keras_koopman.dmd.to_snapshots`
    (float16 and bfloat16 become float32; ints and bools float64)."""
    import keras

    layout = "[m, n]" if ndim == 2 else "[batch, m, n]"
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
        tensor = dev.to_tensor(host_dmd.real_array(snapshots, name, layout))
    host_dmd.check_snapshot_shape(tuple(tensor.shape), name, ndim)
    return tensor


def dmd(snapshots, rank=None, method="exact", dt=1.0, *, solver="auto", modes=True,
        device=None):
    """:func:`keras_koopman.dmd` on JAX or PyTorch (see there for the arguments).

    The Gram matrix ``X X^T`` (``solver="gram"``) or the snapshots (``"svd"``, only below
    ``2**20`` elements) reach the host once, in float64; the ``[m, m]`` eigenproblems run there
    in NumPy; the modes are one product on the device, in the snapshots' precision (as the
    TensorFlow engine), renormalised in float64. The fields of the result are
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
    return _result(outputs, gram, (lambda c: dev.modes(x, c)) if modes else None, dt, method)


def gram_dmd(gram, n_features, dtype, rank, method, dt, modes=None):
    """The DMD of a window from its float64 Gram matrix ``[m, m]`` (NumPy, chronological):
    what a buffer's :meth:`dmd` runs. ``modes``: a function of the complex ``[m, r]``
    coefficients returning the unit modes ``X^T K`` and their norms, as
    :func:`~keras_koopman.portable.device.modes` (``None``: no modes)."""
    code, value = host_dmd.parse_rank(rank)
    host_dmd.check_method(method)
    dt = host_dmd.check_dt(dt)
    _check_finite(np.all(np.isfinite(gram)))
    floor = host_dmd.floor_epsilon(np.dtype(dtype), "gram")
    outputs = host_dmd.gram_solve(gram, n_features, code, value, floor, method)
    return _result(outputs, gram, modes, dt, method)


def _result(outputs, gram, modes, dt, method):
    """The :class:`DMDResult` of the host solver's ``outputs`` (modes formed on the device by
    ``modes(coefficients)`` when given)."""
    eigenvalues, combination, residuals, amplitudes, singular, k = outputs
    if singular.size == 0 or float(singular[0]) == 0.0:
        raise DataError("snapshots: the snapshots before the last are all zero; DMD is "
                        "undefined")
    combination, amplitudes = host_dmd.unit_modes(combination, amplitudes, gram)
    mode_tensor = None
    if modes is not None:
        mode_tensor, norms = modes(combination)
        amplitudes = amplitudes * norms
    return DMDResult(
        eigenvalues=dev.to_tensor(eigenvalues.astype(np.complex128)),
        modes=mode_tensor,
        amplitudes=dev.to_tensor(np.asarray(amplitudes, np.complex128)),
        residuals=dev.to_tensor(np.asarray(residuals, np.float64)),
        singular_values=dev.to_tensor(np.asarray(singular, np.float64)),
        rank=int(k), dt=dt, method=method)


def dmd_batch(snapshots, rank=None, dt=1.0):
    """:func:`keras_koopman.dmd_batch` on JAX or PyTorch: many small exact DMDs at once (see
    there). The ``[batch, m, m]`` float64 Gram matrices are one batched product on the device,
    the small problems one batched NumPy solve on the host, the modes one batched product.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> x = np.array([0.5, 0.9])[:, None, None] ** np.arange(6)[None, :, None] * np.ones((2, 6, 3))
    >>> np.round(np.asarray(kk.dmd_batch(x, rank=1).eigenvalues)[:, 0].real, 6)
    array([0.5, 0.9])
    """
    import keras

    ops = keras.ops
    code, value = host_dmd.parse_rank(rank)
    dt = host_dmd.check_dt(dt)
    x = to_snapshots(snapshots, ndim=3)
    shape = tuple(x.shape)
    dtype = keras.backend.standardize_dtype(x.dtype)
    x64 = ops.cast(x, "float64")
    gram = dev.to_host(dev.matmul(x64, ops.transpose(x64, (0, 2, 1))))  # [batch, m, m]
    _check_finite(np.all(np.isfinite(gram)))
    eigenvalues, combination, amplitudes, residuals, singular, k = host_dmd.batch_gram_solve(
        gram, np.full(shape[0], shape[2]), code, value,
        host_dmd.floor_epsilon(np.dtype(dtype), "gram"))
    modes, norms = dev.modes(x[:, 1:], combination)  # exact DMD modes: X1^T K
    return DMDResult(
        eigenvalues=dev.to_tensor(eigenvalues.astype(np.complex128)), modes=modes,
        amplitudes=dev.to_tensor((amplitudes * norms).astype(np.complex128)),
        residuals=dev.to_tensor(np.asarray(residuals, np.float64)),
        singular_values=dev.to_tensor(np.asarray(singular, np.float64)),
        rank=dev.to_tensor(np.asarray(k, np.int32)), dt=dt, method="exact")


def _check_finite(finite):
    if not finite:
        raise DataError("snapshots contains NaN or Inf (or values whose squares overflow)")
