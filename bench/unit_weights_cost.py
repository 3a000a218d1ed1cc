"""What the Koopman tab's modes view costs: one monitor analysis with and without the per-unit
mode weights (``KoopmanMonitor(log_dir=..., unit_modes=True)``, the default with ``log_dir``).

MLPs 64-256-256-10 (85,002 weights) and 64-1024-1024-10 (1,126,410) on scikit-learn's digits,
Adam, batch 64, ``KoopmanMonitor(window=20)`` warmed by a 3-epoch fit; then, on the same
tracker, the median of ``--calls`` analyses (each after one new snapshot) without and with the
unit weights, alternating ``--rounds`` times (the first call with them traces the compiled
product once per layer shape; it is left out of the medians by the alternation's warm-up round).

Run:  python bench/unit_weights_cost.py      (about 2 minutes here; writes bench/RESULTS.md)
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from _results import header, report  # noqa: E402
from monitor_overhead import analysis_seconds  # noqa: E402

import keras_koopman as kk  # noqa: E402

WIDTHS = {"digits MLP 85k": 256, "MLP 1.1M": 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16).astype("float32"), data.target
    rows = []
    for label, width in WIDTHS.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((64,)), keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        monitor = kk.callbacks.KoopmanMonitor(window=20)
        model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[monitor])
        tracker = monitor.tracker
        plain, with_units = [], []
        for round_ in range(args.rounds + 1):
            for unit_modes, times in ((False, plain), (True, with_units)):
                tracker.unit_modes = unit_modes
                measured = analysis_seconds(tracker, args.calls)
                assert bool(tracker.unit_weights) == unit_modes, "unit weights not as asked"
                if round_:  # round 0 warms up (and traces the product once)
                    times.extend(measured)
        tracker.unit_modes = False
        base, units = statistics.median(plain), statistics.median(with_units)
        rows.append(f"| {label} | {model.count_params():,} | {base * 1e3:.1f} | "
                    f"{units * 1e3:.1f} | {(units - base) * 1e3:+.1f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        *header(f"python bench/unit_weights_cost.py --calls {args.calls} "
                f"--rounds {args.rounds}"),
        f"- medians of {args.calls * args.rounds} analyses each, window 20, alternating",
        "",
        "| model | weights | analysis ms | analysis ms with unit weights | added ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    report("Modes view cost (`bench/unit_weights_cost.py`)", body, args.output)


if __name__ == "__main__":
    main()
