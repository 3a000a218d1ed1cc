"""SnapshotBuffer: ring order, streaming Gram against NumPy, DMD against kk.dmd, bad input."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_spectrum, linear_system, phase_alignment

import keras_koopman as kk


def fill(buffer, rows):
    for row in rows:
        buffer.append(row)
    return buffer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ring_order_and_count_after_wrapping(rng, dtype):
    rows = rng.standard_normal((7, 5))
    buffer = fill(kk.SnapshotBuffer(5, window=4, dtype=dtype), rows)
    assert buffer.count == 7 and len(buffer) == 4
    np.testing.assert_allclose(buffer.snapshots().numpy(), rows[-4:], rtol=1e-6, atol=1e-6)
    assert buffer.snapshots().dtype == tf.as_dtype(dtype)


def test_partially_filled_buffer_returns_only_what_was_appended(rng):
    rows = rng.standard_normal((2, 3))
    buffer = fill(kk.SnapshotBuffer(3, window=6, dtype="float64"), rows)
    assert len(buffer) == 2
    # Stored relative to the first snapshot: equal up to one rounding.
    np.testing.assert_allclose(buffer.snapshots().numpy(), rows, rtol=0, atol=1e-15)


@pytest.mark.parametrize("appended", [3, 6, 11, 25])
def test_streaming_gram_equals_numpy_in_float64(rng, appended):
    rows = rng.standard_normal((appended, 40)) + 5.0
    buffer = fill(kk.SnapshotBuffer(40, window=6, dtype="float64"), rows)
    stored = rows[-6:]
    np.testing.assert_allclose(buffer.gram().numpy(), stored @ stored.T, rtol=1e-12)


def test_streaming_gram_in_float32_is_float64_accurate_for_weight_like_data(rng):
    """Vectors ~3 that move by ~1e-3: the Gram keeps the motion (centred accumulation)."""
    base = 3.0 + rng.standard_normal(2000)
    rows = (base + 1e-3 * rng.standard_normal((9, 2000))).astype(np.float32)
    buffer = fill(kk.SnapshotBuffer(2000, window=9), rows)
    exact = rows.astype(np.float64) @ rows.astype(np.float64).T
    # The part of the Gram that carries the motion, after removing the common offset:
    centred = rows.astype(np.float64) - rows[0].astype(np.float64)
    motion_scale = np.abs(centred @ centred.T).max()
    error = np.abs(buffer.gram().numpy() - exact).max()
    assert error < 1e-3 * motion_scale, (error, motion_scale)
    # A plain float32 Gram is orders of magnitude worse on the same data.
    naive = np.abs((rows @ rows.T).astype(np.float64) - exact).max()
    assert naive > 10 * error


@pytest.mark.parametrize("method", ["exact", "rrr"])
def test_buffer_dmd_equals_kk_dmd_on_the_stored_snapshots(rng, method):
    x, values, _ = linear_system([0.95, 0.7, 0.9 * np.exp(0.5j)], 120, 30, rng)
    buffer = fill(kk.SnapshotBuffer(120, window=16, dtype="float64"), x)
    streamed = buffer.dmd(rank=4, method=method).numpy()
    one_shot = kk.dmd(x[-16:], rank=4, method=method, solver="svd").numpy()

    order = assert_same_spectrum(one_shot.eigenvalues, streamed.eigenvalues, 1e-8)
    assert_same_spectrum(values, streamed.eigenvalues, 1e-7)
    np.testing.assert_allclose(
        phase_alignment(one_shot.modes, streamed.modes[:, order]), 1.0, atol=1e-8
    )
    np.testing.assert_allclose(np.linalg.norm(streamed.modes, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        streamed.modes[:, order] * streamed.amplitudes[order],
        one_shot.modes * one_shot.amplitudes,
        atol=1e-7 * np.abs(x).max(),
    )
    # Amplitudes fit the oldest stored snapshot.
    np.testing.assert_allclose(
        (streamed.modes @ streamed.amplitudes).real, x[-16], atol=1e-7 * np.abs(x).max()
    )


def test_float32_buffer_of_weight_like_trajectory_recovers_the_spectrum(rng):
    n = 5000
    motion, values, _ = linear_system([0.96, 0.9 * np.exp(0.4j)], n, 40, rng, orthonormal=True)
    motion *= 1e-3 / np.abs(motion).max()
    x = (1.0 + rng.standard_normal(n) + motion).astype(np.float32)
    buffer = fill(kk.SnapshotBuffer(n, window=20), x)
    result = buffer.dmd(rank=4)
    assert_same_spectrum(np.append(values, 1.0), result.eigenvalues.numpy(), 1e-4)


def test_non_finite_snapshots_are_refused_and_leave_the_buffer_unchanged(rng):
    rows = rng.standard_normal((5, 8))
    buffer = fill(kk.SnapshotBuffer(8, window=4, dtype="float64"), rows)
    before = (buffer.snapshots().numpy(), buffer.gram().numpy(), buffer.count)
    for bad in (np.nan, np.inf):
        x = rng.standard_normal(8)
        x[2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            buffer.append(x)
    np.testing.assert_array_equal(buffer.snapshots().numpy(), before[0])
    np.testing.assert_array_equal(buffer.gram().numpy(), before[1])
    assert buffer.count == before[2]


def test_a_first_non_finite_snapshot_does_not_become_the_reference(rng):
    buffer = kk.SnapshotBuffer(3, window=4, dtype="float64")
    with pytest.raises(ValueError):
        buffer.append([np.nan, 1.0, 2.0])
    rows = rng.standard_normal((3, 3))
    fill(buffer, rows)
    np.testing.assert_allclose(buffer.snapshots().numpy(), rows, rtol=1e-12)


def test_append_accepts_other_dtypes_and_row_vectors(rng):
    buffer = kk.SnapshotBuffer(3, window=4)
    buffer.append(np.array([1, 2, 3]))  # ints
    buffer.append(tf.constant([[1.5, 2.5, 3.5]], tf.float64))  # [1, n] float64
    np.testing.assert_allclose(buffer.snapshots().numpy(), [[1, 2, 3], [1.5, 2.5, 3.5]])


@pytest.mark.parametrize("x", [np.ones(4), np.ones((2, 3)), np.ones((3, 1))])
def test_append_of_the_wrong_shape_raises(x):
    with pytest.raises(ValueError, match="n_features"):
        kk.SnapshotBuffer(3, window=4).append(x)


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"n_features": 0, "window": 4}, ValueError, "n_features"),
        ({"n_features": 3.0, "window": 4}, TypeError, "n_features"),
        ({"n_features": 3, "window": 1}, ValueError, "window"),
        ({"n_features": 3, "window": "8"}, TypeError, "window"),
        ({"n_features": 3, "window": 4, "dtype": "int32"}, ValueError, "dtype"),
        ({"n_features": 3, "window": 4, "dtype": "nonsense"}, TypeError, "dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        kk.SnapshotBuffer(**kwargs)


def test_dmd_needs_two_snapshots_and_checks_its_arguments(rng):
    buffer = kk.SnapshotBuffer(3, window=4)
    buffer.append(rng.standard_normal(3))
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        buffer.dmd()
    buffer.append(rng.standard_normal(3))
    with pytest.raises(ValueError, match="rank"):
        buffer.dmd(rank=0)
    with pytest.raises(ValueError, match="method"):
        buffer.dmd(method="svd")


def test_reset_forgets_everything(rng):
    buffer = fill(kk.SnapshotBuffer(4, window=3, dtype="float64"), rng.standard_normal((5, 4)))
    buffer.reset()
    assert buffer.count == 0 and len(buffer) == 0
    rows = rng.standard_normal((2, 4)) + 10
    fill(buffer, rows)
    np.testing.assert_allclose(buffer.gram().numpy(), rows @ rows.T, rtol=1e-12)


def test_appends_never_retrace_and_graph_append_works_inside_a_user_function(rng):
    buffer = kk.SnapshotBuffer(6, window=5)
    fill(buffer, rng.standard_normal((12, 6)).astype(np.float32))

    @tf.function(jit_compile=True)
    def gather_and_append(variable):
        return buffer.append_op(tf.reshape(variable, [-1]))

    weights = tf.Variable(rng.standard_normal((2, 3)).astype(np.float32))
    assert bool(gather_and_append(weights))
    np.testing.assert_allclose(buffer.snapshots().numpy()[-1], weights.numpy().ravel(), rtol=1e-6)
    weights.assign(tf.fill([2, 3], np.nan))
    assert not bool(gather_and_append(weights))
    assert buffer.count == 13


def test_repr_and_variables():
    buffer = kk.SnapshotBuffer(3, window=4, dtype="float64")
    assert "n_features=3" in repr(buffer) and "window=4" in repr(buffer)
    assert all(isinstance(v, tf.Variable) for v in buffer.variables)
    assert not any(v.trainable for v in buffer.variables)


def test_buffer_dmd_without_modes(rng):
    x, values, _ = linear_system([0.9, 0.6 * np.exp(0.3j)], 40, 12, rng)
    buffer = fill(kk.SnapshotBuffer(40, window=12, dtype="float64"), x)
    result = buffer.dmd(rank=3, modes=False)
    assert result.modes is None
    assert_same_spectrum(values, result.eigenvalues.numpy(), 1e-7)
    full = buffer.dmd(rank=3)
    np.testing.assert_allclose(
        np.abs(result.amplitudes.numpy()), np.abs(full.amplitudes.numpy()), rtol=1e-8
    )


@pytest.mark.parametrize("appended", [3, 5, 9])
def test_deferred_gram_rows_are_filled_in_on_read(rng, appended):
    rows = rng.standard_normal((appended, 30)) + 4.0
    eager = fill(kk.SnapshotBuffer(30, window=5, dtype="float64"), rows)
    lazy = kk.SnapshotBuffer(30, window=5, dtype="float64")

    @tf.function(jit_compile=True)
    def append_later(x):
        return lazy.append_op(x, update_gram=False)

    for row in rows[:-1]:
        assert bool(append_later(tf.constant(row)))
    lazy.append(rows[-1])  # a mix of deferred and immediate rows
    stored = rows[-5:]
    np.testing.assert_allclose(lazy.gram().numpy(), stored @ stored.T, rtol=1e-12)
    np.testing.assert_allclose(lazy.gram().numpy(), eager.gram().numpy(), rtol=1e-12)
    np.testing.assert_allclose(lazy.dmd(rank=2).eigenvalues.numpy(),
                               eager.dmd(rank=2).eigenvalues.numpy(), rtol=1e-10)


@pytest.mark.parametrize("update_gram", [True, False])
def test_append_in_pieces_equals_appending_the_concatenation(rng, update_gram):
    rows = rng.standard_normal((7, 11)) + 3.0
    whole = fill(kk.SnapshotBuffer(11, window=4, dtype="float64"), rows)
    pieces = kk.SnapshotBuffer(11, window=4, dtype="float64")

    @tf.function(jit_compile=True)
    def append_pieces(a, b, c):
        return pieces.append_op([a, b, c], update_gram=update_gram)

    for row in rows:
        assert bool(append_pieces(row[:2], row[2:3], row[3:]))
    np.testing.assert_allclose(pieces.snapshots().numpy(), rows[-4:], rtol=1e-12)
    np.testing.assert_allclose(pieces.gram().numpy(), whole.gram().numpy(), rtol=1e-12)
    # A non-finite value in one piece writes nothing at all.
    bad = rows[0].copy()
    bad[5] = np.inf
    assert not bool(append_pieces(bad[:2], bad[2:3], bad[3:]))
    assert pieces.count == 7
    np.testing.assert_allclose(pieces.snapshots().numpy(), rows[-4:], rtol=1e-12)


def test_append_in_pieces_of_the_wrong_total_size_raises():
    buffer = kk.SnapshotBuffer(5, window=3)
    with pytest.raises(ValueError, match="add up to 4 numbers; the buffer holds 5"):
        tf.function(lambda: buffer.append_op([tf.zeros([2]), tf.zeros([2])]))()


@pytest.mark.parametrize("deferred", [1, 2, 3, 12])
def test_refresh_of_few_or_many_deferred_rows_gives_the_exact_gram(rng, deferred):
    # Fewer than a quarter of the slots stale: rows are gathered; more: one full product.
    rows = rng.standard_normal((12 + deferred, 20)) + 2.0
    buffer = fill(kk.SnapshotBuffer(20, window=12, dtype="float64"), rows[:12])

    @tf.function(jit_compile=True)
    def append_later(x):
        return buffer.append_op(x, update_gram=False)

    for row in rows[12:]:
        assert bool(append_later(tf.constant(row)))
    stored = rows[-12:]
    np.testing.assert_allclose(buffer.gram().numpy(), stored @ stored.T, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Big vectors: sketched and bfloat16 storage


def low_rank_trajectory(n, m, eigenvalues=(1.0, 0.9, 0.7, 0.5), seed=0):
    """``x_k = sum_j lambda_j^k phi_j``: exactly rank ``len(eigenvalues)`` dynamics in R^n."""
    rng = np.random.default_rng(seed)
    modes = rng.standard_normal((n, len(eigenvalues)))
    powers = np.asarray(eigenvalues)[None, :] ** np.arange(m)[:, None]
    return powers @ modes.T


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-8), ("float32", 2e-3)])
def test_a_sketch_keeps_the_eigenvalues_of_low_rank_dynamics(dtype, tolerance):
    x = low_rank_trajectory(n=50_000, m=10)
    buffer = kk.SnapshotBuffer(50_000, 10, dtype=dtype, sketch=128)
    for row in x:
        buffer.append(row.astype(dtype))
    sketched = np.sort_complex(buffer.dmd(rank=4, modes=False).eigenvalues.numpy())
    np.testing.assert_allclose(sketched, [0.5, 0.7, 0.9, 1.0], atol=tolerance)
    assert buffer.snapshots().shape == (10, 128)
    # Memory: the sketch, not the vectors.
    assert buffer.nbytes < 128 * 10 * 8 * 3 + 128 * 64 * 12 < 50_000 * 10 * 8 / 5


def test_a_sketch_is_a_fixed_linear_map_that_keeps_inner_products_on_average():
    n, k = 100_000, 2048
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(n), rng.standard_normal(n)
    v = 0.6 * u + 0.8 * v  # correlation 0.6
    sketched = []
    for seed in (0, 0, 1):
        buffer = kk.SnapshotBuffer(n, 3, dtype="float64", sketch=k, seed=seed)
        for row in (u, v, u + 2 * v):
            buffer.append(row)
        sketched.append(buffer.snapshots().numpy())
    np.testing.assert_array_equal(sketched[0], sketched[1])  # same seed, same map
    assert not np.allclose(sketched[0], sketched[2])  # another seed, another map
    su, sv, sw = sketched[0]
    np.testing.assert_allclose(sw, su + 2 * sv, rtol=1e-9, atol=1e-9)  # linear
    # Norms and the correlation survive up to the sketch's ~1/sqrt(k) error.
    assert np.linalg.norm(su) / np.linalg.norm(u) == pytest.approx(1.0, abs=0.15)
    correlation = su @ sv / (np.linalg.norm(su) * np.linalg.norm(sv))
    assert correlation == pytest.approx(0.6, abs=0.1)


def test_bfloat16_storage_halves_memory_and_keeps_a_float64_gram_of_what_it_stores():
    x = 1.0 + 0.1 * low_rank_trajectory(n=3_000, m=8)
    full = kk.SnapshotBuffer(3_000, 8)
    half = kk.SnapshotBuffer(3_000, 8, storage_dtype="bfloat16")
    for row in x.astype(np.float32):
        full.append(row)
        half.append(row)
    assert half._buffer.dtype == tf.bfloat16
    assert half.nbytes < 0.6 * full.nbytes
    # What it stores: the centred snapshots rounded to bfloat16, plus the float32 reference.
    reference = x[0].astype(np.float32)
    centred = tf.cast(tf.cast(x.astype(np.float32) - reference, tf.bfloat16), tf.float64).numpy()
    stored = centred + reference.astype(np.float64)
    np.testing.assert_allclose(half.snapshots().numpy(), stored, rtol=0, atol=1e-6)
    np.testing.assert_allclose(half.gram().numpy(), stored @ stored.T, rtol=1e-6)
    assert np.max(np.abs(stored - x)) < 2**-8 * np.max(np.abs(x - x[0]))
    eigenvalues = np.sort_complex(half.dmd(rank=4).eigenvalues.numpy())
    np.testing.assert_allclose(eigenvalues, [0.5, 0.7, 0.9, 1.0], atol=0.02)
    assert half.dmd(rank=4).modes.shape == (3_000, 4)  # unsketched: modes available


@pytest.mark.parametrize("kwargs,error,words", [
    ({"sketch": 10}, ValueError, "sketch must be smaller"),
    ({"sketch": 0}, ValueError, "sketch"),
    ({"sketch": 2, "sketch_density": 6}, ValueError, "sketch_density"),
    ({"storage_dtype": "int8"}, ValueError, "storage_dtype"),
    ({"storage_dtype": "float16"}, ValueError, "storage_dtype"),
])
def test_bad_sketch_and_storage_arguments_raise(kwargs, error, words):
    with pytest.raises(error, match=words):
        kk.SnapshotBuffer(10, 4, **kwargs)


def test_a_sketched_buffer_has_no_modes_and_says_so():
    buffer = kk.SnapshotBuffer(1_000, 4, sketch=16)
    for k in range(4):
        buffer.append(np.full(1_000, 0.5**k, np.float32))
    with pytest.raises(ValueError, match="modes=False"):
        buffer.dmd()
    assert buffer.dmd(modes=False).modes is None


# ------------------------------------------------------------------------------------------
# Appends at scale: a float64 Gram of what is stored, and no compilation per append


def test_the_gram_of_a_million_weights_is_numpys_float64_gram_of_what_is_stored():
    # Weights of size ~1 moving by ~1e-3: the centred motion is what the Gram must keep.
    n, window = 1_000_000, 6
    rng = np.random.default_rng(7)
    base = rng.standard_normal(n).astype(np.float32)
    steps = 1e-3 * rng.standard_normal((window + 2, n)).astype(np.float32)
    deferred = kk.SnapshotBuffer(n, window)          # append(): rows computed at the next read
    eager = kk.SnapshotBuffer(n, window)             # append_op(update_gram=True): per append
    append_now = tf.function(lambda x: eager.append_op(x, update_gram=True), jit_compile=True)
    for k in range(window + 2):
        x = base + steps[: k + 1].sum(axis=0)
        deferred.append(x)
        append_now(tf.constant(x))
    for buffer in (deferred, eager):
        stored, reference, _, _, _, count = [t.numpy() for t in buffer.state()]
        order = (int(count) - window + np.arange(window)) % window
        snapshots = stored[order].astype(np.float64) + reference.astype(np.float64)
        expected = snapshots @ snapshots.T                  # NumPy, float64, of what is stored
        gram = buffer.gram().numpy()
        # float32 accumulation over 1e6 weights is off by ~1e-6 relative here; float64 by ~1e-15.
        np.testing.assert_allclose(gram, expected, rtol=1e-12)
        centred = stored.astype(np.float64)
        np.testing.assert_allclose(buffer.state()[2].numpy(), centred @ centred.T, rtol=1e-12)


def test_appends_compile_once_whatever_the_count(rng):
    # A strided slice at the ring's head made XLA compile the append anew for every count:
    # ~0.4 s per append at any size. One compilation, then appends take well under that.
    import time

    buffer = kk.SnapshotBuffer(10_000, window=8)
    append_now = tf.function(lambda x: buffer.append_op(x, update_gram=True), jit_compile=True)
    rows = rng.standard_normal((20, 10_000)).astype(np.float32)
    append_now(tf.constant(rows[0])).numpy()
    buffer.append(rows[0])
    start = time.perf_counter()
    for row in rows[1:]:
        append_now(tf.constant(row)).numpy()
        buffer.append(row)
    per_append = (time.perf_counter() - start) / (2 * (len(rows) - 1))
    assert per_append < 0.05, f"{per_append:.3f} s per append: compiled on every call?"
