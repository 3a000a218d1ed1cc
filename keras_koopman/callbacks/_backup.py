"""A monitor's state on disk, for resuming after a crash (``backup_dir``): file I/O only.

Layout under ``<backup_dir>/koopman_monitor``:

* ``epoch-<E>/``: one saved state, ``E`` the epoch training resumes from with it: the
  buffers' arrays (on TensorFlow a checkpoint of their variables, ``buffers.*``; on JAX and
  PyTorch ``buffers.npz``) and ``state.json`` (counters, and how many records of
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
import re
import shutil
import zipfile

import numpy as np

from keras_koopman._backend import is_tensorflow
from keras_koopman._validation import DataError
from keras_koopman.records import History

_FOLDER = "koopman_monitor"
_KEEP = 2
_CHUNK = re.compile(r"^records-(\d{9})\.npz$")
# What a damaged saved file raises when read: reported as a DataError.
_DAMAGED = (KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError)


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
        if self._saved_records is None:
            # A run that did not resume: whatever states and history are there (a crashed run
            # that was not resumed) are not this trajectory's.
            self.remove()
            self._saved_records = 0
        os.makedirs(self._history, exist_ok=True)
        if len(history) > self._saved_records:
            _atomic_savez(os.path.join(self._history, f"records-{self._saved_records:09d}.npz"),
                          history.to_arrays(self._saved_records))
            self._saved_records = len(history)
        temporary = os.path.join(self.root, f".partial-{epoch:06d}-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        _write_arrays(os.path.join(temporary, "buffers"), variables)
        with open(os.path.join(temporary, "state.json"), "w") as file:
            json.dump({"state": state, "records": len(history)}, file)
        final = self._folder(epoch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for old in self.saved_epochs()[:-_KEEP]:
            shutil.rmtree(self._folder(old), ignore_errors=True)

    def read_state(self, epoch):
        """``(state, record count)`` saved for ``epoch``, or ``None`` if there is none;
        ``DataError`` if the file is damaged."""
        path = os.path.join(self._folder(epoch), "state.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as file:
                saved = json.load(file)
            return saved["state"], int(saved["records"])
        except _DAMAGED as error:
            raise DataError(f"the saved state {path} is damaged: {error!r}") from error

    def read_variables(self, epoch, variables):
        """Restores the saved buffers of ``epoch``: on TensorFlow into ``variables`` (returns
        ``None``); on JAX and PyTorch, whose tracker holds arrays, returns them as NumPy
        arrays, in order (``variables``: the arrays they replace, to check against)."""
        path = os.path.join(self._folder(epoch), "buffers")
        if is_tensorflow():
            from keras_koopman._tf import read_variables

            read_variables(path, variables)
            return None
        try:
            with np.load(path + ".npz") as saved:
                arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        except _DAMAGED as error:
            raise DataError(f"the saved buffers {path}.npz are damaged: {error!r}") from error
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != [tuple(v.shape) for v in variables]:
            raise DataError(f"the saved buffers {path}.npz hold arrays of shapes {shapes}, "
                            "not the watched groups'")
        return arrays

    def read_history(self, count):
        """The first ``count`` records, as a :class:`~keras_koopman.records.History`; chunks
        past them (saved after the state being resumed) are cut off."""
        records = History()
        for start, path in self._chunks():
            if start >= count:
                break
            if start != len(records):
                raise DataError(f"the saved history has a gap before record {start}")
            try:
                with np.load(path) as arrays:
                    records.extend(History.from_arrays(arrays))
            except _DAMAGED as error:
                raise DataError(f"the saved history {path} is damaged: {error!r}") from error
        if len(records) < count:
            raise DataError(f"the saved history holds {len(records)} records; the state "
                            f"needs {count}")
        records = History(records[:count])
        self._cut_history(count, records)
        return records

    def _chunks(self):
        if not os.path.isdir(self._history):
            return []
        return sorted((int(match.group(1)), os.path.join(self._history, name))
                      for name in os.listdir(self._history)
                      for match in [_CHUNK.match(name)] if match)

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


def _write_arrays(path, variables):
    """The buffers at ``path``: a TensorFlow checkpoint of ``variables``, or on JAX and
    PyTorch one ``.npz`` of the arrays (written inside the temporary folder, renamed whole)."""
    if is_tensorflow():
        from keras_koopman._tf import write_variables

        write_variables(path, variables)
        return
    import keras

    # bfloat16 (which NumPy has no dtype of) saved as float32: exact, and cast back on load.
    np.savez(path + ".npz", *[keras.ops.convert_to_numpy(
        keras.ops.cast(v, "float32") if keras.backend.standardize_dtype(v.dtype) == "bfloat16"
        else v) for v in variables])


def _atomic_savez(path, arrays):
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".partial-{os.getpid()}-{name}")  # not a chunk's name
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
