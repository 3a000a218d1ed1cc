"""The GPU check of the Keras-backend path, for a lent device machine with JAX and PyTorch (CUDA)
and no TensorFlow.

For one Keras backend per process (``--backend jax``, the default, or ``torch``):

1. ``kk.dmd`` (one shot, modes included) and ``kk.SnapshotBuffer`` (``window=m`` appends, then
   ``dmd`` with and without modes) at ``n`` features and ``m`` snapshots on the GPU and, for
   JAX, on JAX's CPU device of the same machine; a NumPy exact DMD in float64 on the host is
   the accuracy anchor (PyDMD is not on that image).
2. Monitored ``fit`` on that backend's default device (the GPU there), digits MLPs of two widths:
   plain, with ``KoopmanMonitor``, and with ``KoopmanMonitor`` + ``KoopmanEarlyStopping`` +
   ``KoopmanAccelerator``, paired medians.

It needs no TensorFlow: Keras and keras-koopman arrive as wheels (``bench/gpu_wheels.sh`` puts
them in ``.whl/``, a few MiB). Each part that fails is recorded (error and traceback) and the
rest runs; ``--json PATH`` saves the figures after every part, so a run cut short keeps what it
measured. ``--report A.json [B.json ...] --output bench/RESULTS.md`` (here, with no backend
loaded) writes them as the "GPU check of the JAX path" section. With no GPU the rows say which
device they ran on, so the script is tested on CPU machines.

Run (device):  KK_COMMIT=abc python bench/gpu_check_jax.py --backend jax --json $OUT/jax.json
Dry run here:  python bench/gpu_check_jax.py --n 100000 --epochs 3 --repeats 1 --json /tmp/j.json
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import cpu_model  # noqa: E402
from dmd_speed import deviation, make_data, numpy_dmd, timed  # noqa: E402  (as dmd_speed)

RANK = 8
TITLE = "GPU check of the JAX path (`bench/gpu_check_jax.py`)"


def numpy_eigenvalues(x, rank):
    return numpy_dmd(x.astype(np.float64), rank)[0]


def eigenvalue_deviation(reference, values):
    """``dmd_speed.deviation`` of complex arrays (it takes ``(real, imag)`` pairs)."""
    pairs = lambda v: [(z.real, z.imag) for z in np.asarray(v).reshape(-1)]  # noqa: E731
    return deviation(pairs(reference), pairs(values))


class Backend:
    """Where the arrays go and how to wait for them, per Keras backend."""

    def __init__(self, name):
        self.name = name
        if name == "jax":
            import jax

            self.lib = jax
        else:
            import torch

            self.lib = torch

    def version(self):
        return self.lib.__version__

    def devices(self):
        if self.name == "jax":
            found = [("gpu", d) for d in self.lib.devices() if d.platform == "gpu"][:1]
            return found + [("cpu", self.lib.devices("cpu")[0])]
        torch = self.lib
        # Keras's torch backend puts every tensor on its one device (cuda when there is one).
        return [("gpu", torch.device("cuda"))] if torch.cuda.is_available() else [
            ("cpu", torch.device("cpu"))]

    def kind(self, device):
        if self.name == "jax":
            return device.device_kind
        return (self.lib.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or "cpu")

    def default_kind(self):
        if self.name == "jax":
            return self.kind(self.lib.devices()[0])
        return self.kind(self.devices()[0][1])

    def placed(self, device):
        return (self.lib.default_device(device) if self.name == "jax"
                else contextlib.nullcontext())

    def put(self, x, device):
        if self.name == "jax":
            return self.lib.device_put(x, device)
        return self.lib.as_tensor(x, device=device)

    def wait(self, tensor):
        if self.name == "jax":
            tensor.block_until_ready()
        elif tensor.is_cuda:
            self.lib.cuda.synchronize()


def engine_rows(kk, keras, backend, n, m, repeats):
    host = lambda t: np.asarray(keras.ops.convert_to_numpy(t))  # noqa: E731
    x = make_data(n, m)
    reference = numpy_eigenvalues(x, RANK)
    rows = []
    for label, device in backend.devices():
        with backend.placed(device):
            tensor = backend.put(x, device)
            holder = {}

            def one_shot():
                result = kk.dmd(tensor, rank=RANK)
                holder["dmd"] = host(result.eigenvalues)
                backend.wait(result.modes)

            buffer = kk.SnapshotBuffer(n, window=m)
            snapshots = [tensor[k] for k in range(m)]

            def appends():
                for row in snapshots:
                    buffer.append(row)
                backend.wait(buffer.variables[0])

            def streaming():
                result = buffer.dmd(rank=RANK)
                holder["buffer"] = host(result.eigenvalues)
                backend.wait(result.modes)

            row = {"device": f"{label} ({backend.kind(device)})", "n": n, "m": m,
                   "kk.dmd": timed(one_shot, repeats),
                   "append": timed(appends, 2) / m,
                   "buffer.dmd": timed(streaming, repeats),
                   "modes=False": timed(lambda: host(
                       buffer.dmd(rank=RANK, modes=False).eigenvalues), repeats)}
            row["eig_dev"] = max(eigenvalue_deviation(reference, holder["dmd"]),
                                 eigenvalue_deviation(reference, holder["buffer"]))
            rows.append(row)
            print(row, flush=True)
            tensor = snapshots = buffer = None  # free the device memory before the next device
    return rows


def fit_rows(kk, keras, backend, widths, epochs, repeats):
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16).astype("float32"), data.target
    rows = []
    for width in widths:
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((64,)),
                                      keras.layers.Dense(width, activation="relu"),
                                      keras.layers.Dense(width, activation="relu"),
                                      keras.layers.Dense(10, activation="softmax")])
            model.compile("adam", "sparse_categorical_crossentropy")
            return model

        def fit_seconds(callbacks):
            model = build()
            start = time.perf_counter()
            model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks())
            return time.perf_counter() - start

        def monitor_only():
            return [kk.callbacks.KoopmanMonitor(window=10)]

        def decisions():
            monitor = kk.callbacks.KoopmanMonitor(window=10)
            return [monitor, kk.callbacks.KoopmanEarlyStopping(monitor, min_epochs=epochs),
                    kk.callbacks.KoopmanAccelerator(monitor)]

        for callbacks in (list, monitor_only, decisions):  # warm: compilation, imports
            fit_seconds(callbacks)
        plain, watched, steered = [], [], []
        for _ in range(repeats):  # interleaved, so drift hits all three alike
            plain.append(fit_seconds(list))
            watched.append(fit_seconds(monitor_only))
            steered.append(fit_seconds(decisions))
        median = lambda v: float(np.median(v))  # noqa: E731
        row = {"device": backend.default_kind(), "width": width,
               "weights": build().count_params(), "epochs": epochs, "repeats": repeats,
               "plain": median(plain), "monitor": median(watched), "decisions": median(steered),
               "monitor_ratio": median(np.array(watched) / np.array(plain)),
               "decisions_ratio": median(np.array(steered) / np.array(plain))}
        rows.append(row)
        print(row, flush=True)
    return rows


def measure(args):
    os.environ["KERAS_BACKEND"] = args.backend
    if args.backend == "jax":
        os.environ.setdefault("JAX_ENABLE_X64", "1")
    import keras

    import keras_koopman as kk

    backend = Backend(args.backend)
    figures = {"backend": args.backend, "version": backend.version(), "keras": keras.__version__,
               "numpy": np.__version__, "python": platform.python_version(),
               "cpu": f"{cpu_model()}, {os.cpu_count()} cores", "gpu": backend.default_kind(),
               "commit": os.environ.get("KK_COMMIT", "unknown"), "argv": " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "engine": [], "fit": [], "errors": []}

    def save():
        figures["tensorflow_loaded"] = sys.modules.get("tensorflow") is not None
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(figures, handle, indent=1, default=float)

    parts = [("engine", n, lambda n=n: engine_rows(kk, keras, backend, n, args.m, args.repeats))
             for n in args.n]
    if args.widths:
        parts.append(("fit", None, lambda: fit_rows(kk, keras, backend, args.widths,
                                                    args.epochs, args.repeats)))
    for key, n, part in parts:
        try:
            figures[key] += part()
        except Exception as error:  # noqa: BLE001  (record it and go on with the other parts)
            traceback.print_exc()
            figures["errors"].append({"part": key, "n": n, "error": repr(error),
                                      "traceback": traceback.format_exc()[-4000:]})
        save()
    return figures


def table(all_figures, part, columns, cells):
    """A markdown table of every run's ``part`` rows: backend, commit and device, then
    ``cells(row)`` under ``columns`` (right-aligned)."""
    lines = ["", "| " + " | ".join(["backend", "commit", "device"] + columns) + " |",
             "| --- | --- | --- |" + " ---: |" * len(columns)]
    for f in all_figures:
        for row in f[part]:
            values = [f["backend"], f["commit"][:7], row["device"]] + list(cells(row))
            lines.append("| " + " | ".join(str(v) for v in values) + " |")
    return lines


def markdown(all_figures):
    lines = []
    for f in all_figures:
        command = f.get("argv") or f"--backend {f['backend']}"
        lines.append(f"- {f['backend']}: command `KK_COMMIT={f['commit']} python "
                     f"bench/gpu_check_jax.py {command}` on {f['gpu']}, "
                     f"{f['cpu']}; {f['backend']} {f['version']}, Keras {f['keras']}, NumPy "
                     f"{f['numpy']}, Python {f['python']}; TensorFlow "
                     f"{'loaded' if f.get('tensorflow_loaded') else 'not loaded'} in the "
                     f"process; commit {f['commit']}; {f['date']}")
        for error in f["errors"]:
            lines.append(f"  - {f['backend']} {error['part']} (n = {error['n']}) failed: "
                         f"`{error['error'][:300]}`")
    engine = ["n", "m", "kk.dmd s", "append ms", "buffer.dmd s", "modes=False s",
              "eig dev vs NumPy"]
    lines += table(all_figures, "engine", engine, lambda row: [
        f"{row['n']:,}", row["m"], f"{row['kk.dmd']:.4f}", f"{1e3 * row['append']:.3f}",
        f"{row['buffer.dmd']:.4f}", f"{row['modes=False']:.4f}", f"{row['eig_dev']:.1e}"])
    fit = ["weights", "epochs", "plain s", "+ monitor s (ratio)",
           "+ monitor, early stopping, accelerator s (ratio)"]
    lines += table(all_figures, "fit", fit, lambda row: [
        f"{row['weights']:,}", row["epochs"], f"{row['plain']:.2f}",
        f"{row['monitor']:.2f} ({row['monitor_ratio']:.2f}x)",
        f"{row['decisions']:.2f} ({row['decisions_ratio']:.2f}x)"])
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("jax", "torch"), default="jax")
    parser.add_argument("--n", type=int, nargs="*", default=[1_000_000, 10_000_000],
                        help="feature counts of the engine part (none: no engine part)")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--widths", type=int, nargs="*", default=[256, 1024],
                        help="MLP widths of the fit part (none: no fit part)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="save the figures here after every part")
    parser.add_argument("--report", nargs="+", default=None,
                        help="JSON files of earlier runs to write up (measures nothing)")
    parser.add_argument("--output", default=None, help="RESULTS file to write the section to")
    args = parser.parse_args()
    if args.report:
        all_figures = []
        for path in args.report:
            with open(path) as handle:
                all_figures.append(json.load(handle))
    else:
        all_figures = [measure(args)]
    text = markdown(all_figures)
    print(text)
    if args.output:
        from _results import write_section

        write_section(TITLE, text, args.output)


if __name__ == "__main__":
    main()
