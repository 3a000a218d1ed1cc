"""Per-batch snapshots taken inside the train function, against an independent weight record."""

import keras
import numpy as np
import pytest
from helpers import weight_recorder
from test_monitor import make_data, make_model

import keras_koopman as kk


def reference_trajectory(batches, seed=0, samples=64, batch_size=8):
    """The "hidden" layer's weights at the start and after every batch, from an identical
    model fitted with steps_per_execution=1 and a plain per-batch recorder."""
    x, y = make_data(samples=samples)
    model = make_model(seed)
    recorder = weight_recorder(["hidden"], per_batch=True)
    epochs = batches * batch_size // samples
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0,
              callbacks=[recorder])
    return np.stack(recorder.snapshots["hidden"])


def fitted(monitor, epochs, jit_compile=False, steps_per_execution=1, seed=0):
    x, y = make_data()
    model = make_model(seed)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0, callbacks=[monitor])
    return model


@pytest.mark.parametrize("steps_per_execution", [1, 2])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_every_n_batches_gathers_exactly_those_weights(jit_compile, steps_per_execution):
    trajectory = reference_trajectory(batches=16)
    monitor = kk.callbacks.KoopmanMonitor(every=3, window=8)
    model = fitted(monitor, epochs=2, jit_compile=jit_compile,
                   steps_per_execution=steps_per_execution)
    # 16 batches: the start and after batches 3, 6, 9, 12, 15 (with 2 steps per execution a
    # batch hook would only see batches 2, 4, ...).
    assert monitor.step == 5
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy(),
                               trajectory[[0, 3, 6, 9, 12, 15]], rtol=1e-5, atol=1e-6)
    # Keras's own train function is back after fit: a plain fit gathers nothing.
    x, y = make_data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    monitor.tracker.sync()
    assert monitor.step == 5
    # The batch count of the schedule (what a backup saves) is every batch, on the device too.
    assert monitor.state_dict()["schedule"]["batches"] == {"batches": 16}


def test_snapshots_that_leave_the_window_before_the_epoch_ends_are_not_taken():
    trajectory = reference_trajectory(batches=16)
    monitor = kk.callbacks.KoopmanMonitor(every=1, window=4)
    recorded = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            recorded.append((monitor.step, monitor.buffers["hidden"].count,
                             monitor.buffers["hidden"].snapshots().numpy()))

    x, y = make_data()
    model = make_model()
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[monitor, Look()])
    (step_1, count_1, seen_1), (step_2, count_2, seen_2) = recorded
    # Every batch is a step; the buffers hold the newest 4 at each epoch's end ...
    assert (step_1, step_2) == (8, 16)
    np.testing.assert_allclose(seen_1, trajectory[5:9], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen_2, trajectory[13:17], rtol=1e-5, atol=1e-6)
    # ... and only those (with the start) were written: 1 + 4 per epoch, not 1 + 8.
    assert (count_1, count_2) == (5, 9)


def test_analyses_run_once_per_epoch_whatever_every_is():
    monitor = kk.callbacks.KoopmanMonitor(every=1, window=6)
    fitted(monitor, epochs=4)
    # 8 snapshots an epoch: analysed at the end of each epoch (every one has >= 3 stored).
    assert [r.step for r in monitor.records("hidden")] == [8, 16, 24, 32]
    assert [r.epoch for r in monitor.records("hidden")] == [0, 1, 2, 3]


def test_a_second_compile_gathers_from_the_new_train_function():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(every=2, window=10)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[monitor])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=True)
    recorder = weight_recorder(["hidden"], per_batch=True)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
              callbacks=[recorder, monitor])
    second = np.stack(recorder.snapshots["hidden"])  # start of the 2nd fit, then 8 batches
    assert monitor.step == 8  # the start, 4 in each fit's 8 batches
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy()[-4:],
                               second[[2, 4, 6, 8]], rtol=1e-5, atol=1e-6)


def test_nan_inside_the_train_function_is_counted_and_warned_once():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(every=1, window=4)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                kernel = self.model.get_layer("out").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with pytest.warns(RuntimeWarning, match="NaN or Inf") as caught:
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[monitor, Poison()])
    # NaN in "out" makes every gradient NaN: both layers turn NaN in the 2nd epoch.
    assert monitor.nonfinite_groups == {"hidden", "out"}
    assert sum("group 'out'" in str(w.message) for w in caught) == 1  # one warning a group
    # The NaN weights of the 2nd epoch's 4 kept batches were counted, not stored.
    assert sum(e["group"] == "out" for e in monitor.errors) == 4
    assert monitor.tracker.stored("out") == 4  # the first epoch's newest 4


def test_a_custom_loop_that_calls_only_the_hooks_is_gathered_from_the_batch_hook():
    import tensorflow as tf

    x, y = make_data()
    model = make_model()
    recorder = weight_recorder(["hidden"], per_batch=True)
    monitor = kk.callbacks.KoopmanMonitor(every=2, window=8)
    optimizer, loss = keras.optimizers.SGD(0.05), keras.losses.MeanSquaredError()

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            value = loss(yb, model(xb, training=True))
        gradients = tape.gradient(value, model.trainable_weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_weights))

    callbacks = keras.callbacks.CallbackList([recorder, monitor], model=model,
                                             params={"epochs": 1, "steps": 8})
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for batch in range(8):
        callbacks.on_train_batch_begin(batch)
        step(x[8 * batch:8 * batch + 8], y[8 * batch:8 * batch + 8])
        callbacks.on_train_batch_end(batch)
    callbacks.on_epoch_end(0)
    callbacks.on_train_end()
    assert monitor.step == 4
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy(),
                               np.stack(recorder.snapshots["hidden"])[[0, 2, 4, 6, 8]],
                               rtol=1e-6, atol=1e-7)


def test_a_fit_that_raises_leaves_no_gathering_in_later_fits_without_the_monitor():
    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt  # Keras then skips on_train_end

    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(every=1, window=4)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[monitor, Interrupt()])
    monitor.tracker.sync()
    before = (monitor.step, monitor.buffers["hidden"].count)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # the monitor is not in this fit
    monitor.tracker.sync()
    # At most the rest of the interrupted epoch's budget (8 batches, 3 run) can still gather.
    assert monitor.step - before[0] <= 5
    # A later fit with the monitor installs it again and gathers exactly its batches.
    recorder = weight_recorder(["hidden"], per_batch=True)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
              callbacks=[recorder, monitor])
    np.testing.assert_allclose(monitor.buffers["hidden"].snapshots().numpy(),
                               np.stack(recorder.snapshots["hidden"])[5:9], rtol=1e-6,
                               atol=1e-7)


def test_two_per_batch_monitors_on_one_model_both_gather():
    x, y = make_data()
    model = make_model()
    hidden = kk.callbacks.KoopmanMonitor(observables=["hidden"], every=2, window=8)
    out = kk.callbacks.KoopmanMonitor(observables=["out"], every=2, window=8)
    recorder = weight_recorder(["hidden", "out"], per_batch=True)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
              callbacks=[recorder, hidden, out])
    assert hidden.step == out.step == 4
    for monitor, name in ((hidden, "hidden"), (out, "out")):
        np.testing.assert_allclose(monitor.buffers[name].snapshots().numpy(),
                                   np.stack(recorder.snapshots[name])[[0, 2, 4, 6, 8]],
                                   rtol=1e-6, atol=1e-7)


def test_a_train_step_set_on_the_instance_survives():
    x, y = make_data()
    model = make_model()
    calls = []
    original = model.train_step

    def train_step(data):
        calls.append(1)  # traced: once per trace
        return original(data)

    model.train_step = train_step
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    monitor = kk.callbacks.KoopmanMonitor(every=2, window=8)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[monitor])
    assert model.train_step is train_step and calls and monitor.step == 4
