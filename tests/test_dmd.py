"""kk.dmd against analytic spectra, PyDMD and an independent NumPy implementation."""

import dataclasses
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_spectrum, linear_system, match, phase_alignment

import keras_koopman as kk

dmd_module = sys.modules["keras_koopman.dmd"]

SPECTRUM = [0.9, 0.5, 0.8 * np.exp(0.4j), 0.6 * np.exp(1.1j)]  # 6 eigenvalues in all
# In float32 the Gram solver resolves singular values down to ~sqrt(eps32) = 3e-4 of the largest
# (documented in keras_koopman.dmd): the float32 cases use a spectrum that decays within that and
# well-conditioned eigenvectors.
SPECTRUM_F32 = [0.97, 0.85, 0.93 * np.exp(0.4j), 0.9 * np.exp(1.1j)]
TOL = {"float64": 1e-8, "float32": 1e-4}


def numpy_exact_dmd(x, rank):
    """Textbook exact DMD (Tu et al.) in NumPy: the independent reference."""
    x0, x1 = x[:-1].T, x[1:].T
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].conj().T
    image = x1 @ v / s
    reduced = u.conj().T @ image
    values, vectors = np.linalg.eig(reduced)
    vectors /= np.linalg.norm(vectors, axis=0)
    residuals = np.linalg.norm(image @ vectors - u @ vectors * values, axis=0)
    modes = image @ vectors
    modes /= np.linalg.norm(modes, axis=0)
    amplitudes = np.linalg.lstsq(modes, x[0], rcond=None)[0]
    return values, modes, amplitudes, residuals


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("method", ["exact", "rrr"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n,m", [(40, 20), (3000, 12), (6, 30)])
def test_known_spectrum_eigenvalues_modes_and_prediction(rng, n, m, dtype, method, solver):
    spectrum = SPECTRUM if dtype == "float64" else SPECTRUM_F32
    extended, values, vectors = linear_system(
        spectrum, n, m + 5, rng, orthonormal=dtype == "float32"
    )
    x = extended[:m].astype(dtype)
    result = kk.dmd(x, rank=6, method=method, solver=solver)

    assert result.rank == 6
    as_numpy = result.numpy()
    order = assert_same_spectrum(values, as_numpy.eigenvalues, TOL[dtype])
    alignment = phase_alignment(vectors, as_numpy.modes[:, order])
    np.testing.assert_allclose(alignment, 1.0, atol=TOL[dtype])
    np.testing.assert_allclose(np.linalg.norm(as_numpy.modes, axis=0), 1.0, atol=TOL[dtype])

    # Predict inside the data and 5 steps past it.
    predicted = result.predict(np.arange(m + 5)).numpy()
    scale = np.abs(extended).max()
    np.testing.assert_allclose(predicted, extended, atol=10 * TOL[dtype] * scale)


def test_svd_solver_keeps_float32_digits_where_the_gram_solver_cannot(rng):
    """A mode 1e-3 below the leading one: below sqrt(eps32), only the SVD solver resolves it."""
    basis = np.linalg.qr(rng.standard_normal((50, 2)))[0]
    x = np.stack([0.9**k * basis[:, 0] + 3e-3 * 0.6**k * basis[:, 1] for k in range(30)])
    s = np.linalg.svd(x[:-1], compute_uv=False)
    assert s[1] / s[0] < 2e-3
    result = kk.dmd(x.astype(np.float32), rank=2, solver="svd")
    assert_same_spectrum([0.9, 0.6], result.eigenvalues.numpy(), 1e-4)


def test_dtype_and_shapes_of_result(rng):
    x, _, _ = linear_system(SPECTRUM, 30, 15, rng)
    result = kk.dmd(x, rank=4)
    assert result.eigenvalues.dtype == tf.complex128 and result.eigenvalues.shape == (4,)
    assert result.modes.dtype == tf.complex128 and result.modes.shape == (30, 4)
    assert result.amplitudes.dtype == tf.complex128 and result.amplitudes.shape == (4,)
    assert result.residuals.dtype == tf.float64 and result.residuals.shape == (4,)
    assert result.singular_values.shape == (14,)
    moduli = np.abs(result.eigenvalues.numpy())
    assert np.all(np.diff(moduli) <= 1e-12), "sorted by modulus, largest first"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.rank = 3
    as_numpy = result.numpy()
    assert isinstance(as_numpy.modes, np.ndarray) and as_numpy.rank == 4


def test_scalar_system_n_equals_one():
    x = (3.0 * 0.7 ** np.arange(10))[:, None]
    result = kk.dmd(x).numpy()
    assert result.rank == 1
    np.testing.assert_allclose(result.eigenvalues, [0.7], rtol=1e-12)
    np.testing.assert_allclose(np.abs(result.modes), [[1.0]])
    np.testing.assert_allclose(result.predict([12]), [[3.0 * 0.7**12]], rtol=1e-10)


def test_three_snapshots_determine_a_rotation():
    angle, radius = 0.7, 0.9
    rotation = radius * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    x = np.stack([np.array([1.0, 0.5]), rotation @ [1.0, 0.5], rotation @ rotation @ [1.0, 0.5]])
    result = kk.dmd(x, rank=2).numpy()
    expected = radius * np.exp([1j * angle, -1j * angle])
    assert_same_spectrum(expected, result.eigenvalues, 1e-12)


@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_rank_deficient_data_is_clipped_to_the_numerical_rank(rng, solver):
    x, values, _ = linear_system([0.95, 0.3 + 0.4j], 200, 15, rng)  # rank 3 dynamics
    assert kk.dmd(x, solver=solver).rank == 3  # Gavish-Donoho on exact low-rank data
    result = kk.dmd(x, rank=10, solver=solver)
    assert result.rank == 3
    assert_same_spectrum(values, result.eigenvalues.numpy(), 1e-8)


def test_n_much_larger_than_m_agrees_between_solvers(rng):
    x, values, _ = linear_system(SPECTRUM, 20_000, 10, rng)
    for solver in ("svd", "gram"):
        result = kk.dmd(x, rank=6, solver=solver)
        assert_same_spectrum(values, result.eigenvalues.numpy(), 1e-8)


def test_weight_like_float32_data_keeps_its_motion(rng):
    """Weights ~1 moving by ~1e-3: the centred Gram keeps the motion's digits in float32."""
    n, m = 50_000, 16
    base = rng.standard_normal(n)
    motion, values, _ = linear_system([0.97, 0.9 * np.exp(0.3j)], n, m, rng)
    motion *= 1e-3 / np.abs(motion).max()
    # An eigenvalue 1 carries the offset: x_{k+1} = A x_k with A = I on the base direction.
    x = (base[None, :] + motion).astype(np.float32)
    result = kk.dmd(x, rank=4, solver="gram")
    assert_same_spectrum(np.append(values, 1.0), result.eigenvalues.numpy(), 1e-4)


def test_agrees_with_pydmd_exact_on_random_data(rng):
    pydmd = pytest.importorskip("pydmd")
    x = rng.standard_normal((30, 200))
    reference = pydmd.DMD(svd_rank=5, exact=True)
    reference.fit(x.T)  # PyDMD is column-major: [n_features, n_snapshots]
    result = kk.dmd(x, rank=5).numpy()

    order = assert_same_spectrum(reference.eigs, result.eigenvalues, 1e-10)
    modes = result.modes[:, order]
    np.testing.assert_allclose(phase_alignment(reference.modes, modes), 1.0, atol=1e-10)
    # Mode times amplitude is free of PyDMD's scaling and phase conventions.
    ours = modes * result.amplitudes[order]
    theirs = reference.modes * reference.amplitudes
    np.testing.assert_allclose(ours, theirs, atol=1e-9 * np.abs(theirs).max())


def test_exact_method_matches_textbook_numpy_dmd(rng):
    x = rng.standard_normal((25, 60)) + np.outer(0.9 ** np.arange(25), rng.standard_normal(60))
    values, modes, amplitudes, residuals = numpy_exact_dmd(x, 6)
    result = kk.dmd(x, rank=6, solver="svd").numpy()
    order = assert_same_spectrum(values, result.eigenvalues, 1e-10)
    np.testing.assert_allclose(phase_alignment(modes, result.modes[:, order]), 1.0, atol=1e-10)
    np.testing.assert_allclose(result.residuals[order], residuals, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        result.modes[:, order] * result.amplitudes[order], modes * amplitudes, atol=1e-9
    )


def test_refined_ritz_residuals_are_smaller_on_noisy_data(rng):
    x, _, _ = linear_system(SPECTRUM, 80, 40, rng)
    x = x + 0.05 * np.abs(x).max() * rng.standard_normal(x.shape)
    exact = kk.dmd(x, rank=8, method="exact").numpy()
    refined = kk.dmd(x, rank=8, method="rrr").numpy()
    np.testing.assert_allclose(refined.eigenvalues, exact.eigenvalues, rtol=1e-12)
    assert np.all(refined.residuals <= exact.residuals * (1 + 1e-10))
    assert refined.residuals.sum() < 0.95 * exact.residuals.sum()

    # Refined residuals really are ||A z - lambda z|| of the returned unit mode z = U w.
    x0, x1 = x[:-1].T, x[1:].T
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    u, s, v = u[:, :8], s[:8], vh[:8].T
    projector = u @ u.T
    operator = x1 @ v / s @ u.T  # A restricted to span(U)
    for j in range(8):
        z = refined.modes[:, j]
        np.testing.assert_allclose(projector @ z, z, atol=1e-10)  # a Ritz vector lies in span U
        direct = np.linalg.norm(operator @ z - refined.eigenvalues[j] * z)
        np.testing.assert_allclose(refined.residuals[j], direct, rtol=1e-8)


@pytest.mark.parametrize("method", ["exact", "rrr"])
def test_gram_solver_equals_svd_solver(rng, method):
    x, _, _ = linear_system(SPECTRUM, 300, 25, rng)
    x = x + 1e-3 * rng.standard_normal(x.shape)
    by_svd = kk.dmd(x, rank=6, method=method, solver="svd").numpy()
    by_gram = kk.dmd(x, rank=6, method=method, solver="gram").numpy()
    order = assert_same_spectrum(by_svd.eigenvalues, by_gram.eigenvalues, 1e-9)
    np.testing.assert_allclose(by_gram.singular_values, by_svd.singular_values, rtol=1e-8)
    np.testing.assert_allclose(phase_alignment(by_svd.modes, by_gram.modes[:, order]), 1, atol=1e-9)
    np.testing.assert_allclose(by_gram.residuals[order], by_svd.residuals, rtol=1e-5)
    np.testing.assert_allclose(
        by_gram.modes[:, order] * by_gram.amplitudes[order],
        by_svd.modes * by_svd.amplitudes,
        atol=1e-8 * np.abs(x).max(),
    )


def _singular_data(singular_values, n, rng):
    """Snapshots whose first m-1 rows have exactly the given singular values."""
    k = len(singular_values)
    left, _ = np.linalg.qr(rng.standard_normal((k, k)))
    right, _ = np.linalg.qr(rng.standard_normal((n, k)))
    x0 = left @ np.diag(singular_values) @ right.T
    return np.vstack([x0, rng.standard_normal((1, n))])


HAND = np.array([10, 8, 5, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7])


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize(
    "rank,expected",
    [
        # beta = 1: omega = 0.56 - 0.95 + 1.82 + 1.43 = 2.86; median = (1.0 + 0.95) / 2 = 0.975;
        # threshold 2.7885 keeps 10, 8, 5.
        (None, 3),
        # energy s**2: cumulative fractions 0.513, 0.842, 0.970, 0.977, ...
        (0.5, 1),
        (0.8, 2),
        (0.9, 3),
        (0.975, 4),
        (7, 7),
        (50, 10),  # clipped to what the data supports
    ],
)
def test_rank_rules_against_hand_computed_cases(rng, solver, rank, expected):
    x = _singular_data(HAND, 10, rng)
    result = kk.dmd(x, rank=rank, solver=solver)
    np.testing.assert_allclose(result.singular_values.numpy(), HAND, rtol=1e-9)
    assert result.rank == expected


def test_gavish_donoho_on_noisy_low_rank_data_finds_the_signal(rng):
    x, _, _ = linear_system(SPECTRUM, 400, 60, rng)
    x = x / np.abs(x).max() + 1e-3 * rng.standard_normal(x.shape)
    assert kk.dmd(x).rank == 6


def test_frequencies_and_growth_rates_follow_dt():
    angle, radius, dt = 0.6, 0.9, 0.5
    rotation = radius * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rows = [np.array([1.0, 0.0])]
    for _ in range(7):
        rows.append(rotation @ rows[-1])
    result = kk.dmd(np.stack(rows), rank=2, dt=dt)
    np.testing.assert_allclose(
        np.sort(result.frequencies.numpy()), [-angle / (2 * np.pi * dt), angle / (2 * np.pi * dt)]
    )
    np.testing.assert_allclose(result.growth_rates.numpy(), np.log(radius) / dt)


def test_accepts_tensors_and_runs_on_the_requested_device(rng):
    x, values, _ = linear_system(SPECTRUM, 30, 15, rng)
    result = kk.dmd(tf.constant(x, tf.float32), rank=6, device="/CPU:0")
    assert "CPU" in result.modes.device
    assert_same_spectrum(values, result.eigenvalues.numpy(), 1e-4)


def _cached(key):
    """The traced function cached under ``key``; fails if nothing was traced under it."""
    return kk._tf.cached_function(key, lambda: pytest.fail(f"nothing cached under {key}"))


def test_same_shape_calls_trace_once(rng):
    before = kk._tf.trace_count("dmd")
    for i in range(10):
        x = rng.standard_normal((20 + i % 3, 60_000))
        kk.dmd(x, rank=[None, 3, 0.9][i % 3], solver="gram")
    assert kk._tf.trace_count("dmd") - before <= 1
    assert _cached(("dmd", "gram", "exact", tf.float64, True)).experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": -2}, ValueError, "rank"),
        ({"rank": 1.0}, ValueError, "rank"),
        ({"rank": 1.5}, ValueError, "rank"),
        ({"rank": 0.0}, ValueError, "rank"),
        ({"rank": float("nan")}, ValueError, "rank"),
        ({"rank": "3"}, TypeError, "rank"),
        ({"rank": True}, TypeError, "rank"),
        ({"rank": np.bool_(True)}, TypeError, "rank"),
        ({"rank": [2]}, TypeError, "rank"),
        ({"method": "fast"}, ValueError, "method"),
        ({"method": None}, TypeError, "method"),  # not a string: a wrong type
        ({"dt": 0}, ValueError, "dt"),
        ({"dt": -1.0}, ValueError, "dt"),
        ({"dt": float("nan")}, ValueError, "dt"),
        ({"dt": float("inf")}, ValueError, "dt"),
        ({"dt": "1"}, TypeError, "dt"),
        ({"dt": None}, TypeError, "dt"),
        ({"solver": "qr"}, ValueError, "solver"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(rng, kwargs, error, words):
    with pytest.raises(error, match=words):
        kk.dmd(rng.standard_normal((6, 4)), **kwargs)


@pytest.mark.parametrize(
    "snapshots,error",
    [
        (np.ones(5), ValueError),  # 1-D
        (np.ones((3, 4, 5)), ValueError),  # 3-D
        (np.ones((1, 5)), ValueError),  # one time step
        (np.ones((5, 0)), ValueError),  # no features
        (np.ones((4, 3)) * 1j, TypeError),  # complex
        (np.array([["a", "b"], ["c", "d"]]), TypeError),  # strings
        (np.array([[1.0, None], [2.0, 3.0]], dtype=object), TypeError),  # objects
        (tf.constant(np.ones((4, 3)) * 1j), TypeError),  # a complex tensor
        ([[1.0, 2.0], [3.0]], ValueError),  # ragged
    ],
)
def test_bad_snapshots_raise(snapshots, error):
    with pytest.raises(error, match="snapshots"):
        kk.dmd(snapshots)


@pytest.mark.parametrize("shape", [(5,), (3, 4, 5), (1, 5), (5, 0)])
def test_shape_errors_say_the_shape_and_the_time_major_layout(shape):
    with pytest.raises(ValueError) as info:
        kk.dmd(np.ones(shape))
    message = str(info.value)
    assert "snapshots" in message and str(shape) in message and "time-major [m, n]" in message


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_snapshots_raise(rng, solver, bad):
    x = rng.standard_normal((8, 50))
    x[3, 7] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        kk.dmd(x, solver=solver)


def test_all_zero_snapshots_raise():
    with pytest.raises(ValueError, match="all zero"):
        kk.dmd(np.zeros((5, 3)))


def test_integer_snapshots_are_accepted_as_float64():
    x = np.array([[1, 2], [2, 4], [4, 8], [8, 16]])
    result = kk.dmd(x, rank=1).numpy()
    np.testing.assert_allclose(result.eigenvalues, [2.0], rtol=1e-12)


def test_match_helper_is_a_permutation():
    # The comparisons above rely on it; make sure it can fail.
    order = match([1.0, 2.0, 3.0], [3.1, 0.9, 2.05])
    assert list(order) == [1, 2, 0]


def test_modes_false_skips_the_modes_and_keeps_the_spectrum(rng):
    x, values, _ = linear_system(SPECTRUM, 50, 20, rng)
    full = kk.dmd(x, rank=6).numpy()
    spectrum_only = kk.dmd(x, rank=6, modes=False).numpy()
    assert spectrum_only.modes is None
    np.testing.assert_allclose(spectrum_only.eigenvalues, full.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(spectrum_only.residuals, full.residuals, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(np.abs(spectrum_only.amplitudes), np.abs(full.amplitudes), rtol=1e-8)
    with pytest.raises(ValueError, match="modes=True"):
        kk.dmd(x, rank=6, modes=False).predict([1])


# ---------------------------------------------------------------------------------------------
# dmd_batch: many small DMDs in one call


def _batch_of_linear_sequences(batch, m, n, seed=0):
    """Each element: 2 oscillating + 1 decaying + 1 constant mode in n dims, all different."""
    rng = np.random.default_rng(seed)
    sequences = []
    for b in range(batch):
        radius, angle, decay = 0.97 - 0.02 * b, 0.2 + 0.1 * b, 0.8 - 0.05 * b
        values = np.array([radius * np.exp(1j * angle), radius * np.exp(-1j * angle), decay, 1.0])
        modes = rng.normal(size=(n, 4)) + 0j
        modes[:, 0] += 1j * rng.normal(size=n)
        modes[:, 1] = np.conj(modes[:, 0])
        sequences.append(np.real((values[None, :] ** np.arange(m)[:, None]) @ modes.T))
    return np.stack(sequences)


def test_dmd_batch_matches_kk_dmd_per_element():
    x = _batch_of_linear_sequences(5, 8, 9)
    result = kk.dmd_batch(x, rank=4)
    np.testing.assert_array_equal(result.rank.numpy(), [4] * 5)
    future = result.predict([8, 20]).numpy()  # [5, 2, 9]
    for b in range(5):
        reference = kk.dmd(x[b], rank=4)
        np.testing.assert_allclose(np.sort_complex(result.eigenvalues.numpy()[b, :4]),
                                   np.sort_complex(reference.eigenvalues.numpy()), atol=1e-9)
        np.testing.assert_allclose(future[b], reference.predict([8, 20]).numpy(), atol=1e-8)
        # Each batched mode is a unit vector parallel to kk.dmd's mode of the same eigenvalue.
        for j, value in enumerate(result.eigenvalues.numpy()[b, :4]):
            i = np.argmin(np.abs(reference.eigenvalues.numpy() - value))
            overlap = np.vdot(reference.modes.numpy()[:, i], result.modes.numpy()[b, :, j])
            assert abs(abs(overlap) - 1) < 1e-8
        # Slots past the rank: eigenvalue 0, zero amplitude.
        np.testing.assert_array_equal(result.eigenvalues.numpy()[b, 4:], 0)
        np.testing.assert_array_equal(result.amplitudes.numpy()[b, 4:], 0)


def test_dmd_batch_matches_numpy_exact_dmd_and_its_residuals_on_noisy_data():
    rng = np.random.default_rng(1)
    x = _batch_of_linear_sequences(3, 10, 12, seed=1) + 0.01 * rng.normal(size=(3, 10, 12))
    result = kk.dmd_batch(x, rank=5)
    for b in range(3):
        x0, x1 = x[b, :-1].T, x[b, 1:].T
        u, s, vh = np.linalg.svd(x0, full_matrices=False)
        u, s, v = u[:, :5], s[:5], vh[:5].T
        reduced = u.T @ x1 @ v / s
        values, vectors = np.linalg.eig(reduced)
        residuals = np.linalg.norm(x1 @ v / s @ vectors - u @ vectors * values, axis=0)
        order = np.argsort(-np.abs(values), kind="stable")
        np.testing.assert_allclose(np.sort_complex(result.eigenvalues.numpy()[b, :5]),
                                   np.sort_complex(values), atol=1e-9)
        np.testing.assert_allclose(np.sort(result.residuals.numpy()[b, :5]),
                                   np.sort(residuals[order]), atol=1e-6)


def test_dmd_batch_rank_rules_per_element():
    rng = np.random.default_rng(2)
    x = _batch_of_linear_sequences(4, 12, 15, seed=2) + 1e-3 * rng.normal(size=(4, 12, 15))
    optimal = kk.dmd_batch(x)
    energy = kk.dmd_batch(x, rank=0.999)
    for b in range(4):
        assert int(optimal.rank[b]) == kk.dmd(x[b]).rank
        assert int(energy.rank[b]) == kk.dmd(x[b], rank=0.999).rank


@pytest.mark.parametrize("bad,error,words", [
    (np.zeros((4, 3)), ValueError, "3-D"),
    (np.zeros((2, 1, 3)), ValueError, "m >= 2"),
    (np.zeros((2, 3, 3), complex), TypeError, "real"),
    (np.full((2, 3, 3), np.nan), ValueError, "NaN"),
])
def test_dmd_batch_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        kk.dmd_batch(bad, rank=1)


# ---------------------------------------------------------------------------------------------
# One rank rule, one converter and one trace for dmd and dmd_batch


def numpy_rank(s, n_cols, rank, floor=1e-10):
    """The rank rules in NumPy, from their definitions: the independent reference."""
    s = np.asarray(s, np.float64)
    p = len(s)
    supported = max(int(np.sum(s > floor * s[0])), 1)
    if rank is None:
        beta = min(p, n_cols) / max(p, n_cols)
        omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
        k = int(np.sum(s > omega * np.median(s)))
    elif isinstance(rank, int):
        k = rank
    else:
        energy = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.argmax(energy >= rank)) + 1  # the fewest leading values holding the fraction
    return min(max(k, 1), supported)


def _random_spectra(rng, count, p, zeros=0):
    """``count`` descending spectra of length ``p`` spanning about two decades, the last
    ``zeros`` of them exactly zero (numerical rank ``p - zeros``)."""
    spectra = np.sort(np.exp(rng.uniform(-4.5, 0.0, (count, p))), axis=1)[:, ::-1] * 10.0
    spectra[:, p - zeros:] = 0.0
    return spectra


RULES = [None, 1, 6, 10**12, 0.6, 0.8, 0.99]


@pytest.mark.parametrize("rank", RULES)
@pytest.mark.parametrize("p,n_cols,zeros", [(9, 12, 0), (9, 9, 0), (7, 40, 3), (12, 5, 0)])
def test_single_rank_is_the_batched_rule_on_random_spectra(rng, rank, p, n_cols, zeros):
    spectra = _random_spectra(rng, 6, p, zeros)
    expected = [numpy_rank(s, n_cols, rank) for s in spectra]
    code, value = dmd_module.parse_rank(rank)
    floor = 1e-10
    batched = dmd_module.select_rank_batch(tf.constant(spectra), n_cols, code, value, floor)
    np.testing.assert_array_equal(batched.numpy(), expected)
    # The single-DMD path passes the rank as tensors, the packed path as Python numbers.
    for s, k in zip(spectra, expected):
        single = dmd_module.select_rank(tf.constant(s), tf.constant(n_cols),
                                        tf.constant(code, tf.int32),
                                        tf.constant(value, tf.float64), floor)
        assert int(single) == k


@pytest.mark.parametrize("rank", RULES)
def test_dmd_and_dmd_batch_ranks_follow_the_numpy_rules(rng, rank):
    m, n = 10, 12
    spectra = _random_spectra(rng, 4, m - 1, zeros=2)
    x = np.stack([_singular_data(s, n, rng) for s in spectra])
    expected = [numpy_rank(s, n, rank) for s in spectra]
    batched = kk.dmd_batch(x, rank=rank)
    np.testing.assert_array_equal(batched.rank.numpy(), expected)
    for b, k in enumerate(expected):
        for solver in ("svd", "gram"):
            single = kk.dmd(x[b], rank=rank, solver=solver)
            np.testing.assert_allclose(single.singular_values.numpy()[: m - 3], spectra[b][:-2],
                                       rtol=1e-7)
            assert single.rank == k


BAD_INPUTS = [
    # (what, for dmd, for dmd_batch, error)
    ("complex", np.ones((4, 3)) * 1j, np.ones((2, 4, 3)) * 1j, TypeError),
    ("complex tensor", tf.constant(np.ones((4, 3)) * 1j), tf.constant(np.ones((2, 4, 3)) * 1j),
     TypeError),
    ("strings", np.full((4, 3), "a"), np.full((2, 4, 3), "a"), TypeError),
    ("objects", np.ones((4, 3), dtype=object), np.ones((2, 4, 3), dtype=object), TypeError),
    ("ragged", [[1.0, 2.0], [3.0]], [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]], ValueError),
    ("too few dimensions", np.ones(5), np.ones((4, 3)), ValueError),
    ("too many dimensions", np.ones((2, 4, 3)), np.ones((2, 2, 4, 3)), ValueError),
    ("one time step", np.ones((1, 3)), np.ones((2, 1, 3)), ValueError),
    ("no features", np.ones((4, 0)), np.ones((2, 4, 0)), ValueError),
    ("NaN", np.full((4, 3), np.nan), np.full((2, 4, 3), np.nan), ValueError),
]


@pytest.mark.parametrize("what,single,batch,error", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_dmd_and_dmd_batch_refuse_the_same_bad_snapshots(what, single, batch, error):
    with pytest.raises(error, match="snapshots"):
        kk.dmd(single, rank=1)
    with pytest.raises(error, match="snapshots"):
        kk.dmd_batch(batch, rank=1)


def test_dmd_batch_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="batch >= 1"):
        kk.dmd_batch(np.ones((0, 4, 3)))


@pytest.mark.parametrize("kwargs,error", [
    ({"rank": "3"}, TypeError),
    ({"rank": True}, TypeError),
    ({"rank": [2]}, TypeError),
    ({"rank": 0}, ValueError),
    ({"rank": 1.0}, ValueError),
    ({"dt": "1"}, TypeError),
    ({"dt": 0.0}, ValueError),
    ({"dt": float("inf")}, ValueError),
])
def test_dmd_and_dmd_batch_refuse_the_same_bad_arguments(rng, kwargs, error):
    x = rng.standard_normal((2, 6, 4))
    word = next(iter(kwargs))
    with pytest.raises(error, match=word):
        kk.dmd(x[0], **kwargs)
    with pytest.raises(error, match=word):
        kk.dmd_batch(x, **kwargs)


def test_dmd_batch_traces_once_for_every_rank_and_shape():
    before = kk._tf.trace_count("dmd_batch")
    calls = [((4, 8, 6), None), ((3, 11, 5), 2), ((4, 8, 6), 0.9), ((3, 11, 5), None),
             ((4, 8, 6), 2), ((3, 11, 5), 0.9)]
    for i, (shape, rank) in enumerate(calls):
        batch, m, n = shape
        sequences = _batch_of_linear_sequences(batch, m, n, seed=i)
        result = kk.dmd_batch(sequences, rank=rank)
        assert result.eigenvalues.shape == (batch, min(m - 1, n))
        for b in range(batch):
            singular = np.linalg.svd(sequences[b, :-1], compute_uv=False)
            assert int(result.rank[b]) == numpy_rank(singular, n, rank, floor=1e-7)
    assert kk._tf.trace_count("dmd_batch") - before <= 1
    assert _cached(("dmd_batch", tf.float64)).experimental_get_tracing_count() == 1
