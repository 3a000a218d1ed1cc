"""Train faster by jumping ahead along the weights' Koopman modes.

Trains a small classifier on scikit-learn's 8x8 digits with plain SGD for 40 epochs, then the
same model from the same initial weights with KoopmanAccelerator: every 5 epochs the weights of
each layer are moved ``horizon`` epochs ahead along their DMD modes, and the jump is kept only
if the training loss on a probe set does not get worse. Prints, for both runs, the training loss
per 10 epochs, how many epochs the accelerated run needed to reach the plain run's final loss,
and each jump.

Run:  python examples/accelerate.py        (about 30 seconds here)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_koopman as kk  # noqa: E402


def build(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="output"),
    ])
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class TrainingLoss(keras.callbacks.Callback):
    """The loss on the whole training set after each epoch (after any jump)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.values = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(self.model.evaluate(self.x, self.y, batch_size=len(self.x),
                                               verbose=0))


def main(epochs=40, observables="layers"):
    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target
    fit = dict(x=x, y=y, epochs=epochs, batch_size=64, verbose=0)

    keras.utils.set_random_seed(1)
    plain = TrainingLoss(x, y)
    build().fit(callbacks=[plain], **fit)

    keras.utils.set_random_seed(1)
    monitor = kk.callbacks.KoopmanMonitor(window=10)
    accelerator = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=10,
                                                  observables=observables, probe=(x, y))
    fast = TrainingLoss(x, y)
    build().fit(callbacks=[monitor, accelerator, fast], **fit)

    target = plain.values[-1]
    reached = next((k + 1 for k, v in enumerate(fast.values) if v <= target), None)
    print("epoch   plain SGD   with KoopmanAccelerator")
    for k in range(9, epochs, 10):
        print(f"{k + 1:>5}   {plain.values[k]:.4f}      {fast.values[k]:.4f}")
    print(f"plain SGD's loss after {epochs} epochs ({target:.4f}) reached after "
          f"{reached} epochs with KoopmanAccelerator")
    for jump in accelerator.jumps:
        print(f"  epoch {jump['epoch'] + 1:>3}: {jump['horizon']:>5} epochs ahead, probe loss "
              f"{jump['loss_before']:.4f} -> {jump['loss_after']:.4f}: "
              f"{'kept' if jump['accepted'] else 'undone'}")
    return reached, plain.values, fast.values, accelerator


if __name__ == "__main__":
    main()
