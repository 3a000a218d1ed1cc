"""Hostile conditions inside fit: NaN weights, still or frozen layers, weightless layers,
mixed precision, a model rebuilt between fits, unwritable log directories (another Keras
backend is refused at import: tests/test_package.py)."""

import warnings

import keras
import numpy as np
import pytest

import keras_koopman as kk


def two_branch_model(seed=0):
    """Two outputs with separate losses: NaN in branch ``a`` leaves branch ``b``'s gradients
    finite, so ``b`` keeps training while ``a`` is poisoned."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile(keras.optimizers.SGD(0.05), loss={"a": "mse", "b": "mse"})
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = x @ rng.standard_normal((4, 3)).astype(np.float32)
    return x, y


def koopman_warnings(caught, text=""):
    return [w for w in caught if "KoopmanMonitor" in str(w.message) and text in str(w.message)]


def test_nan_weights_skip_the_group_with_one_warning_and_fit_goes_on():
    x, y = data()
    model = two_branch_model()
    monitor = kk.callbacks.KoopmanMonitor(window=4)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("a").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, {"a": y, "b": y}, epochs=6, verbose=0,
                            callbacks=[Poison(), monitor])
    assert len(history.history["loss"]) == 6
    assert monitor.nonfinite_groups == {"a"}
    # Five NaN gatherings (epochs 1-5), one warning.
    assert len(koopman_warnings(caught, "'a'")) == 1
    assert sum(e["group"] == "a" and "NaN" in e["error"] for e in monitor.errors) == 5
    # The healthy branch kept being gathered: its buffer holds its final weights.
    b = model.get_layer("b")
    newest = monitor.buffers["b"].snapshots().numpy()[-1]
    expected = np.concatenate([b.kernel.numpy().ravel(), b.bias.numpy().ravel()])
    np.testing.assert_allclose(newest, expected, rtol=1e-6, atol=1e-7)
    assert monitor.latest("b").step == 6
    # The poisoned group's buffer kept its last finite window: no NaN in it.
    assert np.all(np.isfinite(monitor.buffers["a"].snapshots().numpy()))


def test_weights_that_never_move_are_reported_static_without_errors():
    x, y = data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    still = keras.layers.Dense(3, name="still")(inputs)
    moving = keras.layers.Dense(3, name="moving")(inputs)
    # No gradient reaches "still": its output is multiplied by 0.
    out = keras.layers.Add()([moving, keras.layers.Lambda(lambda t: 0.0 * t)(still)])
    frozen = keras.layers.Dense(3, name="frozen")
    frozen.trainable = False
    model = keras.Model(inputs, frozen(out))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=4, verbose=0, callbacks=[monitor])
    assert not koopman_warnings(caught) and not monitor.errors
    assert set(monitor.buffers) == {"still", "moving"}  # frozen layers are not watched
    record = monitor.latest("still")
    assert record.metrics["motion"] == 0.0
    assert record.rank == 1
    np.testing.assert_allclose(record.eigenvalues, [1.0], atol=1e-9)
    assert record.metrics["max_residual"] < 1e-6  # Gram route: about sqrt(eps)
    assert monitor.latest("moving").metrics["motion"] > 1e-4


def test_layers_without_weights_are_skipped_and_a_weightless_model_only_warns():
    x, y = data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.1, name="drop"),
                              keras.layers.Dense(3, name="dense"),
                              keras.layers.Activation("tanh", name="act")])
    model.compile("sgd", "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    assert list(monitor.buffers) == ["dense"] and len(monitor.records("dense")) == 2

    weightless = keras.Sequential([keras.Input((3,)), keras.layers.Activation("tanh")])
    weightless.compile("sgd", "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    with pytest.warns(RuntimeWarning, match="no observable group has trainable weights"):
        history = weightless.fit(x[:, :3], y, epochs=2, verbose=0, callbacks=[monitor])
    assert len(history.history["loss"]) == 2
    assert monitor.disabled and monitor.history == []


def test_mixed_float16_models_are_gathered_from_their_float32_weights():
    x, y = data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
                                  keras.layers.Dense(3, name="out", dtype="float32")])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        monitor = kk.callbacks.KoopmanMonitor(window=4)
        recorder = []

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                layer = self.model.get_layer("hidden")
                recorder.append(np.concatenate([layer.kernel.numpy().ravel(),
                                                layer.bias.numpy().ravel()]))

        model.fit(x, y, epochs=5, verbose=0, callbacks=[monitor, Record()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("hidden").kernel.dtype == "float32"
    assert not monitor.errors
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy()[1:],
                               np.array(recorder[-3:]), rtol=1e-6, atol=1e-7)
    reference = kk.dmd(monitor.buffers["hidden"].snapshots().numpy().astype(np.float64))
    np.testing.assert_allclose(np.sort_complex(monitor.latest("hidden").eigenvalues),
                               np.sort_complex(reference.eigenvalues.numpy()), atol=1e-5)


def test_a_model_rebuilt_between_fits_gets_new_buffers_and_steps_carry_on(tmp_path):
    x, y = data()
    monitor = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(tmp_path))

    def build(units):
        keras.utils.set_random_seed(units)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="hidden"),
                                  keras.layers.Dense(3, name="out")])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        return model

    first = build(5)
    first.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    steps_first = [r.step for r in monitor.history]
    # An independent copy of what the first model's records hold, to compare after the refit.
    saved = [(r.step, r.group, np.array(r.eigenvalues, copy=True)) for r in monitor.history]
    second = build(7)  # another architecture: buffers of other sizes
    second.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    assert monitor.buffers["hidden"].n_features == 4 * 7 + 7
    new = [r for r in monitor.history if r.step > max(steps_first)]
    assert steps_first == [2, 2, 3, 3] and [r.step for r in new] == [6, 6, 7, 7]
    # The first model's records are kept as they were.
    assert [(r.step, r.group) for r in monitor.history[:4]] == [(s, g) for s, g, _ in saved]
    for record, (_, _, eigenvalues) in zip(monitor.history[:4], saved):
        np.testing.assert_array_equal(record.eigenvalues, eigenvalues)
    # The new buffer holds the new model's trajectory only (3 snapshots since its fit began).
    assert len(monitor.buffers["hidden"]) == 4 and monitor.buffers["hidden"].count == 4
    layer = second.get_layer("hidden")
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy()[-1],
                               np.concatenate([layer.kernel.numpy().ravel(),
                                               layer.bias.numpy().ravel()]), rtol=1e-6)
    assert not monitor.errors


@pytest.mark.parametrize("make", [
    lambda path: kk.callbacks.KoopmanMonitor(log_dir=path),
    lambda path: kk.pruning.UpdateKoopmanPruning(log_dir=path),
])
def test_an_unwritable_log_dir_raises_before_training(tmp_path, make):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="log_dir .*a_file"):
        make(str(blocker / "logs"))
    with pytest.raises(TypeError, match="log_dir"):
        make(3)
    created = tmp_path / "new" / "logs"
    make(str(created))
    assert created.is_dir()



def many_tiny_layers(count, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    outputs = [keras.layers.Dense(1, name=f"tiny_{i}")(inputs) for i in range(count)]
    model = keras.Model(inputs, keras.layers.Add()(outputs))
    model.compile(keras.optimizers.SGD(0.02), "mse")
    return model


def test_many_tiny_layers_share_one_buffer_and_match_separate_buffers(monkeypatch):
    from keras_koopman.callbacks import plan

    x, y = data()
    y = y[:, :1]
    model = many_tiny_layers(40)
    packed = kk.callbacks.KoopmanMonitor(window=5)
    separate = kk.callbacks.KoopmanMonitor(window=5)

    class NoPacking(keras.callbacks.Callback):  # between the two: the second one builds apart
        def on_train_begin(self, logs=None):
            monkeypatch.setattr(plan, "PACK_MIN_GROUPS", 10**9)

    model.fit(x, y, epochs=6, verbose=0, callbacks=[packed, NoPacking(), separate])
    assert all(isinstance(b, kk.buffers.PackedView) for b in packed.buffers.values())
    assert not any(isinstance(b, kk.buffers.PackedView) for b in separate.buffers.values())
    assert len(packed.buffers) == 40 and not packed.errors and not separate.errors
    assert [(r.step, r.group, r.rank) for r in packed.history] == [
        (r.step, r.group, r.rank) for r in separate.history]
    assert len(packed.history) == 5 * 40  # steps 2 to 6
    for a, b in zip(packed.history, separate.history):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-6)
        np.testing.assert_allclose(np.abs(a.amplitudes), np.abs(b.amplitudes), rtol=1e-5,
                                   atol=1e-9)
        np.testing.assert_allclose(a.residuals, b.residuals, atol=1e-6)
        for key in ("spectral_radius", "near_one_fraction", "unstable_count", "motion"):
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-5, abs=1e-8), key
    # Each group's stored window is its layer's trajectory.
    layer = model.get_layer("tiny_7")
    np.testing.assert_allclose(packed.buffers["tiny_7"].snapshots().numpy(),
                               separate.buffers["tiny_7"].snapshots().numpy(), rtol=1e-6)
    np.testing.assert_allclose(packed.buffers["tiny_7"].snapshots().numpy()[-1],
                               np.concatenate([layer.kernel.numpy().ravel(),
                                               layer.bias.numpy().ravel()]), rtol=1e-6)


def test_a_nan_in_one_packed_group_skips_only_that_group():
    x, y = data()
    model = many_tiny_layers(36)
    monitor = kk.callbacks.KoopmanMonitor(window=4)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:  # the last epoch: training itself stays finite until then
                kernel = self.model.get_layer("tiny_3").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y[:, :1], epochs=4, verbose=0, callbacks=[Poison(), monitor])
    assert isinstance(monitor.buffers["tiny_3"], kk.buffers.PackedView)
    assert monitor.nonfinite_groups == {"tiny_3"}
    assert len(koopman_warnings(caught, "'tiny_3'")) == 1
    newest = [r for r in monitor.history if r.step == 4]
    assert len(newest) == 35 and "tiny_3" not in {r.group for r in newest}
    assert np.all(np.isfinite(monitor.buffers["tiny_3"].snapshots().numpy()))
