"""Events of training written by the callbacks at the places they act, served by the plugin.

Each callback keeps its text summary and also writes a ``koopman_events/<kind>`` summary at the
monitor's epoch, which ``/data/plugin/koopman/events`` serves for the dashboard's markers.
"""

import warnings

import keras
import numpy as np
import pytest
from test_plugin import ROUTE, client_for

import keras_koopman as kk


def events_of(logdir, run):
    response = client_for(logdir).get(f"{ROUTE}/events", query_string={"run": run})
    assert response.status_code == 200
    return [(e["kind"], e["step"], e["reason"]) for e in response.get_json()["events"]]


def small_model(learning_rate=0.05, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh",
                                                                    name="h"),
                              keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, np.tanh(x[:, :1]).astype("float32")


def test_early_stopping_writes_a_stop_event_with_its_reason(tmp_path):
    x, y = data()
    model = small_model(learning_rate=0.01)
    monitor = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(tmp_path / "run"))
    # A forecast gain below 90% over 5 epochs: it stops as soon as 6 losses are in.
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, criterion="loss", min_epochs=0,
                                             patience=1, loss_window=6, horizon=5,
                                             min_gain=0.9, gain_reference="best")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=40, batch_size=32, verbose=0, callbacks=[monitor, stop])
    assert stop.stopped_epoch > 0
    (event,) = events_of(tmp_path, "run")
    assert event[:2] == ("early_stop", stop.stopped_epoch)
    assert event[2].startswith(f"Epoch {stop.stopped_epoch + 1}: ")
    assert event[2] == f"Epoch {stop.stopped_epoch + 1}: {stop.decisions[-1]['reason']}"


def test_restart_writes_a_restart_event(tmp_path):
    x, y = data()
    model = small_model()
    monitor = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(tmp_path / "run"))
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=1)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("h").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=4, batch_size=32, verbose=0,
                  callbacks=[Poison(), monitor, restart])
    (done,) = restart.restarts
    (event,) = events_of(tmp_path, "run")
    assert event[:2] == ("restart", done["epoch"])
    assert event[2] == f"Epoch {done['epoch'] + 1}: {done['reason']}; {done['action']}"


@pytest.mark.parametrize("horizon,kind", [(100_000, "jump_kept"), (-1, "jump_undone")])
def test_the_accelerator_writes_whether_it_kept_or_undid_a_jump(tmp_path, horizon, kind,
                                                                monkeypatch):
    rng = np.random.default_rng(0)
    x = 2.0 * rng.normal(size=(64, 1))
    y = x @ np.array([[1.0, -2.0, 0.5]]) + np.array([0.3, -0.1, 0.2])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense",
                                                                    dtype="float64")])
    model.compile(keras.optimizers.SGD(0.3), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=5, rank=3, observables="model",
                                          log_dir=str(tmp_path / "run"))
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=100_000,
                                           max_horizon=100_000)
    if horizon < 0:  # a jump far off: the next epoch's loss gets worse and it is undone
        monkeypatch.setattr(jump, "_predict", lambda result, steps: [
            v + 10.0 for v in kk.callbacks.KoopmanAccelerator._predict(jump, result, steps)])
    model.fit(x, y, epochs=6, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"] == (kind == "jump_kept")
    (event,) = events_of(tmp_path, "run")
    assert event[:2] == (kind, 5)  # judged by epoch 6's loss, at that epoch
    assert f"jump of epoch {attempt['epoch'] + 1}" in event[2]
    assert ("kept" if attempt["accepted"] else "undone") in event[2]
    assert attempt["reason"] in event[2]


def test_pruning_updates_write_events_in_the_pruning_run(tmp_path):
    x, y = data(128)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu",
                                                                    name="hidden"),
                              keras.layers.Dense(1, name="out")])
    pruned = kk.pruning.prune_koopman(model, 0.8, schedule=kk.pruning.PolynomialDecay(
        0.2, 0.8, begin_step=3, end_step=5, frequency=1, unit="epoch"))
    pruned.compile("adam", "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3, log_dir=str(tmp_path))
    pruned.fit(x, y, epochs=6, verbose=0, callbacks=[update])
    events = events_of(tmp_path, "pruning")
    assert [kind for kind, _, _ in events] == ["pruning"] * len(update.updates)
    assert [step for _, step, _ in events] == [u["step"] for u in update.updates]
    for (_, _, reason), record in zip(events, update.updates):
        assert f"sparsity {record['sparsity']:.3f} ({record['criterion']})" in reason
