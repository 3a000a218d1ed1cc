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
    np.testing.assert_array_equal(after["bias"], -10.0)  # drawn again from its own initializer
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
    assert "koopman/restart_reason" in accumulator.Tags()["tensors"]
