"""A monitor's state on disk, for resuming after a crash (``backup_dir``): file I/O only.

Layout under ``<backup_dir>/koopman_monitor``:

* ``epoch-<E>/``: one saved state, ``E`` the epoch training resumes from with it: a TensorFlow
  checkpoint of the buffers' variables and ``state.json`` (counters, and how many records of
  the history belong to it). Written under a temporary name and renamed into place, so a kill
  never leaves a half-written state; the two newest are kept, so whichever of the monitor and
  ``BackupAndRestore`` saved last before a kill, the state that matches the other is there.
* ``history/records-<first>.npz``: the history, appended to: each save writes only the records
  added since the previous save (I/O per epoch does not grow with the run). A state reads the
  first ``records`` of them; on resume, chunks past that are cut off.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from keras_koopman.records import History

_FOLDER = "koopman_monitor"
_KEEP = 2


class Backup:
    """Saves and reads states in ``backup_dir`` (see the module docstring)."""

    def __init__(self, backup_dir):
        self.root = os.path.join(backup_dir, _FOLDER)
        self._history = os.path.join(self.root, "history")
        self._saved_records = None  # records on disk, once known

    def saved_epochs(self):
        """Epochs for which a complete state is saved, ascending."""
        if not os.path.isdir(self.root):
            return []
        return sorted(int(name.split("-")[1]) for name in os.listdir(self.root)
                      if name.startswith("epoch-") and name.split("-")[1].isdigit())

    def _folder(self, epoch):
        return os.path.join(self.root, f"epoch-{epoch:06d}")

    def save(self, epoch, state, variables, history):
        """Saves ``state`` (JSON-able), ``variables`` and ``history`` as the state to resume
        ``epoch`` from; only the records not yet on disk are written."""
        os.makedirs(self._history, exist_ok=True)
        if self._saved_records is None:
            self._cut_history(0)  # a new run: whatever history is there is not ours
        if len(history) > self._saved_records:
            _atomic_savez(os.path.join(self._history, f"records-{self._saved_records:09d}.npz"),
                          history.to_arrays(self._saved_records))
            self._saved_records = len(history)
        temporary = os.path.join(self.root, f".partial-{epoch:06d}-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        tf.train.Checkpoint(variables=list(variables)).write(os.path.join(temporary, "buffers"))
        with open(os.path.join(temporary, "state.json"), "w") as file:
            json.dump({"state": state, "records": len(history)}, file)
        final = self._folder(epoch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for old in self.saved_epochs()[:-_KEEP]:
            shutil.rmtree(self._folder(old), ignore_errors=True)

    def read_state(self, epoch):
        """``(state, record count)`` saved for ``epoch``, or ``None`` if there is none."""
        path = os.path.join(self._folder(epoch), "state.json")
        if not os.path.isfile(path):
            return None
        with open(path) as file:
            saved = json.load(file)
        return saved["state"], saved["records"]

    def read_variables(self, epoch, variables):
        """Restores the checkpointed buffers of ``epoch`` into ``variables``."""
        tf.train.Checkpoint(variables=list(variables)).read(
            os.path.join(self._folder(epoch), "buffers")).assert_consumed()

    def read_history(self, count):
        """The first ``count`` records, as a :class:`~keras_koopman.records.History`; chunks
        past them (saved after the state being resumed) are cut off."""
        records = History()
        for start, path in self._chunks():
            if start >= count:
                break
            with np.load(path) as arrays:
                records.extend(History.from_arrays(arrays))
        if len(records) < count:
            raise ValueError(f"the saved history holds {len(records)} records; the state "
                             f"needs {count}")
        records = History(records[:count])
        self._cut_history(count, records)
        return records

    def _chunks(self):
        if not os.path.isdir(self._history):
            return []
        return sorted((int(name[8:17]), os.path.join(self._history, name))
                      for name in os.listdir(self._history)
                      if name.startswith("records-") and name.endswith(".npz"))

    def _cut_history(self, count, records=None):
        """Keeps the first ``count`` records on disk (``records``: those records)."""
        for start, path in self._chunks():
            if start >= count:
                os.remove(path)
            elif records is not None:
                with np.load(path) as arrays:
                    size = len(json.loads(str(arrays["meta"])))
                if start + size > count:  # straddles the cut: rewrite its first part
                    _atomic_savez(path, History(records[start:count]).to_arrays())
        self._saved_records = count

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)
        self._saved_records = None


def _atomic_savez(path, arrays):
    temporary = f"{path}.partial-{os.getpid()}.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
