"""KoopmanEarlyStopping: fires on converging training, not on diverging training."""

import keras
import numpy as np
import pytest

import keras_koopman as kk
from keras_koopman.callbacks import SpectrumRecord, convergence, forecast_gain


def regression(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(128, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    return x, y


def linear_model(learning_rate, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def test_convergence_measures_of_a_hand_built_record():
    record = SpectrumRecord(
        epoch=0, step=2, group="g", eigenvalues=np.array([1.0 + 0j, 0.5 + 0j]),
        amplitudes=np.array([3.0 + 0j, 1.0 + 0j]), residuals=np.zeros(2), rank=2, snapshots=3,
        metrics={},
    )
    mass, velocity = convergence(record, tolerance=0.01)
    # newest-snapshot weights: 3 * 1**2 = 3 and 1 * 0.5**2 = 0.25
    assert mass == pytest.approx(3 / 3.25)
    assert velocity == pytest.approx(0.25 * 0.5 / 3.25)


@pytest.mark.parametrize("order", ["monitor first", "monitor last", "monitor left out"])
def test_decisions_do_not_depend_on_where_the_monitor_is_listed(order):
    x, y = regression()
    model = linear_model(0.1)
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5)
    callbacks = {"monitor first": [monitor, stop], "monitor last": [stop, monitor],
                 "monitor left out": [stop]}[order]
    model.fit(x, y, epochs=200, batch_size=128, verbose=0, callbacks=callbacks)
    reference_model = linear_model(0.1)
    reference_monitor = kk.callbacks.KoopmanMonitor(window=8)
    reference = kk.callbacks.KoopmanEarlyStopping(reference_monitor, patience=2, min_epochs=5)
    reference_model.fit(x, y, epochs=200, batch_size=128, verbose=0,
                        callbacks=[reference_monitor, reference])
    assert stop.stopped_epoch == reference.stopped_epoch > 0
    assert [d["step"] for d in stop.decisions] == [d["step"] for d in reference.decisions]


def test_restore_best_weights_restores_the_best_validation_epoch():
    x, y = regression()
    rng = np.random.default_rng(1)
    x_val = rng.normal(size=(64, 3)).astype("float32")
    y_val = x_val @ np.array([[1.0], [-2.0], [0.5]], "float32") + 0.3  # offset: a best epoch
    model = linear_model(0.1)
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5,
                                             restore_best_weights=True)
    saved = {}
    losses = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved[epoch] = [w.copy() for w in self.model.get_weights()]
            losses[epoch] = logs["val_loss"]

    model.fit(x, y, epochs=200, batch_size=128, validation_data=(x_val, y_val), verbose=0,
              callbacks=[Keep(), monitor, stop])
    assert stop.stopped_epoch > 0
    best = min(losses, key=losses.get)
    assert stop.best_epoch == best
    for restored, expected in zip(model.get_weights(), saved[best]):
        np.testing.assert_array_equal(restored, expected)


def test_forecast_gain_of_an_exact_decay_towards_a_plateau():
    t = np.arange(20)
    # log-loss = -1 + 0.5 * 0.8^t: a mode at 1 and one at 0.8, both exactly representable.
    gain, forecast = forecast_gain(np.exp(-1.0 + 0.5 * 0.8 ** t), horizon=30)
    np.testing.assert_allclose(forecast, np.exp(-1.0 + 0.5 * 0.8 ** np.arange(20, 50)), rtol=1e-9)
    assert gain == pytest.approx(1 - np.exp(0.5 * (0.8 ** 49 - 0.8 ** 19)), rel=1e-8)


def test_forecast_gain_of_signed_values_works_in_the_raw_scale():
    t = np.arange(16)
    values = -2.0 + 3.0 * 0.7 ** t  # crosses zero: no log
    gain, forecast = forecast_gain(values, horizon=10)
    np.testing.assert_allclose(forecast, -2.0 + 3.0 * 0.7 ** np.arange(16, 26), rtol=1e-8)
    assert gain == pytest.approx((values.min() - forecast.min()) / abs(values.min()), rel=1e-6)


def test_forecast_gain_is_negative_when_the_loss_turns_up():
    t = np.arange(20.0)
    gain, _ = forecast_gain(np.exp(0.01 * (t - 8.0) ** 2), horizon=20)  # past its minimum
    assert gain < 0


@pytest.mark.parametrize("values,words", [([1.0, 2.0], "at least 4"), ([1, 2, np.nan, 3, 4], "finite")])
def test_forecast_gain_bad_values(values, words):
    with pytest.raises(ValueError, match=words):
        forecast_gain(values)


def noisy_regression(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32") + rng.normal(0, 0.5, (256, 1)).astype("float32")
    return x, y


def adam_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def test_loss_rule_stops_adam_once_the_validation_loss_levels_off():
    x, y = noisy_regression()
    full = adam_model().fit(x, y, epochs=300, batch_size=64, validation_split=0.25, verbose=0)
    best_of_budget = min(full.history["val_loss"])
    model = adam_model()
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, restore_best_weights=True)
    history = model.fit(x, y, epochs=300, batch_size=64, validation_split=0.25, verbose=0,
                        callbacks=[monitor, stop])
    assert 10 <= stop.stopped_epoch < 150
    assert stop.decisions[-1]["stop_rule"] == "loss"
    assert stop.decisions[-1]["loss_gain"] < stop.min_gain
    assert len(history.history["loss"]) == stop.stopped_epoch + 1
    # The validation loss it keeps is within 2% of the best of the whole 300-epoch budget.
    assert stop.best <= 1.02 * best_of_budget


def test_loss_rule_keeps_training_while_the_loss_still_falls_steadily():
    x, y = regression()
    model = linear_model(0.02)  # noise-free least squares: the loss shrinks by a steady factor
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, criterion="loss", patience=2,
                                             gain_reference="best")
    history = model.fit(x, y, epochs=60, batch_size=128, verbose=0, callbacks=[monitor, stop])
    assert stop.stopped_epoch == 0 and len(history.history["loss"]) == 60
    gains = [d["loss_gain"] for d in stop.decisions if d["loss_gain"] is not None]
    assert len(gains) == 60 - 20 + 1 and min(gains) > 0.5


def test_weights_criterion_ignores_the_loss_rule():
    x, y = noisy_regression()
    model = adam_model()
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, criterion="weights")
    model.fit(x, y, epochs=60, batch_size=64, validation_split=0.25, verbose=0,
              callbacks=[monitor, stop])
    assert all(d["stop_rule"] in (None, "weights") for d in stop.decisions)
    assert any(d["loss_gain"] is not None and d["loss_gain"] < 0.01 for d in stop.decisions)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"criterion": "val_loss"}, ValueError),
        ({"loss_window": 3}, ValueError),
        ({"horizon": 0}, ValueError),
        ({"min_gain": -0.1}, ValueError),
        ({"loss_rank": 0}, ValueError),
        ({"tolerance": -1}, ValueError),
        ({"mass": 1.5}, ValueError),
        ({"max_velocity": "small"}, TypeError),  # a wrong type (ValueError before 0.2)
        ({"patience": 0}, ValueError),
        ({"min_epochs": -1}, ValueError),
        ({"groups": "dense"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        kk.callbacks.KoopmanEarlyStopping(kk.callbacks.KoopmanMonitor(), **kwargs)


def test_monitor_must_be_a_koopman_monitor():
    with pytest.raises(TypeError, match="monitor"):
        kk.callbacks.KoopmanEarlyStopping(keras.callbacks.EarlyStopping())


def test_the_stop_says_which_rule_fired_with_its_numbers(tmp_path, capsys):
    """The decision, the message and the TensorBoard text carry the same reason: the loss rule
    with its forecast gain, and which layers' weights still move; the message numbers the
    epoch as the progress bar does (stopped_epoch + 1, as Keras's EarlyStopping prints it)."""
    x, y = noisy_regression()
    model = adam_model()
    monitor = kk.callbacks.KoopmanMonitor(window=8, log_dir=tmp_path)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, restore_best_weights=True, verbose=1)
    model.fit(x, y, epochs=300, batch_size=64, validation_split=0.25, verbose=0,
              callbacks=[monitor, stop])
    decision = stop.decisions[-1]
    assert decision["stop_rule"] == "loss" and decision["epoch"] == stop.stopped_epoch > 0
    reason = decision["reason"]
    assert reason.startswith("loss rule for 2 checks: the Koopman forecast of val_loss gains")
    assert f"{decision['loss_gain']:.2%}" in reason
    assert all(d["reason"] is None for d in stop.decisions[:-1])
    (line,) = [l for l in capsys.readouterr().out.splitlines() if "KoopmanEarlyStopping" in l]
    assert line == (f"Epoch {stop.stopped_epoch + 1}: KoopmanEarlyStopping: stopping: {reason}; "
                    f"restored the weights of epoch {stop.best_epoch + 1}")

    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    (event,) = accumulator.Tensors("koopman/stop_reason")
    assert event.step == stop.stopped_epoch  # Keras's TensorBoard step of that epoch's loss
    assert event.tensor_proto.string_val[0].decode() == (
        f"Epoch {stop.stopped_epoch + 1}: {reason}; restored the weights of epoch "
        f"{stop.best_epoch + 1}")


def test_without_validation_the_loss_rule_reads_the_training_loss():
    x, y = noisy_regression()
    model = adam_model()
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, criterion="loss")
    history = model.fit(x, y, epochs=300, batch_size=64, verbose=0, callbacks=[monitor, stop])
    assert 0 < stop.stopped_epoch < 299
    # Without validation the defaults read the last 20 training losses against the progress
    # made since the first epoch.
    losses = history.history["loss"]
    forecast = forecast_gain(losses[-20:], stop.horizon, stop.loss_rank)[1]
    best = min(losses)
    gain = (best - forecast.min()) / (losses[0] - best)
    assert stop.decisions[-1]["loss_gain"] == pytest.approx(gain)
    assert gain < stop.min_gain
    assert "forecast of loss gains" in stop.decisions[-1]["reason"]


def test_progress_gain_of_an_exponential_decay_is_analytic():
    """loss_k = r^k (a plateau at 0): the forecast of the next h epochs gains
    (r^K - r^(K+h)) / (1 - r^K) of the progress made after K epochs."""
    r, K, h = 0.9, 40, 30
    losses = r ** np.arange(K + 1)
    _, forecast = forecast_gain(losses[-20:], horizon=h, rank=3)
    expected = (r**K - r ** (K + h)) / (1 - r**K)
    assert kk.callbacks.progress_gain(losses, forecast) == pytest.approx(expected, rel=1e-6)
    assert kk.callbacks.progress_gain([1.0, 1.0, 1.2], forecast) == float("inf")
