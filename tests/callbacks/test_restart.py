"""KoopmanRestart: bad initializations restart, good ones do not; restarts really re-initialise."""

import warnings

import keras
import numpy as np
import pytest

import keras_koopman as kk
from keras_koopman.callbacks import SpectrumRecord, diagnose


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data[:600] / 16).astype("float32"), data.target[:600]


def mlp(kernel="glorot_uniform", bias="zeros", activation="relu", seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation=activation, kernel_initializer=kernel,
                           bias_initializer=bias, name="h1"),
        keras.layers.Dense(32, activation=activation, kernel_initializer=kernel,
                           bias_initializer=bias, name="h2"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def record(group, eigenvalues, amplitudes, snapshots=4):
    eigenvalues = np.asarray(eigenvalues, np.complex128)
    return SpectrumRecord(epoch=0, step=snapshots - 1, group=group, eigenvalues=eigenvalues,
                          amplitudes=np.asarray(amplitudes, np.complex128),
                          residuals=np.zeros(len(eigenvalues)), rank=len(eigenvalues),
                          snapshots=snapshots, metrics={})


def test_diagnose_on_hand_built_spectra():
    healthy = [record("a", [1.0, 0.8], [1.0, 0.5]), record("b", [1.0, 0.7], [1.0, 0.4])]
    assert diagnose(healthy, [2.0, 1.0]) is None
    growing = [record("a", [1.3, 1.0], [0.2, 1.0])]  # 0.2 * 1.3**3 = 0.44 of 1.44
    assert diagnose(growing, [2.0, 2.5]).startswith("divergence")
    assert diagnose(growing, [2.0, 1.0]) is None  # growing modes but a falling loss
    still = [record("a", [1.0], [1.0]), record("b", [1.0, 0.5], [1.0, 1.0])]
    assert diagnose(still, [2.0, 2.0]).startswith("stagnation")
    assert diagnose(still, [2.0, float("nan")]).startswith("non-finite")


@pytest.mark.parametrize(
    "kernel,bias,activation",
    [
        ("zeros", "zeros", "relu"),  # symmetric, dead: nothing moves
        ("glorot_uniform", -10.0, "relu"),  # strongly negative ReLU biases: dead units
        (10.0, "zeros", "tanh"),  # N(0, 10^2) with tanh: saturated
    ],
)
def test_bad_initializations_restart_within_the_check(kernel, bias, activation):
    x, y = digits()
    if not isinstance(kernel, str):
        kernel = keras.initializers.RandomNormal(stddev=kernel, seed=3)
    if not isinstance(bias, str):
        bias = keras.initializers.Constant(bias)
    model = mlp(kernel, bias, activation)
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=4, max_restarts=1,
                                          initializers={"kernel": "glorot_uniform"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=6, batch_size=64, verbose=0, callbacks=[monitor, restart])
    assert len(restart.restarts) >= 1
    assert restart.restarts[0]["epoch"] <= 3
    assert restart.restarts[0]["reason"].split(":")[0] in ("stagnation", "divergence",
                                                            "non-finite")


def test_bad_initializers_argument():
    with pytest.raises(TypeError, match="initializers"):  # a str, not a dict: a wrong type
        kk.callbacks.KoopmanRestart(kk.callbacks.KoopmanMonitor(), initializers="he_normal")


@pytest.mark.parametrize("seed", [0, 1])
def test_good_initializations_do_not_restart(seed):
    x, y = digits()
    model = mlp(seed=seed)
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=4)
    model.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[monitor, restart])
    assert restart.restarts == []
    assert restart.verdicts == [{"epoch": 3, "reason": None}]


def test_a_restart_redraws_weights_and_resets_the_optimizer():
    x, y = digits()
    model = mlp("glorot_uniform", keras.initializers.Constant(-10.0))
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=1,
                                          initializers={"kernel": "he_normal"})
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {
                "bias": model.get_layer("h1").bias.numpy().copy(),
                "kernel": model.get_layer("h1").kernel.numpy().copy(),
                "iterations": int(model.optimizer.iterations.numpy()),
            }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the second check finds the -10 biases again
        model.fit(x, y, epochs=5, batch_size=64, verbose=0,
                  callbacks=[monitor, restart, Spy()])
    assert [r["epoch"] for r in restart.restarts] == [2]
    after = seen[2]  # the spy runs after the restart in that epoch
    # A constant initializer would give the same -10 again: the bias default (zeros) instead.
    np.testing.assert_array_equal(after["bias"], 0.0)
    assert "h1/bias: Constant -> Zeros" in restart.restarts[0]["action"]
    assert after["iterations"] == 0
    assert not np.allclose(after["kernel"], seen[1]["kernel"])
    assert np.std(after["kernel"]) == pytest.approx(np.sqrt(2 / 64), rel=0.2)  # he_normal
    assert monitor.buffers["h1"].count >= 1 and monitor.step > 3


def test_nan_weights_mid_fit_with_every_callback_never_raise(tmp_path):
    """NaN weights after the check: the monitor warns, early stopping and restart carry on."""
    x, y = digits()
    model = mlp(seed=2)
    monitor = kk.callbacks.KoopmanMonitor(window=5, log_dir=tmp_path)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, min_epochs=2)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=1)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("h2").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(x, y, epochs=6, batch_size=64, verbose=0,
                            callbacks=[Poison(), monitor, stop, restart])
    assert len(history.history["loss"]) >= 2
    assert restart.restarts and restart.restarts[0]["reason"].startswith("non-finite")
    # The restart re-drew the poisoned kernel: training ended with finite weights.
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())

    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "koopman/restarts" in accumulator.Tags()["tensors"]
    (event,) = accumulator.Tensors("koopman/restart_reason")
    assert event.step == restart.restarts[0]["epoch"]  # the epoch, as Keras's TensorBoard
    assert event.tensor_proto.string_val[0].decode().startswith(
        f"Epoch {restart.restarts[0]['epoch'] + 1}: non-finite")


def test_default_initializers_suit_the_layer_and_its_activation():
    default = kk.callbacks.restart.default_initializer
    assert default(keras.layers.Dense(3, activation="relu"), "kernel") == "he_normal"
    assert default(keras.layers.Dense(3, activation="gelu"), "kernel") == "he_normal"
    assert default(keras.layers.Dense(3, activation="tanh"), "kernel") == "glorot_uniform"
    assert default(keras.layers.Dense(3), "kernel") == "glorot_uniform"  # linear
    assert default(keras.layers.Conv2D(3, 3, activation="relu"), "kernel") == "he_normal"
    assert default(keras.layers.LSTM(3), "recurrent_kernel") == "orthogonal"
    assert default(keras.layers.Dense(3, activation="relu"), "bias") == "zeros"
    assert default(keras.layers.BatchNormalization(), "gamma") == "ones"


def test_zeros_kernels_are_redrawn_from_he_and_glorot_not_from_zeros_again():
    """A zeros kernel restarted from its own initializer would stay zeros (the run the issue
    saw: three restarts, the same verdict each time). The restart draws the ReLU layers from He
    normal, says so, keeps the output layer's own (random) Glorot initializer with a new seed,
    and training then learns."""
    x, y = digits()
    model = mlp("zeros", "zeros", "relu")
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=3)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.setdefault(epoch, {n: model.get_layer(n).kernel.numpy().copy()
                                    for n in ("h1", "h2", "out")})

    history = model.fit(x, y, epochs=12, batch_size=64, verbose=0,
                        callbacks=[monitor, restart, Spy()])
    assert len(restart.restarts) == 1, restart.restarts
    first = restart.restarts[0]
    assert first["draw"] == "own" and first["epoch"] == 2
    for name in ("h1", "h2"):
        assert f"{name}/kernel: Zeros -> HeNormal" in first["action"]
    assert "out/" not in first["action"]
    kernels = seen[2]  # right after the restart
    assert np.std(kernels["h1"]) == pytest.approx(np.sqrt(2 / 64), rel=0.15)  # He, fan-in 64
    assert np.std(kernels["h2"]) == pytest.approx(np.sqrt(2 / 32), rel=0.15)  # He, fan-in 32
    limit = np.sqrt(6 / (32 + 10))  # its own Glorot uniform, fan-in 32, fan-out 10, new seed
    assert np.abs(kernels["out"]).max() <= limit
    assert not np.allclose(kernels["out"], seen[1]["out"])
    assert [v["reason"] for v in restart.verdicts[1:]] == [None]  # healthy after it
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][2]


def test_the_same_verdict_twice_draws_from_defaults_then_stops_restarting():
    """With a learning rate of 0 nothing the initialization does can help: the first restart
    draws the layers' own initializers, the second (same verdict) the defaults, and the third
    verdict gives up with a warning that says the initialization is not the cause."""
    x, y = digits()
    model = mlp()
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=5)
    with pytest.warns(RuntimeWarning, match="not its cause") as caught:
        model.fit(x, y, epochs=10, batch_size=64, verbose=0, callbacks=[monitor, restart])
    assert [r["draw"] for r in restart.restarts] == ["own", "defaults"]
    assert [r["epoch"] for r in restart.restarts] == [2, 5]
    assert all(r["reason"].startswith("stagnation") for r in restart.restarts)
    assert len([w for w in caught if "KoopmanRestart" in str(w.message)]) == 1
    assert "epoch 9" in str(caught[0].message)  # the third check: 0-based epoch 8


def test_restart_messages_number_epochs_as_the_progress_bar_does(capsys):
    x, y = digits()
    model = mlp("zeros", "zeros", "relu")
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, verbose=1)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[monitor, restart])
    (line,) = [l for l in capsys.readouterr().out.splitlines() if "KoopmanRestart" in l]
    assert line.startswith(f"Epoch {restart.restarts[0]['epoch'] + 1}: KoopmanRestart: ")
