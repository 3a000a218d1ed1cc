"""KoopmanAccelerator with its defaults: epochs and wall time to the plain run's best loss.

For each task x optimizer x seed, a plain run trains for the task's epoch budget; the target
is its best training loss (the whole training set, evaluated after each epoch) and the plain
figures are those of its **first** epoch at that loss. The accelerated run (same seed, same
initial weights, same batch order) adds ``KoopmanMonitor()`` and ``KoopmanAccelerator(monitor)``
with **no other argument** (guard ``"next_epoch"``: no probe data) and trains for the same
budget. Other variants (``--variants``) change one argument, for choosing the defaults.

Reported per row, as medians of paired per-seed ratios:
  epochs      gradient epochs until the accelerated run's training loss first reaches the
              target (median over seeds; "-" when most runs never reached it)
  fewer       plain epochs to the target / accelerated epochs to it
  wall        plain seconds to the target / accelerated seconds to it, each from the call of
              ``fit`` (set-up, tracing, every callback and every undone jump counted; the
              benchmark's own per-epoch evaluation excluded). A run that never reached the
              target counts its whole budget (so the ratio is an upper bound, marked)
  final       accelerated / plain training loss after the last epoch (goal <= 1.02)
  kept        kept / attempted jumps, summed over seeds

Goals (issue 17): with Adam, wall >= 1.3x on at least 3 of the 5 tasks; with SGD (plain and
with momentum), wall >= 1.5x on at least 3 of 5; the final loss never worse than plain by more
than 2% in any row.

Tasks (data that ships with scikit-learn, nothing downloaded):
  digits_mlp   8x8 digits, 64-64(relu)-10, cross-entropy, batch 64, 60 epochs
  diabetes     diabetes regression (standardised), 10-32(relu)-1, MSE, batch 32, 100 epochs
  digits_cnn   Conv2D(8, 3, relu) - Flatten - Dense(10) on the 8x8 digits, batch 64, 40 epochs
  cancer_mlp   breast cancer (standardised), 30-32(tanh)-1, cross-entropy, batch 32, 60 epochs
  digits_gru   the digits as 8 rows of 8 pixels, GRU(16) - Dense(10), batch 64, 40 epochs
Optimizers: ``sgd`` (learning rate 0.05; 0.02 for diabetes), ``momentum`` (a fifth of it, 0.9)
and ``adam`` (1e-3); the learning rates were chosen on seeds 0-4.

**Tuning and reporting are separate**: ``--seeds tune`` runs seeds 0-4 (what the defaults were
chosen on), ``--seeds report`` seeds 100-109 (nothing was chosen on them).

Run:  python bench/acceleration.py --seeds report --save /tmp/report.json
          (about 100 minutes here, alone; --save keeps every run's losses and times)
      python bench/acceleration.py --seeds tune --count 3 --variants default auto \
          --output /tmp/t.md
      python bench/acceleration.py --seeds tune --tasks digits_mlp --optimizers adam \
          --output /tmp/q.md
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from _results import RESULTS, header, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import keras_koopman as kk  # noqa: E402

TASKS = ("digits_mlp", "diabetes", "digits_cnn", "cancer_mlp", "digits_gru")
OPTIMIZERS = ("sgd", "momentum", "adam")
EPOCHS = {"digits_mlp": 60, "diabetes": 100, "digits_cnn": 40, "cancer_mlp": 60,
          "digits_gru": 40}
SGD_RATE = {"digits_mlp": 0.05, "diabetes": 0.02, "digits_cnn": 0.05, "cancer_mlp": 0.05,
            "digits_gru": 0.05}
BATCH = {"diabetes": 32, "cancer_mlp": 32}
SEEDS = {"tune": list(range(5)), "report": list(range(100, 110))}
# One argument changed from the defaults (the variants compared when choosing them).
VARIANTS = {"default": {}, "nodes": {"observables": "nodes"}, "auto": {"observables": "auto"},
            "keep": {"optimizer_state": "keep"}, "every10": {"every": 10},
            "horizon5": {"horizon": 5}}


def load(task):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

    if task in ("diabetes", "cancer_mlp"):
        data = load_diabetes() if task == "diabetes" else load_breast_cancer()
        x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype("float32")
        if task == "cancer_mlp":
            return x, data.target.astype("float32")[:, None]
        y = (data.target - data.target.mean()) / data.target.std()
        return x, y.astype("float32")[:, None]
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    if task == "digits_cnn":
        x = x.reshape(-1, 8, 8, 1)
    elif task == "digits_gru":
        x = x.reshape(-1, 8, 8)
    return x, data.target.astype("int32")


def build(task, optimizer, seed):
    keras.utils.set_random_seed(seed)
    layers = {
        "digits_mlp": lambda: [keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                               keras.layers.Dense(10)],
        "diabetes": lambda: [keras.Input((10,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(1)],
        "digits_cnn": lambda: [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                               keras.layers.Flatten(), keras.layers.Dense(10)],
        "cancer_mlp": lambda: [keras.Input((30,)), keras.layers.Dense(32, activation="tanh"),
                               keras.layers.Dense(1)],
        "digits_gru": lambda: [keras.Input((8, 8)), keras.layers.GRU(16),
                               keras.layers.Dense(10)],
    }[task]()
    model = keras.Sequential(layers)
    rate = SGD_RATE[task]
    opt = {"sgd": lambda: keras.optimizers.SGD(rate),
           "momentum": lambda: keras.optimizers.SGD(rate / 5, momentum=0.9),
           "adam": lambda: keras.optimizers.Adam(1e-3)}[optimizer]()
    loss = {"diabetes": "mse",
            "cancer_mlp": keras.losses.BinaryCrossentropy(from_logits=True)}.get(
        task, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(opt, loss)
    return model


class Trace(keras.callbacks.Callback):
    """Training loss on the whole training set after each epoch (after every other callback,
    so after an undone jump is undone), and the wall time since ``fit`` was called, this
    callback's own evaluation excluded. Call :meth:`start` right before ``fit``."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.losses, self.seconds = [], []

    def start(self):
        self._start = time.perf_counter()
        self._excluded = 0.0

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.seconds.append(now - self._start - self._excluded)
        self.losses.append(float(self.model.evaluate(self.x, self.y, batch_size=len(self.x),
                                                     verbose=0)))
        self._excluded += time.perf_counter() - now


def run(task, optimizer, variant, seed):
    x, y = load(task)
    model = build(task, optimizer, seed)
    trace = Trace(x, y)
    callbacks, accelerator = [], None
    if variant != "plain":
        monitor = kk.callbacks.KoopmanMonitor()
        accelerator = kk.callbacks.KoopmanAccelerator(monitor, **VARIANTS[variant])
        callbacks = [monitor, accelerator]
    # The same batches in every variant of a seed: shuffle=True draws from the seeded RNG.
    keras.utils.set_random_seed(seed + 1000)
    trace.start()
    model.fit(x, y, epochs=EPOCHS[task], batch_size=BATCH.get(task, 64), verbose=0,
              callbacks=[*callbacks, trace])
    jumps = accelerator.jumps if accelerator else []
    finite = all(bool(np.all(np.isfinite(w))) for w in model.get_weights())
    keras.backend.clear_session()
    return {"losses": trace.losses, "seconds": trace.seconds, "finite": finite,
            "kept": sum(bool(j["accepted"]) for j in jumps), "attempts": len(jumps)}


def first_at(result, target):
    """(epochs, seconds, reached) at the first epoch whose loss is at most ``target``; the whole
    budget when none is."""
    losses = np.asarray(result["losses"])
    hits = np.flatnonzero(losses <= target)
    if not len(hits):
        return len(losses), result["seconds"][-1], False
    return int(hits[0]) + 1, result["seconds"][hits[0]], True


def paired(plain, fast):
    target = min(plain["losses"])
    base_epochs, base_seconds, _ = first_at(plain, target)
    epochs, seconds, reached = first_at(fast, target)
    return {"epochs": epochs, "reached": reached, "fewer": base_epochs / epochs,
            "wall": base_seconds / seconds, "final": fast["losses"][-1] / plain["losses"][-1],
            "kept": fast["kept"], "attempts": fast["attempts"], "finite": fast["finite"]}


def summarise(results, variants):
    """Rows and goal tallies from ``results[(task, optimizer, variant, seed)]``."""
    rows, summary = [], {}
    keys = sorted({(t, o) for t, o, _, _ in results}, key=lambda k: (TASKS.index(k[0]),
                                                                     OPTIMIZERS.index(k[1])))
    for task, optimizer in keys:
        seeds = sorted({s for t, o, v, s in results if (t, o, v) == (task, optimizer, "plain")})
        plain = [results[(task, optimizer, "plain", s)] for s in seeds]
        target_epochs = statistics.median(first_at(p, min(p["losses"]))[0] for p in plain)
        rows.append(f"| **{task} / {optimizer}**: plain | {target_epochs:.0f} | 1x | 1x | "
                    f"(loss {statistics.median(min(p['losses']) for p in plain):.4g}) | |")
        for variant in variants:
            if (task, optimizer, variant, seeds[0]) not in results:
                continue
            figures = [paired(p, results[(task, optimizer, variant, s)])
                       for p, s in zip(plain, seeds)]
            med = lambda key: statistics.median(f[key] for f in figures)  # noqa: E731
            reached = sum(f["reached"] for f in figures)
            bound = "" if reached == len(figures) else " (<=)"
            worst = max(f["final"] for f in figures)
            summary[(task, optimizer, variant)] = {"wall": med("wall"), "final": med("final"),
                                                   "fewer": med("fewer"), "worst": worst}
            epochs = ("-" if reached * 2 < len(figures) else f"{med('epochs'):.0f}")
            rows.append(f"| {task} / {optimizer} / {variant} | {epochs} | {med('fewer'):.2f}x"
                        f"{bound} | {med('wall'):.2f}x{bound} | {med('final'):.3f} "
                        f"(worst {worst:.3f}) | {sum(f['kept'] for f in figures)}/"
                        f"{sum(f['attempts'] for f in figures)} | {reached}/{len(figures)} |"
                        + ("" if all(f["finite"] for f in figures) else " non-finite weights |"))
    return rows, summary


def goals(summary, variant):
    tasks = sorted({t for t, _, v in summary if v == variant}, key=TASKS.index)
    lines = []
    for optimizer, need in (("adam", 1.3), ("sgd", 1.5), ("momentum", 1.5)):
        met = [t for t in tasks if summary.get((t, optimizer, variant), {}).get("wall", 0) >= need]
        if any((t, optimizer, variant) in summary for t in tasks):
            lines.append(f"- `{variant}`, {optimizer}: wall time >= {need}x less on {len(met)} of "
                         f"{len(tasks)} tasks ({', '.join(met) or 'none'}) (goal: 3 of 5): "
                         f"{'met' if len(met) >= 3 else 'NOT met'}")
    finals = [(f["final"], f"{t}/{o}") for (t, o, v), f in summary.items() if v == variant]
    if finals:
        worst = max(finals)
        lines.append(f"- `{variant}`: worst median final-loss ratio {worst[0]:.3f} ({worst[1]})"
                     f" (goal <= 1.02 in every row): {'met' if worst[0] <= 1.02 else 'NOT met'}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", choices=sorted(SEEDS), default="report")
    parser.add_argument("--count", type=int, help="only the first COUNT seeds of the set")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--variants", nargs="*", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--save", help="also write every run's losses and times to this JSON")
    args = parser.parse_args()
    command = "python bench/acceleration.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    head = header(command.strip())
    seeds = SEEDS[args.seeds][:args.count]
    results = {}
    started = time.time()
    for task in args.tasks:
        for optimizer in args.optimizers:
            # Interleaved by seed, so that drifts of the machine hit every variant alike.
            for seed in seeds:
                for variant in ("plain", *args.variants):
                    results[(task, optimizer, variant, seed)] = run(task, optimizer, variant,
                                                                    seed)
            rows, _ = summarise({k: v for k, v in results.items() if k[:2] == (task, optimizer)},
                                args.variants)
            print("\n".join(rows), f"[{time.time() - started:.0f} s]", flush=True)
    rows, summary = summarise(results, args.variants)
    if args.save:
        with open(args.save, "w") as out:
            json.dump({"|".join(map(str, k)): v for k, v in results.items()}, out)
    body = "\n".join([
        *head,
        f"- seeds {seeds[0]}-{seeds[-1]} ({args.seeds}); run time {time.time() - started:.0f} s; "
        "accelerated runs: `KoopmanMonitor()` and `KoopmanAccelerator(monitor, <variant>)`, "
        "`default` = no other argument",
        "- target: the plain run's best training loss (whole training set, after each epoch); "
        "plain figures at its first epoch there; `fewer` / `wall`: plain / accelerated epochs / "
        "seconds to the target from the call of fit (every overhead counted), paired per seed, "
        "then the median; (<=): some runs never reached it (their whole budget counted); "
        "`final`: accelerated / plain training loss after the last epoch",
        "", "### Goals", "", *[g for v in args.variants for g in goals(summary, v)], "",
        "| task / optimizer / variant | epochs to target | fewer epochs | wall time | "
        "final loss ratio | kept jumps | reached |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, ""])
    print(body)
    report(f"Koopman acceleration (`bench/acceleration.py`, {args.seeds} seeds)", body,
           args.output)


if __name__ == "__main__":
    main()
