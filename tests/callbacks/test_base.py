"""KoopmanCallback: a decision callback in a few lines, with the monitor listed or left out."""

import keras
import numpy as np
import pytest

import keras_koopman as kk


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 2))).astype("float32")
    return x, y


def make_model(units=6, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(units, name="hidden"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


class StopWhenRadiusSettles(kk.callbacks.KoopmanCallback):
    """A new decision callback written on the base, the engine untouched (~20 lines)."""

    def __init__(self, monitor, change=1e-3):
        super().__init__(monitor)
        self.change = change

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.seen, self.radii = [], {}

    def decide(self, epoch, logs):
        self.seen.append((epoch, self.monitor.step, [r.group for r in self.records]))
        settled = []
        for record in self.records:
            radius = record.metrics["spectral_radius"]
            previous = self.radii.get(record.group)
            settled.append(previous is not None and abs(radius - previous) < self.change)
            self.radii[record.group] = radius
        if settled and all(settled):
            self.log_scalar("koopman/settled_epoch", epoch)
            self.model.stop_training = True


@pytest.mark.parametrize("listed", ["before", "after", "omitted"])
def test_a_decision_callback_on_the_base_sees_the_same_with_the_monitor_anywhere(listed, tmp_path):
    x, y = make_data()
    reference_monitor = kk.callbacks.KoopmanMonitor(window=5)
    reference = StopWhenRadiusSettles(reference_monitor)
    make_model().fit(x, y, epochs=40, batch_size=32, verbose=0,
                     callbacks=[reference_monitor, reference])

    monitor = kk.callbacks.KoopmanMonitor(window=5, log_dir=str(tmp_path))
    decider = StopWhenRadiusSettles(monitor)
    callbacks = {"before": [monitor, decider], "after": [decider, monitor],
                 "omitted": [decider]}[listed]
    history = make_model().fit(x, y, epochs=40, batch_size=32, verbose=0, callbacks=callbacks)
    # The decision saw each epoch's analysis, as with the monitor listed first.
    assert decider.seen == reference.seen
    assert len(history.epoch) == len(reference.seen) < 40
    assert [r.step for r in monitor.history] == [r.step for r in reference_monitor.history]
    for a, b in zip(monitor.history, reference_monitor.history):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-6)
    # It logged through the monitor's logger.
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea

    events = pea.EventAccumulator(str(tmp_path))
    events.Reload()
    assert "koopman/settled_epoch" in events.Tags()["tensors"]


@pytest.mark.parametrize("listed", [True, False])
def test_per_batch_snapshots_are_the_same_with_the_monitor_left_out(listed):
    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
    decider = StopWhenRadiusSettles(monitor, change=0.0)  # never stops
    model = make_model()
    model.fit(x, y, epochs=4, batch_size=32, verbose=0,
              callbacks=[monitor, decider] if listed else [decider])
    # 3 batches an epoch, 12 in all: snapshots at the start and after batches 2, 4, ..., 12.
    assert monitor.step == 6
    layer = model.get_layer("out")
    np.testing.assert_allclose(monitor.buffers["out"].snapshots().numpy()[-1],
                               np.concatenate([layer.kernel.numpy().ravel(),
                                               layer.bias.numpy().ravel()]), rtol=1e-6,
                               atol=1e-6)


def test_a_rebuilt_model_is_gathered_in_a_second_fit_with_the_monitor_left_out():
    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    decider = StopWhenRadiusSettles(monitor, change=0.0)
    make_model(units=6).fit(x, y, epochs=3, verbose=0, callbacks=[decider])
    second = make_model(units=9, seed=1)
    second.fit(x, y, epochs=3, verbose=0, callbacks=[decider])
    hidden = second.get_layer("hidden")
    assert monitor.buffers["hidden"].n_features == 5 * 9 + 9
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy()[-1],
                               np.concatenate([hidden.kernel.numpy().ravel(),
                                               hidden.bias.numpy().ravel()]), rtol=1e-6,
                               atol=1e-6)
    assert monitor.buffers["hidden"].count == 4  # the new model's start and its 3 epochs


def test_a_programming_error_in_a_decision_propagates():
    class Broken(kk.callbacks.KoopmanCallback):
        def decide(self, epoch, logs):
            if self.records:
                return self.records[0].no_such_field

    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    with pytest.raises(AttributeError, match="no_such_field"):
        make_model().fit(x, y, epochs=4, verbose=0, callbacks=[monitor, Broken(monitor)])


def test_the_base_checks_the_monitor_argument():
    with pytest.raises(TypeError, match="monitor must be a kk.callbacks.KoopmanMonitor"):
        StopWhenRadiusSettles("monitor")


def test_two_decision_callbacks_share_an_omitted_per_batch_monitor():
    x, y = make_data()
    listed_monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
    make_model().fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[
        listed_monitor, StopWhenRadiusSettles(listed_monitor, change=0.0)])
    monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
    first, second = (StopWhenRadiusSettles(monitor, change=0.0) for _ in range(2))
    make_model().fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[first, second])
    assert monitor.step == listed_monitor.step == 6  # once per event, not once per callback
    assert first.seen == second.seen
    assert [r.step for r in monitor.history] == [r.step for r in listed_monitor.history]


def test_steps_per_execution_with_the_monitor_left_out():
    x, y = make_data()
    results = []
    for listed in (True, False):
        monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
        decider = StopWhenRadiusSettles(monitor, change=0.0)
        model = make_model()
        model.compile(keras.optimizers.SGD(0.05), "mse", steps_per_execution=2)
        model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                  callbacks=[monitor, decider] if listed else [decider])
        results.append((monitor.step, [r.step for r in monitor.history]))
    # 6 batches an epoch reported in executions of 2: a snapshot every 2 batches, 12 + 1 in all.
    assert results[0] == results[1] and results[0][0] == 12


def test_a_subclass_batch_hook_runs_next_to_the_forwarding():
    class CountsBatches(StopWhenRadiusSettles):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            type(self).batches += 1

    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
    make_model().fit(x, y, epochs=2, batch_size=32, verbose=0,
                     callbacks=[CountsBatches(monitor, change=0.0)])
    assert CountsBatches.batches == 6 and monitor.step == 3


def test_a_fit_that_raises_midway_does_not_break_the_next_fit():
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # a user's Ctrl-C: Keras skips on_train_end

    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=4)
    decider = StopWhenRadiusSettles(monitor, change=0.0)
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=5, verbose=0, callbacks=[monitor, decider, Interrupt()])
    step = monitor.step
    model.fit(x, y, epochs=2, verbose=0, callbacks=[decider])  # monitor left out this time
    assert monitor.step == step + 2 and [e for e, _, _ in decider.seen] == [0, 1]
