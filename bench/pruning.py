"""Koopman pruning against global magnitude pruning on the same schedule.

Models (scikit-learn's 8x8 digits, 1,347 training / 450 validation images, split per seed):
  MLP   64-128(relu)-64(relu)-10, Adam 1e-3, batch 32, 40 epochs
  CNN   Conv2D(16, 3, relu) - Conv2D(16, 3, relu) - Flatten - Dense(10), Adam 1e-3, batch 32,
        30 epochs
Every kernel is wrapped (``prune_koopman(model, s, schedule, criterion)``, global threshold) and
pruned along ``PolynomialDecay(0, s, begin, end, frequency, unit="epoch")``:
  early   begin at 10% of the epochs, end at 40%, every epoch
  late    begin at 70% of the epochs (the loss has flattened), end at 85%, every epoch
  spaced  begin at 10%, then every 5 epochs, 5 updates (MLP epochs 4-24, CNN 3-23: pruning
          during training, before the loss flattens, with updates ``window`` apart)
``UpdateKoopmanPruning(window=5)``: Koopman scores once 5 snapshots are stored; a weight whose
window holds a change of its mask (the previous update) is scored by magnitude. With
every-epoch schedules only the first update of a run is therefore a Koopman update; with
``spaced`` every update is.

Reported: validation accuracy after the last epoch of the dense model, of Koopman pruning and
of magnitude pruning (means over seeds; each seed draws its own split, so the seeds are
repeated splits); per cell the paired difference Koopman - magnitude, its standard error over
the seeds, and the verdict: a win or a loss only when the difference is at least 2 standard
errors, a tie otherwise (issue 17's goal: no cell lost, at least 3 won); the deflated size of
the stripped ``.keras`` file relative to the dense one (first seed, Koopman); a plot
``bench/pruning.png``.

**Tuning and reporting are separate**: ``--seeds tune`` runs seeds 0-4, ``--seeds report``
seeds 100-109 (nothing is chosen on them).

Run:  python bench/pruning.py --seeds report      (10 seeds, every cell; about 2 hours here)
      python bench/pruning.py --seeds report --timings spaced   (its own section; ~30 min)
      python bench/pruning.py --seeds tune --output /tmp/r.md
      python bench/pruning.py --seeds tune --models cnn --timings late --variants koopman@100 \
          --output /tmp/r.md   (some cells only, for tuning)
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

import keras_koopman as kk  # noqa: E402

EPOCHS = {"mlp": 40, "cnn": 30}
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
TIMINGS = {"early": (0.1, 0.4, 1), "late": (0.7, 0.85, 1), "spaced": (0.1, None, 5)}
SEEDS = {"tune": list(range(5)), "report": list(range(100, 110))}


def split(seed, model):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    if model == "cnn":
        x = x.reshape(-1, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:1347], order[1347:]
    return x[train], data.target[train], x[val], data.target[val]


def build(model, seed):
    keras.utils.set_random_seed(seed)
    if model == "mlp":
        layers = [keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                  keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    else:
        layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                  keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
                  keras.layers.Dense(10)]
    return keras.Sequential(layers)


def compile_(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def variant(name):
    """``(criterion, horizon)`` of a variant: ``magnitude``, ``koopman`` (the default scores)
    or ``koopman@H`` (``UpdateKoopmanPruning(horizon=H)``: forecast scores)."""
    criterion, _, horizon = name.partition("@")
    return criterion, (int(horizon) if horizon else None)


def run(model_name, seed, sparsity=None, timing=None, name=None, size=False):
    criterion, horizon = variant(name) if name else (None, None)
    x, y, xv, yv = split(seed, model_name)
    epochs = EPOCHS[model_name]
    model = build(model_name, seed)
    callbacks = []
    if sparsity is not None:
        start, stop, frequency = TIMINGS[timing]
        begin = round(start * epochs)
        end = begin + 4 * frequency if stop is None else round(stop * epochs)
        schedule = kk.pruning.PolynomialDecay(0.0, sparsity, begin_step=begin, end_step=end,
                                              frequency=frequency, unit="epoch")
        model = kk.pruning.prune_koopman(model, sparsity, schedule=schedule,
                                         criterion=criterion)
        callbacks = [kk.pruning.UpdateKoopmanPruning(window=5, horizon=horizon)]
    compile_(model)
    keras.utils.set_random_seed(seed + 1000)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
    accuracy = float(model.evaluate(xv, yv, verbose=0, return_dict=True)["accuracy"])
    out = {"accuracy": accuracy}
    if callbacks:
        out["criteria"] = {u["criterion"] for u in callbacks[0].updates}
        small = kk.pruning.strip_pruning(model)
        kernels = [w for layer in small.layers for w in layer.weights if "kernel" in w.path]
        out["sparsity"] = float(sum(int(np.sum(w.numpy() == 0)) for w in kernels)
                                / sum(int(np.prod(w.shape)) for w in kernels))
        if size:
            out["size"] = kk.pruning.compressed_size(small)
    elif size:
        # Uncompiled copy: a compiled model's file also holds Adam's moments, the stripped
        # model's does not.
        plain = keras.models.clone_model(model)
        plain.set_weights(model.get_weights())
        out["size"] = kk.pruning.compressed_size(plain)
    keras.backend.clear_session()
    return out


def paired(koopman, magnitude, higher_better=True):
    """``(mean, standard error, verdict)`` of the per-seed differences ``koopman - magnitude``:
    a win or a loss only when the mean is at least 2 standard errors from 0, a tie otherwise."""
    diff = np.asarray(koopman) - np.asarray(magnitude)
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.nan
    mean = float(np.mean(diff))
    better = mean > 0 if higher_better else mean < 0
    # Identical on every seed (mean and error 0) is a tie, not a loss.
    verdict = "tie" if mean == 0 or not abs(mean) >= 2 * se else "win" if better else "loss"
    return mean, se, verdict


def plot(results, path, koopman="koopman"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(EPOCHS), len(TIMINGS), figsize=(4 * len(TIMINGS), 7.2),
                                sharey=False)
    axes = axes.ravel()
    for ax, (model_name, timing) in zip(axes, [(m, t) for m in EPOCHS for t in TIMINGS]):
        dense = results[(model_name, None, None, None)]
        ax.axhline(np.mean(dense), color="grey", ls=":", label="dense")
        for criterion, colour in ((koopman, "tab:blue"), ("magnitude", "tab:orange")):
            values = [results[(model_name, s, timing, criterion)] for s in SPARSITIES]
            means = [np.mean(v) for v in values]
            low = [np.min(v) for v in values]
            high = [np.max(v) for v in values]
            ax.plot([100 * s for s in SPARSITIES], means, "o-", color=colour,
                    label=criterion)
            ax.fill_between([100 * s for s in SPARSITIES], low, high, color=colour, alpha=0.15)
        ax.set_title(f"{model_name.upper()}, pruning begun {timing}")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left")
    figure.suptitle("Koopman vs magnitude pruning on digits (mean over seeds, band: min-max)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", choices=sorted(SEEDS), default="report")
    parser.add_argument("--variants", nargs="*", default=["koopman"],
                        help="Koopman variants against magnitude: koopman, koopman@H")
    parser.add_argument("--models", nargs="*", choices=sorted(EPOCHS), default=list(EPOCHS),
                        help="only these models (tuning runs)")
    parser.add_argument("--timings", nargs="*", choices=sorted(TIMINGS), default=list(TIMINGS),
                        help="only these schedules (tuning runs)")
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES),
                        choices=SPARSITIES, help="only these sparsities (tuning runs)")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    started = time.time()
    seeds = SEEDS[args.seeds]
    results, sizes, criteria, reached = {}, {}, {}, {}
    for model_name in args.models:
        key = (model_name, None, None, None)
        runs = [run(model_name, s, size=(s == seeds[0])) for s in seeds]
        results[key] = [r["accuracy"] for r in runs]
        sizes[model_name] = runs[0]["size"]
        print(model_name, "dense", np.median(results[key]), f"[{time.time() - started:.0f} s]",
              flush=True)
        for timing in args.timings:
            for sparsity in args.sparsities:
                for criterion in (*args.variants, "magnitude"):
                    key = (model_name, sparsity, timing, criterion)
                    runs = [run(model_name, s, sparsity, timing, criterion,
                                size=(s == seeds[0] and criterion == args.variants[0]
                                      and timing == "early"))
                            for s in seeds]
                    results[key] = [r["accuracy"] for r in runs]
                    criteria[key] = set().union(*(r["criteria"] for r in runs))
                    reached[key] = np.median([r["sparsity"] for r in runs])
                    if "size" in runs[0]:
                        sizes[(model_name, sparsity)] = runs[0]["size"]
                    print(model_name, timing, sparsity, criterion,
                          f"{np.median(results[key]):.4f}", sorted(criteria[key]),
                          f"[{time.time() - started:.0f} s]", flush=True)
    # Next to the results file: a run written elsewhere (a tuning run) leaves bench/ alone.
    png = None
    if (args.models == list(EPOCHS) and args.timings == list(TIMINGS)
            and args.sparsities == list(SPARSITIES)):  # the plot needs every cell
        png = plot(results, os.path.join(os.path.dirname(os.path.abspath(args.output)),
                                         "pruning.png"), args.variants[0])
    lines = ["| model | begun | sparsity | dense | variant | Koopman | magnitude | Koopman - "
             "magnitude (SE) | verdict | stripped size |",
             "|---|---|---:|---:|---|---:|---:|---:|---|---:|"]
    tally = {name: {"win": 0, "tie": 0, "loss": 0} for name in args.variants}
    for model_name in args.models:
        dense = np.mean(results[(model_name, None, None, None)])
        for timing in args.timings:
            for sparsity in args.sparsities:
                m = np.array(results[(model_name, sparsity, timing, "magnitude")])
                for name in args.variants:
                    k = np.array(results[(model_name, sparsity, timing, name)])
                    # Paired: same seed, same split, same initial weights.
                    mean, se, verdict = paired(k, m)
                    tally[name][verdict] += 1
                    size = sizes.get((model_name, sparsity))
                    size_text = ("" if size is None or name != args.variants[0]
                                 else f"{size / sizes[model_name]:.2f}x")
                    lines.append(
                        f"| {model_name} | {timing} | {100 * sparsity:.0f}% (reached "
                        f"{100 * reached[(model_name, sparsity, timing, name)]:.1f}%) | "
                        f"{dense:.4f} | {name} | {k.mean():.4f} | {m.mean():.4f} | "
                        f"{mean:+.4f} ({se:.4f}) | {verdict} | {size_text} |")
    goals = [f"- `{name}` over {sum(t.values())} cells: {t['win']} won, {t['tie']} tied, "
             f"{t['loss']} lost (a win or loss needs |difference| >= 2 standard errors; goal: "
             f"no cell lost, at least 3 won): "
             f"{'met' if t['loss'] == 0 and t['win'] >= 3 else 'NOT met'}"
             for name, t in tally.items()]
    used = sorted(set().union(*(c for key, c in criteria.items() if key[3] != "magnitude")))
    command = "python bench/pruning.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    body = "\n".join([
        *header(command.strip()),
        f"- seeds {seeds[0]}-{seeds[-1]} ({args.seeds}; each its own split of 1,347 / 450 "
        f"images); validation accuracy after the last epoch, means over seeds; run time "
        f"{time.time() - started:.0f} s",
        f"- criteria the Koopman runs' updates used: {', '.join(used)}",
        "- stripped size: deflated `.keras` of `strip_pruning(model)` / the dense model's "
        "(first seed, Koopman, begun early)",
        *([f"- plot: `bench/{os.path.basename(png)}`"] if png else []),
        "", "### Goal", "", *goals, "", *lines, "",
        *(["![Koopman vs magnitude pruning](pruning.png)"] if png else []),
    ])
    # Some cells only (--timings spaced): a section of their own, beside the full table.
    partial = [f"--{name} {' '.join(str(v) for v in chosen)}" for name, chosen, every in (
        ("models", args.models, list(EPOCHS)), ("timings", args.timings, list(TIMINGS)),
        ("sparsities", args.sparsities, list(SPARSITIES))) if chosen != every]
    report("Koopman pruning (`bench/pruning.py`)" + (f", {' '.join(partial)}" if partial else ""),
           body, args.output)


if __name__ == "__main__":
    main()
