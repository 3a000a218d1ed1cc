"""Do Koopman scores, taken during training, see which weights end up small?

The claim behind Koopman pruning (Redman et al., ICLR 2022) is about pruning *during* training,
before convergence: the mode at eigenvalue 1 carries where the weights are heading, so its
per-weight size should tell, early, which weights the trained network does not need. This
benchmark measures that directly, without the recovery that fine-tuning a pruned network adds
(which is why ``bench/pruning.py``'s accuracies tie: the network relearns around either choice).

For each model and seed, the dense network of ``bench/pruning.py`` (same data split, same
initial weights, same batch order) trains for its full budget while a ``LambdaCallback`` records
every kernel after each epoch. At each update epoch of the ``spaced`` schedule (MLP epochs 4, 9,
14, 19, 24; CNN 3, 8, ...), the window of the 5 newest snapshots (the weights after that epoch
and the 4 before, as ``UpdateKoopmanPruning(window=5)`` holds them) is scored two ways:

  magnitude  ``|w|`` now
  koopman    ``kk.pruning.koopman_scores(kk.dmd(window), newest=4)`` per kernel (the library's
             default scores: the weight's share of the mode nearest 1), each kernel's scores
             put on its weights' scale as the mask update does, then one global threshold

For each sparsity ``s``, each score prunes the globally lowest fraction ``s`` of the kernels'
entries. The truth is the set the *trained* dense network would prune by magnitude: the lowest
fraction ``s`` of ``|w|`` after the last epoch. Reported per row (paired over seeds; a win or a
loss at 2 standard errors):

  recall     share of the trained network's pruned set that the score prunes already
  lost       share of the trained weights' squared norm that the score's pruned set removes
             (lower is better)

Nothing is tuned here: window 5 and the Gavish-Donoho rank are the library's and the pruning
benchmark's defaults. ``--seeds report`` (100-109) is the one to report.

Run:  python bench/pruning_foresight.py --seeds report   (about 5 minutes here)
"""

import argparse
import os
import sys
import time

import numpy as np

from _results import RESULTS, header, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_koopman as kk  # noqa: E402
from keras_koopman.pruning.masks import on_weight_scale  # noqa: E402
from pruning import (EPOCHS, SEEDS, SPARSITIES, TIMINGS, build, compile_, paired,  # noqa: E402
                     split)

WINDOW = 5


def update_epochs(model_name):
    """The epochs at whose end the ``spaced`` schedule of ``bench/pruning.py`` updates."""
    start, _, frequency = TIMINGS["spaced"]
    begin = round(start * EPOCHS[model_name])
    return [begin + i * frequency for i in range(5)]


def trajectory(model_name, seed):
    """Every kernel after each epoch (index 0: the initial weights), as ``bench/pruning.py``
    trains the dense model."""
    x, y, _, _ = split(seed, model_name)
    model = build(model_name, seed)
    compile_(model)
    kernels = [w for w in model.weights if "kernel" in w.path]
    snapshots = [[k.numpy().ravel().astype(np.float64) for k in kernels]]
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        [k.numpy().ravel().astype(np.float64) for k in kernels]))
    keras.utils.set_random_seed(seed + 1000)
    model.fit(x, y, epochs=EPOCHS[model_name], batch_size=32, verbose=0, callbacks=[record])
    keras.backend.clear_session()
    return snapshots


def koopman(window):
    """The library's default Koopman scores of one kernel's ``[5, n]`` window."""
    result = kk.dmd(window, rank=None)
    scores = kk.pruning.koopman_scores(result, newest=len(window) - 1)
    # Put on the kernel's weight scale by the mask update's own function (every entry kept).
    return on_weight_scale(tf.constant(scores), tf.constant(window[-1]),
                           tf.ones(scores.size, tf.float64)).numpy()


def lowest(scores, fraction):
    """Bool mask of the ``fraction`` lowest ``scores`` (ties by position)."""
    count = int(np.floor(fraction * scores.size))
    chosen = np.zeros(scores.size, bool)
    chosen[np.argsort(scores, kind="stable")[:count]] = True
    return chosen


def measure(snapshots, epoch):
    """``{(criterion, sparsity): (recall, lost)}`` at the update at the end of ``epoch``."""
    newest = epoch + 1  # snapshots[k]: the weights after epoch k - 1
    window = [np.stack([s[i] for s in snapshots[newest - WINDOW + 1:newest + 1]])
              for i in range(len(snapshots[0]))]
    final = np.abs(np.concatenate(snapshots[-1]))
    scores = {"magnitude": np.abs(np.concatenate([w[-1] for w in window])),
              "koopman": np.concatenate([koopman(w) for w in window])}
    out = {}
    for sparsity in SPARSITIES:
        truth = lowest(final, sparsity)
        for name, score in scores.items():
            pruned = lowest(score, sparsity)
            out[(name, sparsity)] = (float(np.mean(pruned[truth])),
                                     float(np.sum(final[pruned] ** 2) / np.sum(final ** 2)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", choices=sorted(SEEDS), default="report")
    parser.add_argument("--models", nargs="*", choices=sorted(EPOCHS), default=list(EPOCHS))
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    started = time.time()
    seeds = SEEDS[args.seeds]
    rows = ["| model | update epoch | sparsity | recall: magnitude | recall: Koopman | "
            "Koopman - magnitude (SE) | verdict | lost: magnitude | lost: Koopman | verdict |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    tally = {"recall": {"win": 0, "tie": 0, "loss": 0}, "lost": {"win": 0, "tie": 0, "loss": 0}}
    for model_name in args.models:
        figures = {}
        for seed in seeds:
            snapshots = trajectory(model_name, seed)
            for epoch in update_epochs(model_name):
                for key, value in measure(snapshots, epoch).items():
                    figures.setdefault((epoch, *key), []).append(value)
            print(model_name, seed, f"[{time.time() - started:.0f} s]", flush=True)
        for epoch in update_epochs(model_name):
            for sparsity in SPARSITIES:
                k = np.array(figures[(epoch, "koopman", sparsity)])
                m = np.array(figures[(epoch, "magnitude", sparsity)])
                mean, se, recall_verdict = paired(k[:, 0], m[:, 0], True)
                _, _, lost_verdict = paired(k[:, 1], m[:, 1], False)
                tally["recall"][recall_verdict] += 1
                tally["lost"][lost_verdict] += 1
                rows.append(
                    f"| {model_name} | {epoch} | {100 * sparsity:.0f}% | {m[:, 0].mean():.3f} | "
                    f"{k[:, 0].mean():.3f} | {mean:+.3f} ({se:.3f}) | {recall_verdict} | "
                    f"{m[:, 1].mean():.4f} | {k[:, 1].mean():.4f} | {lost_verdict} |")
    command = "python bench/pruning_foresight.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    summary = [f"- {name}: Koopman won {t['win']}, tied {t['tie']}, lost {t['loss']} of "
               f"{sum(t.values())} rows against magnitude" for name, t in tally.items()]
    body = "\n".join([
        *header(command.strip()),
        f"- seeds {seeds[0]}-{seeds[-1]} ({args.seeds}); run time {time.time() - started:.0f} s; "
        f"window {WINDOW}; nothing tuned",
        "- recall: share of the trained dense network's magnitude-pruned set (lowest |w| after "
        "the last epoch) that each score, taken at the update epoch, prunes already (higher is "
        "better); lost: share of the trained weights' squared norm in the score's pruned set "
        "(lower is better); means over seeds, paired differences, win or loss at 2 standard "
        "errors",
        "", *summary, "", *rows, ""])
    report("Koopman pruning foresight (`bench/pruning_foresight.py`)", body, args.output)


if __name__ == "__main__":
    main()
