"""Monitoring big models: memory and time per snapshot and per analysis at 1e6 to 1e8 weights.

One ``Dense(d -> d)`` layer (``d^2`` = 1e6, 1e7, 1e8 kernel weights plus ``d`` biases) whose
weights follow exactly low-rank synthetic dynamics, set before each snapshot:

    W_k = W_0 + sum_j lambda_j^k u_j v_j^T,   lambda = (0.97, 0.9, 0.8)

so the true Koopman eigenvalues of the kernel's trajectory are {1, 0.97, 0.9, 0.8} (W_0 is the
mode at 1). A :class:`KoopmanMonitor` (window 20, rank 4) gathers the layer through its public
hooks; each configuration runs in its own process so that its peak memory is its own:

  full       float32 buffer (only where it fits: up to 1e7)
  bfloat16   ``storage_dtype="bfloat16"`` (up to 1e7)
  sketch     ``sketch=2048`` (every size)
  auto       the default ``sketch="auto"`` (what the monitor picks by itself)

Snapshots are timed through ``on_epoch_end`` (gathering only); an analysis is timed after each
further snapshot, as in ``fit`` with ``analyze_every=1`` (it computes that snapshot's Gram row).

Reported per configuration: the buffers' bytes, the extra peak resident memory while monitoring
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus the resident memory
before the monitor was made), the first snapshot (tracing and XLA compilation), the median time
of a snapshot and of an analysis, and the largest distance of the 4 estimated eigenvalues to
the true ones.

Goal (issue 8): a 1e8-weight model monitored with < 1 GB of extra memory and < 50 ms per
snapshot on this machine.

Second part, many tiny layers: a Functional model of ``--layers`` (default 10,000) parallel
``Dense(1)`` layers on 4 inputs, summed; the monitor (one group per layer, window 5) packs them
into one buffer. Reported: the monitor's set-up (buffers, the first snapshot's trace and XLA
compilation), the time per snapshot and per analysis, the number of traced gather functions,
and the wall time of 3 epochs of ``fit`` with and without the monitor (after a first ``fit``
that compiled the train step).

Run:  python bench/scale.py                      (about 15 minutes here)
      python bench/scale.py --sizes 1e6 --layers 200 --output /tmp/r.md
      python bench/scale.py --backends tensorflow jax torch    (the big layer on each backend)
"""

import argparse
import json
import os
import subprocess
import sys
import time

from _results import RESULTS, header, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

WINDOW = 20
EIGENVALUES = (0.97, 0.9, 0.8)  # slow enough to stay visible over 28 snapshots
CONFIGS = {
    "full": dict(sketch=None),
    "bfloat16": dict(sketch=None, storage_dtype="bfloat16"),
    "sketch": dict(sketch=2048),
    "auto": dict(),
}
FULL_LIMIT = 2e7  # full and bfloat16 buffers only up to here (1e8 in full: 8 GB)


def _status(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _dynamics(layer, u, v):
    """``move(k)`` sets the layer's kernel to ``W_0 + u diag(lambda^k) v`` (TensorFlow: one
    XLA-compiled function; JAX and PyTorch: ``keras.ops``), and returns once it is set."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        u, v = tf.constant(u), tf.constant(v)
        start = tf.Variable(layer.kernel.value)  # W_0
        lambdas = tf.constant(EIGENVALUES, tf.float32)

        @tf.function(jit_compile=True)
        def move(k):
            powers = lambdas ** tf.cast(k, tf.float32)
            layer.kernel.assign(start + tf.matmul(u * powers, v))

        return move
    import numpy as np

    ops = keras.ops
    u, v = ops.convert_to_tensor(u), ops.convert_to_tensor(v)
    start = ops.convert_to_tensor(np.array(keras.ops.convert_to_numpy(layer.kernel.value)))
    lambdas = np.asarray(EIGENVALUES, np.float32)

    def move(k):
        powers = ops.convert_to_tensor(lambdas ** np.float32(k))
        layer.kernel.assign(start + ops.matmul(u * powers[None, :], v))
        if keras.backend.backend() == "jax":
            # JAX dispatches asynchronously: without this wait the timed snapshot after a move
            # would also wait for the move's matmul (an O(n) product not part of monitoring).
            layer.kernel.value.block_until_ready()

    return move


def one(size, config):
    """Runs one configuration in this process; returns its figures."""
    import numpy as np
    import keras

    import keras_koopman as kk

    d = int(round(np.sqrt(size)))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(d, name="big")])
    layer = model.get_layer("big")
    rng = np.random.default_rng(0)
    u = (rng.standard_normal((d, 3)) / np.sqrt(d)).astype(np.float32)
    v = rng.standard_normal((3, d)).astype(np.float32)
    move = _dynamics(layer, u, v)
    move(0)
    move(1)  # compiled, transients freed: the baseline below is the model's own memory
    baseline = _status("VmRSS")
    monitor = kk.callbacks.KoopmanMonitor(window=WINDOW, rank=4, analyze_every=None,
                                          **CONFIGS[config])
    monitor.set_model(model)
    peak = 0
    move(0)
    _reset_peak()
    started = time.perf_counter()
    monitor.on_train_begin()  # builds the buffers and takes snapshot 0
    monitor.tracker.sync()  # waits for it (one host read)
    first = time.perf_counter() - started
    peak = max(peak, _status("VmHWM") - baseline)
    snapshot_times = []
    for k in range(1, WINDOW + 5):
        move(k)
        _reset_peak()
        started = time.perf_counter()
        monitor.on_epoch_end(k - 1)
        monitor.tracker.sync()
        snapshot_times.append(time.perf_counter() - started)
        peak = max(peak, _status("VmHWM") - baseline)
    monitor.tracker.analyse()  # computes the Gram rows of every snapshot so far
    analysis_times = []
    for k in range(WINDOW + 5, WINDOW + 9):
        # As in fit with analyze_every=1: a snapshot, then an analysis that computes its row.
        move(k)
        monitor.on_epoch_end(k - 1)
        monitor.tracker.sync()
        _reset_peak()
        started = time.perf_counter()
        monitor.tracker.analyse()
        analysis_times.append(time.perf_counter() - started)
        peak = max(peak, _status("VmHWM") - baseline)
    record = monitor.latest("big")
    truth = np.array([1.0, *EIGENVALUES])
    estimated = record.eigenvalues if record is not None else np.zeros(0)
    error = (float(max(np.min(np.abs(estimated - t)) for t in truth)) if estimated.size
             else float("nan"))
    buffer = monitor.buffers["big"]
    return {
        "size": size, "config": config, "n": buffer.n_features,
        "stored": ("sketch %d" % buffer.sketch if buffer.sketch else "full")
        + (" bfloat16" if getattr(buffer.storage_dtype, "name", buffer.storage_dtype)
           == "bfloat16" else ""),
        "bytes": buffer.nbytes, "peak": peak, "first": first,
        "snapshot_ms": 1e3 * float(np.median(snapshot_times[1:])),
        "analysis_ms": 1e3 * float(np.median(analysis_times[1:])),
        "error": error, "errors": len(monitor.errors),
    }


def tiny_layers(count):
    """The many-tiny-layers part, in this process."""
    import numpy as np
    import keras

    import keras_koopman as kk

    def progress(text):
        print(f"[{count} tiny layers] {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    outputs = [keras.layers.Dense(1, name=f"tiny_{i}")(inputs) for i in range(count)]
    model = keras.Model(inputs, keras.layers.Add()(outputs))
    # The output sums every layer: a step size of 0.5 / count keeps SGD stable.
    model.compile(keras.optimizers.SGD(0.5 / count), "mse")
    build = time.perf_counter() - started
    progress(f"model built in {build:.0f} s")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    started = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    first_fit = time.perf_counter() - started
    progress(f"first fit {first_fit:.0f} s")
    monitor = kk.callbacks.KoopmanMonitor(window=5)
    monitor.set_model(model)
    started = time.perf_counter()
    monitor.on_train_begin()  # analyze_every=1: the snapshot's flags are read (a sync)
    setup = time.perf_counter() - started
    progress(f"monitor set-up {setup:.1f} s")
    snapshot, analysis = [], []
    for epoch in range(8):
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        started = time.perf_counter()
        monitor.on_epoch_end(epoch)  # a snapshot, then an analysis from the third on
        elapsed = time.perf_counter() - started
        (snapshot if monitor.step < 2 else analysis).append(elapsed)
    monitor.on_train_end()
    records = len(monitor.history)
    timings = {}
    for label, callbacks in (("plain", []), ("monitored", [monitor]), ("plain2", []),
                             ("monitored2", [monitor])):
        started = time.perf_counter()
        model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=callbacks)
        timings[label] = time.perf_counter() - started
    plain = min(timings["plain"], timings["plain2"])
    monitored = min(timings["monitored"], timings["monitored2"])
    return {"layers": count, "groups": len(monitor.buffers),
            "packed": sum(isinstance(b, kk.buffers.PackedView) for b in monitor.buffers.values()),
            "gather_traces": gather_traces(monitor),
            "build": build, "first_fit": first_fit, "setup": setup,
            "snapshot_ms": 1e3 * float(np.median(snapshot[1:] or snapshot)),
            "first_analysis": analysis[0], "analysis_ms": 1e3 * float(np.median(analysis[1:])),
            "records": records, "analyses": len(analysis), "errors": len(monitor.errors),
            "fit_plain": plain, "fit_monitored": monitored}



def gather_traces(monitor):
    """Traces of the monitor's gather: its own ``tf.function`` (packed or sketched groups), or
    the process-wide one shared by every model of the same shapes (a plain callable)."""
    gather = monitor.tracker.gather_function
    count = getattr(gather, "experimental_get_tracing_count", None)
    if count is not None:
        return count()
    from keras_koopman._tf import trace_count

    return trace_count("gather")


def _run_one(size, config, backend=None):
    env = dict(os.environ)
    if backend is not None:
        env.update(KERAS_BACKEND=backend, JAX_ENABLE_X64="1")
    done = subprocess.run([sys.executable, __file__, "--one", f"{size},{config}"],
                          capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{size:.0e} {config} {backend or ''} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def by_backend(args):
    """``--backends``: every size and configuration on each backend, one table."""
    started = time.time()
    lines = ["| weights | configuration | backend | stored as | buffers (MiB) | extra peak memory "
             "(MiB) | first snapshot (s) | per snapshot (ms) | per analysis (ms) | eigenvalue "
             "error |", "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in (float(s) for s in args.sizes.split(",")):
        for config in CONFIGS:
            if config in ("full", "bfloat16") and size > FULL_LIMIT:
                continue
            for backend in args.backends:
                row = _run_one(size, config, backend)
                lines.append(f"| {row['n']:,} | {config} | {backend} | {row['stored']} | "
                             f"{row['bytes'] / 2**20:.1f} | {row['peak'] / 2**20:.1f} | "
                             f"{row['first']:.2f} | {row['snapshot_ms']:.2f} | "
                             f"{row['analysis_ms']:.2f} | {row['error']:.1e} |")
                print(lines[-1], f"[{time.time() - started:.0f} s]", flush=True)
    command = "python bench/scale.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    body = "\n".join([
        *header(command.strip()),
        f"- set-up as in \"Scaling up: sketched and bfloat16 snapshots\" (one `Dense(d, d)` layer, window {WINDOW}, rank 4, true "
        f"eigenvalues {{1, {', '.join(map(str, EIGENVALUES))}}}), each row in a process of its "
        f"own with `KERAS_BACKEND` set; run time {time.time() - started:.0f} s",
        "- the dynamics are set with one XLA function on TensorFlow and with `keras.ops` on "
        "JAX and PyTorch (not timed); snapshots and analyses through the monitor's hooks",
        "", *lines])
    report("Scaling up on each Keras backend (`bench/scale.py --backends`)", body, args.output)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--layers", type=int, default=10_000)
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "size,config": child process
    parser.add_argument("--tiny", type=int, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--backends", nargs="+", choices=("tensorflow", "jax", "torch"),
                        help="the big-layer rows on each Keras backend, side by side (no "
                             "tiny-layers part: packing is TensorFlow's)")
    args = parser.parse_args()
    if args.one:
        size, config = args.one.split(",")
        print(json.dumps(one(float(size), config)))
        return
    if args.tiny:
        print(json.dumps(tiny_layers(args.tiny)))
        return
    if args.backends:
        return by_backend(args)
    started = time.time()
    rows = []
    for size in (float(s) for s in args.sizes.split(",")):
        for config in CONFIGS:
            if config in ("full", "bfloat16") and size > FULL_LIMIT:
                continue
            row = _run_one(size, config)
            rows.append(row)
            print(f"{size:.0e} {config:9s} {row['stored']:22s} buffers {row['bytes'] / 2**20:8.1f} MiB"
                  f"  extra peak {row['peak'] / 2**20:8.1f} MiB  first {row['first']:6.2f} s"
                  f"  snapshot {row['snapshot_ms']:8.2f} ms  analysis {row['analysis_ms']:8.2f} ms"
                  f"  eigenvalue error {row['error']:.1e}  [{time.time() - started:.0f} s]",
                  flush=True)
    done = subprocess.run([sys.executable, __file__, "--tiny", str(args.layers)],
                          stdout=subprocess.PIPE, text=True, timeout=3600)  # progress: stderr
    if done.returncode != 0:
        raise SystemExit("the tiny-layers run failed (its traceback is above)")
    tiny = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{tiny['layers']} tiny layers: {tiny}", flush=True)
    lines = ["| weights | configuration | stored as | buffers (MiB) | extra peak memory (MiB) | "
             "first snapshot (s) | per snapshot (ms) | per analysis (ms) | eigenvalue error |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['n']:,} | {row['config']} | {row['stored']} | "
                     f"{row['bytes'] / 2**20:.1f} | {row['peak'] / 2**20:.1f} | "
                     f"{row['first']:.2f} | {row['snapshot_ms']:.2f} | {row['analysis_ms']:.2f} | "
                     f"{row['error']:.1e} |")
    goal = [r for r in rows if r["size"] >= 1e8 and r["config"] == "auto"]
    goal_text = []
    for row in goal:
        met = row["peak"] < 2**30 and row["snapshot_ms"] < 50
        goal_text.append(f"- {row['n']:,} weights, default monitor (`sketch=\"auto\"`): extra peak "
                         f"memory {row['peak'] / 2**20:.0f} MiB, {row['snapshot_ms']:.1f} ms per "
                         f"snapshot (goal < 1024 MiB and < 50 ms): {'met' if met else 'NOT met'}")
    command = "python bench/scale.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--output") and a != args.output)
    body = "\n".join([
        *header(command.strip()),
        f"- one `Dense(d, d)` layer, window {WINDOW}, rank 4, true eigenvalues "
        f"{{1, {', '.join(map(str, EIGENVALUES))}}}; each row its own process; run time "
        f"{time.time() - started:.0f} s",
        "- extra peak memory: peak resident memory while monitoring minus the resident memory "
        "before the monitor was made (the model and the synthetic dynamics' own memory excluded)",
        "- eigenvalue error: largest distance of an estimated eigenvalue to the true ones",
        "", "### Goal", "", *goal_text, "", *lines,
        "", f"### {tiny['layers']:,} tiny layers (`Dense(1)` on 4 inputs, window 5)", "",
        f"- groups: {tiny['groups']:,}, of which packed into one buffer: {tiny['packed']:,}; "
        f"traced gather functions: {tiny['gather_traces']}; monitor errors: {tiny['errors']}",
        f"- Keras alone: building the model {tiny['build']:.1f} s, first `fit` (1 epoch, "
        f"compiling the train step) {tiny['first_fit']:.1f} s",
        f"- monitor set-up (buffers, first snapshot with tracing and XLA compilation): "
        f"{tiny['setup']:.1f} s; per snapshot {tiny['snapshot_ms']:.1f} ms; first analysis "
        f"{tiny['first_analysis']:.1f} s, then {tiny['analysis_ms']:.0f} ms per analysis of all "
        f"groups ({tiny['records']:,} records over {tiny['analyses']} analyses)",
        f"- 3 epochs of `fit` (4 batches each; best of 2): plain {tiny['fit_plain']:.2f} s, "
        f"with the monitor {tiny['fit_monitored']:.2f} s "
        f"({tiny['fit_monitored'] / tiny['fit_plain']:.2f}x)",
    ])
    report("Scaling up: sketched and bfloat16 snapshots (`bench/scale.py`)", body, args.output)


if __name__ == "__main__":
    main()
