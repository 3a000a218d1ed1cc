"""Bad-initialization detection by KoopmanRestart on scikit-learn's digits.

An MLP 64-64-64-10 trained with SGD (momentum 0.9, lr 0.05, batch 64) on the 1,797 digits, with
a 50-epoch budget; KoopmanRestart(check_epoch=5) must decide within the first 10% (5 epochs).
Each run trains those 5 epochs with max_restarts=0 and records the verdict.

Good initializations (3 kinds x 7 seeds = 21): glorot_uniform (the Keras default), he_normal,
lecun_normal, ReLU. Bad ones (4 kinds x 5 seeds = 20): N(0, 10^2) kernels with tanh
(saturated), N(0, 10^2) kernels with ReLU (exploding activations), all-zero kernels, ReLU biases
of -10 (dead units).

Goal: detection rate >= 95%, false alarms <= 5%, decided within the first 10% of the epochs.

Run:  python bench/bad_init.py         (about 3 minutes here; writes bench/RESULTS.md)
      python bench/bad_init.py --good-seeds 14 --bad-seeds 10    (the figures in RESULTS.md, 6 min)
"""

import argparse
import collections
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _results import header, report  # noqa: E402

import keras_koopman as kk  # noqa: E402

BUDGET = 50
CHECK = 5

GOOD = ("glorot_uniform", "he_normal", "lecun_normal")
BAD = ("normal(10) + tanh", "normal(10) + relu", "zero kernels", "relu bias -10")


def build(kind, seed):
    keras.utils.set_random_seed(seed)
    activation, kernel, bias = "relu", kind, "zeros"
    if kind == "normal(10) + tanh":
        activation, kernel = "tanh", keras.initializers.RandomNormal(stddev=10.0, seed=seed)
    elif kind == "normal(10) + relu":
        kernel = keras.initializers.RandomNormal(stddev=10.0, seed=seed)
    elif kind == "zero kernels":
        kernel = "zeros"
    elif kind == "relu bias -10":
        kernel, bias = "glorot_uniform", keras.initializers.Constant(-10.0)
    layers = [keras.Input((64,))]
    for name in ("h1", "h2"):
        layers.append(keras.layers.Dense(64, activation=activation, kernel_initializer=kernel,
                                         bias_initializer=bias, name=name))
    layers.append(keras.layers.Dense(10, activation="softmax", name="out"))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def run(kind, seed, x, y):
    model = build(kind, seed)
    monitor = kk.callbacks.KoopmanMonitor(window=CHECK + 1)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=CHECK, max_restarts=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=CHECK, batch_size=64, verbose=0, callbacks=[monitor, restart])
    verdict = restart.verdicts[0] if restart.verdicts else {"epoch": None, "reason": None}
    return verdict, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--good-seeds", type=int, default=7)
    parser.add_argument("--bad-seeds", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16).astype("float32")
    y = data.target
    rows = []
    outcome = collections.defaultdict(list)
    for label, kinds, seeds in (("good", GOOD, args.good_seeds), ("bad", BAD, args.bad_seeds)):
        for kind in kinds:
            for seed in range(seeds):
                verdict, seconds = run(kind, seed, x, y)
                flagged = verdict["reason"] is not None
                decided = None if verdict["epoch"] is None else verdict["epoch"] + 1
                outcome[label].append((flagged, decided))
                reason = (verdict["reason"] or "healthy").split(":")[0]
                rows.append(f"| {label} | {kind} | {seed} | {reason} | {decided} | {seconds:.1f} |")
                print(rows[-1], flush=True)

    good, bad = outcome["good"], outcome["bad"]
    detection = sum(f for f, _ in bad) / len(bad)
    false_alarms = sum(f for f, _ in good) / len(good)
    latest = max((d for f, d in bad if f and d is not None), default=0)
    command = "python bench/bad_init.py" + (
        f" --good-seeds {args.good_seeds} --bad-seeds {args.bad_seeds}"
        if (args.good_seeds, args.bad_seeds) != (7, 5) else ""
    )
    body = "\n".join([
        *header(command),
        f"- set-up: digits MLP 64-64-64-10, SGD(0.05, momentum 0.9), batch 64, {BUDGET}-epoch "
        f"budget, `KoopmanRestart(check_epoch={CHECK})` with default thresholds",
        "",
        f"- detection rate {detection:.0%} over {len(bad)} bad initializations "
        f"(goal >= 95%): {'met' if detection >= 0.95 else 'NOT met'}",
        f"- false alarms {false_alarms:.0%} over {len(good)} good initializations "
        f"(goal <= 5%): {'met' if false_alarms <= 0.05 else 'NOT met'}",
        f"- latest decision at epoch {latest} of {BUDGET} "
        f"({latest / BUDGET:.0%}; goal <= 10%): {'met' if latest <= BUDGET // 10 else 'NOT met'}",
        "",
        "| init | kind | seed | verdict | decided at epoch | seconds |",
        "| --- | --- | ---: | --- | ---: | ---: |",
        *rows,
    ])
    report("Bad initialization detection (`bench/bad_init.py`)", body, args.output)


if __name__ == "__main__":
    main()
