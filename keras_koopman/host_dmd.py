"""The small ``[m, m]`` eigenproblems of the Gram path, on the host in NumPy float64.

A monitor's analysis needs, per observable group, only the float64 Gram matrix of its window
(``m x m``, ``m`` = snapshots): the device keeps the buffers and their streaming Gram matrices
and hands over these small matrices in one transfer; everything after that is a few LAPACK
calls on ``m <= window`` sized matrices. In NumPy they cost microseconds, need no tracing and no
graph instantiation (a TensorFlow graph of the same algebra costs ~0.3 s to instantiate for
every new model here, and ~2 ms a call), and they are the same on every Keras backend.

Each function mirrors its TensorFlow counterpart in :mod:`keras_koopman.dmd` (same algorithm,
same outputs): :func:`select_rank_batch`, :func:`gram_solve` (with :func:`small_space` and
:func:`unit_modes`, exact and refined Rayleigh-Ritz), :func:`batch_gram_solve` (many small
exact DMDs), and the metrics :func:`summary` / :func:`summary_batch` and
:func:`window_motion` of :mod:`keras_koopman.spectrum`.

Example:

>>> import numpy as np
>>> from keras_koopman import host_dmd
>>> x = np.outer(0.9 ** np.arange(6), [1.0, 2.0, 3.0])  # x_k = 0.9**k * [1, 2, 3]
>>> eigenvalues, *_ = host_dmd.gram_solve(x @ x.T, 3, 1, 1.0, 1e-7, "exact")
>>> np.round(eigenvalues, 12)
array([0.9+0.j])
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from keras_koopman._validation import MAX_SNAPSHOTS, check_choice, check_int, check_number

__all__ = ["batch_gram_solve", "gram_solve", "svd_solve", "select_rank_batch", "summary",
           "summary_batch", "window_motion"]

# The rank encoding of keras_koopman.dmd.parse_rank, defined here (this module needs no
# TensorFlow) and imported by dmd.py.
RANK_OPTIMAL, RANK_FIXED, RANK_ENERGY = 0, 1, 2
_METHODS = ("exact", "rrr")
_SOLVERS = ("auto", "svd", "gram")


def parse_rank(rank):
    """Validates ``rank`` and encodes it as ``(code, value)`` for the graph functions.

    Args:
      rank: ``None`` (Gavish-Donoho optimal hard threshold), an int ``>= 1`` (fixed rank) or a
        float in (0, 1) (fraction of the singular-value energy).

    Returns:
      ``(code, value)``: ``RANK_OPTIMAL``, ``RANK_FIXED`` or ``RANK_ENERGY`` and a float.

    Raises:
      TypeError: ``rank`` is not ``None``, an int or a float (a string, a bool, a list...).
      ValueError: an int below 1, or a float outside (0, 1).
    """
    if rank is None:
        return RANK_OPTIMAL, 0.0
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, numbers.Real):
        raise TypeError(
            f"rank must be None (optimal hard threshold), a positive int or a float in (0, 1); "
            f"got {rank!r} of type {type(rank).__name__}"
        )
    if isinstance(rank, numbers.Integral):
        return RANK_FIXED, float(check_int(rank, "rank as an int (a fixed rank)", minimum=1))
    energy = check_number(rank, "rank as a float (a fraction of singular-value energy)", 0.0, 1.0,
                          open_low=True, open_high=True)
    return RANK_ENERGY, energy


def check_method(method):
    """``method`` if it is ``"exact"`` or ``"rrr"``, else ``ValueError``."""
    return check_choice(method, "method", _METHODS)


def check_solver(solver):
    """``solver`` if it is ``"auto"``, ``"svd"`` or ``"gram"``, else ``ValueError``."""
    return check_choice(solver, "solver", _SOLVERS)


def check_dt(dt):
    """``dt`` as a positive finite float: ``TypeError`` for a non-number, ``ValueError`` else."""
    dt = check_number(dt, "dt", 0.0, open_low=True)
    if not math.isfinite(dt):
        raise ValueError(f"dt must be a positive finite number; got {dt!r}")
    return dt


def floor_epsilon(data_dtype, solver):
    """Relative singular-value floor below which a direction is numerically zero."""
    data_eps = float(np.finfo(np.dtype(getattr(data_dtype, "as_numpy_dtype", data_dtype))).eps)
    solver_eps = float(np.finfo(np.float64).eps)
    if solver == "gram":
        solver_eps = math.sqrt(solver_eps)
    return 10.0 * max(data_eps, solver_eps)


def real_array(snapshots, name="snapshots", layout="[m, n]"):
    """Array-like ``snapshots`` as a float32 or float64 NumPy array, with the errors every
    engine gives (``keras_koopman.dmd`` and the portable one): ``ValueError`` for ragged input,
    ``TypeError`` for objects or non-real numbers; ints and bools become float64, float16 and
    bfloat16 float32."""
    try:
        array = np.asarray(snapshots)
    except ValueError as error:  # ragged nested lists
        raise ValueError(
            f"{name} must be a rectangular array, time-major {layout}; got a ragged "
            f"{type(snapshots).__name__}"
        ) from error
    except Exception as error:  # objects NumPy cannot read as an array at all
        raise TypeError(
            f"{name} must be an array or tensor {layout}; got {type(snapshots).__name__}"
        ) from error
    kind = array.dtype.kind
    if kind in "biu":
        array = array.astype(np.float64)
    elif kind == "f" and array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64)
    elif kind != "f":
        raise TypeError(
            f"{name} must hold real numbers (float32 or float64); got dtype {array.dtype}"
        )
    return array


def check_snapshot_shape(shape, name="snapshots", ndim=2):
    """``ValueError`` (naming ``name`` and the shape) unless ``shape`` is time-major ``[m, n]``
    (``ndim=3``: ``[batch, m, n]``) with ``2 <= m <= MAX_SNAPSHOTS``, ``n >= 1`` and
    ``batch >= 1``; a ``None`` size (known only at run time) passes."""
    layout, rows = ({2: ("[m, n]", "row k = state at step k"),
                     3: ("[batch, m, n]", "row k of each sequence = its state at step k")}[ndim])
    if len(shape) != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D and time-major {layout} ({rows}); got shape {shape}")

    def below(dimension, minimum):
        return dimension is not None and dimension < minimum

    if ndim == 3 and below(shape[0], 1):
        raise ValueError(f"{name} needs at least 1 sequence (batch >= 1); got shape {shape}")
    if below(shape[-2], 2):
        raise ValueError(f"{name} needs at least 2 time steps (m >= 2 rows of the time-major "
                         f"{layout}); got shape {shape}")
    if below(shape[-1], 1):
        raise ValueError(f"{name} needs at least 1 feature (n >= 1 columns of the time-major "
                         f"{layout}); got shape {shape}")
    m, n = shape[-2], shape[-1]
    if m is not None and m > MAX_SNAPSHOTS:
        hint = ("; rows are time steps: if yours are features (PyDMD's [n, m] layout), pass "
                "the transpose" if n is not None and n < m else "")
        raise ValueError(f"{name} has {m:,} time steps (rows of the time-major {layout}); DMD "
                         f"forms their [m, m] float64 Gram matrix and solves its eigenproblem "
                         f"on the host, so m is at most {MAX_SNAPSHOTS:,}{hint}; got shape "
                         f"{shape}")


def gavish_donoho_omega(beta):
    """Gavish-Donoho coefficient omega(beta) for the optimal hard threshold with unknown noise.

    The threshold is ``omega(beta) * median(singular values)`` for a matrix of aspect ratio
    ``beta = min(shape) / max(shape)`` (Gavish and Donoho 2014, eq. (5) approximation); plain
    arithmetic, so it takes NumPy arrays and tensors alike.
    """
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def select_rank_batch(singular, n_cols, code, value, floor):
    """The rank rule of :func:`keras_koopman.dmd.select_rank_batch`: int32 ``[batch]``."""
    singular = np.asarray(singular, np.float64)
    batch, p = singular.shape
    supported = np.maximum(np.sum(singular > floor * singular[:, :1], axis=1), 1)
    if code == RANK_FIXED:
        chosen = np.full(batch, int(np.clip(value, 0.0, p)))
    elif code == RANK_ENERGY:
        squared = singular**2
        total = np.maximum(squared.sum(axis=1, keepdims=True), 1e-300)
        chosen = np.sum(np.cumsum(squared, axis=1) / total < value, axis=1) + 1
    else:
        cols = np.asarray(n_cols, np.float64)
        beta = np.minimum(float(p), cols) / np.maximum(float(p), cols)
        median = 0.5 * (singular[:, (p - 1) // 2] + singular[:, p // 2])
        chosen = np.sum(singular > (gavish_donoho_omega(beta) * median)[..., np.newaxis], axis=1)
    return np.clip(chosen, 1, supported).astype(np.int32)


def _norms(a, axis):
    return np.sqrt(np.sum((a * np.conj(a)).real, axis=axis))


def _eig(matrix):
    """Eigenpairs as complex128, whatever NumPy returns for a real matrix."""
    values, vectors = np.linalg.eig(matrix)
    return values.astype(np.complex128), vectors.astype(np.complex128)


def _least_squares(matrix, rhs):
    """Minimum-norm least squares through the SVD (as :func:`keras_koopman.dmd.least_squares`)."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    cutoff = (s.max() if s.size else 0.0) * 1e-12 * max(matrix.shape)
    inverse = np.where(s > cutoff, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    return np.conj(vh).T @ ((np.conj(u).T @ rhs) * inverse)


def small_space(reduced, factor, method):
    """Eigenpairs, residuals, mode coefficients and amplitudes from the ``[2k+1]`` basis (as
    :func:`keras_koopman.dmd.small_space`)."""
    k = reduced.shape[0]
    eigenvalues, vectors = _eig(reduced)
    vectors = vectors / np.where((n := _norms(vectors, 0)) > 0, n, 1.0)[np.newaxis, :]
    order = np.argsort(-np.abs(eigenvalues), kind="stable")
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    r = factor.astype(np.complex128)
    r_u, r_b, r_x = r[:, :k], r[:, k:2 * k], r[:, 2 * k]
    shifted = r_b[np.newaxis] - eigenvalues[:, np.newaxis, np.newaxis] * r_u[np.newaxis]
    ritz = vectors.T  # [k pairs, k]
    zeros = np.zeros_like(ritz)
    zero_col = np.zeros((k, 1), np.complex128)
    if method == "exact":
        residuals = _norms(np.einsum("jqk,jk->jq", shifted, ritz), 1)
        image_norms = _norms(ritz @ r_b.T, 1)
        has_image = image_norms > 1e-12 * np.max(np.abs(r))
        coefficients = np.where(has_image[:, np.newaxis],
                                np.concatenate([zeros, ritz, zero_col], axis=1),
                                np.concatenate([ritz, zeros, zero_col], axis=1))
    else:
        _, singular, vh = np.linalg.svd(shifted, full_matrices=False)
        residuals = singular[:, -1]
        refined = np.conj(vh[:, -1, :])  # the right singular vector of the smallest value
        coefficients = np.concatenate([refined, zeros, zero_col], axis=1)
    coefficients = coefficients.T  # [2k+1, k]
    mode_norms = _norms(r @ coefficients, 0)
    coefficients = coefficients / np.where(mode_norms > 0, mode_norms, 1.0)[np.newaxis, :]
    amplitudes = _least_squares(r @ coefficients, r_x)
    return eigenvalues, coefficients, residuals, amplitudes


def _square_root_factor(gram):
    values, vectors = np.linalg.eigh(gram)
    return np.sqrt(np.maximum(values, 0.0))[:, np.newaxis] * vectors.T


def _basis_coefficients(right_vectors, inverse_s, m):
    k = right_vectors.shape[1]
    scaled = right_vectors * inverse_s[np.newaxis, :]
    zeros_row = np.zeros((1, k))
    e0 = np.zeros((m, 1))
    e0[0, 0] = 1.0
    return np.concatenate([np.concatenate([scaled, zeros_row]),
                           np.concatenate([zeros_row, scaled]), e0], axis=1)


def gram_solve(gram, n_cols, code, value, floor, method):
    """DMD from the float64 Gram matrix ``[m, m]`` of time-major snapshots (as
    :func:`keras_koopman.dmd.gram_solve`): eigenvalues, ``K [m, k]`` with modes ``X^T K``,
    residuals, amplitudes, the singular values of ``X0`` and the rank."""
    gram = np.asarray(gram, np.float64)
    m = gram.shape[0]
    p = min(m - 1, int(n_cols))
    values, vectors = np.linalg.eigh(gram[:-1, :-1])
    values, vectors = values[::-1][:p], vectors[:, ::-1][:, :p]
    singular = np.sqrt(np.maximum(values, 0.0))
    k = int(select_rank_batch(singular[np.newaxis], n_cols, code, value, floor)[0])
    s_k = singular[:k]
    basis = _basis_coefficients(vectors[:, :k], 1.0 / np.where(s_k > 0, s_k, 1.0), m)
    basis_gram = basis.T @ gram @ basis
    eigenvalues, coefficients, residuals, amplitudes = small_space(
        basis_gram[:k, k:2 * k], _square_root_factor(basis_gram), method)
    return eigenvalues, basis @ coefficients, residuals, amplitudes, singular, k


def svd_solve(x64, code, value, floor, method):
    """DMD through the thin SVD of ``X0`` (float64 ``[m, n]`` on the host), as
    :func:`keras_koopman.dmd.svd_solve`: the same outputs as :func:`gram_solve`."""
    x64 = np.asarray(x64, np.float64)
    m, n = x64.shape
    left, singular, right_h = np.linalg.svd(x64[:-1], full_matrices=False)
    k = int(select_rank_batch(singular[np.newaxis], n, code, value, floor)[0])
    s_k = singular[:k]
    inverse_s = 1.0 / np.where(s_k > 0, s_k, 1.0)
    v_k, u_k = left[:, :k], right_h[:k].T
    image = x64[1:].T @ (v_k * inverse_s[np.newaxis, :])  # A U, [n, k]
    basis = np.concatenate([u_k, image, x64[0][:, np.newaxis]], axis=1)
    factor = np.linalg.qr(basis, mode="r")
    eigenvalues, coefficients, residuals, amplitudes = small_space(u_k.T @ image, factor, method)
    combination = _basis_coefficients(v_k, inverse_s, m) @ coefficients
    return eigenvalues, combination, residuals, amplitudes, singular, k


def unit_modes(combination, amplitudes, gram):
    """``K`` scaled so that the modes ``X^T K`` have unit norm, amplitudes rescaled so that
    ``modes @ amplitudes`` is unchanged (as :func:`keras_koopman.dmd.unit_modes`)."""
    squared = np.sum(np.conj(combination) * (gram @ combination), axis=0).real
    norms = np.sqrt(np.maximum(squared, 0.0))
    norms = np.where(norms > 0, norms, 1.0)
    return combination / norms[np.newaxis, :], amplitudes * norms


def _quadratic(vectors, matrix):
    """``diag(V^H M V)`` for a batch."""
    return np.sum(np.conj(vectors) * (matrix @ vectors), axis=1)


def batch_gram_solve(gram, n_cols, code, value, floor):
    """Exact DMD spectra of a batch from its Gram matrices ``[batch, m, m]`` (as
    :func:`keras_koopman.dmd.batch_gram_solve`); slots past each element's rank hold
    eigenvalue 0 with zero mode and amplitude."""
    gram = np.asarray(gram, np.float64)
    n_cols = np.asarray(n_cols)
    p = min(gram.shape[1] - 1, int(np.min(n_cols)))
    g00, g01, g11 = gram[:, :-1, :-1], gram[:, :-1, 1:], gram[:, 1:, 1:]
    values, vectors = np.linalg.eigh(g00)
    values, vectors = values[:, ::-1][:, :p], vectors[:, :, ::-1][:, :, :p]
    singular = np.sqrt(np.maximum(values, 0.0))
    k = select_rank_batch(singular, n_cols, code, value, floor)
    keep = np.arange(p)[np.newaxis, :] < k[:, np.newaxis]
    inverse_s = np.where(keep, 1.0 / np.where(singular > 0, singular, 1.0), 0.0)
    scaled = vectors * inverse_s[:, np.newaxis, :]
    eigenvalues, ritz = _eig(np.swapaxes(scaled, 1, 2) @ g01 @ scaled)
    order = np.argsort(-np.abs(eigenvalues), axis=1, kind="stable")
    eigenvalues = np.take_along_axis(eigenvalues, order, axis=1)
    ritz = np.take_along_axis(ritz, order[:, np.newaxis, :], axis=2)
    ritz = ritz / np.maximum(_norms(ritz, 1), 1e-300)[:, np.newaxis, :]
    combination = scaled @ ritz
    cross = _quadratic(combination, g01)
    x1 = _quadratic(combination, g11).real
    squared = (x1 + np.abs(eigenvalues) ** 2 * _quadratic(combination, g00).real
               - 2.0 * np.real(eigenvalues * np.conj(cross)))
    residuals = np.sqrt(np.maximum(squared, 0.0))
    norms = np.sqrt(np.maximum(x1, 0.0))
    combination = combination / np.where(norms > 1e-300, norms, 1.0)[:, np.newaxis, :]
    normal = np.swapaxes(np.conj(combination), 1, 2) @ g11 @ combination
    rhs = np.einsum("bmp,bm->bp", np.conj(combination), gram[:, 1:, 0])
    weights, basis = np.linalg.eigh(normal)
    cutoff = 1e-12 * weights.max(axis=1, keepdims=True)
    inverse = np.where(weights > cutoff, 1.0 / np.where(weights > 0, weights, 1.0), 0.0)
    amplitudes = np.einsum("bpq,bq->bp", basis,
                           inverse * np.einsum("bqp,bq->bp", np.conj(basis), rhs))
    return eigenvalues, combination, amplitudes, residuals, singular, k


def window_motion(gram):
    """``|x_newest - x_oldest| / |x_newest|`` from the window's Gram matrix (as
    :func:`keras_koopman.spectrum.window_motion`)."""
    gram = np.asarray(gram, np.float64)
    last, first = gram[..., -1, -1], gram[..., 0, 0]
    distance = np.maximum(last + first - 2.0 * gram[..., 0, -1], 0.0)
    ratio = np.sqrt(distance / np.where(last > 0, last, 1.0))
    return np.where(last > 0, ratio, np.where(distance > 0, np.inf, 0.0))


def summary(eigenvalues, amplitudes, residuals, tolerance):
    """The four logged scalars of one spectrum (amplitude-weighted ``near_one_fraction``), as
    :func:`keras_koopman.spectrum.summary` gives them."""
    eigenvalues = np.asarray(eigenvalues, np.complex128)
    weights = np.abs(np.asarray(amplitudes))
    total = weights.sum()
    near = np.abs(eigenvalues - 1.0) <= tolerance
    residuals = np.asarray(residuals, np.float64)
    finite = residuals[np.isfinite(residuals)]
    return {
        "spectral_radius": float(np.max(np.abs(eigenvalues), initial=0.0)),
        "near_one_fraction": float(np.sum(weights * near) / total) if total > 0 else 0.0,
        "unstable_count": int(np.sum(np.abs(eigenvalues) > 1.0 + tolerance)),
        "max_residual": float(finite.max()) if finite.size else float("nan"),
    }


def summary_batch(eigenvalues, amplitudes, residuals, rank, tolerance):
    """:func:`summary` of a batch of padded spectra ``[batch, p]`` (element ``b``'s spectrum in
    its first ``rank[b]`` slots), as ``[batch]`` arrays."""
    eigenvalues = np.asarray(eigenvalues, np.complex128)
    kept = np.arange(eigenvalues.shape[1])[np.newaxis, :] < np.asarray(rank)[:, np.newaxis]
    moduli = np.where(kept, np.abs(eigenvalues), 0.0)
    weights = np.where(kept, np.abs(np.asarray(amplitudes)), 0.0)
    near = np.abs(eigenvalues - 1.0) <= tolerance
    residuals = np.asarray(residuals, np.float64)
    finite = kept & np.isfinite(residuals)
    total = weights.sum(axis=1)
    largest = np.max(np.where(finite, residuals, -1.0), axis=1, initial=-1.0)
    return {
        "spectral_radius": moduli.max(axis=1, initial=0.0),
        "near_one_fraction": np.divide(np.sum(near * weights, axis=1), total,
                                       out=np.zeros_like(total), where=total > 0),
        "unstable_count": np.sum(moduli > 1.0 + tolerance, axis=1).astype(np.int32),
        "max_residual": np.where(finite.any(axis=1), largest, np.nan),
    }
