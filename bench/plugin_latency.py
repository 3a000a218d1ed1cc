"""Latency of the Koopman dashboard's routes in a real TensorBoard server.

Writes one run of ``--steps`` analysis steps x ``--groups`` groups (each spectrum 20
eigenvalues, as a window-20 monitor can give), starts ``tensorboard --logdir`` as a subprocess,
waits until every step is loaded, then times over HTTP (``--repeats`` requests each, median):

  spectra   /data/plugin/koopman/spectra?run=&tag=   every step of one group (the goal)
  tags      /data/plugin/koopman/tags                 the run/group listing (newest step of each)
  anchor    /data/plugin/scalars/scalars?run=&tag=    TensorBoard's own scalars route on a
                                                      scalar of as many steps, same server

Goals: spectra for 1,000 steps x 10 groups answers in under 300 ms; tags at as many stored
tensors (10,000) in under 50 ms (it answers from TensorBoard's listing, reading no tensor).

Run:  python bench/plugin_latency.py      (about a minute here; writes bench/RESULTS.md)
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _results import header, report  # noqa: E402

import keras_koopman as kk  # noqa: E402

GOAL_MS = 300.0
TAGS_GOAL_MS = 50.0
RANK = 20


def write_logs(logdir, steps, groups):
    rng = np.random.default_rng(0)
    writer = tf.summary.create_file_writer(os.path.join(logdir, "run"))
    with writer.as_default():
        for step in range(steps):
            for group in range(groups):
                eigenvalues = rng.uniform(0.5, 1.0, RANK) * np.exp(1j * rng.uniform(0, 3, RANK))
                kk.tensorboard.spectrum(f"koopman/layer_{group}", eigenvalues, step,
                                        rng.uniform(0, 1, RANK), rng.uniform(0, 0.1, RANK))
            tf.summary.scalar("loss", 1.0 / (1 + step), step=step)
    writer.close()


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def timed(url, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        body = get(url)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    logdir = tempfile.mkdtemp(prefix="kk_plugin_latency_")
    start = time.perf_counter()
    write_logs(logdir, args.steps, args.groups)
    print(f"wrote {args.steps} x {args.groups} spectra in {time.perf_counter() - start:.1f} s")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"
    tag = "koopman/layer_0"
    spectra_url = f"{base}/koopman/spectra?" + urllib.parse.urlencode({"run": "run", "tag": tag})
    try:
        deadline = time.time() + 300
        while True:  # until TensorBoard has loaded every step of every group
            try:
                tags = json.loads(get(f"{base}/koopman/tags"))
                # Loaded in file order: the last step of every group listed means all are.
                newest = [t["max_step"] for t in tags.get("run", {}).values()]
                if len(newest) == args.groups and min(newest) == args.steps - 1:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("TensorBoard did not load the logs in time")
            time.sleep(1)
        body = json.loads(get(spectra_url))
        assert len(body["steps"]) == args.steps and not body["warnings"]
        assert len(body["steps"][-1]["eigenvalues"]) == RANK
        spectra_ms, spectra_bytes = timed(spectra_url, args.repeats)
        tags_ms, _ = timed(f"{base}/koopman/tags", args.repeats)
        anchor_ms, _ = timed(f"{base}/scalars/scalars?run=run&tag=loss", args.repeats)
    finally:
        server.terminate()
        server.wait(timeout=30)

    met = spectra_ms < GOAL_MS
    tags_met = tags_ms < TAGS_GOAL_MS
    rows = [
        f"| spectra (one group, {args.steps} steps x {RANK} eigenvalues, "
        f"{spectra_bytes / 1e6:.2f} MB JSON) | {spectra_ms:.1f} | {spectra_ms / anchor_ms:.1f}x |"
        f" < {GOAL_MS:.0f} ms: {'met' if met else 'NOT met'} |",
        f"| tags ({args.groups} groups x {args.steps} steps = {args.groups * args.steps:,} "
        f"stored tensors, listing only) | {tags_ms:.1f} | {tags_ms / anchor_ms:.1f}x | "
        f"< {TAGS_GOAL_MS:.0f} ms: {'met' if tags_met else 'NOT met'} |",
        f"| anchor: TensorBoard scalars route ({args.steps} steps) | {anchor_ms:.1f} | 1.0x | |",
    ]
    body = "\n".join([
        *header(f"python bench/plugin_latency.py --steps {args.steps} --groups {args.groups} "
                f"--repeats {args.repeats}"),
        "- set-up: real `tensorboard --logdir` subprocess, timed over HTTP on 127.0.0.1 after "
        "every step was loaded; medians of the repeats",
        "",
        "| route | median ms | vs anchor | goal |",
        "| --- | ---: | ---: | --- |",
        *rows,
    ])
    report("Plugin latency (`bench/plugin_latency.py`)", body, args.output)


if __name__ == "__main__":
    main()
