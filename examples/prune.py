"""Prune 90% of a digits classifier's weights by their Koopman modes, then strip the wrapper.

Trains a dense MLP on scikit-learn's 8x8 digits, and the same model wrapped by
``kk.pruning.prune_koopman`` whose masks rise to 90% sparsity between epochs 4 and 19
(``PolynomialDecay``, an update every 5 epochs: each update's window of 5 snapshots then holds
no earlier pruning step), scored by each weight's share of the Koopman mode at eigenvalue 1. Prints
the validation accuracy of both, the sparsity per layer, and the size of the saved ``.keras``
files (deflated) before and after ``strip_pruning``.

Run:  python examples/prune.py        (about 30 seconds here)
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
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="output"),
    ])


def compile_(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def main(epochs=30, sparsity=0.9):
    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target
    order = np.random.default_rng(0).permutation(len(x))
    train, val = order[:1347], order[1347:]

    dense = build()
    compile_(dense)
    dense.fit(x[train], y[train], epochs=epochs, batch_size=32, verbose=0)

    schedule = kk.pruning.PolynomialDecay(0.0, sparsity, begin_step=4, end_step=19,
                                          frequency=5, unit="epoch")
    pruned = kk.pruning.prune_koopman(build(), target_sparsity=sparsity, schedule=schedule)
    compile_(pruned)
    update = kk.pruning.UpdateKoopmanPruning(window=5)
    pruned.fit(x[train], y[train], epochs=epochs, batch_size=32, verbose=0, callbacks=[update])
    small = kk.pruning.strip_pruning(pruned)
    compile_(small)

    accuracy = {name: model.evaluate(x[val], y[val], verbose=0, return_dict=True)["accuracy"]
                for name, model in (("dense", dense), ("pruned", small))}
    plain = build()  # the trained dense weights in an uncompiled model, like the stripped one
    plain.set_weights(dense.get_weights())
    sizes = {"dense": kk.pruning.compressed_size(plain),
             "pruned": kk.pruning.compressed_size(kk.pruning.strip_pruning(pruned))}
    print(f"validation accuracy: dense {accuracy['dense']:.4f}, "
          f"{100 * sparsity:.0f}% pruned {accuracy['pruned']:.4f}")
    for record in update.updates:
        print(f"  epoch {record['step']:>2}: target {record['sparsity']:.3f} ({record['criterion']})"
              f", per layer " + ", ".join(f"{k} {v:.3f}" for k, v in record["layers"].items()))
    print(f"saved size (deflated .keras): dense {sizes['dense']:,} bytes, stripped "
          f"{sizes['pruned']:,} bytes ({sizes['pruned'] / sizes['dense']:.2f}x)")
    return accuracy, sizes, update


if __name__ == "__main__":
    main()
