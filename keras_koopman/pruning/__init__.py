"""Koopman pruning for Keras 3: a wrapper with masks, schedules, the updating callback, strip.

After Redman, Fonoberova, Mohr, Kevrekidis and Mezic, "An Operator Theoretic View on Pruning
Deep Neural Networks" (ICLR 2022): a weight's share of the Koopman mode whose eigenvalue is
nearest 1 (where training is heading) scores it; ``criterion="magnitude"`` is plain global
magnitude pruning on the same schedule.

Example:

>>> import numpy as np, keras, keras_koopman as kk
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
...                           keras.layers.Dense(1)])
>>> schedule = kk.pruning.PolynomialDecay(0.0, 0.9, begin_step=2, end_step=6, frequency=2,
...                                       unit="epoch")
>>> pruned = kk.pruning.prune_koopman(model, target_sparsity=0.9, schedule=schedule)
>>> pruned.compile("adam", "mse")
>>> x, y = np.random.rand(128, 8), np.random.rand(128, 1)
>>> _ = pruned.fit(x, y, epochs=8, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])
>>> small = kk.pruning.strip_pruning(pruned)
>>> kernel = small.layers[0].get_weights()[0]
>>> 0.85 < float(np.mean(np.r_[kernel.ravel(), small.layers[1].get_weights()[0].ravel()] == 0)) < 0.95
True
"""


from keras_koopman.pruning.callback import UpdateKoopmanPruning, koopman_scores
from keras_koopman.pruning.schedule import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_koopman.pruning.wrapper import (
    KoopmanPruning,
    compressed_size,
    prune_koopman,
    pruning_wrappers,
    strip_pruning,
)

__all__ = [
    "ConstantSparsity",
    "KoopmanPruning",
    "PolynomialDecay",
    "PruningSchedule",
    "UpdateKoopmanPruning",
    "compressed_size",
    "koopman_scores",
    "prune_koopman",
    "pruning_wrappers",
    "strip_pruning",
]
