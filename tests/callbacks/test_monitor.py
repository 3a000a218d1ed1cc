"""KoopmanMonitor inside real model.fit runs: records, summaries, gathering schedules, failures."""


import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import keras_koopman as kk
from helpers import weight_recorder


def make_data(seed=0, samples=64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 6)).astype(np.float32)
    y = (x @ rng.standard_normal((6, 2)) + 0.1).astype(np.float32)
    return x, y


def make_model(seed=0, extra_layers=()):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="tanh", name="hidden"), *extra_layers,
         keras.layers.Dense(2, name="out")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def test_summaries_for_each_group_are_written_and_readable(tmp_path):
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=5, log_dir=tmp_path / "run")
    keras_board = keras.callbacks.TensorBoard(tmp_path / "keras")
    model.fit(x, y, epochs=5, verbose=0, callbacks=[monitor, keras_board])

    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path / "run"), size_guidance={"tensors": 0}
    )
    accumulator.Reload()
    keras_events = event_accumulator.EventAccumulator(
        str(tmp_path / "keras" / "train"), size_guidance={"tensors": 0})
    keras_events.Reload()
    keras_steps = [e.step for e in keras_events.Tensors("epoch_loss")]
    assert keras_steps == [0, 1, 2, 3, 4]
    tags = set(accumulator.Tags()["tensors"])
    for group in ("hidden", "out"):
        assert f"koopman/{group}" in tags
        events = accumulator.Tensors(f"koopman/{group}")
        records = monitor.records(group)
        # Each spectrum sits at the step of the same epoch's loss in Keras's TensorBoard.
        assert [e.step for e in events] == [r.epoch for r in records] == keras_steps[1:]
        spectrum = tf.make_ndarray(events[-1].tensor_proto)
        np.testing.assert_allclose(spectrum[:, 0], records[-1].eigenvalues.real, rtol=1e-5,
                                   atol=1e-6)
        assert accumulator.SummaryMetadata(f"koopman/{group}").plugin_data.plugin_name == "koopman"
        for key in ("spectral_radius", "near_one_fraction", "unstable_count", "max_residual"):
            scalars = accumulator.Tensors(f"koopman/{group}/{key}")
            assert len(scalars) == len(records)
            value = float(tf.make_ndarray(scalars[-1].tensor_proto))
            expected = records[-1].metrics[key]
            assert value == pytest.approx(expected, rel=1e-5, nan_ok=True)


def test_every_n_batches_gathers_the_weights_of_those_batches():
    x, y = make_data(samples=64)
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(every=3, window=8)
    recorder = weight_recorder(["hidden"], per_batch=True)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
              callbacks=[recorder, monitor])
    # 16 batches: snapshots at the start and after batches 3, 6, 9, 12, 15.
    assert monitor.step == 5
    trajectory = np.stack(recorder.snapshots["hidden"])  # start + 16 batches
    expected = trajectory[[0, 3, 6, 9, 12, 15]]
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy(), expected,
                               rtol=1e-6, atol=1e-7)


def test_steps_per_execution_counts_every_batch():
    x, y = make_data(samples=64)
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
    monitor = kk.callbacks.KoopmanMonitor(every=4, window=8)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[monitor])
    assert monitor.step == 4  # 16 batches / 4


def test_state_survives_two_fit_calls_without_a_duplicate_snapshot():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=10)
    recorder = weight_recorder(["out"])
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor, recorder])
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor, recorder])
    assert monitor.step == 6 and monitor.buffers["out"].count == 7
    np.testing.assert_allclose(monitor.buffers["out"].snapshots().numpy(),
                               np.stack(recorder.snapshots["out"]), rtol=1e-6, atol=1e-7)
    assert [r.step for r in monitor.records("out")] == [2, 3, 4, 5, 6]


def test_observables_model_names_and_callable():
    x, y = make_data()
    for observables, groups in [
        ("model", {"model": 6 * 5 + 5 + 5 * 2 + 2}),
        (["out"], {"out": 12}),
        (lambda model: {"kernels": [model.get_layer("hidden").kernel]}, {"kernels": 30}),
    ]:
        model = make_model()
        monitor = kk.callbacks.KoopmanMonitor(observables=observables, window=4)
        model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
        assert {name: b.n_features for name, b in monitor.buffers.items()} == groups
        assert {r.group for r in monitor.history} == set(groups)


def test_frozen_and_weightless_layers_are_skipped_and_validation_and_mixed_precision_work():
    x, y = make_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        frozen = keras.layers.Dense(5, name="frozen")
        model = make_model(extra_layers=[keras.layers.Dropout(0.1, name="drop"), frozen])
        frozen.trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        monitor = kk.callbacks.KoopmanMonitor(window=4)
        model.fit(x, y, epochs=4, validation_data=(x, y), verbose=0, callbacks=[monitor])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert set(monitor.buffers) == {"hidden", "out"}
    assert monitor.step == 4 and not monitor.errors
    assert all(np.all(np.isfinite(r.eigenvalues)) for r in monitor.history)


def test_an_unknown_layer_name_raises_when_fit_starts_listing_the_layers():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(observables=["hidden", "no_such_layer"], window=4)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"no_such_layer.*'hidden', 'out'"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    # Raised before the first step: the user's weights are untouched.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_latest_of_an_unknown_group_raises_listing_the_groups():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    assert monitor.latest("hidden") is None  # before any fit nothing is known yet
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    assert monitor.latest("hidden").group == "hidden"
    with pytest.raises(KeyError, match=r"typo.*\['hidden', 'out'\]"):
        monitor.latest("typo")
    with pytest.raises(KeyError, match="typo"):
        monitor.records("typo")


def test_restart_before_any_fit_resets_and_the_fit_then_starts_normally():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    monitor.restart()  # used to raise AttributeError: _pack
    assert monitor.step == -1 and not monitor.history
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    assert [r.step for r in monitor.history if r.group == "hidden"] == [2, 3]


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"observables": "weights"}, "observables"),
        ({"observables": []}, "observables"),
        ({"every": 0}, "every"),
        ({"every": "batch"}, "every"),
        ({"window": 2}, "window"),
        ({"rank": 0}, "rank"),
        ({"method": "svd"}, "method"),
        ({"analyze_every": 0}, "analyze_every"),
        ({"tolerance": -1}, "tolerance"),
    ],
)
def test_bad_arguments_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        kk.callbacks.KoopmanMonitor(**kwargs)


@pytest.mark.parametrize("make", [
    lambda window: kk.callbacks.KoopmanMonitor(window=window),
    lambda window: kk.SnapshotBuffer(4, window=window),
    lambda window: kk.pruning.UpdateKoopmanPruning(window=window),
])
def test_a_wrong_type_is_a_type_error_and_a_wrong_value_a_value_error_everywhere(make):
    with pytest.raises(TypeError, match=r"window must be an int; got 2\.5"):
        make(2.5)
    with pytest.raises(TypeError, match="window"):
        make(True)
    with pytest.raises(ValueError, match=r"window must be an int >= \d; got 1"):
        make(1)


@pytest.mark.parametrize("kwargs,words", [
    ({"sketch": "yes"}, "sketch"), ({"sketch": 0}, "sketch"),
    ({"storage_dtype": "float16"}, "storage_dtype"), ({"snapshot_memory": 0}, "snapshot_memory"),
])
def test_bad_sketch_arguments_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        kk.callbacks.KoopmanMonitor(**kwargs)


def test_a_log_dir_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="log_dir"):
        kk.callbacks.KoopmanMonitor(log_dir=3)
