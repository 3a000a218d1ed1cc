"""The GPU check of the JAX path, for a lent device machine with JAX (CUDA) and no TensorFlow.

1. ``kk.dmd`` (one shot, modes included) and ``kk.SnapshotBuffer`` (``window=m`` appends, then
   ``dmd``) on JAX's default device (the GPU there) and on JAX's CPU device of the same
   machine, at ``n`` features and ``m`` snapshots; a NumPy exact DMD in float64 (CPU) is the
   accuracy anchor (PyDMD is not on that image).
2. A monitored ``fit`` on JAX (digits MLP, 85k weights, ``KoopmanMonitor`` +
   ``KoopmanEarlyStopping`` + ``KoopmanAccelerator``) against the same ``fit`` without them.

It needs no TensorFlow: Keras and keras-koopman arrive as wheels (``bench/gpu_wheels.sh`` puts
them in ``.whl/``, a few MiB). Prints the figures and, with ``--output``, writes them as the
"GPU check of the JAX path" section of a RESULTS file; ``--json PATH`` also saves them raw.
With no GPU the GPU rows say so and the rest runs (so the script is tested on CPU machines).

Run (device):  python bench/gpu_check_jax.py --json $OUT/gpu_jax.json
Dry run here:  KERAS_BACKEND=jax python bench/gpu_check_jax.py --n 100000 --output /tmp/r.md
"""

import argparse
import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_koopman as kk  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dmd_speed import make_data  # noqa: E402  (the same data as the speed benchmark)

RANK = 8


def numpy_eigenvalues(x, rank):
    x0, x1 = x[:-1].T.astype(np.float64), x[1:].T.astype(np.float64)
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    return np.linalg.eigvals(u.T @ x1 @ v / s)


def deviation(reference, values):
    values, worst = list(values), 0.0
    for value in reference:
        j = min(range(len(values)), key=lambda i: abs(values[i] - value))
        worst = max(worst, abs(values.pop(j) - value) / abs(value))
    return worst


def best(function, repeats):
    function()  # warm: compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def engine_rows(n, m, reference):
    rows = []
    devices = [("gpu", d) for d in jax.devices() if d.platform == "gpu"][:1]
    devices.append(("cpu", jax.devices("cpu")[0]))
    x = make_data(n, m)
    for label, device in devices:
        with jax.default_device(device):
            tensor = jax.device_put(x, device)
            holder = {}

            def one_shot():
                result = kk.dmd(tensor, rank=RANK)
                holder["dmd"] = np.asarray(result.eigenvalues)
                result.modes.block_until_ready()

            buffer = kk.SnapshotBuffer(n, window=m)
            rows_ = [tensor[k] for k in range(m)]

            def appends():
                for row in rows_:
                    buffer.append(row)
                buffer.variables[0].block_until_ready()

            def streaming():
                result = buffer.dmd(rank=RANK)
                holder["buffer"] = np.asarray(result.eigenvalues)
                result.modes.block_until_ready()

            one = best(one_shot, 3)
            append = best(appends, 2) / m
            stream = best(streaming, 3)
            spectrum = best(lambda: np.asarray(buffer.dmd(rank=RANK, modes=False).eigenvalues),
                            3)
            error = max(deviation(reference, holder["dmd"]),
                        deviation(reference, holder["buffer"]))
            rows.append({"device": f"{label} ({device.device_kind})", "n": n, "m": m,
                         "kk.dmd": one, "append": append, "buffer.dmd": stream,
                         "modes=False": spectrum, "eig_dev": error})
            print(rows[-1], flush=True)
    if not any(row["device"].startswith("gpu") for row in rows):
        rows.insert(0, {"device": "gpu: none visible to JAX", "n": n, "m": m})
    return rows


def fit_rows(epochs, repeats):
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16).astype("float32"), data.target

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    def timed(callbacks):
        model = build()
        start = time.perf_counter()
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks())
        return time.perf_counter() - start

    def watched():
        monitor = kk.callbacks.KoopmanMonitor(window=10)
        return [monitor, kk.callbacks.KoopmanEarlyStopping(monitor, min_epochs=epochs),
                kk.callbacks.KoopmanAccelerator(monitor)]

    timed(list)  # warm the process
    plain = sorted(timed(list) for _ in range(repeats))[repeats // 2]
    monitored = sorted(timed(watched) for _ in range(repeats))[repeats // 2]
    return {"device": str(jax.devices()[0].device_kind), "epochs": epochs, "plain": plain,
            "monitored": monitored, "ratio": monitored / plain}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    reference = numpy_eigenvalues(make_data(args.n, args.m), RANK)
    figures = {"jax": jax.__version__, "keras": keras.__version__,
               "python": sys.version.split()[0],
               "engine": engine_rows(args.n, args.m, reference),
               "fit": fit_rows(args.epochs, args.repeats)}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    lines = [f"- command: `python bench/gpu_check_jax.py --n {args.n} --m {args.m}`",
             f"- JAX {figures['jax']}, Keras {figures['keras']}, Python {figures['python']}; "
             f"TensorFlow {'loaded' if 'tensorflow' in sys.modules else 'not loaded'} in the "
             "process", "",
             "| device | n | m | kk.dmd s | append s | buffer.dmd s | modes=False s | eig dev |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in figures["engine"]:
        if "kk.dmd" not in row:
            lines.append(f"| {row['device']} | {row['n']:,} | {row['m']} | | | | | |")
            continue
        lines.append(f"| {row['device']} | {row['n']:,} | {row['m']} | {row['kk.dmd']:.4f} | "
                     f"{row['append']:.5f} | {row['buffer.dmd']:.4f} | "
                     f"{row['modes=False']:.4f} | {row['eig_dev']:.1e} |")
    fit = figures["fit"]
    lines += ["", f"Monitored fit ({fit['device']}, digits MLP 85k, {fit['epochs']} epochs, "
              f"median of {args.repeats}): plain {fit['plain']:.2f} s, with KoopmanMonitor + "
              f"KoopmanEarlyStopping + KoopmanAccelerator {fit['monitored']:.2f} s "
              f"({fit['ratio']:.2f}x)"]
    text = "\n".join(lines)
    print(text)
    if args.output:
        from _results import write_section

        write_section("GPU check of the JAX path (`bench/gpu_check_jax.py`)", text, args.output)


if __name__ == "__main__":
    main()
