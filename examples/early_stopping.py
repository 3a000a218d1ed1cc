"""Stop when the weights' Koopman spectrum has converged, not after a fixed patience.

Trains a small regressor on scikit-learn's diabetes data with plain full-batch gradient descent
for up to 1,000 epochs, next to keras.callbacks.EarlyStopping(patience=20) on a copy of the same
model, and prints where each stopped and the validation loss there.

Run:  python examples/early_stopping.py        (about a minute here)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402

import keras_koopman as kk  # noqa: E402


def build(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(16, activation="tanh", name="hidden"),
        keras.layers.Dense(1, name="output"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    return model


def main(epochs=1000):
    data = load_diabetes()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype("float32")
    y = ((data.target - data.target.mean()) / data.target.std()).astype("float32")
    fit = dict(x=x, y=y, epochs=epochs, batch_size=len(x), validation_split=0.25, verbose=0)

    monitor = kk.callbacks.KoopmanMonitor(window=12)
    koopman = kk.callbacks.KoopmanEarlyStopping(monitor, restore_best_weights=True)
    history = build().fit(callbacks=[monitor, koopman], **fit)
    k_epochs, k_val = len(history.history["loss"]), min(history.history["val_loss"])

    classic = keras.callbacks.EarlyStopping(patience=20, restore_best_weights=True)
    history = build().fit(callbacks=[classic], **fit)
    c_epochs, c_val = len(history.history["loss"]), min(history.history["val_loss"])

    print(f"KoopmanEarlyStopping:        {k_epochs:>5} epochs, best val_loss {k_val:.4f}")
    print(f"EarlyStopping(patience=20):  {c_epochs:>5} epochs, best val_loss {c_val:.4f}")
    last = koopman.decisions[-1]
    print("last Koopman decision:", {g: f"mass at 1 {m:.4f}, predicted step {v:.1e}"
                                     for g, (m, v) in last["groups"].items()})
    return k_epochs, c_epochs


if __name__ == "__main__":
    main()
