"""Fit time with and without KoopmanMonitor, interleaved, on scikit-learn's digits.

Rows (each a ratio of medians of plain and monitored fits that alternate in one process):

  fresh           a new model and a new monitor for every fit: MLP 64-128-64-10, Adam, batch 64,
                  ``fit(epochs=10)``, ``KoopmanMonitor(window=10)``; the process is warmed by one
                  plain 1-epoch fit first. The first monitored fit of the process is also shown on
                  its own (it traces and compiles what later fits of the same shapes reuse).
  fresh + ES/R    the same with ``KoopmanEarlyStopping`` and ``KoopmanRestart`` added (their
                  defaults; the row says how many of its fits stopped early or restarted).
  new shapes      as ``fresh`` but every fit's model has a hidden width of its own (128 + i), so
                  nothing traced for an earlier model fits: what a user's first model costs.
  epoch           warm model, snapshots once per epoch, analysis after each (window 20).
  batch           warm model, ``KoopmanMonitor(window=20, every=1)``: the monitor's defaults
                  besides ``every`` (one analysis per epoch; snapshots inside the train step),
                  ``jit_compile`` at Keras's default (no XLA on a CPU-only machine) and ``True``.

Warm rows: MLP 64-256-256-10 (85,002 weights) and 64-1024-1024-10 (1,126,410), Adam, batch 64,
1,797 samples (29 batches an epoch); each configuration is warmed up for 3 epochs, then plain and
monitored fits of the same model instance (separate instances differed by up to 30% here, more
than the monitor costs) of ``--epochs`` epochs alternate ``--repeats`` times. Whole-fit
differences on this 2-core machine swing by +-10%, so the per-epoch rows also time one snapshot
(the compiled gather) and one analysis on their own, each the median of 20 calls; ``estimated``
is their cost per epoch over the plain epoch time.

Goals (issue 15): fresh <= 1.15x plain (also with ES/R); per epoch <= 2%; every batch <= 10%.

Run:  python bench/monitor_overhead.py      (about 10 minutes here; writes bench/RESULTS.md)

``--backends tensorflow jax torch`` instead runs a shorter set on each Keras backend, each in a
process of its own, into one table (its own section): the fresh row, and for each warm model
the per-epoch row (measured, gather and analysis on their own) and the every-batch row at
Keras's default ``jit_compile`` (the batch hook: on JAX and torch the monitor always gathers
from there). Rows of one backend are ratios of fits in the same process.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _results import header, report  # noqa: E402

import keras_koopman as kk  # noqa: E402

MODELS = {"digits MLP 85k": 256, "MLP 1.1M": 1024}
GOALS = {"fresh": 0.15, "epoch": 0.02, "batch": 0.10}


def build(widths, seed=0, jit_compile="auto"):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        *[keras.layers.Dense(width, activation="relu") for width in widths],
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit_compile)
    return model


def timed_fit(model, x, y, epochs, callbacks):
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def part_costs(monitor, calls=20):
    """Median seconds of one gather and of one analysis (with its deferred Gram row)."""
    tracker = monitor.tracker
    gather_times = []
    for _ in range(calls):
        start = time.perf_counter()
        tracker.gather()
        tracker.sync()  # the host read that waits for the gather
        gather_times.append(time.perf_counter() - start)
    analysis_times = analysis_seconds(tracker, calls)
    return statistics.median(gather_times), statistics.median(analysis_times)


def analysis_seconds(tracker, calls):
    """Seconds of each of ``calls`` analyses, each after one new snapshot."""
    times = []
    for _ in range(calls):
        tracker.gather()
        tracker.sync()
        start = time.perf_counter()
        tracker.analyse()
        times.append(time.perf_counter() - start)
    return times


def verdict(ratio, goal):
    return "met" if ratio <= goal else "NOT met"


def fresh_rows(x, y, repeats):
    """New model and monitor per fit; interleaved with plain fits of new models."""
    rows = []
    cases = [("fresh", False, False), ("fresh + ES/R", True, False), ("new shapes", False, True)]
    for label, decisions, new_shapes in cases:
        plain_times, watched_times, events = [], [], 0
        for i in range(repeats):
            widths = (128 + (i + 1 if new_shapes else 0), 64)
            plain_times.append(timed_fit(build(widths, seed=i), x, y, 10, []))
            monitor = kk.callbacks.KoopmanMonitor(window=10)
            callbacks = [monitor]
            if decisions:
                callbacks += [kk.callbacks.KoopmanEarlyStopping(monitor),
                              kk.callbacks.KoopmanRestart(monitor)]
            watched_times.append(timed_fit(build(widths, seed=i), x, y, 10, callbacks))
            assert monitor.history, "the monitor did not analyse"
            if decisions:
                events += bool(callbacks[1].stopped_epoch or callbacks[2].restarts)
        base, watched = statistics.median(plain_times), statistics.median(watched_times)
        ratio = watched / base
        what = "10-epoch fit, new model"
        if decisions:
            what += f" ({events} of {repeats} stopped or restarted)"
        rows.append(f"| {label} | {what} | {base:.2f} | {watched:.2f} | "
                    f"{ratio:.2f}x | <= 1.15x | {verdict(ratio - 1, GOALS['fresh'])} |")
        print(rows[-1], flush=True)
        if label == "fresh":
            first = watched_times[0] / plain_times[0]
            rows.append(f"| fresh: the process's first monitored fit | 10-epoch fit | "
                        f"{plain_times[0]:.2f} | {watched_times[0]:.2f} | {first:.2f}x | | |")
            print(rows[-1], flush=True)
    return rows


def warm_rows(x, y, epochs, repeats):
    rows = []
    batches = int(np.ceil(len(x) / 64))
    configs = [("epoch", "auto"), ("batch", "auto"), ("batch", True)]
    for label, width in MODELS.items():
        for config, jit_compile in configs:
            # One model for both: two instances of the same model differ by more than the
            # monitor costs on this machine (memory placement), so the fits alternate on one.
            model = build((width, width), jit_compile=jit_compile)
            every = "epoch" if config == "epoch" else 1
            monitor = kk.callbacks.KoopmanMonitor(window=20, every=every)
            # Warm-up long enough for an analysis: tracing, buffers, XLA compilation.
            timed_fit(model, x, y, 3, [])
            timed_fit(model, x, y, 3, [monitor])
            plain_times, watched_times = [], []
            for _ in range(repeats):
                plain_times.append(timed_fit(model, x, y, epochs, []))
                watched_times.append(timed_fit(model, x, y, epochs, [monitor]))
            base = statistics.median(plain_times)
            overhead = statistics.median(watched_times) / base - 1
            gather_s, analysis_s = part_costs(monitor)
            if config == "epoch":
                estimated = (gather_s + analysis_s) / (base / epochs)
                shown = f"{estimated:+.1%}"
                worst = max(overhead, estimated)
            else:
                # Keras's CPU default (no XLA, one step a call) gathers from the batch hook.
                shown = "(in the train step)" if jit_compile is True else "(batch hook)"
                worst = overhead
            jit = "XLA" if jit_compile is True else "default"
            rows.append(
                f"| {label} | {model.count_params():,} | {config} | {jit} | "
                f"{base / epochs:.3f} | {base / epochs * (1 + overhead):.3f} | {overhead:+.1%} | "
                f"{gather_s * 1e3:.2f} | {analysis_s * 1e3:.1f} | {shown} | "
                f"<= {GOALS[config]:.0%} | {verdict(worst, GOALS[config])} |")
            print(rows[-1], flush=True)
            assert monitor.step > 0 and monitor.history, "the monitor did not run"
            if config == "batch":
                assert monitor.step > batches * epochs, "per-batch snapshots were not counted"
    return rows


def backend_figures(x, y, epochs, repeats):
    """The ``--backends`` set on this process's backend, as a dict of figures."""
    figures = {"backend": keras.backend.backend()}
    plain_times, watched_times = [], []
    for i in range(repeats):
        plain_times.append(timed_fit(build((128, 64), seed=i), x, y, 10, []))
        monitor = kk.callbacks.KoopmanMonitor(window=10)
        watched_times.append(timed_fit(build((128, 64), seed=i), x, y, 10, [monitor]))
        assert monitor.history, "the monitor did not analyse"
    figures["fresh"] = [statistics.median(plain_times), statistics.median(watched_times),
                        watched_times[0] / plain_times[0]]
    for label, width in MODELS.items():
        for config in ("epoch", "batch"):
            model = build((width, width))
            monitor = kk.callbacks.KoopmanMonitor(window=20,
                                                  every="epoch" if config == "epoch" else 1)
            timed_fit(model, x, y, 3, [])
            timed_fit(model, x, y, 3, [monitor])
            plain_times, watched_times = [], []
            for _ in range(repeats):
                plain_times.append(timed_fit(model, x, y, epochs, []))
                watched_times.append(timed_fit(model, x, y, epochs, [monitor]))
            base = statistics.median(plain_times) / epochs
            watched = statistics.median(watched_times) / epochs
            gather_s, analysis_s = part_costs(monitor)
            figures[f"{label} {config}"] = [base, watched, gather_s, analysis_s,
                                            model.count_params()]
            print(f"{figures['backend']} {label} {config}: {base:.3f} -> {watched:.3f} s/epoch",
                  flush=True)
    return figures


def backends_table(args):
    import json
    import subprocess
    import sys

    results = {}
    for backend in args.backends:
        print(f"== {backend}", flush=True)
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--figures", "--epochs",
             str(args.epochs), "--repeats", str(args.repeats)],
            env=dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1"),
            capture_output=True, text=True, timeout=3600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
        if not lines:
            raise RuntimeError(f"{backend} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        results[backend] = json.loads(lines[-1][len("FIGURES "):])
    fresh = []
    for backend, figures in results.items():
        base, watched, first = figures["fresh"]
        fresh.append(f"| {backend} | {base:.2f} | {watched:.2f} | {watched / base:.2f}x | "
                     f"{first:.2f}x | <= 1.15x | {verdict(watched / base - 1, GOALS['fresh'])} |")
    warm = []
    for label in MODELS:
        for config in ("epoch", "batch"):
            for backend, figures in results.items():
                base, watched, gather_s, analysis_s, weights = figures[f"{label} {config}"]
                overhead = watched / base - 1
                warm.append(
                    f"| {label} | {weights:,} | {config} | {backend} | {base:.3f} | "
                    f"{watched:.3f} | {overhead:+.1%} | {gather_s * 1e3:.2f} | "
                    f"{analysis_s * 1e3:.1f} | <= {GOALS[config]:.0%} | "
                    f"{verdict(overhead, GOALS[config])} |")
    body = "\n".join([
        *header(f"python bench/monitor_overhead.py --backends {' '.join(args.backends)} "
                f"--epochs {args.epochs} --repeats {args.repeats}"),
        f"- set-up as in \"Monitor overhead\"; each backend in a process of its own; medians "
        f"over {args.repeats} repeats; batch rows at Keras's default jit_compile (no XLA on a "
        f"CPU-only machine for TensorFlow; JAX always jits its train step)",
        "",
        "### A new model for every fit (10 epochs, 128-64 MLP)",
        "",
        "| backend | s plain | s monitored | ratio | first fit of the process | goal | |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *fresh,
        "",
        "### Warm models",
        "",
        "| model | weights | snapshots | backend | s/epoch plain | s/epoch monitored | "
        "overhead | gather ms | analysis ms | goal | |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *warm,
    ])
    report("Monitor overhead on each Keras backend (`bench/monitor_overhead.py --backends`)",
           body, args.output)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None)
    parser.add_argument("--backends", nargs="+", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--figures", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backends:
        backends_table(args)
        return

    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16).astype("float32")
    y = data.target
    timed_fit(build((128, 64), seed=99), x, y, 1, [])  # the process's own warm-up
    if args.figures:
        import json

        print("FIGURES " + json.dumps(backend_figures(x, y, args.epochs, args.repeats)))
        return
    fresh = fresh_rows(x, y, args.repeats)
    warm = warm_rows(x, y, args.epochs, args.repeats)
    body = "\n".join([
        *header(f"python bench/monitor_overhead.py --epochs {args.epochs} "
                f"--repeats {args.repeats}"),
        f"- set-up: digits (1,797 x 64), Adam, batch 64 (29 batches an epoch); plain and "
        f"monitored fits alternate; medians over {args.repeats} repeats",
        "",
        "### A new model for every fit (start-up included)",
        "",
        "| row | what is timed | s plain | s monitored | ratio | goal | |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        *fresh,
        "",
        "### Warm models",
        "",
        "- goal verdict of the per-epoch rows: met only when both the measured and the "
        "estimated overhead are within the goal",
        "",
        "| model | weights | snapshots | jit_compile | s/epoch plain | s/epoch monitored "
        "| overhead measured | gather ms | analysis ms | overhead estimated | goal | |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *warm,
    ])
    report("Monitor overhead (`bench/monitor_overhead.py`)", body, args.output)


if __name__ == "__main__":
    main()
