"""KoopmanAccelerator: exact jumps on linear dynamics, exact undo, horizon adaptation."""

import dataclasses

import keras
import numpy as np
import pytest

import keras_koopman as kk

from helpers import TWO_CPUS_SCRIPT


def least_squares(seed=0):
    # Three outputs share the 2 x 2 Hessian of one input + bias: 6 weights move in 2 modes
    # (eigenvalues ~0.80 and ~0.33 at learning rate 0.3) plus the fixed point, so a linear map
    # on the 3 directions the snapshots span reproduces the (affine) dynamics exactly.
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.normal(size=(64, 1))
    y = x @ np.array([[1.0, -2.0, 0.5]]) + np.array([0.3, -0.1, 0.2]) + rng.normal(0, 0.1, (64, 3))
    return x, y


def linear_model(learning_rate):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense",
                                                                    dtype="float64")])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def test_one_jump_lands_on_the_least_squares_solution():
    # Full-batch gradient descent on least squares: w_{k+1} = (I - eta H) w_k + eta g, exactly
    # linear (affine) dynamics, so the DMD's limit is the normal-equations solution.
    x, y = least_squares()
    design = np.hstack([x, np.ones((len(x), 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]  # [2, 3]: kernel row, then bias
    model = linear_model(0.3)
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=7, horizon=100_000, probe=(x, y),
                                           max_horizon=100_000)
    model.fit(x, y, epochs=7, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"] and attempt["loss_after"] < attempt["loss_before"]
    kernel, bias = model.get_layer("dense").get_weights()
    np.testing.assert_allclose(np.vstack([kernel, bias]), solution, atol=1e-4)
    # Without the jump, 7 epochs of gradient descent are still far from it.
    plain = linear_model(0.3)
    plain.fit(x, y, epochs=7, batch_size=len(x), shuffle=False, verbose=0)
    kernel, bias = plain.get_layer("dense").get_weights()
    assert np.max(np.abs(np.vstack([kernel, bias]) - solution)) > 1e-2


def test_a_rejected_jump_leaves_the_weights_bit_identical():
    x, y = least_squares()
    model = linear_model(0.3)
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=3, observables="model")
    # A probe whose targets are far from the training targets: the jump towards the training
    # fixed point makes its loss worse, so the guard undoes it.
    probe = (x, -5.0 * y)
    before = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            before[epoch] = [w.copy() for w in self.model.get_weights()]

    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=64, probe=probe)
    model.fit(x, y, epochs=6, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[Keep(), monitor, jump])
    (attempt,) = jump.jumps
    assert not attempt["accepted"] and attempt["loss_after"] > attempt["loss_before"]
    for restored, expected in zip(model.get_weights(), before[5]):
        np.testing.assert_array_equal(restored, expected)
    assert jump.horizon == 32  # halved after the rejection


def test_horizon_doubles_after_kept_jumps_within_its_bounds():
    x, y = least_squares()
    model = linear_model(0.05)
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=3, probe=(x, y),
                                           max_horizon=8)
    model.fit(x, y, epochs=18, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    assert [j["horizon"] for j in jump.jumps] == [3, 6, 8]
    assert all(j["accepted"] for j in jump.jumps)
    assert jump.horizon == 8


@pytest.mark.parametrize("kwargs,words", [
    ({"every": 0}, "every"),
    ({"horizon": 0}, "horizon"),
    ({"guard": "accuracy"}, "guard must be"),
    ({"guard": "loss", "probe": None}, "needs probe"),
    ({"optimizer_state": "clear"}, "optimizer_state"),
    ({"min_horizon": 10, "max_horizon": 5}, "must not exceed"),
])
def test_bad_arguments(kwargs, words):
    arguments = {"probe": (np.zeros((2, 3)), np.zeros((2, 1)))}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=words):
        kk.callbacks.KoopmanAccelerator(kk.callbacks.KoopmanMonitor(), **arguments)


def test_a_probe_that_is_not_a_pair_is_a_type_error():
    with pytest.raises(TypeError, match="probe must be a pair"):
        kk.callbacks.KoopmanAccelerator(kk.callbacks.KoopmanMonitor(), probe=np.zeros((2, 3)))


def test_with_no_argument_but_the_monitor_the_next_epoch_guards_the_jump():
    # What a Keras user writes first: no probe. The jump of epoch 7 is judged by the training
    # loss of epoch 8, which must not be above epoch 7's (Keras's own logs, recorded apart).
    x, y = least_squares()
    solution = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    model = linear_model(0.3)
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=7, horizon=100_000,
                                           max_horizon=100_000)
    assert jump.guard == "next_epoch"
    history = model.fit(x, y, epochs=8, batch_size=len(x), shuffle=False, verbose=0,
                        callbacks=[monitor, jump])
    (attempt,) = jump.jumps
    losses = history.history["loss"]
    assert attempt["guard"] == "next_epoch" and attempt["epoch"] == 6 and attempt["accepted"]
    assert attempt["loss_before"] == pytest.approx(losses[6])
    assert attempt["loss_after"] == pytest.approx(losses[7]) and losses[7] < losses[6]
    # The jump landed on the least-squares solution, and one epoch of GD there stays on it.
    kernel, bias = model.get_layer("dense").get_weights()
    np.testing.assert_allclose(np.vstack([kernel, bias]), solution, atol=1e-4)
    assert jump.horizon == 100_000


def snapshot_state(model):
    return ([w.copy() for w in model.get_weights()],
            [v.numpy().copy() for v in model.optimizer.variables])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_jump_the_next_epoch_finds_worse_is_undone_exactly(jit_compile, monkeypatch):
    # A jump far off the trajectory (every weight times 30): the next epoch's training loss is
    # worse, so the weights and the Adam moments go back bit for bit to the end of the jump's
    # epoch (recorded by an independent callback that runs before the accelerator), and the
    # epoch trained from the jump is dropped.
    x, y = least_squares()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense")])
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=jit_compile)
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3)
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=4)

    def far_away(self):
        return [(variables, [30.0 * v.value for v in variables])
                for variables in self.monitor.groups.values()]

    monkeypatch.setattr(kk.callbacks.KoopmanAccelerator, "_targets", far_away)
    states = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            states[epoch] = snapshot_state(self.model)

    after = {}

    class After(keras.callbacks.Callback):  # after the accelerator: what training goes on from
        def on_epoch_end(self, epoch, logs=None):
            after[epoch] = snapshot_state(self.model)

    model.fit(x, y, epochs=6, batch_size=16, shuffle=False, verbose=0,
              callbacks=[Record(), monitor, jump, After()])
    (attempt,) = jump.jumps
    assert attempt["epoch"] == 4 and not attempt["accepted"]
    assert attempt["loss_after"] > attempt["loss_before"]
    assert "got worse" in attempt["reason"] and jump.horizon == 2
    jumped = after[4][0]
    assert not np.allclose(jumped[0], states[4][0][0])  # the jump was made ...
    weights, optimizer = after[5]  # ... and undone at the end of epoch 5:
    for restored, expected in zip(weights, states[4][0]):
        np.testing.assert_array_equal(restored, expected)
    moments = kk.callbacks.accelerator.optimizer_slots(model.optimizer)
    slot_ids = {id(v) for v in moments}
    for variable, value, expected in zip(model.optimizer.variables, optimizer, states[4][1]):
        if id(variable) in slot_ids:
            np.testing.assert_array_equal(value, expected)
    assert monitor.buffers["dense"].count == 1  # a new trajectory from the restored weights


def test_an_unjudged_jump_is_undone_when_fit_ends_first():
    # Another callback stops training at the jump's epoch: no epoch judges the jump, so the
    # weights the user gets back are those before it.
    x, y = least_squares()
    model = linear_model(0.05)
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=10)
    before = {}

    class StopAtFive(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            before[epoch] = [w.copy() for w in self.model.get_weights()]
            if epoch == 4:
                self.model.stop_training = True

    model.fit(x, y, epochs=20, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[StopAtFive(), monitor, jump])
    (attempt,) = jump.jumps
    assert not attempt["accepted"] and attempt["reason"] == "fit ended before an epoch judged it"
    for restored, expected in zip(model.get_weights(), before[4]):
        np.testing.assert_array_equal(restored, expected)


def test_no_jump_is_tried_at_the_last_epoch():
    x, y = least_squares()
    model = linear_model(0.05)
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=10)
    model.fit(x, y, epochs=10, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    assert [j["epoch"] for j in jump.jumps] == [4]  # epoch 9 is the last: nothing judges it


def test_node_wise_jump_equals_per_node_kk_dmd():
    # observables="nodes": one DMD per output unit over its incoming weights and bias, batched.
    # The jump must equal what kk.dmd on each unit's own snapshots predicts.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(128, 3))
    y = np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 0]], axis=1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(5, activation="tanh", name="hidden", dtype="float64"),
        keras.layers.Dense(2, name="out", dtype="float64"),
    ])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=7, rank=3)
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.update({name: buffer.snapshots().numpy()
                         for name, buffer in monitor.buffers.items()})

    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=4, observables="nodes",
                                           guard=None)
    model.fit(x, y, epochs=6, batch_size=128, shuffle=False, verbose=0,
              callbacks=[monitor, Capture(), jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"]
    for name in ("hidden", "out"):
        kernel, bias = model.get_layer(name).get_weights()
        snapshots = seen[name]  # [7, fan_in * units + units]: kernel row-major, then bias
        m = len(snapshots)
        units = bias.shape[0]
        fan_in = kernel.shape[0]
        for unit in range(units):
            columns = [i * units + unit for i in range(fan_in)] + [fan_in * units + unit]
            result = kk.dmd(snapshots[:, columns].astype(np.float64), rank=3)
            values = result.eigenvalues.numpy()
            values = np.where(np.abs(values - 1) <= monitor.tolerance, 1.0, values)
            expected = np.real(result.modes.numpy() @ (result.amplitudes.numpy()
                                                       * values ** (m - 1 + 4)))
            # Agreement to float64 rounding amplified by the rank cut: the batched DMD goes
            # through Gram matrices, kk.dmd through the SVD of these small snapshots.
            np.testing.assert_allclose(np.append(kernel[:, unit], bias[unit]), expected,
                                       rtol=1e-8, atol=1e-10)


def test_node_index_of_dense_and_conv_variables():
    dense = keras.layers.Dense(3)
    dense.build((None, 2))
    index = kk.callbacks.accelerator.node_index(dense.weights)
    flat = np.concatenate([w.numpy().ravel() for w in dense.weights])
    kernel, bias = dense.get_weights()
    for unit in range(3):
        np.testing.assert_array_equal(flat[index[unit]], np.append(kernel[:, unit], bias[unit]))
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 8, 8, 2))
    index = kk.callbacks.accelerator.node_index(conv.weights)
    assert index.shape == (4, 3 * 3 * 2 + 1)
    flat = np.concatenate([w.numpy().ravel() for w in conv.weights])
    kernel, bias = conv.get_weights()
    np.testing.assert_array_equal(flat[index[2]], np.append(kernel[..., 2].ravel(), bias[2]))
    # Variables that do not share their last axis have no node structure.
    assert kk.callbacks.accelerator.node_index(
        [keras.Variable(np.zeros((2, 3))), keras.Variable(np.zeros(4))]) is None


def test_a_jump_that_overflows_is_refused_and_leaves_finite_weights():
    # Gradient descent past its stability limit: the weights oscillate with growing amplitude,
    # and a 10^5-step extrapolation overflows float32. No NaN or Inf may reach the model.
    x, y = least_squares()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense")])
    # The larger Hessian eigenvalue is ~2.7 here: learning rate 0.9 gives a factor ~ -1.4.
    model.compile(keras.optimizers.SGD(0.9), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=100_000, guard=None,
                                           max_horizon=100_000)
    model.fit(x, y, epochs=6, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    (attempt,) = jump.jumps
    assert not attempt["accepted"] and "not finite" in attempt["reason"]
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert jump.horizon == 50_000



def test_a_group_of_one_variable_jumps_to_its_dmd_prediction():
    # A kernel without bias: the whole prediction is one piece (it used to fail to split).
    x, y = least_squares()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(3, use_bias=False, name="dense")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=2)
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=5, guard=None)
    snapshots = []

    class Before(keras.callbacks.Callback):  # the window the jump reads, recorded on its own
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(model.get_layer("dense").kernel.numpy().ravel())

    model.fit(x, y, epochs=6, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, Before(), jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"], attempt["reason"]
    window = np.stack(snapshots)  # the monitor's 6 newest: the ends of epochs 0-5
    expected = kk.dmd(window.astype(np.float64), rank=2)
    eigenvalues = np.asarray(expected.eigenvalues)
    snapped = np.where(np.abs(eigenvalues - 1) <= monitor.tolerance, 1.0, eigenvalues)
    # 10 steps after the oldest snapshot: the newest (5) plus the horizon (5).
    predicted = dataclasses.replace(expected, eigenvalues=snapped).predict([10]).numpy()[0]
    np.testing.assert_allclose(model.get_layer("dense").kernel.numpy().ravel(), predicted,
                               rtol=1e-3, atol=1e-5)


MIRRORED_SCRIPT = TWO_CPUS_SCRIPT + r"""
y = (x @ rng.normal(size=(4, 2))).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.5), "mse")
monitor = kk.callbacks.KoopmanMonitor(window=6)
jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=8, probe=(x, y),
                                       observables=os.environ["OBSERVABLES"])
history = model.fit(x, y, epochs=15, batch_size=64, verbose=0, callbacks=[monitor, jump])
replicas = []
for variable in model.trainable_variables:
    inner = variable.value  # a MirroredVariable: one copy per device in .values
    per_device = [v.numpy() for v in getattr(inner, "values", [inner])]
    replicas.append(max(float(np.max(np.abs(p - per_device[0]))) for p in per_device))
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "copies": len(getattr(model.trainable_variables[0].value, "values", [0])),
    "jumps": [(j["accepted"], j["reason"]) for j in jump.jumps],
    "finite": all(bool(np.all(np.isfinite(w))) for w in model.get_weights()),
    "replica_gap": max(replicas),
    "errors": [str(e) for e in monitor.errors],
    "loss": history.history["loss"],
    "probe_loss": float(model.evaluate(x, y, verbose=0)),
}))
"""


@pytest.mark.parametrize("observables", ["layers", "nodes"])
def test_accelerator_under_mirrored_strategy_on_two_devices(observables):
    # A fresh process: logical devices must be configured before TensorFlow starts.
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, OBSERVABLES=observables, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(li for li in done.stdout.splitlines() if li.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["replicas"] == 2 and result["copies"] == 2
    assert not result["errors"]
    assert len(result["jumps"]) == 3 and any(accepted for accepted, _ in result["jumps"])
    assert all("failed" not in reason for _, reason in result["jumps"])
    assert result["finite"] and result["replica_gap"] == 0.0  # every replica got the jump
    assert result["probe_loss"] < result["loss"][0]


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.SGD(0.1, momentum=0.9), lambda: keras.optimizers.Adam(0.01)])
def test_optimizer_state_reset_zeroes_the_moments_but_not_the_rate_or_the_step(optimizer):
    x, y = least_squares()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense")])
    model.compile(optimizer(), "mse")
    rate = float(model.optimizer.learning_rate)
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=5, guard=None,
                                           optimizer_state="reset")
    moments = {}

    class Moments(keras.callbacks.Callback):  # runs after the accelerator
        def on_epoch_end(self, epoch, logs=None):
            moments[epoch] = [np.abs(v.numpy()).max() for v in
                              kk.callbacks.accelerator.optimizer_slots(self.model.optimizer)]

    model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[monitor, jump, Moments()])
    assert jump.jumps[0]["accepted"]
    slots = kk.callbacks.accelerator.optimizer_slots(model.optimizer)
    assert slots and len(slots) == len(model.optimizer.variables) - 2  # minus step and rate
    assert moments[3] and max(moments[3]) > 0 and max(moments[4]) == 0.0
    assert float(model.optimizer.learning_rate) == pytest.approx(rate)
    assert int(model.optimizer.iterations) == 5 * 4  # 64 samples / 16 per batch, 5 epochs
    # Training goes on from the jump: the next epochs still lower the loss.
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


def numpy_prediction(snapshots, rank, steps, tolerance):
    """Exact DMD in NumPy (SVD of X0 at ``rank``), eigenvalues within ``tolerance`` of 1 taken
    as 1: the state ``steps`` snapshots after the oldest."""
    x0, x1 = snapshots[:-1].T, snapshots[1:].T
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    rank = min(rank, int(np.sum(s > s[0] * 1e-10)))
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    eigenvalues, w = np.linalg.eig(u.T @ x1 @ v / s)
    modes = x1 @ v / s @ w
    amplitudes = np.linalg.lstsq(modes, snapshots[0], rcond=None)[0]
    eigenvalues = np.where(np.abs(eigenvalues - 1) <= tolerance, 1.0, eigenvalues)
    return np.real(modes @ (amplitudes * eigenvalues ** steps))


def unit_columns(kernel_shape, units):
    fan_in = kernel_shape[0]
    return [[i * units + unit for i in range(fan_in)] + [fan_in * units + unit]
            for unit in range(units)]


class Trajectory(keras.callbacks.Callback):
    """Sets a Dense layer's (kernel, bias) to ``states[k + 1]`` at the end of epoch k, before
    the monitor (listed after it) takes its snapshot."""

    def __init__(self, layer, states):
        super().__init__()
        self.layer, self.states = layer, states

    def on_epoch_end(self, epoch, logs=None):
        size = int(np.prod(self.layer.kernel.shape))
        self.layer.kernel.assign(self.states[epoch + 1][:size].reshape(self.layer.kernel.shape))
        self.layer.bias.assign(self.states[epoch + 1][size:])


def test_auto_observables_pick_what_predicts_the_held_out_snapshot_better():
    # Unit 0 decays at 0.5, unit 1 at 0.9, each towards its own constant: node-wise DMDs of
    # rank 2 are exact, one layer-wise DMD of rank 2 is not (it needs 3 modes).
    rng = np.random.default_rng(0)
    ends, starts = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    states = []
    for k in range(12):
        units = [ends[u] + rates * starts[u] for u, rates in ((0, 0.5 ** k), (1, 0.9 ** k))]
        kernel = np.stack([units[0][:3], units[1][:3]], axis=1)  # [fan_in 3, units 2]
        states.append(np.concatenate([kernel.ravel(), [units[0][3], units[1][3]]]))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.compile(keras.optimizers.SGD(0.0), "mse")  # no training: only the trajectory moves
    layer = model.get_layer("dense")
    layer.kernel.assign(states[0][:6].reshape(3, 2))
    layer.bias.assign(states[0][6:])
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=2, tolerance=1e-6)
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=8, horizon=2, observables="auto",
                                           guard=None)
    seen = {}
    capture = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.update(
        window=monitor.buffers["dense"].snapshots().numpy()))  # what the jump is fitted to
    model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=8, verbose=0,
              callbacks=[Trajectory(layer, states), monitor, capture, jump])
    (attempt,) = jump.jumps
    assert jump.choices == attempt["observables"] == {"dense": "nodes"}
    window = seen["window"].astype(np.float64)  # states 1-8
    np.testing.assert_allclose(window, np.array(states[1:9]), rtol=1e-6, atol=1e-6)
    held_out = {"layers": numpy_prediction(window[:-1], 2, 7, 1e-6)}
    held_out["nodes"] = np.zeros(8)
    for columns in unit_columns((3, 2), 2):
        held_out["nodes"][columns] = numpy_prediction(window[:-1, columns], 2, 7, 1e-6)
    errors = {key: np.linalg.norm(value - window[-1]) for key, value in held_out.items()}
    assert errors["nodes"] < 1e-4 < errors["layers"]
    # The callback's own held-out errors: the same fits, the same step (m - 1).
    got = jump.held_out_errors["dense"]
    assert got["nodes"] < 1e-4 and got["layers"] == pytest.approx(errors["layers"], rel=1e-3)
    jumped = np.concatenate([layer.kernel.numpy().ravel(), layer.bias.numpy()])
    np.testing.assert_allclose(jumped, states[8 + 2], atol=1e-3)  # 2 past the newest
