"""The GPU checks, as one short script for a lent device machine (also runs on a CPU-only one).

1. ``kk.dmd`` (one shot, modes included) and ``SnapshotBuffer`` (``window=m`` appends, then
   ``dmd``) at ``n`` features and ``m`` snapshots, on the GPU and on the CPU of the same machine,
   against PyDMD (``DMD(svd_rank=8, exact=True)`` on float64, CPU) as the accuracy anchor.
2. A monitored ``fit`` (digits MLP, ``KoopmanMonitor`` + ``KoopmanAccelerator``) with the model
   on the GPU, against the same ``fit`` without the callbacks.

Prints the figures and writes them as the "GPU checks" section of bench/RESULTS.md. With no GPU
visible the GPU rows say so and the rest still runs (so the script is tested here).

Run:  python bench/gpu_check.py                    (n = 1e7, m = 64: about 3 minutes on a GPU box)
      python bench/gpu_check.py --n 100000 --output /tmp/r.md       (a quick dry run)
"""

import argparse
import os
import sys
import time

import numpy as np

from _results import RESULTS, header, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

import keras_koopman as kk  # noqa: E402

RANK = 8


def make_data(n, m, seed=0):
    """Rank-8 linear dynamics (4 damped oscillations) plus 1e-3 noise, float32 ``[m, n]``."""
    rng = np.random.default_rng(seed)
    eigenvalues = np.array([0.99, 0.98, 0.96, 0.95]) * np.exp(1j * np.array([0.2, 0.5, 0.9, 1.4]))
    powers = eigenvalues[None, :] ** np.arange(m)[:, None]  # [m, 4]
    x = np.empty((m, n), np.float32)
    chunk = 1_000_000
    for start in range(0, n, chunk):  # modes drawn in chunks: no [n, 4] complex128 at once
        size = min(chunk, n - start)
        modes = rng.standard_normal((size, 4)) + 1j * rng.standard_normal((size, 4))
        block = 2.0 * (powers @ modes.T).real
        block += 1e-3 * np.abs(block).max() * rng.standard_normal((m, size))
        x[:, start:start + size] = block
    return x


def best_of(function, repeats=3):
    function()  # warm-up: tracing, compilation, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def deviation(reference, values):
    reference, values = list(reference), list(values)
    worst = 0.0
    for value in reference:
        j = int(np.argmin([abs(v - value) for v in values]))
        worst = max(worst, abs(values.pop(j) - value) / abs(value))
    return worst


def dmd_rows(x, device, reference):
    rows = []
    with tf.device(device):
        tensor = tf.constant(x)
        holder = {}

        def one_shot():
            result = kk.dmd(tensor, rank=RANK)
            holder["eig"] = result.eigenvalues.numpy()
            result.modes.numpy()

        seconds = best_of(one_shot)
        rows.append(("kk.dmd (modes)", device, seconds, deviation(reference, holder["eig"])))
        m, n = x.shape
        buffer = kk.SnapshotBuffer(n, window=m)
        snapshots = [tensor[k] for k in range(m)]
        buffer.append(snapshots[0])
        buffer.reset()
        start = time.perf_counter()
        for row in snapshots:
            buffer.append(row)
        buffer.count  # waits for the last append
        append = (time.perf_counter() - start) / m

        def streaming():
            result = buffer.dmd(rank=RANK)
            holder["eig"] = result.eigenvalues.numpy()
            result.modes.numpy()

        seconds = best_of(streaming)
        rows.append(("SnapshotBuffer.dmd (modes)", device, seconds,
                     deviation(reference, holder["eig"])))
        rows.append(("SnapshotBuffer.append (per snapshot)", device, append, None))
    return rows


def fit_rows(device, epochs):
    import keras
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target
    out = []
    for label in ("plain fit", "fit + KoopmanMonitor + KoopmanAccelerator"):
        with tf.device(device):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                                      keras.layers.Dense(512, activation="relu"),
                                      keras.layers.Dense(10)])
            model.compile(keras.optimizers.SGD(0.05),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            callbacks = []
            if label != "plain fit":
                monitor = kk.callbacks.KoopmanMonitor(window=10)
                callbacks = [monitor, kk.callbacks.KoopmanAccelerator(
                    monitor, every=5, probe=(x[:1024], y[:1024]))]
            start = time.perf_counter()
            history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0,
                                callbacks=callbacks)
            seconds = time.perf_counter() - start
            placed = model.trainable_weights[0].value.device
        errors = len(callbacks[0].errors) if callbacks else 0
        out.append((label, device, seconds, history.history["loss"][-1], placed, errors))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-pydmd", action="store_true")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    gpus = tf.config.list_logical_devices("GPU")
    devices = ["/CPU:0"] + (["/GPU:0"] if gpus else [])
    x = make_data(args.n, args.m)
    lines = ["| what | device | seconds | eig dev vs PyDMD |", "|---|---|---:|---:|"]
    reference = None
    if not args.no_pydmd:
        from pydmd import DMD

        x64 = x.astype(np.float64).T
        start = time.perf_counter()
        model = DMD(svd_rank=RANK, exact=True)
        model.fit(x64)
        seconds = time.perf_counter() - start
        reference = np.asarray(model.eigs)
        del x64
        lines.append(f"| PyDMD DMD(svd_rank={RANK}, exact=True), float64 | CPU | {seconds:.3f} | 0 |")
        print(lines[-1], flush=True)
    if reference is None:
        reference = kk.dmd(x.astype(np.float64), rank=RANK, solver="svd").eigenvalues.numpy()
    for device in devices:
        for what, where, seconds, dev in dmd_rows(x, device, reference):
            lines.append(f"| {what} | {where} | {seconds:.4f} | "
                         f"{'' if dev is None else f'{dev:.1e}'} |")
            print(lines[-1], flush=True)
    fit_lines = ["| fit (digits MLP 64-512-512-10, SGD) | device | seconds | final loss | "
                 "weights on | monitor errors |", "|---|---|---:|---:|---|---:|"]
    for device in devices:
        for label, where, seconds, loss, placed, errors in fit_rows(device, args.epochs):
            fit_lines.append(f"| {label}, {args.epochs} epochs | {where} | {seconds:.2f} | "
                             f"{loss:.4f} | {placed} | {errors} |")
            print(fit_lines[-1], flush=True)
    command = "python bench/gpu_check.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    body = "\n".join([
        *header(command.strip()),
        f"- GPUs visible to TensorFlow: {[g.name for g in gpus] or 'none'}",
        f"- data: float32 [m = {args.m}, n = {args.n:,}], rank-{RANK} linear dynamics + 1e-3 noise",
        "", *lines, "", *fit_lines,
    ])
    report("GPU checks (`bench/gpu_check.py`)", body, args.output)


if __name__ == "__main__":
    main()
