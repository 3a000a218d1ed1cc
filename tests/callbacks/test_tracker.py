"""The tracker without Keras callbacks, the storage plan, records and the appending backup."""

import json
import os

import keras
import numpy as np
import pytest

import keras_koopman as kk
from helpers import numpy_exact_modes
from keras_koopman.callbacks import KoopmanTracker
from keras_koopman.callbacks._backup import Backup
from keras_koopman.callbacks.plan import AUTO_SKETCH, PACK_MIN_GROUPS, plan_storage
from keras_koopman.callbacks.tracker import _distinct_columns
from keras_koopman.records import History, SpectrumRecord


def test_the_tracker_is_not_a_keras_callback_and_matches_kk_dmd():
    assert not issubclass(KoopmanTracker, keras.callbacks.Callback)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense")])
    tracker = KoopmanTracker(window=6, rank=2)
    assert tracker.watch(model)
    rng = np.random.default_rng(0)
    a = 0.9 * np.linalg.qr(rng.normal(size=(16, 16)))[0]
    state = rng.normal(size=16)
    trajectory = []
    for _ in range(8):
        layer = model.get_layer("dense")
        layer.kernel.assign(state[:12].reshape(3, 4))
        layer.bias.assign(state[12:])
        trajectory.append(state.astype(np.float32))
        tracker.gather()
        state = a @ state
    records = tracker.analyse()
    assert [r.group for r in records] == ["dense"] and tracker.step == 7
    reference = kk.dmd(np.array(trajectory[-6:], np.float64), rank=2)
    np.testing.assert_allclose(np.sort_complex(records[0].eigenvalues),
                               np.sort_complex(reference.eigenvalues.numpy()), atol=1e-4)
    assert tracker.analyse() == []  # once per step


def test_the_tracker_state_round_trips_and_refuses_another_layout():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense")])
    tracker = KoopmanTracker(window=4)
    tracker.watch(model)
    for _ in range(5):
        tracker.gather()
    tracker.analyse()
    state = json.loads(json.dumps(tracker.state_dict()))  # JSON-able
    other = KoopmanTracker(window=4)
    other.watch(model)
    other.load_state_dict(state, tracker.history)
    assert (other.step, other.stored("dense"), other.history) == (4, 4, tracker.history)
    wider = KoopmanTracker(window=4)
    wider.watch(keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, name="dense")]))
    with pytest.raises(ValueError, match="other observable groups"):
        wider.load_state_dict(state, tracker.history)


def test_plan_storage_is_a_pure_rule_of_sizes_and_options():
    window = 10
    sizes = {"a": 10_000_000, "b": 5_000_000, "c": 1_000}
    # In full: (15,001,000 numbers) * 10 snapshots * 4 bytes = 600 MB > 512 MiB: sketch the
    # biggest until the rest fits (a alone: 5,001,000 + 2048 numbers, 200 MB).
    assert plan_storage(sizes, window).sketches == {"a": AUTO_SKETCH}
    assert plan_storage(sizes, window, storage_dtype="bfloat16").sketches == {}  # 300 MB
    assert plan_storage(sizes, window, sketch=None).sketches == {}
    assert plan_storage(sizes, window, sketch=400).sketches == {"a": 400, "b": 400, "c": 400}
    assert plan_storage({"c": 800}, window, sketch=400).sketches == {}  # not above 2 k
    small = {f"u{i}": 7 for i in range(PACK_MIN_GROUPS)}
    assert plan_storage(small, window).packed == tuple(small)
    assert plan_storage(dict(list(small.items())[:-1]), window).packed == ()
    assert plan_storage(small, window, method="rrr").packed == ()
    assert plan_storage(small, window, storage_dtype="bfloat16").packed == ()


def test_mode_share_is_the_weighted_share_numpy_computes():
    rng = np.random.default_rng(3)
    eigenvalues = rng.normal(size=6) + 1j * rng.normal(size=6) * 0.1
    amplitudes = rng.normal(size=6) + 1j * rng.normal(size=6)
    record = SpectrumRecord(0, 4, "g", eigenvalues, amplitudes, np.zeros(6), 6, 5, {})
    weights = np.abs(amplitudes) * np.abs(eigenvalues) ** 4
    inside = np.abs(eigenvalues) < 1
    assert kk.spectrum.mode_share(record, lambda e: np.abs(e) < 1) == pytest.approx(
        weights[inside].sum() / weights.sum())
    assert kk.spectrum.mode_share(record, np.abs) == pytest.approx(
        (weights * np.abs(eigenvalues)).sum() / weights.sum())
    empty = SpectrumRecord(0, 4, "g", np.zeros(0), np.zeros(0), np.zeros(0), 0, 5, {})
    assert kk.spectrum.mode_share(empty, np.abs, empty=7.0) == 7.0


def records(count, start=0):
    return History(SpectrumRecord(i // 2, i, f"g{i % 2}", np.full(2, 0.5 + 0.1j * i),
                                  np.ones(2, complex), np.full(2, float(i)), 2, 3,
                                  {"motion": float(i), "max_residual": float("nan")})
                   for i in range(start, start + count))


def test_the_backup_appends_new_records_instead_of_rewriting_the_history(tmp_path):
    backup = Backup(str(tmp_path))
    history = History()
    written = []
    for epoch in range(1, 7):
        history.extend(records(2, start=len(history)))
        before = {name: os.path.getmtime(os.path.join(backup._history, name))
                  for name in (os.listdir(backup._history) if epoch > 1 else [])}
        backup.save(epoch, {"epoch": epoch}, [], history)
        chunks = sorted(os.listdir(backup._history))
        # Older chunks are untouched: only the two new records were written.
        assert all(os.path.getmtime(os.path.join(backup._history, n)) == t
                   for n, t in before.items())
        written.append(len(chunks))
    assert written == [1, 2, 3, 4, 5, 6] and backup.saved_epochs() == [5, 6]
    # Resuming epoch 5 reads its 10 records and cuts the one chunk saved after it.
    state, count = backup.read_state(5)
    assert state == {"epoch": 5} and count == 10
    restored = backup.read_history(count)
    assert restored == History(history[:10])
    assert len(os.listdir(backup._history)) == 5
    history = History(restored)
    history.extend(records(2, start=10))
    backup.save(6, {"epoch": 6}, [], history)
    assert backup.read_history(12) == history


def test_a_new_run_over_a_stale_backup_dir_keeps_its_own_states(tmp_path):
    stale = Backup(str(tmp_path))
    history = History()
    for epoch in range(1, 11):  # a crashed run that got to epoch 10 and was not resumed
        history.extend(records(1, start=len(history)))
        stale.save(epoch, {"run": "old"}, [], history)
    fresh = Backup(str(tmp_path))  # a new process that did not resume
    fresh.save(1, {"run": "new"}, [], records(1))
    assert fresh.saved_epochs() == [1]
    assert fresh.read_state(1) == ({"run": "new"}, 1) and fresh.read_history(1) == records(1)


def test_a_leftover_partial_file_is_not_read_as_history(tmp_path):
    backup = Backup(str(tmp_path))
    backup.save(1, {}, [], records(2))
    # What a kill in the middle of a chunk write leaves behind.
    with open(os.path.join(backup._history, ".partial-123-records-000000002.npz"), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    assert Backup(str(tmp_path)).read_history(2) == records(2)


def test_a_damaged_backup_warns_and_the_trajectory_starts_clean(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x @ np.ones((3, 1), "float32")

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
        m.compile(keras.optimizers.SGD(0.05), "mse")
        return m

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt  # the saved states stay (no on_train_end)

    first = kk.callbacks.KoopmanMonitor(window=4, backup_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        model().fit(x, y, epochs=5, verbose=0, callbacks=[first, Interrupt()])
    history = os.path.join(str(tmp_path), "koopman_monitor", "history")
    for name in os.listdir(history):
        os.remove(os.path.join(history, name))  # the states' history is gone
    second = kk.callbacks.KoopmanMonitor(window=4, backup_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="resuming from backup_dir failed"):
        model().fit(x, y, initial_epoch=2, epochs=4, verbose=0, callbacks=[second])
    # Not a mix of the old buffers and a new count: a clean start and two epochs.
    assert second.buffers["dense"].count == 3 and second.tracker.stored("dense") == 3
    assert [e["where"] for e in second.errors] == ["resuming from backup_dir"]
    assert "the saved history holds 0 records" in second.errors[0]["error"]


def test_a_second_model_of_the_same_shapes_reuses_the_compiled_gather():
    # The gather takes the variables as arguments: one trace and one XLA compilation serve
    # every model of these shapes, and no call compiles again (each would cost ~1 s).
    import time

    from keras_koopman._tf import trace_count

    def build(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, name="a"),
                                 keras.layers.Dense(3, name="b")])

    first, second = build(0), build(1)
    trackers = [KoopmanTracker(window=4), KoopmanTracker(window=4)]
    trackers[0].watch(first)
    trackers[0].gather()
    traces = trace_count("gather")
    trackers[1].watch(second)
    start = time.perf_counter()
    for _ in range(15):
        trackers[1].gather()
    trackers[1].sync()
    assert (time.perf_counter() - start) / 15 < 0.05
    assert trace_count("gather") == traces
    # Each tracker holds its own model's weights.
    for tracker, model in zip(trackers, (first, second)):
        layer = model.get_layer("a")
        np.testing.assert_allclose(tracker.buffers["a"].snapshots().numpy()[-1],
                                   np.concatenate([layer.kernel.numpy().ravel(),
                                                   layer.bias.numpy().ravel()]), rtol=1e-6)


def unit_shares(mode, shapes):
    """Per unit (last axis), the share of |mode|^2 over the group's flattened variables."""
    power, offset, total = np.abs(mode) ** 2, 0, 0.0
    for shape in shapes:
        size = int(np.prod(shape))
        total = total + power[offset:offset + size].reshape(-1, shape[-1]).sum(axis=0)
        offset += size
    return total / total.sum()


def drive(model, names, steps, seed, slowest=0.6):
    """Assigns each named layer's (kernel, bias) a linear trajectory x_{k+1} = A x_k with
    distinct eigenvalues from 1 down to ``slowest`` (``None``: random snapshots, as many
    modes as snapshots allow; ``"rotations"``: complex conjugate pairs ``r e^{+-i theta}``,
    ``r`` from 0.99 down, distinct angles): ``{name: [steps] snapshots}``."""
    rng = np.random.default_rng(seed)
    trajectories = {}
    for name in names:
        layer = model.get_layer(name)
        n = int(np.prod(layer.kernel.shape)) + int(np.prod(layer.bias.shape))
        if slowest is None:
            trajectories[name] = list(rng.normal(size=(steps, n)).astype(np.float32))
            continue
        basis = np.linalg.qr(rng.normal(size=(n, n)))[0]
        if slowest == "rotations":
            blocks = np.zeros((n, n))
            for i, (r, theta) in enumerate(zip(np.linspace(0.99, 0.6, n // 2),
                                               np.linspace(0.2, 1.4, n // 2))):
                blocks[2 * i:2 * i + 2, 2 * i:2 * i + 2] = r * np.array(
                    [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
            a = basis @ blocks @ basis.T
        else:
            a = basis @ np.diag(np.linspace(1.0, slowest, n)) @ basis.T
        state = rng.normal(size=n)
        trajectories[name] = []
        for _ in range(steps):
            trajectories[name].append(state.astype(np.float32))
            state = a @ state
    return trajectories


def assign(layer, state):
    size = int(np.prod(layer.kernel.shape))
    layer.kernel.assign(state[:size].reshape(layer.kernel.shape))
    layer.bias.assign(state[size:])


CASES = {  # name: (layers, input shape, window, rank, storage dtype, slowest eigenvalue)
    "dense": ([keras.layers.Dense(3, name="d0")], (3,), 6, 3, "float32", 0.3),
    "pack": ([keras.layers.Dense(3, name=f"d{i}") for i in range(PACK_MIN_GROUPS)], (3,), 6,
             3, "float32", 0.3),
    "bfloat16": ([keras.layers.Dense(3, name="d0")], (3,), 6, 3, "bfloat16", 0.3),
    "conv, 8 of 10 modes": ([keras.layers.Conv2D(4, 2, name="c0")], (3, 3, 2), 12, 10,
                            "float32", None),
    "conjugate pairs": ([keras.layers.Dense(3, name="d0")], (3,), 14, 12, "float32",
                        "rotations"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unit_weights_are_the_share_of_each_mode_per_output_unit(case):
    layers, shape, window, rank, storage, slowest = CASES[case]
    model = keras.Sequential([keras.Input(shape), *layers])
    names = [layer.name for layer in layers]
    tracker = KoopmanTracker(window=window, rank=rank, storage_dtype=storage)
    tracker.watch(model)
    assert bool(tracker._pack) == (case == "pack")
    tracker.unit_modes = True
    steps = window + 3
    trajectories = drive(model, names, steps, seed=len(names), slowest=slowest)
    for k in range(steps):
        for name in names:
            assign(model.get_layer(name), trajectories[name][k])
        tracker.gather()
    records = {r.group: r for r in tracker.analyse()}
    assert set(tracker.unit_weights) == set(names)
    for name in names[:3]:
        record, weights = records[name], tracker.unit_weights[name]
        layer = model.get_layer(name)
        units = layer.kernel.shape[-1]
        # NumPy's exact DMD of the snapshots the buffer holds (bfloat16 rounds them).
        stored = tracker.buffers[name].snapshots().numpy().astype(np.float64)
        eigenvalues, modes = numpy_exact_modes(stored, record.rank)
        np.testing.assert_allclose(record.eigenvalues, eigenvalues, atol=1e-4)
        assert weights.shape == (min(record.rank, 8), units)
        if case.startswith("conv"):  # 10 modes, the 8 leading with weights
            assert (record.rank, len(weights)) == (10, 8)
        if case == "conjugate pairs":  # 4 pairs: each mode's shares are its partner's
            assert np.all(np.abs(record.eigenvalues.imag) > 0.1)
            np.testing.assert_allclose(weights[0::2], weights[1::2], rtol=1e-9)
        for i in range(len(weights)):
            np.testing.assert_allclose(
                weights[i], unit_shares(modes[:, i], [layer.kernel.shape, layer.bias.shape]),
                atol=1e-3)


def test_unit_weights_multiply_one_column_per_real_mode_and_two_per_conjugate_pair():
    real = np.array([1.0, 2.0, 3.0]) + 0j
    pair = np.array([1 + 1j, 2 - 1j, 0.5j])
    other = np.array([0.5 + 2j, -1 + 1j, 1.0])  # complex, not a conjugate of another column
    combination = np.stack([real, pair, pair.conj(), other, np.zeros(3)], axis=1)
    first, source, columns = _distinct_columns(combination)
    np.testing.assert_array_equal(first, [0, 1, 1, 3, 4])
    np.testing.assert_array_equal(source, [0, 1, 1, 3, 3])  # the zero mode adds nothing
    np.testing.assert_allclose(np.stack(columns), [real.real, pair.real, pair.imag,
                                                   other.real, other.imag])
    # The conjugate may come first; a column that is nearly a conjugate is a mode of its own.
    near = pair.conj() * (1 + 1e-12)
    first, source, _ = _distinct_columns(np.stack([pair.conj(), pair, near], axis=1))
    np.testing.assert_array_equal(first, [0, 0, 2])
    np.testing.assert_array_equal(source, [0, 0, 2, 2])


def test_unit_weights_only_while_asked_and_only_for_one_layers_output_axis():
    inputs = keras.Input((4, 4, 2))
    transposed = keras.layers.Conv2DTranspose(2, 2, name="transposed")(inputs)
    outputs = keras.layers.Dense(3, name="dense")(keras.layers.Flatten()(transposed))
    model = keras.Model(inputs, outputs)
    tracker = KoopmanTracker(window=4)
    tracker.watch(model)
    for k in range(4):
        model.get_layer("dense").kernel.assign(0.9 ** k * np.ones((50, 3)))
        model.get_layer("transposed").bias.assign(0.8 ** k * np.ones(2))
        tracker.gather()
    assert tracker.analyse() and tracker.unit_weights == {}  # not asked: not computed
    tracker.unit_modes = True
    model.get_layer("dense").kernel.assign(0.9 ** 4 * np.ones((50, 3)))
    tracker.gather()
    assert {r.group for r in tracker.analyse()} == {"dense", "transposed"}
    # A transposed convolution's kernel ends in its input channels: no units.
    assert set(tracker.unit_weights) == {"dense"}
    np.testing.assert_allclose(tracker.unit_weights["dense"].sum(axis=1), 1.0)
    tracker.gather()
    tracker.unit_modes = False
    tracker.analyse()
    assert tracker.unit_weights == {}  # only the newest analysis's are kept


@pytest.mark.parametrize("options", [{"observables": "model"}, {"sketch": 4}])
def test_no_unit_weights_for_a_whole_model_or_a_sketch(options):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    tracker = KoopmanTracker(window=4, **options)
    tracker.watch(model)
    tracker.unit_modes = True
    for k in range(4):
        model.get_layer("dense").kernel.assign(0.9 ** k * np.ones((4, 3)))
        tracker.gather()
    assert tracker.analyse() and tracker.unit_weights == {}
