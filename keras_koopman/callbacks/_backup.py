"""A KoopmanMonitor's state on disk, for resuming after a crash (``backup_dir``).

Each save is a directory ``<backup_dir>/koopman_monitor/epoch-<E>`` (``E``: the epoch training
resumes from with that state) holding a TensorFlow checkpoint of every buffer variable, the
history's arrays (``history.npz``) and the rest as JSON. It is written under a temporary name
and renamed into place, so a kill never leaves a half-written state; the two newest are kept,
so whichever of the monitor and ``BackupAndRestore`` saved last before a kill, the state that
matches the other is still there.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import tensorflow as tf

_FOLDER = "koopman_monitor"
_KEEP = 2


def _root(backup_dir):
    return os.path.join(backup_dir, _FOLDER)


def saved_epochs(backup_dir):
    """Epochs for which a complete state is saved, ascending."""
    root = _root(backup_dir)
    if not os.path.isdir(root):
        return []
    return sorted(int(name.split("-")[1]) for name in os.listdir(root)
                  if name.startswith("epoch-") and name.split("-")[1].isdigit())


def _layout(monitor):
    return {name: [b.n_features, b.window, b.sketch, b.storage_dtype.name]
            for name, b in monitor.buffers.items()}


def _variables(monitor):
    return [v for storage in monitor._storages() for v in storage.variables]


def save(monitor, backup_dir, epoch):
    """Saves ``monitor``'s state as the one to resume ``epoch`` from."""
    root = _root(backup_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"epoch-{epoch:06d}")
    temporary = os.path.join(root, f".partial-{epoch:06d}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    tf.train.Checkpoint(variables=_variables(monitor)).write(os.path.join(temporary, "buffers"))
    arrays = {}
    records = []
    for i, record in enumerate(monitor.history):
        for field in ("eigenvalues", "amplitudes", "residuals"):
            arrays[f"{i}/{field}"] = getattr(record, field)
        records.append({"epoch": record.epoch, "step": record.step, "group": record.group,
                        "rank": record.rank, "snapshots": record.snapshots,
                        "metrics": record.metrics})
    np.savez(os.path.join(temporary, "history.npz"), **arrays)
    state = {
        "layout": _layout(monitor), "records": records, "step": monitor.step,
        "epoch": monitor.epoch, "stored": monitor._stored,
        "nonfinite_groups": sorted(monitor.nonfinite_groups), "errors": monitor.errors,
        "since_analysis": monitor._since_analysis,
        "analysed_steps": sorted(monitor._analysed_steps), "batches": monitor._batches,
        "next_batch_gather": monitor._next_batch_gather,
        "warned": [list(key) for key in monitor._warned],
    }
    with open(os.path.join(temporary, "state.json"), "w") as file:
        json.dump(state, file)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    for old in saved_epochs(backup_dir)[:-_KEEP]:
        shutil.rmtree(os.path.join(root, f"epoch-{old:06d}"), ignore_errors=True)


def load(monitor, backup_dir, epoch):
    """Restores the state saved for ``epoch`` into ``monitor`` (built for the same model).
    Returns False if there is none; ValueError if it belongs to other groups."""
    from keras_koopman.callbacks.monitor import SpectrumRecord

    folder = os.path.join(_root(backup_dir), f"epoch-{epoch:06d}")
    if not os.path.isdir(folder):
        return False
    with open(os.path.join(folder, "state.json")) as file:
        state = json.load(file)
    if state["layout"] != _layout(monitor):
        raise ValueError(f"the state saved in {folder} is of other observable groups "
                         f"({state['layout']}) than this model's ({_layout(monitor)})")
    tf.train.Checkpoint(variables=_variables(monitor)).read(
        os.path.join(folder, "buffers")).assert_consumed()
    arrays = np.load(os.path.join(folder, "history.npz"))
    monitor.history = [
        SpectrumRecord(**record, **{field: arrays[f"{i}/{field}"]
                                    for field in ("eigenvalues", "amplitudes", "residuals")})
        for i, record in enumerate(state["records"])
    ]
    monitor.step = state["step"]
    monitor.epoch = state["epoch"]
    monitor._stored = state["stored"]
    monitor.nonfinite_groups = set(state["nonfinite_groups"])
    monitor.errors = state["errors"]
    monitor._since_analysis = state["since_analysis"]
    monitor._analysed_steps = set(state["analysed_steps"])
    monitor._batches = state["batches"]
    monitor._next_batch_gather = state["next_batch_gather"]
    monitor._warned = {tuple(key) for key in state["warned"]}
    monitor._pending_flags = []
    return True


def remove(backup_dir):
    shutil.rmtree(_root(backup_dir), ignore_errors=True)


def write_session_start(writer, step):
    """A ``SessionLog.START`` event at ``step``. TensorBoard takes a run's first one as its
    beginning; at any later one it drops the events of the run with ``step`` or later that it
    read before (its "orphaned data" purge after a restart)."""
    from tensorboard.compat.proto import event_pb2
    from tensorflow.python.ops import summary_ops_v2

    event = event_pb2.Event(step=int(step), wall_time=time.time(),
                            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    with writer.as_default():
        summary_ops_v2.import_event(tf.constant(event.SerializeToString()))
    writer.flush()
