"""Replays KoopmanEarlyStopping offline on saved histories, over a grid of its thresholds.

Reads the JSON of ``python bench/early_stopping.py --seeds tune --save FILE`` (seeds 0-4 only:
the report seeds are never tuned on) and, for every setting of the grid, replays the callback's
decision rule epoch by epoch on each run's recorded losses and weight-spectrum measures (the
same ``forecast_gain`` and thresholds the callback applies), then scores the setting with the
benchmark's own goals. The replay of the defaults must find the epochs the live callback
found (checked first: a replay that disagrees would tune something else).

Run:  python bench/early_stopping_tune.py /tmp/tune.json
"""

import argparse
import itertools
import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from early_stopping import CLASSIFIERS, PATIENCES, keras_stop, outcome  # noqa: E402

from keras_koopman.callbacks import forecast_gain, progress_gain  # noqa: E402
from keras_koopman.callbacks.early_stopping import _DIVERGENCE_FACTOR  # noqa: E402

DEFAULTS = dict(criterion="either", loss_window=20, horizon=30, min_gain=0.01, patience=2,
                min_epochs=10, mass=0.99, max_velocity=1e-3, loss_rank=3)


def replay(run, watched_key, criterion, loss_window, horizon, min_gain, patience, min_epochs,
           mass, max_velocity, loss_rank, cache, gain="relative"):
    """The epoch index where KoopmanEarlyStopping with these settings stops on ``run``.

    ``gain="progress"`` measures the forecast improvement against the improvement made since
    the first epoch instead of against the best value (a candidate for the training loss,
    which creeps towards 0 and keeps a sizeable relative gain)."""
    watched, training = run[watched_key], run["loss"]
    wait = {"weights": 0, "loss": 0}
    rules = ("weights", "loss") if criterion == "either" else (criterion,)
    for epoch, decision in enumerate(run["decisions"]):
        groups = decision["groups"]
        if groups:
            converged = all(m >= mass and v <= max_velocity for m, v in groups.values())
            wait["weights"] = wait["weights"] + 1 if converged else 0
        holds = False
        if epoch + 1 >= loss_window:
            window = tuple(watched[epoch + 1 - loss_window:epoch + 1])
            if np.all(np.isfinite(window)):
                key = (window, horizon, loss_rank)
                if key not in cache:
                    cache[key] = forecast_gain(np.asarray(window), horizon, loss_rank)
                value, forecast = cache[key]
                if gain == "progress":
                    value = progress_gain(watched[:epoch + 1], forecast)
                recent = training[epoch + 1 - loss_window:epoch + 1]
                diverging = recent[-1] > _DIVERGENCE_FACTOR * min(recent)
                holds = value < min_gain and not diverging
        wait["loss"] = wait["loss"] + 1 if holds else 0
        fired = next((r for r in rules if wait[r] >= patience), None)
        if fired is not None and epoch + 1 >= min_epochs:
            return epoch
    return len(watched) - 1


def score(runs, settings, cache, noval=None):
    """Per (task, optimizer): paired medians of Koopman / p10 (epochs, val) and the no-val
    test gain over p10; and the number of tasks meeting each goal."""
    per = {}
    for key, (with_val, without) in runs.items():
        task, optimizer, _ = key.split("|")
        k = outcome(with_val, replay(with_val, "val_loss", cache=cache, **settings), "val_loss")
        p10 = outcome(with_val, keras_stop(with_val["val_loss"], 10)[0], "val_loss")
        n = outcome(without, replay(without, "loss", cache=cache, **(noval or settings)),
                    "loss")
        sign = 1 if task in CLASSIFIERS else -1
        per.setdefault((task, optimizer), []).append(
            (k["epochs"] / p10["epochs"], k["val"] / p10["val"],
             sign * (n["metric"] - p10["metric"]), n["epochs"] / p10["epochs"]))
    medians = {k: tuple(statistics.median(v[i] for v in vals) for i in range(4))
               for k, vals in per.items()}
    tasks = sorted({t for t, _ in medians})
    met = sum(all(medians[k][0] <= 0.75 and medians[k][1] <= 1.02 for k in medians
                  if k[0] == t) for t in tasks)
    met_noval = sum(all(medians[k][2] >= 0 and medians[k][3] <= 1 for k in medians
                        if k[0] == t) for t in tasks)
    combos = sum(m[0] <= 0.75 and m[1] <= 1.02 for m in medians.values())
    return (met, combos), met_noval, medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="JSON files; later ones replace earlier runs of "
                        "the same task, optimizer and seed")
    args = parser.parse_args()
    runs = {}
    for path in args.runs:
        runs.update(json.load(open(path)))
    assert all(int(k.split("|")[2]) < 100 for k in runs), "tune on seeds 0-4 only"
    cache = {}
    mismatched = [k for k, (v, _) in runs.items()
                  if replay(v, "val_loss", cache=cache, **DEFAULTS)
                  != (len(v["loss"]) - 1 if v["koopman"] is None else v["koopman"])]
    print(f"replay of the defaults vs the live callback: {len(runs) - len(mismatched)} of "
          f"{len(runs)} runs agree" + (f"; differ: {mismatched}" if mismatched else ""))
    grid = dict(gain=["relative", "progress"], loss_window=[8, 10, 15, 20],
                horizon=[10, 20, 30, 50, 100], min_gain=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02],
                patience=[1, 2, 3], min_epochs=[5, 10])
    results = []
    for values in itertools.product(*grid.values()):
        settings = dict(DEFAULTS, **dict(zip(grid, values)))
        met, met_noval, medians = score(runs, settings, cache)
        epochs = statistics.median(m[0] for m in medians.values())
        results.append((met, met_noval, -epochs, settings, medians))
    results.sort(key=lambda r: r[:3], reverse=True)
    for met, met_noval, epochs, settings, medians in results[:10]:
        changed = {k: v for k, v in settings.items() if DEFAULTS.get(k, "relative") != v}
        print(f"goal 1 on {met[0]} tasks ({met[1]} task/optimizer pairs), goal 2 on "
              f"{met_noval}; median K/p10 epochs "
              f"{-epochs:.2f}; {changed or 'defaults'}")
    best = results[0]
    print("\nper task (K/p10 epochs, K/p10 val, no-val test gain, no-val K/p10 epochs), best:")
    for key, m in sorted(best[4].items()):
        print(f"  {key[0]:<13} {key[1]:<5} {m[0]:.2f} {m[1]:.3f} {m[2]:+.4f} {m[3]:.2f}")
    default = score(runs, DEFAULTS, cache)
    print(f"\ndefaults: goal 1 on {default[0][0]} tasks ({default[0][1]} pairs), goal 2 on "
          f"{default[1]}")
    for key, m in sorted(default[2].items()):
        print(f"  {key[0]:<13} {key[1]:<5} {m[0]:.2f} {m[1]:.3f} {m[2]:+.4f} {m[3]:.2f}")
    print(f"patiences compared: {PATIENCES}")
    print("\nwithout validation (training loss): rule variants")
    variants = []
    for gain, min_gain, horizon, window in itertools.product(
            ["relative", "progress"], [0.001, 0.002, 0.005, 0.01, 0.02, 0.05], [10, 30, 50],
            [10, 20]):
        noval = dict(DEFAULTS, gain=gain, min_gain=min_gain, horizon=horizon,
                     loss_window=window)
        met, met_noval, medians = score(runs, best[3], cache, noval)
        variants.append((met_noval, statistics.median(m[2] for m in medians.values()),
                         {k: noval[k] for k in ("gain", "min_gain", "horizon", "loss_window")},
                         medians))
    variants.sort(key=lambda v: v[:2], reverse=True)
    for met_noval, gain, settings, medians in variants[:8]:
        print(f"  goal 2 on {met_noval} tasks, median test gain {gain:+.4f}: {settings}")
    for key, m in sorted(variants[0][3].items()):
        print(f"    {key[0]:<13} {key[1]:<5} test gain {m[2]:+.4f}, epochs K/p10 {m[3]:.2f}")


if __name__ == "__main__":
    main()
