"""Seconds per Koopman jump (KoopmanAccelerator) at 1e6 and 1e7 weights.

A model of one ``Dense`` layer with about ``n`` weights (``sqrt(n)`` inputs and units) is watched
by ``KoopmanMonitor(window=10)``; its buffer is filled with 10 snapshots of a decaying trajectory
(the weights scaled towards a fixed point), then one ``KoopmanAccelerator.decide`` is timed: the
DMD with modes, the prediction, the finiteness check, the undo copy, the assignment and the
optimizer-state reset (``guard=None``: the jump is kept, so the monitor restarts too), and the
same with ``guard="loss"`` on a 64-sample probe (two probe losses; the jump is kept or undone).
Medians of ``--repeats`` jumps, each after the buffer was filled again.

Run:  python bench/decisions.py                 (about 3 minutes here; writes bench/RESULTS.md)
      PYTHONPATH=/tmp/old python bench/decisions.py --output /tmp/old.md   (another checkout)
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

SIZES = {"1e6": 1000, "1e7": 3162}


def fill(model, monitor, rng):
    """Ten snapshots of weights decaying towards a fixed point, gathered by the tracker."""
    tracker = monitor.tracker
    kernel = model.layers[0].kernel
    target = kernel.numpy() + 0.01 * rng.standard_normal(kernel.shape).astype(np.float32)
    start = kernel.numpy()
    tracker.restart()
    for k in range(1, monitor.window):
        kernel.assign(target + 0.8 ** k * (start - target))
        tracker.gather()
    tracker.sync()


def time_jumps(width, guard, repeats, rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width, name="dense")])
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    x = rng.standard_normal((64, width)).astype(np.float32)
    model.fit(x, x, epochs=1, batch_size=64, verbose=0)  # builds the optimizer state
    monitor = kk.callbacks.KoopmanMonitor(window=10, rank=4, analyze_every=None, sketch=None)
    probe = (x, x) if guard == "loss" else None
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=1, horizon=20, guard=guard,
                                           probe=probe, rank=4)
    jump.set_model(model)
    monitor.set_model(model)
    monitor.on_train_begin()
    times = []
    for _ in range(repeats + 1):  # the first one traces
        fill(model, monitor, rng)
        start = time.perf_counter()
        jump.decide(0, {})
        model.layers[0].kernel.numpy()[0, 0]  # waits for the assignment
        times.append(time.perf_counter() - start)
    kept = sum(j["accepted"] for j in jump.jumps)
    monitor.on_train_end()
    return statistics.median(times[1:]), kept, len(jump.jumps), model.count_params()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, width in SIZES.items():
        for guard in (None, "loss"):
            seconds, kept, jumps, weights = time_jumps(width, guard, args.repeats, rng)
            rows.append(f"| {weights:,} | {guard} | {seconds:.3f} | {kept}/{jumps} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        *header(f"python bench/decisions.py --repeats {args.repeats}"),
        "- one Dense layer, window 10, rank 4, horizon 20; median seconds of one "
        "`KoopmanAccelerator.decide` (a jump) after the buffer is filled again",
        "",
        "| weights | guard | s per jump | kept / jumps |",
        "| ---: | --- | ---: | ---: |",
        *rows,
    ])
    report("Koopman decisions: seconds per jump (`bench/decisions.py`)", body, args.output)


if __name__ == "__main__":
    main()
