"""PortableTracker: what :class:`~keras_koopman.callbacks.KoopmanMonitor` runs on the JAX and
PyTorch backends (the interface of :class:`~keras_koopman.callbacks.KoopmanTracker`)."""

from __future__ import annotations

import numpy as np

from keras_koopman import host_dmd
from keras_koopman._sketch import make_sketch
from keras_koopman.callbacks._tracking import (DATA_FAILURES, TrackerCore, _distinct_columns,
                                               host_ring, unit_layout)
from keras_koopman.callbacks.plan import plan_storage
from keras_koopman._validation import DataError
from keras_koopman.portable import device as dev
from keras_koopman.portable import ring
from keras_koopman.portable.buffer import RingReader, chronological
from keras_koopman.records import History

__all__ = ["PortableTracker"]


class PortableTracker(TrackerCore):
    """The tracker of the JAX and PyTorch backends: every group's ring buffer and Gram matrix
    on the backend's device (:mod:`keras_koopman.portable.ring`), the ``[window, window]``
    eigenproblems on the host (:mod:`keras_koopman.host_dmd`, as on TensorFlow).

    :meth:`gather` is one jitted call on JAX (the buffers donated: written in place) and a few
    in-place ``copy_`` calls on torch, with no host read; the NaN/Inf flags are counted on the
    device and read by :meth:`sync`; :meth:`analyse` computes the new Gram rows on the device
    and reads every group's ``[window, window]`` Gram matrix in one transfer.

    Same arguments as :class:`~keras_koopman.callbacks.KoopmanTracker`. Groups are sketched
    and stored in bfloat16 as there (the same map from the same seed; bfloat16 centred on the
    first snapshot) but never packed: every group's write is in the one dispatch already.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rings = None
        self._weights = []
        self._written = 0  # snapshots in the rings since the last restart (finite or not)
        self._stale = []  # per group, the slots whose Gram rows wait for the next read
        self._synced_bad = None  # NaN/Inf counts (never reset) at the last sync
        self._bad_at_restart = None  # ... and at the last restart

    # ----------------------------------------------------------------------------------------
    def watch(self, model):
        """As :meth:`KoopmanTracker.watch`."""
        groups = self._resolve(model)  # raises before anything changes
        shapes = {name: [int(np.prod(v.shape)) for v in variables]
                  for name, variables in groups.items()}
        sizes = {name: sum(parts) for name, parts in shapes.items()}
        sketches = plan_storage(sizes, self.window, self.sketch, self.storage_dtype,
                                self.snapshot_memory, self.method).sketches if sizes else {}
        self.groups = groups
        self._model = model
        by_layer = not callable(self.observables) and self.observables != "model"
        self._units = {name: unit_layout(model.get_layer(name) if by_layer else None, variables)
                       for name, variables in self.groups.items()}
        self.disabled = not self.groups
        self.buffers, self._rings, self._stored = {}, None, {}
        self.nonfinite_groups = set()
        if self.disabled:
            self.report("set-up", ValueError("no observable group has trainable weights to "
                                             "watch; nothing is recorded"))
            return False
        self._rings = ring.Rings(
            list(sizes.values()), self.window, self.storage_dtype,
            sketches=[None if name not in sketches else
                      (make_sketch(sizes[name], sketches[name]), shapes[name])
                      for name in sizes])
        self.buffers = {name: _GroupView(self, index, size)
                        for index, (name, size) in enumerate(sizes.items())}
        self._weights = list(self.groups.values())
        self._stored = {name: 0 for name in self.buffers}
        self._written, self._stale = 0, [set() for _ in sizes]
        self._synced_bad = np.zeros(len(self.buffers), np.int64)
        self._bad_at_restart = np.zeros(len(self.buffers), np.int64)
        return True

    @property
    def variables(self):
        """The device arrays of the rings (buffers, Gram matrices, NaN/Inf counts): what
        ``backup_dir`` saves."""
        if self._rings is None:
            return []
        return [*self._rings.arrays, self._rings.bad]

    def load_variables(self, arrays):
        """Puts saved :attr:`variables` (host arrays, same order and shapes) in the rings."""
        self._rings.load(arrays[:-1])
        self._rings.bad = dev.to_tensor(np.asarray(arrays[-1]), "int64")

    # ----------------------------------------------------------------------------------------
    def gather(self, values=None):
        """Appends one snapshot of every group (no host read); returns the new step.
        ``values``: the groups' tensors (as :meth:`state_reader` reads them), else the
        variables' values."""
        if self.disabled or self._rings is None:
            return None
        slot = self._written % self.window
        if values is None:
            values = [[v.value for v in variables] for variables in self._weights]
        ring.write(self._rings, values, slot)
        for stale in self._stale:
            stale.add(slot)
        self._written += 1
        self.step += 1
        return self.step

    def state_reader(self, model):
        """JAX: a function of the training state a Keras train step returns (``(trainable,
        non_trainable, optimizer, metrics)`` value lists) to the watched groups' arrays, for
        :meth:`gather`: the weights are read there without syncing them into the model."""
        where = {}
        for k, variables in enumerate((model.trainable_variables,
                                       model.non_trainable_variables)):
            for i, variable in enumerate(variables):
                where.setdefault(id(variable), (k, i))
        places = [[where[id(v)] for v in variables] for variables in self._weights]
        return lambda state: [[state[k][i] for k, i in group] for group in places]

    def skip(self):
        """Counts a snapshot that is not taken: the step advances, the buffers do not."""
        self.step += 1

    def sync(self):
        """Reads the device's NaN/Inf counts (one host read); a group whose weights held NaN
        or Inf is marked and warned about once (one entry of :attr:`errors` per snapshot)."""
        if self._rings is None:
            return
        self._apply_bad(dev.to_host(self._rings.bad).astype(np.int64))

    def _apply_bad(self, bad):
        self._note_nonfinite(bad)
        # Finite snapshots per group since the restart, as TensorFlow's counters give them (a
        # group with a NaN/Inf snapshot is not analysed again until restart(); its ring holds
        # that snapshot, where TensorFlow's skips it).
        finite = self._written - (bad - self._bad_at_restart)
        self._stored = dict(zip(self.buffers, np.maximum(finite, 0).tolist()))

    # ----------------------------------------------------------------------------------------
    def analyse(self):
        """DMD of every group with at least 3 finite snapshots, once per step (the records are
        also appended to :attr:`history`)."""
        if self.disabled or self.step == self._last_analysed or self._rings is None:
            return []
        self._last_analysed = self.step
        self.unit_weights = {}
        for view in self.buffers.values():
            view.refresh()
        grams, bad = ring.grams(self._rings, list(range(len(self.buffers))))
        self._apply_bad(bad)
        eligible = tuple(name for name in self.buffers
                         if self._stored[name] >= 3 and name not in self.nonfinite_groups)
        if not eligible:
            return []
        code, value = host_dmd.parse_rank(self.rank)
        floor = host_dmd.floor_epsilon(np.float32, "gram")
        order = chronological(self._written, self.window)
        outputs = {}
        try:
            for index, name in enumerate(self.buffers):
                if name in eligible:
                    gram = grams[index][np.ix_(order, order)]
                    view = self.buffers[name]
                    outputs[name] = host_ring(gram, view.sketch or view.n_features, code,
                                              value, floor, self.method, self.tolerance)
        except DATA_FAILURES as error:
            self.report("analysis", error)
            return []
        return self._record(eligible, outputs)

    def _unit_weights(self, name, combination):
        """Per unit, the share of each leading mode's squared norm (as
        :func:`keras_koopman.callbacks.tracker.mode_unit_weights`), one float32 product on the
        device per layer; ``None`` for a group without a common last axis."""
        layout = self._units.get(name)
        if layout is None or self.buffers[name].sketch is not None:
            return None
        try:
            return _mode_unit_weights(self._rings.snapshot_array(list(self.buffers).index(name)),
                                      combination, self._written, self.window, *layout)
        except DATA_FAILURES as error:
            self.report("per-unit mode weights", error, name)
            return None

    # ----------------------------------------------------------------------------------------
    def restart(self):
        """Forgets the trajectory and takes the first snapshot anew (see
        :meth:`KoopmanTracker.restart`)."""
        self.sync()
        if self._rings is not None:
            self._rings.reset()
            self._bad_at_restart = self._synced_bad.copy()
        self._stored = {name: 0 for name in self.buffers}
        self._written, self._stale = 0, [set() for _ in self._stale]
        self.nonfinite_groups = set()
        return self.gather()

    def layout(self):
        """``{group: [n_features, window, sketch, storage dtype]}``."""
        return {name: [b.n_features, self.window, b.sketch, self.storage_dtype]
                for name, b in self.buffers.items()}

    def state_dict(self):
        """Everything but the rings' arrays and the history, as JSON-able values."""
        self.sync()
        return {"layout": self.layout(), "step": self.step, "epoch": self.epoch,
                "stored": dict(self._stored), "written": self._written,
                "nonfinite_groups": sorted(self.nonfinite_groups),
                "errors": list(self.errors), "warned": [list(key) for key in self._warned],
                "last_analysed": self._last_analysed,
                "stale": [sorted(int(slot) for slot in slots) for slots in self._stale],
                "bad_at_restart": self._bad_at_restart.tolist()}

    def load_state_dict(self, state, history):
        """Restores :meth:`state_dict` output and its ``history`` (the arrays first, by
        :meth:`load_variables`)."""
        self.check_layout(state["layout"])
        self.step, self.epoch = state["step"], state["epoch"]
        self._stored = dict(state["stored"])
        self._written = state["written"]
        self.nonfinite_groups = set(state["nonfinite_groups"])
        self.errors = list(state["errors"])
        self._warned = {tuple(key) for key in state["warned"]}
        self._last_analysed = state["last_analysed"]
        # (Absent from a state saved by an older version: every row recomputed, no restart.)
        held = range(min(self._written, self.window))
        self._stale = [set(slots) for slots in state.get("stale", [held] * len(self._stale))]
        self._bad_at_restart = np.asarray(state.get("bad_at_restart", [0] * len(self._stale)),
                                          np.int64)
        self._synced_bad = dev.to_host(self._rings.bad).astype(np.int64)
        self._rings.reference_set = self._written > 0
        self.history = History(history)


class _GroupView(RingReader):
    """One group's buffer in the tracker's rings: the buffer protocol's reading side
    (``snapshots``, ``gram``, ``dmd``; what the accelerator reads)."""

    def __init__(self, tracker, index, n_features):
        self._tracker, self._group, self.n_features = tracker, index, n_features
        self.window, self.dtype = tracker.window, "float32"

    @property
    def _rings(self):
        return self._tracker._rings

    @property
    def count(self):
        """Snapshots written since the last restart (finite or not)."""
        return self._tracker._written

    def refresh(self):
        """Computes this group's Gram rows of the snapshots gathered since its last read."""
        ring.gram_rows(self._rings, self._group, self._tracker._stale[self._group])
        self._tracker._stale[self._group] = set()

    def __len__(self):
        return min(self.count, self.window)

    def __repr__(self):
        return f"<group buffer n_features={self.n_features} window={self.window}>"


def _mode_unit_weights(buffer, combination, written, window, units, parts):
    import keras

    from keras_koopman.callbacks._tracking import UNIT_MODES

    ops = keras.ops
    combination = np.asarray(combination)[:, :UNIT_MODES]
    m, k = combination.shape
    held = min(written, window)
    if held != m:
        raise DataError(f"the window holds {held} snapshots, the modes combine {m}")
    if k == 0:
        return np.zeros((0, units))
    first, source, columns = _distinct_columns(combination)
    coefficients = np.zeros((window, len(columns)), np.float32)
    coefficients[chronological(written, window)] = np.stack(columns, axis=1)
    product = dev.matmul(ops.transpose(buffer), dev.to_tensor(coefficients))  # [n, c]
    power = np.zeros((len(columns), units))
    for offset, size in parts:
        block = ops.reshape(product[offset:offset + size], (size // units, units, -1))
        power += dev.to_host(ops.sum(block * block, axis=0)).T.astype(np.float64)
    total = np.zeros((k, units))
    np.add.at(total, source, power)
    total = total[first]
    sums = total.sum(axis=1, keepdims=True)
    return np.divide(total, sums, out=np.full_like(total, np.nan), where=sums > 0)
