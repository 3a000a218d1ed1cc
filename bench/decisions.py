"""Seconds per Koopman decision at 1e6 and 1e7 weights: a jump and a pruning mask update.

A model of one ``Dense`` layer with about ``n`` weights (``sqrt(n)`` inputs and units) is watched
by ``KoopmanMonitor(window=10)``; its buffer is filled with 10 snapshots of a decaying trajectory
(the weights scaled towards a fixed point), then one ``KoopmanAccelerator.decide`` is timed: the
DMD with modes, the prediction, the finiteness check, the undo copy, the assignment and the
optimizer-state reset (``guard=None``: the jump is kept, so the monitor restarts too), and the
same with ``guard="loss"`` on a 64-sample probe (two probe losses; the jump is kept or undone).
Medians of ``--repeats`` jumps, each after the buffer was filled again.

Pruning: the same layer wrapped by ``KoopmanPruning`` (Koopman criterion, global scope, a
schedule that updates at every epoch towards 50%); ``UpdateKoopmanPruning(window=10)``'s buffer
is filled the same way (pruned entries kept at zero), then one mask update is timed: the DMD of
the unpruned entries with modes, the scores, the selection of the weights to prune, the new
masks and the masked weights. Medians of ``--repeats`` updates.

Run:  python bench/decisions.py                 (about 5 minutes here; writes bench/RESULTS.md)
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


def fill(kernel, monitor, rng, mask=None):
    """Ten snapshots of weights decaying towards a fixed point, gathered by the tracker (pruned
    entries, where ``mask`` is 0, stay at zero)."""
    tracker = monitor.tracker
    target = kernel.numpy() + 0.01 * rng.standard_normal(kernel.shape).astype(np.float32)
    start = kernel.numpy()
    keep = 1.0 if mask is None else mask.numpy()
    tracker.restart()
    for k in range(1, monitor.window):
        kernel.assign((target + 0.8 ** k * (start - target)) * keep)
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
        fill(model.layers[0].kernel, monitor, rng)
        start = time.perf_counter()
        jump.decide(0, {})
        model.layers[0].kernel.numpy()[0, 0]  # waits for the assignment
        times.append(time.perf_counter() - start)
    kept = sum(j["accepted"] for j in jump.jumps)
    monitor.on_train_end()
    return statistics.median(times[1:]), kept, len(jump.jumps), model.count_params()


def time_pruning(width, repeats, rng):
    """Median seconds of one ``UpdateKoopmanPruning`` mask update, the number of updates and
    the sparsity reached."""
    keras.utils.set_random_seed(0)
    schedule = kk.pruning.PolynomialDecay(0.1, 0.5, begin_step=0, end_step=repeats,
                                          frequency=1, unit="epoch")
    layer = kk.pruning.KoopmanPruning(keras.layers.Dense(width, name="dense"),
                                      target_sparsity=0.5, schedule=schedule)
    model = keras.Sequential([keras.Input((width,)), layer])
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=10, rank=4)
    update.set_model(model)
    update.on_train_begin()
    (kernel, mask), = layer.masked
    times = []
    for epoch in range(repeats + 1):  # the first one traces
        fill(kernel, update.monitor, rng, mask)
        start = time.perf_counter()
        update.decide(epoch, {})
        mask.numpy()[0, 0]  # waits for the new mask
        times.append(time.perf_counter() - start)
    update.on_train_end()
    criteria = {u["criterion"] for u in update.updates}
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_weights)  # masks excluded
    return (statistics.median(times[1:]), len(update.updates), layer.sparsity(),
            "/".join(sorted(criteria)), weights)


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
    pruning = []
    for label, width in SIZES.items():
        seconds, updates, sparsity, criteria, weights = time_pruning(width, args.repeats, rng)
        pruning.append(f"| {weights:,} | {seconds:.3f} | {updates} | {sparsity:.3f} | "
                       f"{criteria} |")
        print(pruning[-1], flush=True)
    body = "\n".join([
        *header(f"python bench/decisions.py --repeats {args.repeats}"),
        "- one Dense layer, window 10, rank 4, horizon 20; median seconds of one "
        "`KoopmanAccelerator.decide` (a jump) after the buffer is filled again",
        "",
        "| weights | guard | s per jump | kept / jumps |",
        "| ---: | --- | ---: | ---: |",
        *rows,
        "",
        "- the same layer in `KoopmanPruning` (Koopman criterion, 10% -> 50% over the updates); "
        "median seconds of one `UpdateKoopmanPruning` mask update after its window is filled "
        "again",
        "",
        "| weights | s per update | updates | sparsity reached | criterion |",
        "| ---: | ---: | ---: | ---: | --- |",
        *pruning,
    ])
    report("Koopman decisions: seconds per jump (`bench/decisions.py`)", body, args.output)


if __name__ == "__main__":
    main()
