"""The buffer protocol: a packed view reads exactly as a SnapshotBuffer fed the same data."""

import numpy as np
import pytest
import tensorflow as tf

import keras_koopman as kk
from keras_koopman.buffers import PackedBuffers, PackedView, SnapshotBuffer

PROTOCOL = ("count", "window", "n_features", "dtype", "storage_dtype", "sketch", "has_modes",
            "snapshots", "gram", "dmd", "state", "refresh", "variables", "nbytes", "reset")


def fill(sizes, window, steps, seed=0):
    """A pack of ``sizes`` and one SnapshotBuffer per group, fed the same damped rotations."""
    rng = np.random.default_rng(seed)
    pack = PackedBuffers({f"g{i}": n for i, n in enumerate(sizes)}, window)
    singles = [SnapshotBuffer(n, window) for n in sizes]
    states = [rng.normal(size=n) for n in sizes]
    maps = [0.9 * np.linalg.qr(rng.normal(size=(n, n)))[0] for n in sizes]
    trajectory = [[] for _ in sizes]
    for _ in range(steps):
        parts = [tf.constant(x, tf.float32) for x in states]
        assert bool(tf.reduce_all(pack.append_op(parts)))
        for single, x, record in zip(singles, states, trajectory):
            single.append(x.astype(np.float32))
            record.append(x.astype(np.float32))
        states = [a @ x for a, x in zip(maps, states)]
    return pack, singles, [np.array(t) for t in trajectory]


def test_a_packed_view_implements_the_whole_protocol():
    pack, singles, _ = fill([3, 5], window=4, steps=6)
    for buffer in (pack.views()[0], singles[0]):
        missing = [name for name in PROTOCOL if not hasattr(buffer, name)]
        assert not missing, (type(buffer).__name__, missing)


@pytest.mark.parametrize("steps", [3, 4, 9])
def test_a_packed_view_gives_the_same_results_as_a_snapshot_buffer(steps):
    pack, singles, trajectories = fill([3, 6, 4], window=5, steps=steps)
    for view, single, trajectory in zip(pack.views(), singles, trajectories):
        assert isinstance(view, PackedView)
        assert (view.count, len(view), view.window, view.n_features) == (
            single.count, len(single), single.window, single.n_features)
        assert view.sketch is None and view.has_modes and single.has_modes
        expected = trajectory[-5:]
        np.testing.assert_allclose(view.snapshots().numpy(), expected, rtol=1e-6, atol=1e-7)
        # The Gram matrix against NumPy's of the stored snapshots, and against the buffer's.
        # (float32 snapshots stored as differences from the first: rounding ~1e-7 relative)
        np.testing.assert_allclose(view.gram().numpy(), expected.astype(np.float64) @
                                   expected.T.astype(np.float64), rtol=1e-5, atol=1e-6)
        # The same to float32 rounding (the pack sums the cross terms per segment).
        np.testing.assert_allclose(view.gram().numpy(), single.gram().numpy(), rtol=1e-6,
                                   atol=1e-7)
        a, b = view.dmd(rank=2), single.dmd(rank=2)
        np.testing.assert_allclose(a.eigenvalues.numpy(), b.eigenvalues.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.abs(a.modes.numpy()), np.abs(b.modes.numpy()), atol=1e-6)
        reference = kk.dmd(expected.astype(np.float64), rank=2)
        np.testing.assert_allclose(np.sort_complex(a.eigenvalues.numpy()),
                                   np.sort_complex(reference.eigenvalues.numpy()), atol=1e-4)
        # A view holds as many bytes as a SnapshotBuffer of its group's size.
        assert view.nbytes == single.nbytes
    assert pack.views()[0].variables == pack.variables  # shared, for one checkpoint


def test_resetting_one_view_forgets_that_group_only():
    pack, singles, trajectories = fill([3, 4], window=4, steps=5)
    first, second = pack.views()
    first.reset()
    singles[0].reset()
    assert first.count == 0 == singles[0].count and len(first) == 0
    assert second.count == 5
    np.testing.assert_allclose(second.snapshots().numpy(), trajectories[1][-4:], rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        first.dmd()
    pack.reset()
    assert second.count == 0


def test_a_sketched_buffer_says_it_has_no_modes():
    buffer = SnapshotBuffer(1000, window=4, sketch=10)
    for k in range(4):
        buffer.append(0.5 ** k * np.ones(1000, np.float32))
    assert not buffer.has_modes
    with pytest.raises(ValueError, match="sketched"):
        buffer.dmd()
    assert buffer.dmd(rank=1, modes=False).modes is None
