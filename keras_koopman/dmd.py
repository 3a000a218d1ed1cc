"""Dynamic Mode Decomposition (DMD) in TensorFlow.

The engine behind every Koopman callback. Pure TensorFlow (no Keras): all heavy work runs in
``tf.function``s with fixed input signatures, on whatever device TensorFlow places it.

Snapshots are **time-major** ``[m, n]``: row ``k`` is the state at step ``k`` (TensorFlow is
batch-major, so a stack of flattened weight vectors is already in this layout). With
``X0 = snapshots[:-1]`` and ``X1 = snapshots[1:]``, DMD finds the rank-``r`` linear map ``A`` with
``X1.T ~= A @ X0.T`` and returns its eigenvalues and eigenvectors (the DMD modes).

Two solvers compute the same decomposition:

* ``"svd"``: thin SVD of ``X0`` in float64 (exact DMD as in Tu et al. 2014). Accurate down to
  singular values of ``eps * sigma_max`` but costs ``O(n m^2)`` with a large constant.
* ``"gram"``: the method of snapshots. The ``[m, m]`` Gram matrix of the snapshots, centred on
  the first snapshot so that a large common offset (weights ``~1`` moving by ``1e-3``) keeps its
  precision, is formed with one matrix product and assembled in float64; every other step works on
  ``[m, m]`` matrices, and the modes touch the snapshots once more. The centred products run in
  the data's precision, so the solver resolves singular values of the centred snapshots down to
  about ``sqrt(eps)`` of the largest one: ``1e-8`` for float64 data, ``3e-4`` for float32.
  Dynamics that decay faster than that over the window lose digits in their fastest modes; pass
  float64 snapshots (or ``solver="svd"``) where those matter.

``solver="auto"`` (the default) takes ``"gram"`` when ``n * m > 2**20`` and ``"svd"`` otherwise.

Both solvers reduce the problem to the basis ``Z = [U, A U, x_0]`` (``U``: the leading left
singular vectors of ``X0.T``; ``A U``: its data-driven image; ``x_0``: the first snapshot) and a
small factor ``R`` with ``R^H R = Z^H Z``. Ritz pairs, residuals ``||A z - lambda z||``, refined
Ritz vectors (``method="rrr"``, Drmac, Mezic and Mohr 2018) and the least-squares amplitudes are
all computed from ``R``, so the two solvers share that code.
"""

from __future__ import annotations

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

import dataclasses
import math

import tensorflow as tf

from keras_koopman import result
from keras_koopman._tf import cached_function
from keras_koopman.host_dmd import (RANK_ENERGY, RANK_FIXED,  # noqa: F401  (re-exported)
                                    RANK_OPTIMAL, check_dt, check_method, check_solver,
                                    floor_epsilon, gavish_donoho_omega, parse_rank,
                                    check_snapshot_shape, real_array)
from keras_koopman._validation import DataError

__all__ = ["DMDResult", "dmd", "dmd_batch"]

_AUTO_GRAM_ELEMENTS = 2**20

# How a rank request travels into the graph: (code, value) so that changing the rank never
# retraces.


# --------------------------------------------------------------------------------------------
# Graph building blocks (called inside tf.functions)
# --------------------------------------------------------------------------------------------


def select_rank(singular_values, n_cols, code, value, floor):
    """Number of singular values kept for one spectrum: :func:`select_rank_batch` on a batch
    of one, so that :func:`dmd` and :func:`dmd_batch` share a single rank rule.

    Args:
      singular_values: descending float64 ``[p]``.
      n_cols: number of features ``n`` (a scalar).
      code, value: the rank encoding of :func:`parse_rank` (Python numbers or scalar tensors).
      floor: relative singular-value floor (:func:`floor_epsilon`).

    Returns:
      The rank, an int32 scalar in ``[1, numerical rank]``.
    """
    return select_rank_batch(singular_values[tf.newaxis], n_cols, code, value, floor)[0]


def select_rank_batch(singular, n_cols, code, value, floor):
    """The rank rule: number of singular values kept for each row of ``singular``.

    All three rules are computed and ``code`` picks one, so ``code`` and ``value`` may be scalar
    tensors (one trace serves every rank) as well as Python numbers.

    Args:
      singular: float64 ``[batch, p]``, each row descending; the shapes may be dynamic.
      n_cols: number of features ``n``, a scalar or ``[batch]``.
      code: ``RANK_OPTIMAL`` (Gavish-Donoho: ``s > omega(beta) * median(s)`` with
        ``beta = min(p, n) / max(p, n)``), ``RANK_FIXED`` (``value`` modes) or ``RANK_ENERGY``
        (the fewest leading modes whose share of ``sum(s**2)`` reaches ``value``); a Python int
        or an int32 scalar tensor.
      value: the fixed rank or the energy fraction (ignored for ``RANK_OPTIMAL``), a Python
        number or a float64 scalar tensor.
      floor: relative floor: singular values up to ``floor * s[0]`` are numerically zero.

    Returns:
      int32 ``[batch]``: each element's rank, clipped to ``[1, numerical rank]``.
    """
    code = tf.cast(code, tf.int32)
    value = tf.cast(value, tf.float64)
    p = tf.shape(singular)[1]
    top = singular[:, :1]
    supported = tf.maximum(tf.reduce_sum(tf.cast(singular > floor * top, tf.int32), axis=1), 1)

    rows, cols = tf.cast(p, tf.float64), tf.cast(n_cols, tf.float64)
    beta = tf.minimum(rows, cols) / tf.maximum(rows, cols)
    median = 0.5 * (tf.gather(singular, (p - 1) // 2, axis=1)
                    + tf.gather(singular, p // 2, axis=1))
    threshold = gavish_donoho_omega(beta) * median
    optimal = tf.reduce_sum(tf.cast(singular > threshold[:, tf.newaxis], tf.int32), axis=1)

    # Clipped before the cast: a huge requested rank must not wrap around in int32.
    fixed = tf.fill(tf.shape(supported),
                    tf.cast(tf.clip_by_value(value, 0.0, tf.cast(p, tf.float64)), tf.int32))

    squared = singular**2
    total = tf.maximum(tf.reduce_sum(squared, axis=1, keepdims=True), 1e-300)
    by_energy = tf.reduce_sum(tf.cast(tf.cumsum(squared, axis=1) / total < value, tf.int32),
                              axis=1) + 1

    chosen = tf.where(tf.equal(code, RANK_FIXED), fixed,
                      tf.where(tf.equal(code, RANK_ENERGY), by_energy, optimal))
    return tf.clip_by_value(chosen, 1, supported)


def basis_coefficients(right_vectors, inverse_s, m):
    """``P [m, 2k+1]`` with ``Z = X^T P``: ``U = X0^T V S^-1``, ``A U = X1^T V S^-1``, ``x_0``."""
    k = tf.shape(right_vectors)[1]
    scaled = right_vectors * inverse_s[tf.newaxis, :]
    zeros_row = tf.zeros([1, k], tf.float64)
    first = tf.concat([scaled, zeros_row], axis=0)
    second = tf.concat([zeros_row, scaled], axis=0)
    e0 = tf.one_hot([0], m, dtype=tf.float64)[0][:, tf.newaxis]
    return tf.concat([first, second, e0], axis=1)


def square_root_factor(gram):
    """``R`` with ``R^T R = gram`` for a symmetric positive semidefinite ``gram``."""
    values, vectors = tf.linalg.eigh(gram)
    return tf.sqrt(tf.maximum(values, 0.0))[:, tf.newaxis] * tf.transpose(vectors)


def _unit_columns(a):
    norms = _vector_norms(a, axis=0)
    return a / tf.cast(tf.where(norms > 0, norms, 1.0), a.dtype), norms


def _vector_norms(a, axis=-1):
    """Real Euclidean norms of (complex) vectors along ``axis``."""
    return tf.sqrt(tf.reduce_sum(tf.math.real(a * tf.math.conj(a)), axis=axis))


def small_space(reduced_operator, factor, method):
    """Eigenpairs, residuals, mode coefficients and amplitudes from the ``[2k+1]`` basis.

    Args:
      reduced_operator: ``U^H A U`` float64 ``[k, k]``.
      factor: ``R`` float64 ``[q, 2k+1]`` with ``R^T R = Z^T Z``, ``Z = [U, A U, x_0]``.
      method: ``"exact"`` or ``"rrr"``.

    Returns:
      eigenvalues ``[k]`` complex128 (sorted by modulus, descending), coefficients ``C``
      ``[2k+1, k]`` complex128 with unit-norm modes ``Z C``, residuals ``[k]`` float64 and
      amplitudes ``[k]`` complex128.
    """
    k = tf.shape(reduced_operator)[0]
    eigenvalues, vectors = tf.linalg.eig(reduced_operator)
    vectors, _ = _unit_columns(vectors)
    order = tf.argsort(-tf.abs(eigenvalues), stable=True)
    eigenvalues = tf.gather(eigenvalues, order)
    vectors = tf.gather(vectors, order, axis=1)

    r = tf.cast(factor, tf.complex128)
    r_u = r[:, :k]
    r_b = r[:, k : 2 * k]
    r_x = r[:, 2 * k]
    # D_j = R_b - lambda_j R_u maps w to R (A U w - lambda_j U w): ||D_j w|| is the residual.
    shifted = r_b[tf.newaxis] - eigenvalues[:, tf.newaxis, tf.newaxis] * r_u[tf.newaxis]
    ritz = tf.transpose(vectors)  # [k (pairs), k]
    zeros = tf.zeros_like(ritz)
    zero_col = tf.zeros([k, 1], tf.complex128)

    if method == "exact":
        residuals = _vector_norms(tf.linalg.matvec(shifted, ritz))
        image_norms = _vector_norms(tf.linalg.matvec(r_b[tf.newaxis], ritz))
        # Exact DMD modes are A U w / lambda; where A U w vanishes (lambda = 0) the projected
        # mode U w is the only direction left.
        has_image = image_norms > 1e-12 * tf.reduce_max(tf.abs(r))
        coefficients = tf.where(
            has_image[:, tf.newaxis],
            tf.concat([zeros, ritz, zero_col], axis=1),
            tf.concat([ritz, zeros, zero_col], axis=1),
        )
    else:
        singular, _, right = tf.linalg.svd(shifted, full_matrices=False)
        # D_j = u diag(s) v^H: the last column of v minimises ||D_j w|| over unit w.
        residuals = tf.math.real(singular[:, -1])
        refined = right[:, :, -1]
        coefficients = tf.concat([refined, zeros, zero_col], axis=1)

    coefficients = tf.transpose(coefficients)  # [2k+1, k]
    mode_norms = _vector_norms(tf.matmul(r, coefficients), axis=0)
    safe = tf.where(mode_norms > 0, mode_norms, tf.ones_like(mode_norms))
    coefficients = coefficients / tf.cast(safe, tf.complex128)[tf.newaxis, :]

    # Least squares for x_0 ~= Z C b, measured in the metric of Z: ||R (C b - e_x)||.
    design = tf.matmul(r, coefficients)
    amplitudes = least_squares(design, r_x)
    return eigenvalues, coefficients, residuals, amplitudes


def least_squares(matrix, rhs):
    """Minimum-norm least-squares solution through the SVD (complex128)."""
    s, u, v = tf.linalg.svd(matrix, full_matrices=False)
    s_real = tf.math.real(s)
    cutoff = tf.reduce_max(s_real) * 1e-12 * tf.cast(tf.reduce_max(tf.shape(matrix)), tf.float64)
    inverse = tf.where(s_real > cutoff, 1.0 / tf.where(s_real > 0, s_real, 1.0), 0.0)
    projected = tf.linalg.matvec(u, rhs, adjoint_a=True) * tf.cast(inverse, tf.complex128)
    return tf.linalg.matvec(v, projected)


def snapshot_gram(x):
    """Float64 Gram ``X X^T`` of ``[m, n]`` snapshots, centred on the first row for precision.

    ``X = Y + 1 x_0^T`` with ``Y = X - x_0``: ``X X^T = Y Y^T + c 1^T + 1 c^T + |x_0|^2`` with
    ``c = Y x_0``. Only ``Y Y^T`` and ``c`` are computed in the data's precision, and their
    rounding errors scale with ``|Y|`` instead of ``|X|``.
    """
    reference = x[0]
    centred = x - reference[tf.newaxis, :]
    yy = tf.cast(tf.matmul(centred, centred, transpose_b=True), tf.float64)
    cross = tf.cast(tf.linalg.matvec(centred, reference), tf.float64)
    ref64 = tf.cast(reference, tf.float64)
    return assemble_gram(yy, cross, tf.reduce_sum(ref64 * ref64))


def assemble_gram(centred_gram, cross, reference_sq):
    """Raw Gram from its centred parts (see :func:`snapshot_gram`); leading batch axes too."""
    return (centred_gram + cross[..., :, tf.newaxis] + cross[..., tf.newaxis, :]
            + reference_sq[..., tf.newaxis, tf.newaxis])


def gram_solve(gram, n_cols, code, value, floor, method):
    """DMD from the float64 Gram matrix ``[m, m]`` of time-major snapshots.

    Returns eigenvalues, ``K [m, k]`` complex128 with modes ``X^T K``, residuals, amplitudes,
    singular values of ``X0`` and the rank.
    """
    m = tf.shape(gram)[0]
    p = tf.minimum(m - 1, tf.cast(n_cols, tf.int32))
    values, vectors = tf.linalg.eigh(gram[:-1, :-1])
    values = tf.reverse(values, [0])[:p]
    vectors = tf.reverse(vectors, [1])[:, :p]
    singular = tf.sqrt(tf.maximum(values, 0.0))
    k = select_rank(singular, n_cols, code, value, floor)
    s_k = singular[:k]
    inverse_s = 1.0 / tf.where(s_k > 0, s_k, 1.0)
    basis = basis_coefficients(vectors[:, :k], inverse_s, m)
    basis_gram = tf.matmul(basis, tf.matmul(gram, basis), transpose_a=True)
    reduced = basis_gram[:k, k : 2 * k]
    factor = square_root_factor(basis_gram)
    eigenvalues, coefficients, residuals, amplitudes = small_space(reduced, factor, method)
    combination = tf.matmul(tf.cast(basis, tf.complex128), coefficients)
    return eigenvalues, combination, residuals, amplitudes, singular, k


def svd_solve(x64, code, value, floor, method):
    """DMD through the thin SVD of ``X0`` (float64 ``[m, n]`` input)."""
    m = tf.shape(x64)[0]
    n = tf.shape(x64)[1]
    x0 = x64[:-1]
    x1 = x64[1:]
    singular, left, right = tf.linalg.svd(x0, full_matrices=False)  # x0 = left diag(s) right^T
    k = select_rank(singular, n, code, value, floor)
    s_k = singular[:k]
    inverse_s = 1.0 / tf.where(s_k > 0, s_k, 1.0)
    v_k = left[:, :k]
    u_k = right[:, :k]
    image = tf.matmul(x1, v_k * inverse_s[tf.newaxis, :], transpose_a=True)  # A U, [n, k]
    basis = tf.concat([u_k, image, x64[0][:, tf.newaxis]], axis=1)
    _, factor = tf.linalg.qr(basis)
    reduced = tf.matmul(u_k, image, transpose_a=True)
    eigenvalues, coefficients, residuals, amplitudes = small_space(reduced, factor, method)
    combination = tf.matmul(
        tf.cast(basis_coefficients(v_k, inverse_s, m), tf.complex128), coefficients
    )
    return eigenvalues, combination, residuals, amplitudes, singular, k


def unit_modes(combination, amplitudes, gram):
    """Scales ``K`` so that the modes ``X^T K`` have unit norm, read off the Gram ``X X^T``.

    The amplitudes are rescaled so that ``modes @ amplitudes`` is unchanged. Doing this in the
    ``[m, r]`` space saves a pass over the ``[n, r]`` modes.
    """
    gram_c = tf.cast(gram, tf.complex128)
    squared = tf.math.real(
        tf.reduce_sum(tf.math.conj(combination) * tf.matmul(gram_c, combination), axis=0)
    )
    norms = tf.sqrt(tf.maximum(squared, 0.0))
    norms = tf.where(norms > 0, norms, 1.0)
    norms_c = tf.cast(norms, tf.complex128)
    return combination / norms_c[tf.newaxis, :], amplitudes * norms_c


def modes_from(x, combination, reference=None):
    """Unit columns of ``(X + 1 reference^T)^T K`` (real ``x [m, n]``, complex ``K [m, r]``).

    Returns the modes ``[n, r]`` complex128 and the norms the columns were divided by. One
    matrix product reads ``x`` once; ``reference`` (``[n]``, optional) adds the rank-one term of
    a centred buffer. Call it through :data:`form_modes`: XLA fuses everything after the product
    (reference term, cast, norms, complex assembly) into one pass over the ``[n, 2r]`` result.
    """
    r = tf.shape(combination)[1]
    stacked = tf.concat([tf.math.real(combination), tf.math.imag(combination)], axis=1)
    stacked = tf.cast(stacked, x.dtype)  # [m, 2r]
    product = tf.matmul(x, stacked, transpose_a=True)  # [n, 2r]
    if reference is not None:
        product += reference[:, tf.newaxis] * tf.reduce_sum(stacked, axis=0)[tf.newaxis, :]
    product = tf.cast(product, tf.float64)
    real, imag = product[:, :r], product[:, r:]
    # Renormalise: in float32 the product can lose digits to cancellation when K is large.
    norms = tf.sqrt(tf.reduce_sum(real * real + imag * imag, axis=0))
    safe = tf.where(norms > 0, norms, 1.0)
    return tf.complex(real / safe, imag / safe), safe


form_modes = tf.function(modes_from, jit_compile=True, autograph=False)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DMDResult(result.DMDResult):
    """:class:`keras_koopman.result.DMDResult` of the TensorFlow engine: its fields are
    TensorFlow tensors, and :meth:`predict` (which the accelerator's jumps use),
    :attr:`frequencies` and :attr:`growth_rates` run as TensorFlow ops where the tensors are."""

    @property
    def frequencies(self):
        return tf.math.angle(tf.convert_to_tensor(self.eigenvalues)) / (2.0 * math.pi * self.dt)

    @property
    def growth_rates(self):
        return tf.math.log(tf.abs(tf.convert_to_tensor(self.eigenvalues))) / self.dt

    def predict(self, steps):
        if self.modes is None:
            raise ValueError("predict needs the modes: compute the DMD with modes=True")
        t = result.check_steps(steps)
        eigenvalues = tf.convert_to_tensor(self.eigenvalues)[..., tf.newaxis, :]  # [..., 1, r]
        powers = tf.exp(tf.cast(t, tf.complex128)[:, tf.newaxis] * tf.math.log(eigenvalues))
        powers = tf.where(
            tf.equal(eigenvalues, 0),
            tf.cast(tf.equal(t, 0)[:, tf.newaxis], tf.complex128),
            powers,
        )
        weights = powers * tf.convert_to_tensor(self.amplitudes)[..., tf.newaxis, :]
        return tf.math.real(tf.matmul(weights, tf.convert_to_tensor(self.modes), transpose_b=True))


_LAYOUTS = {2: "[m, n]", 3: "[batch, m, n]"}


def to_snapshots(snapshots, name="snapshots", ndim=2):
    """Converts time-major input to a float32 or float64 tensor, with clear errors.

    The one converter of :func:`dmd` (``ndim=2``, ``[m, n]``) and :func:`dmd_batch`
    (``ndim=3``, ``[batch, m, n]``). float32 and float64 pass unchanged, float16 and bfloat16
    become float32, other floats, ints and bools float64.

    Args:
      snapshots: array-like or tensor, time-major.
      name: the argument's name in error messages.
      ndim: 2 for one sequence ``[m, n]``, 3 for a batch of sequences ``[batch, m, n]``.

    Returns:
      A float32 or float64 tensor with ``ndim`` dimensions, ``m >= 2`` and ``n >= 1``
      (``batch >= 1``).

    Raises:
      TypeError: ``snapshots`` is not real numbers (complex, strings, objects).
      ValueError: ragged input, the wrong number of dimensions, fewer than 2 time steps, no
        features or an empty batch.
    """
    layout = _LAYOUTS[ndim]
    tensor = _real_tensor(snapshots, name, layout)
    check_snapshot_shape(tuple(tensor.shape), name, ndim)
    return tensor


def _real_tensor(snapshots, name, layout):
    """``snapshots`` as a float32 or float64 tensor of any shape (see :func:`to_snapshots`)."""
    if isinstance(snapshots, (tf.Tensor, tf.Variable)):
        tensor = tf.convert_to_tensor(snapshots)
        if tensor.dtype in (tf.float16, tf.bfloat16):
            tensor = tf.cast(tensor, tf.float32)
        elif tensor.dtype.is_integer or tensor.dtype == tf.bool:
            tensor = tf.cast(tensor, tf.float64)
        if tensor.dtype not in (tf.float32, tf.float64):
            raise TypeError(
                f"{name} must hold real numbers (float32 or float64); got dtype {tensor.dtype.name}"
            )
        return tensor
    return tf.convert_to_tensor(real_array(snapshots, name, layout))


def guard_finite(gram):
    """``(finite, safe_gram)``: a NaN/Inf anywhere in the snapshots shows up in their Gram
    matrix, so checking the small matrix replaces a pass over the data; the safe copy keeps the
    eigensolvers away from NaN until the caller raises."""
    finite = tf.reduce_all(tf.math.is_finite(gram))
    return finite, tf.where(finite, gram, tf.eye(tf.shape(gram)[0], dtype=gram.dtype))


# The rank (code, value) travels into the traced functions as two scalar inputs.
_RANK_SIGNATURE = (tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float64))


def _rank_tensors(code, value):
    """The rank encoding of :func:`parse_rank` as the inputs of :data:`_RANK_SIGNATURE`."""
    return tf.constant(code, tf.int32), tf.constant(value, tf.float64)


def _dmd_function(solver, method, dtype, with_modes):
    """The traced DMD for one (solver, method, dtype, with_modes), from the process-wide cache.

    The snapshots' shape and the rank ``(code, value)`` are inputs of a fixed signature: one
    trace serves every window, width and rank.
    """

    def build():
        floor = floor_epsilon(dtype, solver)

        def run(x, code, value):
            if solver == "gram":
                finite, gram = guard_finite(snapshot_gram(x))
                outputs = gram_solve(gram, tf.shape(x)[1], code, value, floor, method)
            else:
                finite = tf.reduce_all(tf.math.is_finite(x))
                x = tf.where(finite, x, tf.zeros_like(x))
                outputs = svd_solve(tf.cast(x, tf.float64), code, value, floor, method)
            eigenvalues, combination, residuals, amplitudes, singular, k = outputs
            if solver != "gram":
                x64 = tf.cast(x, tf.float64)
                gram = tf.matmul(x64, x64, transpose_b=True)
            combination, amplitudes = unit_modes(combination, amplitudes, gram)
            modes = None
            if with_modes:
                modes, norms = form_modes(x, combination)
                amplitudes *= tf.cast(norms, tf.complex128)
            return finite, eigenvalues, modes, amplitudes, residuals, singular, k

        signature = [tf.TensorSpec([None, None], dtype), *_RANK_SIGNATURE]
        return tf.function(run, input_signature=signature, autograph=False)

    return cached_function(("dmd", solver, method, dtype, with_modes), build)


def dmd(snapshots, rank=None, method="exact", dt=1.0, *, solver="auto", modes=True, device=None):
    """Dynamic Mode Decomposition of time-major snapshots.

    Fits the linear map ``A`` with ``snapshots[k+1] ~= A snapshots[k]`` at rank ``r`` and
    returns its eigenvalues (the Koopman spectrum of the sampled dynamics), modes, amplitudes and
    data-driven residuals.

    Args:
      snapshots: array or tensor ``[m, n]``, **time-major**: row ``k`` is the state at step ``k``
        (``2 <= m <= 16384`` steps, ``n >= 1`` features), float32 or float64. PyDMD's
        ``[n, m]`` layout is its transpose: more rows than 16,384 are refused with that hint
        (the ``[m, m]`` float64 Gram matrix would not fit).
      rank: ``None`` for the Gavish-Donoho optimal hard threshold (unknown noise level); an int
        for a fixed rank (clipped to the numerical rank of the data); a float in (0, 1) for the
        smallest rank holding that fraction of the singular-value energy ``sum(s**2)``.
      method: ``"exact"`` (exact DMD, Tu et al.) or ``"rrr"`` (refined Rayleigh-Ritz, Drmac,
        Mezic and Mohr 2018: modes are the refined Ritz vectors, which minimise the residual).
      dt: time between snapshots, used by ``frequencies``, ``growth_rates``.
      solver: ``"auto"``, ``"svd"`` or ``"gram"`` (see the module docstring).
      modes: ``False`` skips the pass over the snapshots that forms the modes (``result.modes``
        is then ``None``); eigenvalues, amplitudes and residuals come from the small problem.
      device: optional device name such as ``"/GPU:0"``; by default TensorFlow's placement.

    Returns:
      A :class:`DMDResult`.

    Raises:
      ValueError: bad shape, NaN/Inf in ``snapshots``, a ``rank`` or ``dt`` out of range, an
        unknown ``method`` or ``solver``.
      TypeError: ``snapshots`` is not real, or ``rank`` or ``dt`` has the wrong type.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> theta = 0.3
    >>> rot = 0.95 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    >>> x = [np.array([1.0, 0.0])]
    >>> for _ in range(9):
    ...     x.append(rot @ x[-1])
    >>> result = kk.dmd(np.stack(x), rank=2)
    >>> np.round(np.abs(result.eigenvalues.numpy()), 6)
    array([0.95, 0.95])
    """
    code, value = parse_rank(rank)
    check_method(method)
    dt = check_dt(dt)
    check_solver(solver)
    x = to_snapshots(snapshots)
    m, n = x.shape
    if solver == "auto":
        solver = "gram" if m * n > _AUTO_GRAM_ELEMENTS else "svd"
    function = _dmd_function(solver, method, x.dtype, bool(modes))
    arguments = (x, *_rank_tensors(code, value))
    if device is None:
        outputs = function(*arguments)
    else:
        with tf.device(device):
            outputs = function(*arguments)
    return result_from(outputs, dt, method, "snapshots")


def result_from(outputs, dt, method, name):
    """Checks the graph outputs and wraps them in a :class:`DMDResult`."""
    finite, eigenvalues, modes, amplitudes, residuals, singular, k = outputs
    if not bool(finite):
        raise DataError(f"{name} contains NaN or Inf (or values whose squares overflow)")
    if float(singular[0]) == 0.0:
        raise DataError(f"{name}: the snapshots before the last are all zero; DMD is undefined")
    return DMDResult(
        eigenvalues=eigenvalues,
        modes=modes,
        amplitudes=amplitudes,
        residuals=residuals,
        singular_values=singular,
        rank=int(k),
        dt=dt,
        method=method,
    )


# --------------------------------------------------------------------------------------------
# Many small DMDs at once
# --------------------------------------------------------------------------------------------


def _quadratic(vectors, matrix):
    """``diag(V^H M V)`` for a batch: ``vectors [b, p, r]`` complex, ``matrix [b, p, p]``."""
    image = tf.matmul(tf.cast(matrix, tf.complex128), vectors)
    return tf.reduce_sum(tf.math.conj(vectors) * image, axis=1)


def batch_gram_solve(gram, n_cols, code, value, floor):
    """Exact DMD spectra of a batch from its Gram matrices alone: ``gram [batch, m, m]``
    (float64) of time-major sequences ``x[b]`` with ``n_cols`` (scalar or ``[batch]``) features.

    With ``X0 = x[:, :-1]``, ``X1 = x[:, 1:]`` and ``X0 X0^T = V S^2 V^T``: ``U = X0^T V S^-1``,
    ``A~ = U^T A U = S^-1 V^T (X0 X1^T) V S^-1``, its eigenvectors ``w`` give the exact modes
    ``X1^T V S^-1 w`` and the residuals ``||X1^T p - lambda X0^T p||`` (``p = V S^-1 w``) come
    from the three Gram blocks; so do the amplitudes (least squares ``x_0 ~= modes b`` through the
    normal equations). Directions past each element's rank get ``1/s = 0``: their slots hold
    eigenvalue 0 with a zero mode and zero amplitude. ``code, value`` is the rank encoding of
    :func:`parse_rank`, as Python numbers or scalar tensors (:func:`select_rank_batch`).

    Returns ``eigenvalues, combination, amplitudes, residuals, singular, k``: the unit modes are
    ``X1^T combination`` (``combination [batch, m-1, p]``).
    """
    p = tf.minimum(tf.shape(gram)[1] - 1, tf.reduce_min(tf.cast(n_cols, tf.int32)))
    g00, g01, g11 = gram[:, :-1, :-1], gram[:, :-1, 1:], gram[:, 1:, 1:]
    values, vectors = tf.linalg.eigh(g00)
    values = tf.reverse(values, [1])[:, :p]
    vectors = tf.reverse(vectors, [2])[:, :, :p]
    singular = tf.sqrt(tf.maximum(values, 0.0))
    k = select_rank_batch(singular, n_cols, code, value, floor)
    keep = tf.range(p)[tf.newaxis, :] < k[:, tf.newaxis]
    inverse_s = tf.where(keep, 1.0 / tf.where(singular > 0, singular, 1.0), 0.0)
    scaled = vectors * inverse_s[:, tf.newaxis, :]  # V S^-1, [b, m-1, p]
    reduced = tf.matmul(scaled, tf.matmul(g01, scaled), transpose_a=True)
    eigenvalues, ritz = tf.linalg.eig(reduced)
    # Padded slots sort last: order by modulus, kept directions first.
    order = tf.argsort(-tf.abs(eigenvalues), axis=1, stable=True)
    eigenvalues = tf.gather(eigenvalues, order, batch_dims=1)
    ritz = tf.gather(ritz, order, axis=2, batch_dims=1)
    ritz = ritz / tf.cast(tf.maximum(_vector_norms(ritz, axis=1), 1e-300), tf.complex128)[
        :, tf.newaxis, :]
    combination = tf.matmul(tf.cast(scaled, tf.complex128), ritz)  # p = V S^-1 w, [b, m-1, p]
    cross = _quadratic(combination, g01)
    squared = (tf.math.real(_quadratic(combination, g11))
               + tf.abs(eigenvalues) ** 2 * tf.math.real(_quadratic(combination, g00))
               - 2.0 * tf.math.real(eigenvalues * tf.math.conj(cross)))
    residuals = tf.sqrt(tf.maximum(squared, 0.0))
    # Unit modes X1^T K: norms from the X1 Gram block; zero columns stay zero.
    norms = tf.sqrt(tf.maximum(tf.math.real(_quadratic(combination, g11)), 0.0))
    nonzero = norms > 1e-300
    combination = combination / tf.cast(tf.where(nonzero, norms, 1.0), tf.complex128)[
        :, tf.newaxis, :]
    # Amplitudes: x_0 ~= modes b; modes^H modes = K^H G11 K, modes^H x_0 = K^H X1 x_0.
    normal = tf.matmul(combination, tf.matmul(tf.cast(g11, tf.complex128), combination),
                       adjoint_a=True)
    rhs = tf.linalg.matvec(combination, tf.cast(gram[:, 1:, 0], tf.complex128), adjoint_a=True)
    weights, basis = tf.linalg.eigh(normal)
    weights = tf.math.real(weights)
    cutoff = 1e-12 * tf.reduce_max(weights, axis=1, keepdims=True)
    inverse = tf.where(weights > cutoff, 1.0 / tf.where(weights > 0, weights, 1.0), 0.0)
    amplitudes = tf.linalg.matvec(
        basis, tf.cast(inverse, tf.complex128) * tf.linalg.matvec(basis, rhs, adjoint_a=True))
    return eigenvalues, combination, amplitudes, residuals, singular, k


def batch_solve(x, code, value, floor):
    """Exact DMD of every ``x[b]`` (``[batch, m, n]``, float64), all in ``[m, m]`` space
    (:func:`batch_gram_solve`), plus the modes ``[batch, n, p]``."""
    gram = tf.matmul(x, x, transpose_b=True)  # [b, m, m]
    eigenvalues, combination, amplitudes, residuals, singular, k = batch_gram_solve(
        gram, tf.shape(x)[2], code, value, floor)
    modes = tf.matmul(tf.cast(x[:, 1:], tf.complex128), combination, transpose_a=True)
    return eigenvalues, modes, amplitudes, residuals, singular, k


def _dmd_batch_function(dtype):
    """The traced :func:`dmd_batch` for one dtype, from the process-wide cache: the shape and
    the rank ``(code, value)`` are inputs, so one trace serves every batch, window and rank."""

    def build():
        floor = floor_epsilon(dtype, "gram")

        def run(x, code, value):
            finite = tf.reduce_all(tf.math.is_finite(x))
            x = tf.cast(tf.where(finite, x, tf.zeros_like(x)), tf.float64)
            return (finite, *batch_solve(x, code, value, floor))

        signature = [tf.TensorSpec([None, None, None], dtype), *_RANK_SIGNATURE]
        return tf.function(run, input_signature=signature, autograph=False)

    return cached_function(("dmd_batch", dtype), build)


def dmd_batch(snapshots, rank=None, dt=1.0):
    """Exact DMD of many small snapshot sequences at once, in one ``tf.function``.

    ``snapshots[b]`` is one time-major ``[m, n]`` sequence, for instance the incoming weights
    and bias of output unit ``b`` of a layer over ``m`` epochs (Dogra and Redman's node-wise
    Koopman operators). The same result as ``kk.dmd(snapshots[b], rank)`` for every ``b``, but
    computed batched on the device through the ``[m, m]`` Gram matrices (in float64), with no
    Python loop over ``b``. Each element gets its own rank under the same rule.

    Args:
      snapshots: array or tensor ``[batch, m, n]`` (``m >= 2``), float32 or float64.
      rank: as in :func:`dmd` (``None``: Gavish-Donoho per element; int; energy fraction).
      dt: time between snapshots.

    Returns:
      A :class:`DMDResult` whose fields have a leading batch axis: eigenvalues, amplitudes and
      residuals ``[batch, p]``, modes ``[batch, n, p]``, ``p = min(m - 1, n)``. Slots past an
      element's rank (``result.rank[b]``, an int32 tensor) hold eigenvalue 0, a zero mode and
      amplitude 0, so ``result.predict(t)`` (``[batch, len(t), n]``) is unaffected by them.

    Raises:
      ValueError: bad shape, NaN/Inf in ``snapshots``, a ``rank`` or ``dt`` out of range.
      TypeError: ``snapshots`` is not real, or ``rank`` or ``dt`` has the wrong type.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> t = np.arange(6)[None, :, None]
    >>> x = np.array([0.5, 0.9])[:, None, None] ** t * np.ones((2, 6, 3))   # two sequences
    >>> result = kk.dmd_batch(x, rank=1)
    >>> result.rank.numpy(), result.eigenvalues.shape      # 3 slots: min(m - 1, n)
    (array([1, 1], dtype=int32), TensorShape([2, 3]))
    >>> np.round(result.eigenvalues.numpy()[:, 0].real, 6)
    array([0.5, 0.9])
    """
    code, value = parse_rank(rank)
    dt = check_dt(dt)
    tensor = to_snapshots(snapshots, ndim=3)
    function = _dmd_batch_function(tensor.dtype)
    finite, eigenvalues, modes, amplitudes, residuals, singular, k = function(
        tensor, *_rank_tensors(code, value))
    if not bool(finite):
        raise DataError("snapshots contains NaN or Inf")
    return DMDResult(eigenvalues=eigenvalues, modes=modes, amplitudes=amplitudes,
                     residuals=residuals, singular_values=singular, rank=k, dt=dt,
                     method="exact")
