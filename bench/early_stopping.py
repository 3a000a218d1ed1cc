"""KoopmanEarlyStopping vs keras.callbacks.EarlyStopping(patience=3, 5, 10, 20), on six tasks.

Six tasks that differ in kind, each with Adam and with SGD + momentum 0.9, a 150-epoch budget,
data split 60% train / 20% validation / 20% test by the seed:

  digits MLP       64-64-10 classifier, the 1,797 scikit-learn digits
  diabetes MLP     10-32-1 regressor, the 442 scikit-learn diabetes cases (standardised)
  digits CNN       Conv2D(8, 3x3) + MaxPool + Dense(10), the digits as 8x8 images
  cancer MLP       30-16-1 binary classifier, the 569 scikit-learn breast-cancer cases
  digits GRU       GRU(16) + Dense(10), each digit read row by row (8 steps of 8 pixels)
  friedman MLP     10-32-32-1 regressor on Friedman #1 (1,000 points generated in code, noise 1)

**One run serves every rule.** Per (task, optimizer, seed) the model trains for the whole
budget with validation; ``KoopmanEarlyStopping`` watches it live but is kept from stopping (the
epoch where it would stop is recorded), and each ``EarlyStopping(patience=p,
restore_best_weights=True)`` is replayed on the recorded ``val_loss`` with Keras's own rule (a
wait counter reset at each strict improvement; stop when it reaches ``p``; the best epoch's
weights restored at the end). Training does not depend on a callback that does not stop it, so
each rule's figures are the ones its own fit would give: epochs run, the best validation loss up
to its stop (restore_best_weights), the test metric of that epoch's weights (accuracy for
classifiers, MSE for regressors; evaluated every epoch by a recorder) and the wall seconds up to
its stop (the recorded per-epoch training time; the monitor's cost is in every row).

**Without validation** (second run per seed): the model trains on train + validation (80%),
``KoopmanEarlyStopping`` reads the training loss and the weight spectra only, with
``restore_best_weights`` (best training loss). Its test metric is compared with
``EarlyStopping(patience=10)`` of the first run (trained on 60% with a 20% validation split).

**Tuning and reporting are separate.** ``--seeds tune`` runs seeds 0-4 (what thresholds,
learning rates and defaults were chosen on; ``--save`` keeps every history for offline
replays by ``bench/early_stopping_tune.py``), ``--seeds report`` runs seeds 100-109 (nothing
was tuned on them); tables give paired per-seed ratios Koopman / EarlyStopping and their
medians. Chosen on seeds 0-4 (the replay grid, 1,440 settings): ``min_gain`` 0.02 and
``loss_window`` 8 against the best loss with validation; without validation ``loss_window``
20 against the progress made (``gain_reference="progress"``).

Goals (issue 16): against patience 10, >= 25% fewer epochs with val loss within 2% (paired
medians) on at least 4 of the 6 tasks; without validation, a test metric at least as good as
patience 10 with validation, in no more epochs, on at least 4 of 6 tasks.

Run:  python bench/early_stopping.py --seeds report      (about 40 minutes here)
      python bench/early_stopping.py --seeds tune --save /tmp/tune.json --output /tmp/t.md
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _results import header, report  # noqa: E402

import keras_koopman as kk  # noqa: E402

BUDGET = 150
PATIENCES = (3, 5, 10, 20)
SEEDS = {"tune": list(range(5)), "report": list(range(100, 110))}
TASKS = ("digits MLP", "diabetes MLP", "digits CNN", "cancer MLP", "digits GRU",
         "friedman MLP")
# (Adam learning rate, SGD learning rate, batch size); chosen on seeds 0-4 so that the
# validation loss reaches its minimum inside the budget (first tuning run: friedman with Adam
# 1e-3 and SGD 5e-3 still improved at epoch 150; diabetes with SGD 1e-2 peaked by epoch ~10).
SETTINGS = {
    "digits MLP": (3e-3, 0.05, 128),
    "diabetes MLP": (1e-3, 0.003, 32),
    "digits CNN": (1e-2, 0.05, 128),
    "cancer MLP": (1e-3, 0.01, 32),
    "digits GRU": (1e-2, 0.1, 128),
    "friedman MLP": (3e-3, 0.02, 64),
}
CLASSIFIERS = ("digits MLP", "digits CNN", "cancer MLP", "digits GRU")
MONITOR_WINDOW = 12


def load(task, seed):
    """``(train, validation, test)`` splits (60/20/20) of the task's data, shuffled by seed."""
    from sklearn import datasets

    if task == "diabetes MLP":
        data = datasets.load_diabetes()
        x, y = data.data, (data.target - data.target.mean()) / data.target.std()
        x = (x - x.mean(0)) / x.std(0)
    elif task == "cancer MLP":
        data = datasets.load_breast_cancer()
        x, y = (data.data - data.data.mean(0)) / data.data.std(0), data.target
    elif task == "friedman MLP":
        x, y = datasets.make_friedman1(n_samples=1000, noise=1.0, random_state=12345)
        y = (y - y.mean()) / y.std()
    else:
        data = datasets.load_digits()
        x, y = data.data / 16.0, data.target
        if task == "digits CNN":
            x = x.reshape(-1, 8, 8, 1)
        elif task == "digits GRU":
            x = x.reshape(-1, 8, 8)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype("float32"), y[order].astype("float32")
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])


def build(task, optimizer, seed):
    keras.utils.set_random_seed(seed)
    dense = keras.layers.Dense
    if task == "digits MLP":
        layers = [keras.Input((64,)), dense(64, activation="relu"), dense(10, "softmax")]
    elif task == "diabetes MLP":
        layers = [keras.Input((10,)), dense(32, activation="relu"), dense(1)]
    elif task == "digits CNN":
        layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                  keras.layers.MaxPooling2D(), keras.layers.Flatten(), dense(10, "softmax")]
    elif task == "cancer MLP":
        layers = [keras.Input((30,)), dense(16, activation="relu"), dense(1, "sigmoid")]
    elif task == "digits GRU":
        layers = [keras.Input((8, 8)), keras.layers.GRU(16), dense(10, "softmax")]
    else:
        layers = [keras.Input((10,)), dense(32, activation="relu"),
                  dense(32, activation="relu"), dense(1)]
    loss = {"cancer MLP": "binary_crossentropy", "diabetes MLP": "mse",
            "friedman MLP": "mse"}.get(task, "sparse_categorical_crossentropy")
    adam, sgd, batch = SETTINGS[task]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(adam) if optimizer == "adam"
                  else keras.optimizers.SGD(sgd, momentum=0.9), loss)
    return model, batch


class Observed(kk.callbacks.KoopmanEarlyStopping):
    """KoopmanEarlyStopping that records the epoch where it would stop, and lets training go
    on (so the same run also serves the EarlyStopping replays)."""

    fired = None
    reason = None

    def decide(self, epoch, logs):
        super().decide(epoch, logs)
        if self.model.stop_training and self.fired is None:
            self.fired, self.reason = epoch, self.decisions[-1]["stop_rule"]
        self.model.stop_training = False


class Recorder(keras.callbacks.Callback):
    """Per epoch: the training seconds (from the first callback's epoch start to here, monitor
    included) and the test metric of the current weights."""

    def __init__(self, test, classifier):
        super().__init__()
        self.test, self.classifier = test, classifier
        self.seconds, self.metric, self._start = [], [], None

    def start(self):
        recorder = self

        class Start(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                recorder._start = time.perf_counter()

        return Start()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        x, y = self.test
        p = np.asarray(self.model.predict_on_batch(x))
        if not self.classifier:
            self.metric.append(float(np.mean((p[:, 0] - y) ** 2)))
        elif p.shape[1] == 1:
            self.metric.append(float(np.mean((p[:, 0] > 0.5) == y)))
        else:
            self.metric.append(float(np.mean(p.argmax(1) == y)))


def train(task, optimizer, seed, validation):
    """One budget-long run; returns its histories and where Koopman would have stopped."""
    train_set, val_set, test_set = load(task, seed)
    if not validation:
        train_set = tuple(np.concatenate([a, b]) for a, b in zip(train_set, val_set))
    model, batch = build(task, optimizer, seed)
    monitor = kk.callbacks.KoopmanMonitor(window=MONITOR_WINDOW)
    stop = Observed(monitor)
    recorder = Recorder(test_set, task in CLASSIFIERS)
    history = model.fit(*train_set, epochs=BUDGET, batch_size=batch, verbose=0,
                        validation_data=val_set if validation else None,
                        callbacks=[recorder.start(), monitor, stop, recorder])
    return {
        "loss": history.history["loss"],
        "val_loss": history.history.get("val_loss"),
        "metric": recorder.metric,
        "seconds": recorder.seconds,
        "koopman": stop.fired,
        "rule": stop.reason,
        "decisions": [{"epoch": d["epoch"], "converged": d["converged"],
                       "groups": {g: list(m) for g, m in d["groups"].items()},
                       "loss_gain": d["loss_gain"]} for d in stop.decisions],
    }


def keras_stop(values, patience):
    """Epoch index where ``EarlyStopping(patience)`` stops on ``values`` (or the last), and the
    best epoch it restores (Keras 3's rule, min_delta 0)."""
    best, best_epoch, wait = np.inf, 0, 0
    for epoch, value in enumerate(values):
        wait += 1
        if value < best:
            best, best_epoch, wait = value, epoch, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch, best_epoch
    return len(values) - 1, best_epoch


def outcome(run, stop_epoch, restore_by):
    """Epochs, best watched loss up to the stop, test metric of the restored epoch, seconds."""
    watched = np.asarray(run[restore_by][:stop_epoch + 1])
    best = int(np.argmin(watched))
    return {"epochs": stop_epoch + 1, "val": float(watched[best]),
            "metric": run["metric"][best], "seconds": float(sum(run["seconds"][:stop_epoch + 1]))}


def evaluate(runs):
    """Per (task, optimizer, seed): each rule's outcome with and without validation."""
    results = {}
    for key, (with_val, without) in runs.items():
        last = len(with_val["loss"]) - 1
        rules = {"koopman": outcome(with_val, last if with_val["koopman"] is None
                                    else with_val["koopman"], "val_loss")}
        for p in PATIENCES:
            rules[f"p{p}"] = outcome(with_val, keras_stop(with_val["val_loss"], p)[0],
                                     "val_loss")
        rules["koopman no-val"] = outcome(
            without, len(without["loss"]) - 1 if without["koopman"] is None
            else without["koopman"], "loss")
        rules["koopman"]["rule"] = with_val["rule"] or "budget"
        rules["koopman no-val"]["rule"] = without["rule"] or "budget"
        results[key] = rules
    return results


def tables(results, classifiers=CLASSIFIERS):
    """The per-task summary (paired per-seed ratios, medians) and the goals' verdicts."""
    lines, met, met_noval, dominated = [], 0, 0, []
    groups = sorted({(t, o) for t, o, _ in results}, key=lambda k: (TASKS.index(k[0]), k[1]))
    per_task = {}
    for task, optimizer in groups:
        seeds = [results[k] for k in results if k[:2] == (task, optimizer)]
        higher_better = task in classifiers
        row = {}
        for p in PATIENCES:
            name = f"p{p}"
            row[name] = {
                "epochs": statistics.median(s["koopman"]["epochs"] / s[name]["epochs"]
                                            for s in seeds),
                "val": statistics.median(s["koopman"]["val"] / s[name]["val"] for s in seeds),
                "seconds": statistics.median(s["koopman"]["seconds"] / s[name]["seconds"]
                                             for s in seeds),
            }
            # Koopman worse on both axes than this patience (more epochs and a worse val loss)?
            if row[name]["epochs"] > 1 and row[name]["val"] > 1:
                dominated.append(f"{task}/{optimizer} by {name}")
        sign = 1 if higher_better else -1
        noval_gain = statistics.median(sign * (s["koopman no-val"]["metric"] - s["p10"]["metric"])
                                       for s in seeds)
        noval_epochs = statistics.median(s["koopman no-val"]["epochs"] / s["p10"]["epochs"]
                                         for s in seeds)
        per_task[(task, optimizer)] = (row, noval_gain, noval_epochs, seeds)
    for task in TASKS:
        keys = [k for k in per_task if k[0] == task]
        if not keys:
            continue
        ok = [per_task[k][0]["p10"]["epochs"] <= 0.75 and per_task[k][0]["p10"]["val"] <= 1.02
              for k in keys]
        met += all(ok)
        ok_noval = [per_task[k][1] >= 0 and per_task[k][2] <= 1 for k in keys]
        met_noval += all(ok_noval)
    for (task, optimizer), (row, noval_gain, noval_epochs, seeds) in per_task.items():
        median = lambda f: statistics.median(f(s) for s in seeds)  # noqa: E731
        rules = {}
        for s in seeds:
            rules[s["koopman"]["rule"]] = rules.get(s["koopman"]["rule"], 0) + 1
        lines.append(
            f"| {task} | {optimizer} | {median(lambda s: s['koopman']['epochs']):.0f} | "
            + " | ".join(f"{median(lambda s, p=p: s[f'p{p}']['epochs']):.0f}" for p in PATIENCES)
            + " | " + " | ".join(f"{row[f'p{p}']['epochs']:.2f} / {row[f'p{p}']['val']:.3f}"
                                 for p in PATIENCES)
            + f" | {row['p10']['seconds']:.2f} | "
            + f"{median(lambda s: s['koopman']['metric']):.4f} / "
            + f"{median(lambda s: s['p10']['metric']):.4f} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(rules.items())) + " | "
            + f"{median(lambda s: s['koopman no-val']['epochs']):.0f} | {noval_epochs:.2f} | "
            + f"{noval_gain:+.4f} |")
    return lines, met, met_noval, dominated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", choices=sorted(SEEDS), default="report")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--optimizers", nargs="*", default=["adam", "sgd"])
    parser.add_argument("--save", default=None, help="JSON file for every run's histories")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    seeds = SEEDS[args.seeds]
    runs, started = {}, time.perf_counter()
    for task in args.tasks:
        for optimizer in args.optimizers:
            for seed in seeds:
                pair = (train(task, optimizer, seed, True), train(task, optimizer, seed, False))
                runs[task, optimizer, seed] = pair
                k = pair[0]["koopman"]
                print(f"{task} / {optimizer} / seed {seed}: koopman stop "
                      f"{'-' if k is None else k + 1} ({pair[0]['rule']}), p10 stop "
                      f"{keras_stop(pair[0]['val_loss'], 10)[0] + 1}, no-val stop "
                      f"{'-' if pair[1]['koopman'] is None else pair[1]['koopman'] + 1}  "
                      f"[{time.perf_counter() - started:.0f} s]", flush=True)
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"|".join(map(str, k)): v for k, v in runs.items()}, f)
    results = evaluate(runs)
    lines, met, met_noval, dominated = tables(results)
    tasks = len({t for t, _, _ in results})
    body = "\n".join([
        *header(f"python bench/early_stopping.py --seeds {args.seeds}"),
        f"- seeds {seeds[0]}-{seeds[-1]} ({args.seeds}); {BUDGET}-epoch budget; split 60/20/20 "
        "train/validation/test; `KoopmanEarlyStopping` with its defaults, monitor window "
        f"{MONITOR_WINDOW}; EarlyStopping replayed on the same run's val_loss "
        "(restore_best_weights); test metric: accuracy (classifiers) or MSE (regressors) of "
        "the restored epoch",
        "- ratios are Koopman / EarlyStopping(patience p) per seed, then their median; a task "
        "meets the goal when both optimizers do",
        f"- **goal 1** (>= 25% fewer epochs than p10, val loss within 2%): met on {met} of "
        f"{tasks} tasks (goal: 4 of 6)",
        f"- **goal 2** (no validation, trained on train + validation: test metric >= p10 with "
        f"validation, no more epochs): met on {met_noval} of {tasks} tasks (goal: 4 of 6)",
        "- Koopman worse than some patience on both axes (epochs and val loss ratio > 1): "
        + (", ".join(dominated) if dominated else "nowhere"),
        "",
        "| task | optimizer | epochs K | " + " | ".join(f"epochs p{p}" for p in PATIENCES)
        + " | " + " | ".join(f"K/p{p} epochs / val" for p in PATIENCES)
        + " | K/p10 seconds | test K / p10 | K stopped by | no-val epochs K | no-val K/p10 "
        "epochs | no-val test K - p10 (higher better) |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in PATIENCES) + " | "
        + " | ".join("---:" for _ in PATIENCES) + " | ---: | ---: | --- | ---: | ---: | ---: |",
        *lines,
    ])
    report(f"Early stopping (`bench/early_stopping.py`, {args.seeds} seeds)", body, args.output)


if __name__ == "__main__":
    main()
