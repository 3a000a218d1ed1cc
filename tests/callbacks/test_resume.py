"""Resuming after SIGKILL: a real training process is killed mid-fit and started again with the
same command; history and TensorBoard steps must equal those of an uninterrupted run. On each
Keras backend installed (JAX and PyTorch save the tracker's arrays as .npz), with a snapshot
every epoch, and with one every 2 batches into sketched and bfloat16 buffers (saved Gram rows
still to compute, references, a host batch count)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator

CHILD = r'''
import json, os, signal, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, keras, keras_koopman as kk

work, kill_at, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 6)).astype("float32")
y = np.tanh(x @ rng.standard_normal((6, 2))).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", name="hidden"),
                          keras.layers.Dense(2, name="out")])
model.compile(keras.optimizers.SGD(0.05), "mse")
backup_dir = os.path.join(work, "backup")
monitor = kk.callbacks.KoopmanMonitor(window=4, log_dir=os.path.join(work, "logs"),
                                      backup_dir=backup_dir, **options)
marker = os.path.join(work, "killed")

def kill():
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)

class Killer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if kill_at == "mid-epoch" and self.epoch == 4 and batch == 1 and not os.path.exists(marker):
            kill()
    def on_epoch_end(self, epoch, logs=None):
        # After the monitor saved and logged epoch 3, before BackupAndRestore saved it.
        if kill_at == "between-saves" and epoch == 3 and not os.path.exists(marker):
            kill()

model.fit(x, y, epochs=8, batch_size=16, shuffle=False, verbose=0,
          callbacks=[monitor, Killer(), keras.callbacks.BackupAndRestore(backup_dir)])
print(json.dumps({"history": [[r.epoch, r.step, r.group, r.eigenvalues.real.tolist(),
                               r.eigenvalues.imag.tolist()] for r in monitor.history],
                  "errors": monitor.errors,
                  "left": os.path.exists(os.path.join(backup_dir, "koopman_monitor"))}))
'''


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    importlib.util.find_spec(name) is None, reason=f"{name} is not installed"))
    for name in ("tensorflow", "jax", "torch")]


# "hidden" (56 weights) is sketched to 20 numbers; "out" (18) is stored in full; 4 batches an
# epoch, so every=2 gathers twice in one and the mid-epoch kill falls after a gather.
OPTIONS = {"epoch": {}, "every 2, sketch, bfloat16": {"every": 2, "sketch": 20,
                                                      "storage_dtype": "bfloat16"}}


def run(script, work, kill_at, backend, options):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend,
               JAX_ENABLE_X64="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(script), str(work), kill_at,
                           json.dumps(OPTIONS[options])], env=env,
                          capture_output=True, text=True, timeout=600)


def tensorboard_steps(logs):
    """Steps per tag as TensorBoard's data provider (which the dashboards read) loads them."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(logs),
                                                            size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


@pytest.fixture(scope="module", params=[pytest.param((b.values[0], o), marks=b.marks,
                                                     id=f"{b.values[0]}-{o}")
                                        for b in BACKENDS for o in OPTIONS])
def uninterrupted(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    script = work / "train.py"
    script.write_text(CHILD)
    done = run(script, work, "none", *request.param)
    assert done.returncode == 0, done.stderr[-3000:]
    return (json.loads(done.stdout.strip().splitlines()[-1]), tensorboard_steps(work / "logs"),
            request.param)


@pytest.mark.parametrize("kill_at", ["mid-epoch", "between-saves"])
def test_a_killed_fit_resumes_with_the_history_and_steps_of_an_uninterrupted_run(
        tmp_path, uninterrupted, kill_at):
    expected, expected_events, (backend, options) = uninterrupted
    script = tmp_path / "train.py"
    script.write_text(CHILD)
    killed = run(script, tmp_path, kill_at, backend, options)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "backup" / "koopman_monitor").is_dir()
    resumed = run(script, tmp_path, kill_at, backend, options)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert not result["errors"] and not expected["errors"]
    assert not result["left"]  # a completed fit removes its state
    got, want = result["history"], expected["history"]
    assert [r[:3] for r in got] == [r[:3] for r in want]  # same epochs, steps, groups
    for g, w in zip(got, want):
        np.testing.assert_allclose(g[3], w[3], atol=1e-5)
        np.testing.assert_allclose(g[4], w[4], atol=1e-5)
    # TensorBoard: every tag has each step once, the same steps as the uninterrupted run.
    events = tensorboard_steps(tmp_path / "logs")
    assert set(events) == set(expected_events)
    for tag, steps in events.items():
        assert steps == sorted(set(steps)), (tag, steps)
        assert steps == expected_events[tag], tag
