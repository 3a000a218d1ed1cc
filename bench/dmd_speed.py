"""DMD speed, accuracy and memory: PyDMD vs NumPy vs kk.dmd vs the streaming SnapshotBuffer.

Data: float32 time-major snapshots ``[m, n]`` of low-rank linear dynamics (4 complex-conjugate
pairs, |lambda| 0.95..0.99, rank r = 8) plus 1e-3 relative noise, the shape of a layer's weight
trajectory. Every (method, n, m) cell runs in its own process so that its peak memory is its own.

Methods:
  pydmd      PyDMD ``DMD(svd_rank=r, exact=True).fit`` on the data as float64 (its faster dtype
             here; float32 input makes PyDMD slower): the anchor.
  numpy      a NumPy exact DMD through ``np.linalg.svd`` of X0 (float64).
  kk.dmd     ``kk.dmd(x, rank=r)``, one shot, float32 (auto solver: Gram for large n * m).
  buffer     ``SnapshotBuffer(n, window=m)`` after m appends: ``buffer.dmd(rank=r)``, modes
             included; also without modes (``modes=False``: what the monitor runs each
             analysis). The appends are timed separately and compared with a plain
             ``tf.linalg.matvec`` of the same ``[m, n]`` buffer in the same process: the
             append alone (it writes the snapshot; its Gram row waits for the next read),
             append plus ``refresh()`` (the row computed at once, as a read after every append
             costs), and a window of appends with one ``refresh()`` (per snapshot).

Columns: warm seconds (best of repeats, after one warm-up call), speed-up over PyDMD in the same
run, largest relative eigenvalue deviation from PyDMD, peak extra resident memory of the call
(VmHWM after resetting it, minus VmRSS before; the buffer column includes the buffer itself).

Run:  python bench/dmd_speed.py            (writes bench/RESULTS.md; about 6 minutes here)
      python bench/dmd_speed.py --n 10000 --m 16 --output /tmp/r.md   (one small cell)
"""

import argparse
import json
import os
import subprocess
import sys
import time

from _results import RESULTS, header, write_section

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

RANK = 8
METHODS = ("pydmd", "numpy", "kk.dmd", "buffer")


def make_data(n, m, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    angles = np.array([0.2, 0.5, 0.9, 1.4])
    radii = np.array([0.99, 0.98, 0.96, 0.95])
    eigenvalues = radii * np.exp(1j * angles)
    modes = rng.standard_normal((n, 4)) + 1j * rng.standard_normal((n, 4))
    powers = eigenvalues[None, :] ** np.arange(m)[:, None]  # [m, 4]
    x = 2.0 * (powers @ modes.T).real  # each pair gives a real rank-2 signal
    x += 1e-3 * np.abs(x).max() * rng.standard_normal((m, n))
    return x.astype(np.float32)


def rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def numpy_dmd(x, rank):
    import numpy as np

    x0, x1 = x[:-1].T, x[1:].T
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    image = x1 @ (v / s)
    values, vectors = np.linalg.eig(u.T @ image)
    modes = image @ vectors
    modes /= np.linalg.norm(modes, axis=0)
    amplitudes = np.linalg.lstsq(modes, x[0], rcond=None)[0]
    return values, modes, amplitudes


def timed(function, repeats):
    function()  # warm-up: tracing, XLA compilation, allocator growth
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def worker(method, n, m):
    """Runs one cell; prints a JSON line."""
    import numpy as np

    x = make_data(n, m)
    repeats = 2 if n * m >= 10**7 else 5
    out = {"method": method, "n": n, "m": m}
    if method == "pydmd":
        from pydmd import DMD

        x64 = x.astype(np.float64).T.copy()  # PyDMD is column-major: [n, m]
        holder = {}

        def run():
            model = DMD(svd_rank=RANK, exact=True)
            model.fit(x64)
            holder["eigenvalues"] = np.asarray(model.eigs)

    elif method == "numpy":
        x64 = x.astype(np.float64)
        holder = {}

        def run():
            holder["eigenvalues"] = numpy_dmd(x64, RANK)[0]

    elif os.environ["KERAS_BACKEND"] != "tensorflow":
        run = portable_cell(method, x, n, m, out, holder := {}, repeats)
    else:
        import tensorflow as tf

        import keras_koopman as kk

        tensor = tf.constant(x)
        holder = {}
        if method == "kk.dmd":

            def run():
                result = kk.dmd(tensor, rank=RANK)
                holder["eigenvalues"] = result.eigenvalues.numpy()
                result.modes.numpy()

        else:
            rows = [tensor[k] for k in range(m)]
            buffer = kk.SnapshotBuffer(n, window=m)
            storage = sum(v.numpy().nbytes for v in buffer.variables)
            out["buffer_memory_mb"] = storage / 2**20
            for row in rows[:2]:
                buffer.append(row)  # warm-up: tracing and XLA compilation
            start = time.perf_counter()
            for row in rows:
                buffer.append(row)
            buffer.count  # waits for the last append
            per_append = (time.perf_counter() - start) / m
            out["append_seconds"] = min(per_append, timed(lambda: buffer.append(rows[1]), 10))
            out["matvec_seconds"] = timed(
                lambda: tf.linalg.matvec(buffer.state()[0], rows[0]).numpy(), 10
            )

            def append_and_row():
                buffer.append(rows[1])
                buffer.refresh()  # the snapshot's float64 Gram row, as a read right after it
                buffer.count

            out["append_row_seconds"] = timed(append_and_row, 10)

            def window_then_rows():
                for row in rows:
                    buffer.append(row)
                buffer.refresh()  # every row of the window in one product, as the monitor does
                buffer.count

            out["append_window_seconds"] = timed(window_then_rows, 3) / m
            buffer.reset()  # refill with exactly the m snapshots of the data
            for row in rows:
                buffer.append(row)

            def run():
                result = buffer.dmd(rank=RANK)
                holder["eigenvalues"] = result.eigenvalues.numpy()
                result.modes.numpy()

            out["spectrum_seconds"] = timed(
                lambda: buffer.dmd(rank=RANK, modes=False).eigenvalues.numpy(), repeats + 3
            )

    start = time.perf_counter()
    run()  # first call: tracing, XLA compilation
    out["first_seconds"] = time.perf_counter() - start
    baseline = rss_kib("VmRSS")
    peak_reset = reset_peak()
    run()
    out["peak_mb"] = (rss_kib("VmHWM") - baseline) / 1024 if peak_reset else float("nan")
    if method == "buffer":
        out["peak_mb"] = max(out["peak_mb"], 0.0) + out["buffer_memory_mb"]
    out["seconds"] = timed(run, repeats)
    values = holder["eigenvalues"]
    out["eigenvalues"] = [[float(v.real), float(v.imag)] for v in values]
    print("RESULT " + json.dumps(out), flush=True)


def portable_cell(method, x, n, m, out, holder, repeats):
    """``kk.dmd`` or the buffer on the JAX or PyTorch backend (the same measurements as the
    TensorFlow cells: appends against one matvec of the same ``[m, n]`` buffer)."""
    import keras
    import numpy as np

    import keras_koopman as kk
    from keras_koopman.portable import device

    ops = keras.ops
    tensor = device.to_tensor(x)
    if method == "kk.dmd":

        def run():
            result = kk.dmd(tensor, rank=RANK)
            holder["eigenvalues"] = device.to_host(result.eigenvalues)
            device.to_host(result.modes[:1])  # waits for the modes

        return run
    rows = [tensor[k] for k in range(m)]
    buffer = kk.SnapshotBuffer(n, window=m)
    out["buffer_memory_mb"] = buffer.nbytes / 2**20
    for row in rows[:2]:
        buffer.append(row)  # warm-up: tracing and compilation
    start = time.perf_counter()
    for row in rows:
        buffer.append(row)
    device.to_host(buffer.variables[0][:1, :1])  # waits for the last append
    out["append_seconds"] = min((time.perf_counter() - start) / m,
                                timed(lambda: buffer.append(rows[1]), 10))
    out["matvec_seconds"] = timed(
        lambda: device.to_host(ops.matmul(buffer.variables[0], rows[0])), 10)

    def append_and_row():
        buffer.append(rows[1])
        buffer.refresh()
        device.to_host(buffer.variables[1][:1, :1])

    out["append_row_seconds"] = timed(append_and_row, 10)

    def window_then_rows():
        for row in rows:
            buffer.append(row)
        buffer.refresh()
        device.to_host(buffer.variables[1][:1, :1])

    out["append_window_seconds"] = timed(window_then_rows, 3) / m
    buffer.reset()
    for row in rows:
        buffer.append(row)

    def run():
        result = buffer.dmd(rank=RANK)
        holder["eigenvalues"] = device.to_host(result.eigenvalues)
        device.to_host(result.modes[:1])

    out["spectrum_seconds"] = timed(
        lambda: np.asarray(buffer.dmd(rank=RANK, modes=False).eigenvalues), repeats + 3)
    return run


def deviation(reference, values):
    import numpy as np

    reference = np.array([complex(*v) for v in reference])
    values = np.array([complex(*v) for v in values])
    if len(reference) != len(values):
        return float("inf")
    free = list(range(len(values)))
    worst = 0.0
    for value in reference:
        j = min(free, key=lambda i: abs(values[i] - value))
        free.remove(j)
        worst = max(worst, abs(values[j] - value) / abs(value))
    return worst


def run_cell(method, n, m, backend="tensorflow"):
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", method, str(n), str(m)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1"),
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{method} n={n} m={m} failed:\n{done.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description="DMD speed benchmark")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "M"))
    parser.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--m", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--backends", nargs="+", choices=("tensorflow", "jax", "torch"),
                        help="kk.dmd and the buffer on each of these Keras backends, side by "
                             "side against one PyDMD anchor per cell (its own section)")
    args = parser.parse_args()
    if args.worker:
        method, n, m = args.worker
        worker(method, int(n), int(m))
        return
    if args.backends:
        backends_table(args)
        return

    shown = []
    skip = False
    for argument in sys.argv[1:]:
        if skip or argument.startswith("--output"):
            skip = argument == "--output"
            continue
        shown.append(argument)
    command = " ".join(["python bench/dmd_speed.py", *shown])
    rows = []
    goals = []
    for n in args.n:
        for m in args.m:
            cells = {}
            for method in METHODS:
                print(f"n={n:>9,} m={m:>3} {method:<7} ...", end="", flush=True)
                cells[method] = run_cell(method, n, m)
                print(f" {cells[method]['seconds']:.4f} s", flush=True)
            anchor = cells["pydmd"]
            for method in METHODS:
                cell = cells[method]
                speedup = anchor["seconds"] / cell["seconds"]
                error = deviation(anchor["eigenvalues"], cell["eigenvalues"])
                rows.append(
                    f"| {n:,} | {m} | {method} | {cell['seconds']:.4f} | {speedup:.1f}x | "
                    f"{error:.1e} | {cell['peak_mb']:.0f} |"
                )
            buffer = cells["buffer"]
            rows.append(
                f"| {n:,} | {m} | buffer.dmd(modes=False) | {buffer['spectrum_seconds']:.4f} | "
                f"{anchor['seconds'] / buffer['spectrum_seconds']:.0f}x | | |"
            )
            matvec = buffer["matvec_seconds"]
            ratio = buffer["append_seconds"] / matvec
            for label, key in (("buffer.append (per snapshot)", "append_seconds"),
                               ("append + its Gram row (read after each)", "append_row_seconds"),
                               ("append, Gram rows once per window (per snapshot)",
                                "append_window_seconds")):
                rows.append(
                    f"| {n:,} | {m} | {label} | {buffer[key]:.4f} | "
                    f"{buffer[key] / matvec:.2f}x one matvec ({matvec:.4f} s) | | |"
                )
            if n == 1_000_000 and m == 64:
                one_shot = anchor["seconds"] / cells["kk.dmd"]["seconds"]
                streaming = anchor["seconds"] / buffer["seconds"]
                worst = max(
                    deviation(anchor["eigenvalues"], cells[k]["eigenvalues"])
                    for k in ("kk.dmd", "buffer")
                )
                goals = [
                    f"- one-shot `kk.dmd` {one_shot:.1f}x faster than PyDMD (goal >= 20x): "
                    f"{'met' if one_shot >= 20 else 'NOT met'}",
                    f"- streaming `SnapshotBuffer.dmd` (modes included) {streaming:.1f}x faster "
                    f"than PyDMD (goal >= 50x): {'met' if streaming >= 50 else 'NOT met'}; "
                    f"spectrum only (`modes=False`): "
                    f"{anchor['seconds'] / buffer['spectrum_seconds']:.0f}x",
                    f"- eigenvalues within {worst:.1e} relative of PyDMD (goal <= 1e-4): "
                    f"{'met' if worst <= 1e-4 else 'NOT met'}",
                    f"- `append` costs {ratio:.2f}x one matvec of the buffer (goal <= 1.5x): "
                    f"{'met' if ratio <= 1.5 else 'NOT met'}; with its float64 Gram row "
                    f"computed at once (a read after every append) "
                    f"{buffer['append_row_seconds'] / matvec:.2f}x, with the rows of a window "
                    f"computed in one product {buffer['append_window_seconds'] / matvec:.2f}x",
                ]

    text = "\n".join(
        [
            *header(command.strip()),
            f"- data: float32 snapshots [m, n], rank-{RANK} linear dynamics + 1e-3 noise; "
            "PyDMD and NumPy get it as float64",
            "- seconds: best warm call; speed-up: PyDMD seconds / seconds, same run; "
            "eig dev: largest relative eigenvalue deviation from PyDMD; "
            "peak MB: extra resident memory of one warm call (buffer rows add the buffer's own "
            "variables, counted exactly)",
            "",
            *(["### Goals at n = 1,000,000, m = 64", "", *goals, ""] if goals else []),
            "| n | m | method | seconds | speed-up vs PyDMD | eig dev | peak MB |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
    print("\n" + text)
    write_section("DMD speed (`bench/dmd_speed.py`)", text, args.output)
    print(f"written to {args.output}")


def backends_table(args):
    """The ``--backends`` run: per cell, PyDMD once, then ``kk.dmd`` and the buffer on each
    backend, each in a process of its own; ratios against the PyDMD of the same run."""
    command = " ".join(["python bench/dmd_speed.py", "--backends", *args.backends,
                        "--n", *map(str, args.n), "--m", *map(str, args.m)])
    rows = []
    for n in args.n:
        for m in args.m:
            print(f"n={n:>9,} m={m:>3} pydmd ...", end="", flush=True)
            anchor = run_cell("pydmd", n, m)
            print(f" {anchor['seconds']:.4f} s", flush=True)
            for backend in args.backends:
                cells = {}
                for method in ("kk.dmd", "buffer"):
                    print(f"n={n:>9,} m={m:>3} {method:<7} {backend} ...", end="", flush=True)
                    cells[method] = run_cell(method, n, m, backend)
                    print(f" {cells[method]['seconds']:.4f} s", flush=True)
                one, buffer = cells["kk.dmd"], cells["buffer"]
                error = max(deviation(anchor["eigenvalues"], c["eigenvalues"])
                            for c in cells.values())
                rows.append(
                    f"| {n:,} | {m} | {backend} | {one['seconds']:.4f} "
                    f"({anchor['seconds'] / one['seconds']:.1f}x) | {buffer['seconds']:.4f} "
                    f"({anchor['seconds'] / buffer['seconds']:.1f}x) | "
                    f"{buffer['spectrum_seconds']:.4f} | {buffer['append_seconds']:.5f} "
                    f"({buffer['append_seconds'] / buffer['matvec_seconds']:.2f}x) | "
                    f"{buffer['append_window_seconds']:.5f} | {one['first_seconds']:.2f} | "
                    f"{error:.1e} |")
            rows.append(f"| {n:,} | {m} | PyDMD anchor | {anchor['seconds']:.4f} | | | | | | |")
    text = "\n".join([
        *header(command),
        "- data as in \"DMD speed\"; each backend's cells in processes of their own, with "
        "one PyDMD anchor per (n, m) in the same run (ratios: PyDMD seconds / seconds)",
        "- kk.dmd: one shot, modes included; buffer.dmd: the streaming buffer's DMD with "
        "modes; modes=False: the spectrum only (what the monitor runs); append: one snapshot "
        "(its ratio to one matvec of the same buffer on the same backend); window: per "
        "snapshot, a window of appends with one Gram refresh; first: kk.dmd's first call "
        "(tracing and compilation)",
        "",
        "| n | m | backend | kk.dmd s | buffer.dmd s | modes=False s | append s | "
        "window s/snapshot | first call s | eig dev |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ])
    print("\n" + text)
    write_section("DMD speed on each Keras backend (`bench/dmd_speed.py --backends`)", text,
                  args.output)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
