"""Fit time with and without KoopmanMonitor, interleaved, on scikit-learn's digits.

Models: an MLP 64-256-256-10 (85,002 weights) and an MLP 64-1024-1024-10 (1,126,410 weights),
Adam, batch 64, 1,797 samples (29 batches an epoch). Configurations:

  epoch   snapshots once per epoch, analysis after each (window 20)
  batch   snapshots after every batch, analysis once per epoch (``analyze_every=29``)

Each configuration is warmed up for 3 epochs (tracing, XLA compilation, the first analysis),
then plain and monitored fits of the same model instance (separate instances differed by up to
30% here, more than the monitor costs) of
``--epochs`` epochs alternate ``--repeats`` times; the overhead is the median monitored time over
the median plain time, minus one. Whole-fit differences on this 2-core machine swing by
+-10%, so the parts are also timed on their own, in the same run: one snapshot (the compiled
gather) and one analysis with its deferred Gram rows (``batches`` of them in the per-batch
configuration), each the median of 20 calls; ``estimated`` is their cost per epoch over the
plain epoch time.

Goals: per-epoch snapshots <= 2% of fit time; snapshots every batch <= 15%.

Run:  python bench/monitor_overhead.py      (about 4 minutes here; writes bench/RESULTS.md)
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
GOALS = {"epoch": 0.02, "batch": 0.15}


def build(width, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def timed_fit(model, x, y, epochs, callbacks):
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def part_costs(monitor, gathers_per_analysis, calls=20):
    """Median seconds of one gather and of one analysis after ``gathers_per_analysis`` gathers."""
    tracker = monitor.tracker
    gather_times, analysis_times = [], []
    for _ in range(calls):
        start = time.perf_counter()
        tracker.gather()
        tracker.sync()  # the host read that waits for the gather
        gather_times.append(time.perf_counter() - start)
    for _ in range(calls):
        for _ in range(gathers_per_analysis):
            tracker.gather()
        tracker.sync()
        start = time.perf_counter()
        tracker.analyse()
        analysis_times.append(time.perf_counter() - start)
    return statistics.median(gather_times), statistics.median(analysis_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16).astype("float32")
    y = data.target
    batches = int(np.ceil(len(x) / 64))
    rows = []
    verdicts = []
    for label, width in MODELS.items():
        for config in ("epoch", "batch"):
            # One model for both: two instances of the same model differ by more than the
            # monitor costs on this machine (memory placement), so the fits alternate on one.
            plain = watched = build(width)
            every, analyze_every = ("epoch", 1) if config == "epoch" else (1, batches)
            monitor = kk.callbacks.KoopmanMonitor(window=20, every=every,
                                                  analyze_every=analyze_every)
            # Warm-up long enough for an analysis: tracing, buffers, XLA compilation.
            timed_fit(plain, x, y, 3, [])
            timed_fit(watched, x, y, 3, [monitor])
            plain_times, watched_times = [], []
            for _ in range(args.repeats):
                plain_times.append(timed_fit(plain, x, y, args.epochs, []))
                watched_times.append(timed_fit(watched, x, y, args.epochs, [monitor]))
            base = statistics.median(plain_times)
            with_monitor = statistics.median(watched_times)
            overhead = with_monitor / base - 1
            gathers = 1 if config == "epoch" else batches
            gather_s, analysis_s = part_costs(monitor, gathers)
            estimated = (gathers * gather_s + analysis_s) / (base / args.epochs)
            params = plain.count_params()
            goal = GOALS[config]
            rows.append(
                f"| {label} | {params:,} | {config} | {base / args.epochs:.3f} | "
                f"{with_monitor / args.epochs:.3f} | {overhead:+.1%} | {gather_s * 1e3:.2f} | "
                f"{analysis_s * 1e3:.1f} | {estimated:+.1%} | <= {goal:.0%} | "
                f"{'met' if max(overhead, estimated) <= goal else 'NOT met'} |"
            )
            verdicts.append(max(overhead, estimated) <= goal)
            print(rows[-1], flush=True)
            assert monitor.step > 0 and monitor.history, "the monitor did not run"

    body = "\n".join([
        *header(f"python bench/monitor_overhead.py --epochs {args.epochs} "
                f"--repeats {args.repeats}"),
        f"- set-up: digits (1,797 x 64), Adam, batch 64 ({batches} batches an epoch); plain and "
        "monitored fits alternate; medians over the repeats; window 20",
        "",
        "- goal verdict: met only when both the measured and the estimated overhead are "
        "within the goal",
        "",
        "| model | weights | snapshots | s/epoch plain | s/epoch monitored | overhead measured "
        "| gather ms | analysis ms | overhead estimated | goal | |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
    ])
    report("Monitor overhead (`bench/monitor_overhead.py`)", body, args.output)


if __name__ == "__main__":
    main()
