"""Catch a bad initialization in the first epochs and start again.

A digits MLP whose ReLU biases start at -10 (every unit dead) cannot learn. KoopmanRestart sees
in the spectrum that its hidden layers do not move while the loss stalls and re-draws every
layer; since the cause is the bias initializer itself, ``initializers`` replaces it on restart,
and training goes on.

Run:  python examples/restart.py        (about 20 s here)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_koopman as kk  # noqa: E402


def main(epochs=15):
    data = load_digits()
    x, y = (data.data / 16).astype("float32"), data.target
    keras.utils.set_random_seed(0)
    dead = keras.initializers.Constant(-10.0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", bias_initializer=dead, name="h1"),
        keras.layers.Dense(64, activation="relu", bias_initializer=dead, name="h2"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=4, verbose=1,
                                          initializers={"bias": "zeros"})
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0,
                        callbacks=[monitor, restart])
    accuracy = history.history["accuracy"]
    print("restarts:", [(r["epoch"] + 1, r["reason"]) for r in restart.restarts])
    print(f"accuracy at epoch 4: {accuracy[3]:.3f}; at the end: {accuracy[-1]:.3f}")
    return restart, accuracy


if __name__ == "__main__":
    main()
