"""KoopmanTracker: the state and the work of watching a model's weights (not a Keras callback)."""

from __future__ import annotations

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

import numpy as np
import tensorflow as tf

from keras_koopman import host_dmd
from keras_koopman._tf import cached_function, pack_outputs, unpack_outputs, value_of
from keras_koopman._validation import DataError
from keras_koopman.buffers import PackedBuffers, SnapshotBuffer
from keras_koopman.buffers.ring import (chronological_gram, refresh_function,
                                        ring_append)
from keras_koopman.callbacks._tracking import (DATA_FAILURES, UNIT_MODES, TrackerCore,
                                               _distinct_columns, host_ring, unit_layout)
from keras_koopman.callbacks._tracking import _representative, shared_last_axis  # noqa: F401
from keras_koopman.callbacks.plan import plan_storage
from keras_koopman.dmd import floor_epsilon, parse_rank
from keras_koopman.records import History

__all__ = ["KoopmanTracker", "DATA_FAILURES"]

# XLA cannot compile the gather here (a device or dtype without XLA support).
_XLA_FAILURES = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)
_PACKED = "\x00packed"  # key of the packed groups' outputs (no group can be named so)


class KoopmanTracker(TrackerCore):
    """Plans the observable groups of a model, owns their buffers, gathers and analyses them.

    The tracker is what :class:`~keras_koopman.callbacks.KoopmanMonitor` runs on each Keras hook;
    it has no Keras-callback code and can be driven from a custom training loop. Its interface:

    * :meth:`watch` (a model) resolves the groups (``ValueError`` naming the model's layers for
      an unknown layer name), plans their storage (:func:`~keras_koopman.callbacks.plan.
      plan_storage`) and compiles one gather for all of them;
    * :meth:`gather` appends one snapshot of every group (one compiled call, no host read);
    * :meth:`sync` reads the NaN/Inf flags of the snapshots gathered since the last read (one
      host read), :meth:`stored` says how many finite snapshots a group holds;
    * :meth:`analyse` runs the DMD of every group with 3 snapshots or more and appends a
      :class:`~keras_koopman.callbacks.SpectrumRecord` per group to :attr:`history`;
    * :meth:`restart` forgets the trajectory; :meth:`state_dict` / :meth:`load_state_dict`
      save and restore everything but the buffers' variables (:attr:`variables`);
    * :meth:`report` records a failure (warned once per kind) in :attr:`errors`.

    With :attr:`unit_modes` set (the monitor sets it while it writes summaries), each analysis
    also leaves in :attr:`unit_weights` ``{group: [k, units]}``: for each of the group's ``k``
    (at most ``UNIT_MODES``) leading modes, the share of its squared norm that each unit (index
    of the weights' last axis: a Dense layer's output unit, a Conv layer's output channel)
    carries, each row summing to 1 (see :func:`mode_unit_weights`). Only the newest
    analysis's are kept (the summaries hold the others), for groups that are one layer whose
    variables share a last axis (:func:`unit_layout`) and are stored in full (not sketched).
    Each costs one ``[16, window]`` by ``[window, n]`` product on the group's stored snapshots.

    Args:
      observables, window, rank, method, tolerance, sketch, storage_dtype, snapshot_memory: as
        in :class:`~keras_koopman.callbacks.KoopmanMonitor`.
      name: who warns (``"KoopmanMonitor"``).

    Example:

    >>> import numpy as np, keras
    >>> from keras_koopman.callbacks import KoopmanTracker
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="dense")])
    >>> tracker = KoopmanTracker(window=4, rank=1)
    >>> tracker.watch(model)
    True
    >>> for k in range(4):
    ...     _ = model.get_layer("dense").kernel.assign(0.5 ** k * np.eye(2))
    ...     _ = tracker.gather()
    >>> [(r.group, r.snapshots) for r in tracker.analyse()]
    [('dense', 4)]
    >>> round(float(tracker.latest("dense").eigenvalues[0].real), 6)
    0.5
    """

    def __init__(self, observables="layers", window=20, rank=None, method="exact",
                 tolerance=0.01, sketch="auto", storage_dtype="float32",
                 snapshot_memory=512 * 2**20, name="KoopmanMonitor"):
        super().__init__(observables, window, rank, method, tolerance, sketch, storage_dtype,
                         snapshot_memory, name)
        self._pack = None
        self._gather = None
        self._stored = {}
        self._counters = None  # device: gathers, finite snapshots and NaN/Inf ones per group
        self._jit = True  # XLA for the gather (False once XLA failed here)
        self._synced_gathers = 0
        self._synced_bad = None
        self._pack_grams = None

    # ----------------------------------------------------------------------------------------
    # set-up
    def watch(self, model):
        """Resolves and plans the groups of ``model`` and builds their buffers and the gather.

        A new model (rebuilt between fits) starts a new trajectory in new buffers; history and
        step numbers carry on. Returns ``False`` (with a
        warning; the tracker stays disabled) when no group has trainable weights.

        Raises:
          ValueError: ``observables`` names layers the model does not have.
        """
        self.groups = self._resolve(model)  # raises before anything changes
        self._model = model
        by_layer = not callable(self.observables) and self.observables != "model"
        self._units = {name: unit_layout(model.get_layer(name) if by_layer else None, variables)
                       for name, variables in self.groups.items()}
        self.disabled = not self.groups
        self.buffers, self._pack, self._gather, self._pack_grams = {}, None, None, None
        self._stored, self.nonfinite_groups, self._counters = {}, set(), None
        if self.disabled:
            self.report("set-up", ValueError("no observable group has trainable weights to "
                                             "watch; nothing is recorded"))
            return False
        sizes = {name: sum(int(np.prod(v.shape)) for v in variables)
                 for name, variables in self.groups.items()}
        plan = plan_storage(sizes, self.window, self.sketch, self.storage_dtype,
                            self.snapshot_memory, self.method)
        if plan.packed:
            # Many small groups: one buffer and one batched analysis for all of them.
            self._pack = PackedBuffers({name: sizes[name] for name in plan.packed}, self.window)
            self.buffers.update(zip(plan.packed, self._pack.views()))
        for name, size in sizes.items():
            if name not in self.buffers:
                self.buffers[name] = SnapshotBuffer(
                    size, self.window, name=f"koopman_{name}", sketch=plan.sketches.get(name),
                    storage_dtype=self.storage_dtype)
        self.buffers = {name: self.buffers[name] for name in sizes}  # in the groups' order
        self._stored = {name: 0 for name in self.buffers}
        self._counters = _Counters(len(self.buffers))
        self._synced_gathers, self._synced_bad = 0, np.zeros(len(self.buffers), np.int64)
        self._gather = self._compile_gather(jit_compile=True)
        return True

    @property
    def storages(self):
        """The distinct objects holding the buffers' variables: every unpacked buffer and the
        pack (once, however many groups it holds)."""
        unpacked = [b for b in self.buffers.values() if isinstance(b, SnapshotBuffer)]
        return unpacked + ([self._pack] if self._pack is not None else [])

    @property
    def variables(self):
        """Every variable of the buffers (what a checkpoint of the tracker holds)."""
        return [v for storage in self.storages for v in storage.variables]

    @property
    def gather_function(self):
        """The compiled gather (``None`` before :meth:`watch`): a function of no arguments
        that appends one snapshot of every group and counts it on the device."""
        return self._gather

    def step_gather_function(self):
        """The gather as a ``tf.function`` of this tracker's own (XLA-compiled) to call inside
        another ``tf.function``, such as a train step (see
        :class:`~keras_koopman.callbacks.step_gather.StepGather`); :meth:`sync` then learns how
        many snapshots were taken. (The process-wide gather takes the variables as arguments,
        which a trace inside another function cannot bind to new variables.)"""
        return self._compile_gather(jit_compile=self._jit, shared=False)

    def _compile_gather(self, jit_compile, shared=True):
        pack = self._pack
        in_pack = set() if pack is None else set(pack.names)
        singles = [(self.buffers[name], variables) for name, variables in self.groups.items()
                   if name not in in_pack]
        weights = tuple(tuple(value_of(v) for v in variables) for _, variables in singles)
        rings = tuple(tuple(buffer.variables) for buffer, _ in singles)
        counters = self._counters.variables
        plain = not any(isinstance(v, tf.distribute.DistributedValues)
                        for group in weights for v in group)
        if (shared and plain and pack is None
                and all(buffer.sketch is None for buffer, _ in singles)):
            # Variables as arguments: one trace and one XLA compilation per process for every
            # model whose watched variables have these shapes and dtypes. (Not for a
            # strategy's mirrored variables: a trace binds to their components.)
            function = cached_function(("gather", jit_compile), lambda: tf.function(
                _gather_rings, jit_compile=jit_compile, autograph=False))
            return lambda: function(weights, rings, counters)
        packed = [] if pack is None else [self.groups[name] for name in pack.names]
        single_buffers = [buffer for buffer, _ in singles]
        order = [name for name in self.buffers if name not in in_pack]

        def gather():
            flags = {}
            if pack is not None:
                ok = pack.append_op([part for variables in packed
                                     for part in _flat(variables, tf.float32)])
                flags.update({name: ok[i] for i, name in enumerate(pack.names)})
            for name, buffer, variables in zip(order, single_buffers, weights):
                # Each variable goes straight into its slice of the buffer row (no concatenated
                # copy); the Gram rows wait for the next analysis.
                flags[name] = (buffer.append_op(_flat(variables, buffer.dtype), update_gram=False)
                               if buffer.sketch else ring_append(
                                   buffer.variables, _flat(variables, buffer.dtype), False))
            count_gathers(counters, tf.stack([flags[name] for name in self.buffers]))
            return tf.constant(True)

        return tf.function(gather, jit_compile=jit_compile, autograph=False)

    # ----------------------------------------------------------------------------------------
    # gathering
    def gather(self):
        """Appends one snapshot of every group; returns the new step (``None`` if disabled).
        One compiled call, no host read (NaN/Inf flags are counted on the device, read by
        :meth:`sync`)."""
        if self.disabled or self._gather is None:
            return None
        try:
            self._gather()
        except _XLA_FAILURES as error:
            # XLA cannot compile this set-up (a device or dtype without XLA support): fall
            # back to a plain graph, which copies the buffers instead of updating in place.
            self.report("XLA compilation of the snapshot step", error)
            self._jit = False
            self._gather = self._compile_gather(jit_compile=False)
            self._gather()
        self.step += 1
        self._synced_gathers += 1  # known here: sync does not count it again
        return self.step

    def skip(self):
        """Counts a snapshot that is not taken (one that the next analysis would not see, as
        it leaves the window before): the step advances, the buffers do not."""
        self.step += 1

    def sync(self):
        """Reads the device counters (one host read): snapshots gathered inside a train step
        advance :attr:`step`, and a group whose weights held NaN or Inf is marked and warned
        about once (each such snapshot is one entry of :attr:`errors`)."""
        if self._counters is None:
            return
        gathers, finite, bad = self._counters.read()
        self.step += gathers - self._synced_gathers
        self._synced_gathers = gathers
        self._note_nonfinite(bad)
        self._stored = dict(zip(self.buffers, finite.tolist()))

    # ----------------------------------------------------------------------------------------
    # analysis
    def analyse(self):
        """DMD of every group with at least 3 finite snapshots, once per step. Returns the new
        records (also appended to :attr:`history`)."""
        if self.disabled or self.step == self._last_analysed:
            return []
        self._last_analysed = self.step
        self.unit_weights = {}
        self.sync()
        eligible = tuple(name for name in self.buffers
                         if self._stored[name] >= 3 and name not in self.nonfinite_groups)
        if not eligible:
            return []
        code, value = parse_rank(self.rank)
        in_pack = set() if self._pack is None else set(self._pack.names)
        packed = any(name in in_pack for name in eligible)
        if packed and self._pack_grams is None:
            # Traced here, outside the try below: a tracing error is a bug and propagates.
            self._pack_grams = self._compile_pack_grams()
            self._pack_grams.get_concrete_function()
        try:
            # The device hands over the small Gram matrices, in one transfer per kind; the
            # [window, window] eigenproblems run on the host (keras_koopman.host_dmd).
            outputs = {}
            if packed:
                outputs[_PACKED] = _host_pack(unpack_outputs(self._pack_grams()), self._pack,
                                              code, value, self.tolerance)
            single = [name for name in eligible if name not in in_pack]
            if single:
                rings = tuple(tuple(self.buffers[name].variables) for name in single)
                grams = unpack_outputs(_rings_grams_function()(rings))
                for name, gram in zip(single, grams):
                    buffer = self.buffers[name]
                    outputs[name] = host_ring(
                        gram, int(buffer.variables[0].shape[1]), code, value,
                        floor_epsilon(tf.as_dtype(buffer.dtype), "gram"), self.method,
                        self.tolerance)
        except DATA_FAILURES as error:
            self.report("analysis", error)
            return []
        outputs.update(_unpack(outputs.pop(_PACKED, None), self._pack))
        return self._record(eligible, outputs)

    def _unit_weights(self, name, combination):
        """The per-unit weights of group ``name``'s leading modes (``None`` for a group without
        a common last axis or with a sketched buffer); a failure is reported, not raised."""
        layout, buffer = self._units.get(name), self.buffers[name]
        if layout is None or buffer.sketch is not None:
            return None
        try:
            return mode_unit_weights(buffer.state(), combination, *layout)
        except (*DATA_FAILURES, tf.errors.ResourceExhaustedError) as error:
            self.report("per-unit mode weights", error, name)
            return None

    def _compile_pack_grams(self):
        """The pack's Gram rows and chronological Gram matrices, in one function (traced once
        per pack)."""
        pack = self._pack

        def grams():
            pack.refresh_op()
            return pack_outputs(pack.grams_op())

        return tf.function(grams, autograph=False)

    # ----------------------------------------------------------------------------------------
    # restart, failures, state
    def restart(self):
        """Forgets the trajectory (after the weights were re-initialised or jumped) and, when a
        model is watched, takes its first snapshot anew (returning its step; ``None`` when
        nothing is watched). History and step numbers carry on."""
        self.sync()  # NaN/Inf of snapshots taken before are still reported
        for storage in self.storages:
            storage.reset()
        self._stored = {name: 0 for name in self.buffers}
        if self._counters is not None:
            self._counters.reset_finite()
        self.nonfinite_groups = set()
        return self.gather()

    def layout(self):
        """``{group: [n_features, window, sketch, storage dtype]}``: what a saved state must
        match."""
        return {name: [b.n_features, b.window, b.sketch, tf.as_dtype(b.storage_dtype).name]
                for name, b in self.buffers.items()}

    def state_dict(self):
        """Everything but the buffers' variables and the history, as JSON-able values."""
        self.sync()
        return {"layout": self.layout(), "step": self.step, "epoch": self.epoch,
                "stored": dict(self._stored), "nonfinite_groups": sorted(self.nonfinite_groups),
                "errors": list(self.errors), "warned": [list(key) for key in self._warned],
                "last_analysed": self._last_analysed}

    def load_state_dict(self, state, history):
        """Restores :meth:`state_dict` output and the ``history`` it went with (the buffers'
        variables are restored separately, into :attr:`variables`).

        Raises:
          DataError: the state belongs to other groups than the watched model's.
        """
        self.check_layout(state["layout"])
        self.step, self.epoch = state["step"], state["epoch"]
        self._stored = dict(state["stored"])
        self.nonfinite_groups = set(state["nonfinite_groups"])
        self.errors = list(state["errors"])
        self._warned = {tuple(key) for key in state["warned"]}
        self._last_analysed = state["last_analysed"]
        self._counters.load([self._stored[name] for name in self.buffers])
        self._synced_gathers, self._synced_bad = 0, np.zeros(len(self.buffers), np.int64)
        self.history = History(history)

class _Counters:
    """Device-side counts of the gathering, read by the host once per :meth:`read`: gathers
    since the model was watched, finite snapshots per group since the last restart, and
    NaN/Inf snapshots per group (never reset)."""

    def __init__(self, groups):
        with tf.name_scope("koopman_counters"):
            self.gathers = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="gathers")
            self.finite = tf.Variable(tf.zeros([groups], tf.int64), trainable=False,
                                      name="finite")
            self.bad = tf.Variable(tf.zeros([groups], tf.int64), trainable=False, name="bad")

    @property
    def variables(self):
        return (self.gathers, self.finite, self.bad)

    def read(self):
        values = tf.concat([self.gathers[tf.newaxis], self.finite, self.bad], 0).numpy()
        groups = (len(values) - 1) // 2
        return int(values[0]), values[1:1 + groups], values[1 + groups:]

    def reset_finite(self):
        self.finite.assign(tf.zeros_like(self.finite))

    def load(self, finite):
        self.gathers.assign(0)
        self.finite.assign(tf.constant(finite, tf.int64))
        self.bad.assign(tf.zeros_like(self.bad))


def count_gathers(counters, flags):
    """Graph mode: counts one gather's ``[groups]`` finiteness ``flags`` in the
    ``(gathers, finite, bad)`` counter variables."""
    gathers, finite, bad = counters
    ok = tf.cast(flags, tf.int64)
    gathers.assign_add(tf.constant(1, tf.int64))
    finite.assign_add(ok)
    bad.assign_add(1 - ok)


def _flat(variables, dtype):
    return [tf.reshape(tf.cast(v, dtype), [-1]) for v in variables]


def _gather_rings(weights, rings, counters):
    """One snapshot of every group into its ring buffer (``weights``: a tuple of variables per
    group; ``rings``: each group's buffer variables), counted in ``counters``."""
    flags = [ring_append(ring, _flat(group, ring[1].dtype), update_gram=False)
             for group, ring in zip(weights, rings)]
    count_gathers(counters, tf.stack(flags))
    return tf.constant(True)


def _unpack(outputs, pack):
    """The batched outputs of a pack as ``{group: values}`` like a single buffer's."""
    if outputs is None:
        return {}
    unpacked = {}
    for i, name in enumerate(pack.names):
        if not outputs["analysed"][i]:
            continue
        k = int(outputs["rank"][i])
        values = {key: value[i] for key, value in outputs.items()}
        for key in ("eigenvalues", "amplitudes", "residuals"):
            values[key] = values[key][:k]
        # Exact DMD modes are X1^T combination (X1: the window without its oldest snapshot);
        # as coefficients of the whole window, the oldest snapshot's is 0.
        combination = values["combination"][:, :k]
        values["combination"] = np.concatenate(
            [np.zeros((1, k), combination.dtype), combination])
        unpacked[name] = values
    return unpacked


def _rings_grams_function():
    """For a tuple of ring buffers' variables: each one's deferred Gram rows, then its
    chronological Gram matrix, packed for one transfer (traced once per set of buffer shapes,
    relaxed to any shapes after a few)."""

    def build():
        def grams(rings):
            results = []
            for ring in rings:
                stored, _, gram, cross, reference_sq, count, stale = ring
                refresh = refresh_function(stored.dtype)
                gram.assign(refresh(stored.read_value(), gram.read_value(), stale.read_value()))
                stale.assign(tf.zeros_like(stale))
                results.append(chronological_gram(gram.read_value(), cross.read_value(),
                                                  reference_sq.read_value(), count.read_value()))
            return pack_outputs(results)  # one transfer to the host

        return tf.function(grams, autograph=False)

    return cached_function(("ring_grams",), build)


def _host_pack(outputs, pack, code, value, tolerance):
    """Every packed group's spectrum, metrics and motion (``[groups, ...]`` arrays, as
    :func:`_unpack` reads them) from the pack's Gram matrices, on the host."""
    counts, gram = outputs["counts"], outputs["gram"]
    finite = np.all(np.isfinite(gram), axis=(1, 2))
    gram = np.where(finite[:, np.newaxis, np.newaxis], gram, 0.0)
    eigenvalues, combination, amplitudes, residuals, singular, rank = (
        host_dmd.batch_gram_solve(gram, pack.sizes, code, value,
                                  floor_epsilon(tf.float32, "gram")))
    values = dict(analysed=counts == counts.max(), finite=finite, eigenvalues=eigenvalues,
                  combination=combination,
                  amplitudes=amplitudes, residuals=residuals, rank=rank,
                  top_singular=singular[:, 0], motion=host_dmd.window_motion(gram))
    values.update(host_dmd.summary_batch(eigenvalues, amplitudes, residuals, rank, tolerance))
    return values


_UNIT_BLOCK = 2**20  # weights per block of the per-unit product (bounded temporary memory)


def mode_unit_weights(state, combination, units, parts, block=_UNIT_BLOCK):
    """Per unit, the share of each leading mode's squared norm: ``[k, units]`` float64 with
    ``k = min(UNIT_MODES, modes)``, each row summing to 1 (NaN for a zero mode).

    ``state`` is a buffer's :meth:`~keras_koopman.SnapshotBuffer.state` (stored centred
    snapshots and their reference); ``combination`` ``[m, modes]`` gives the modes as
    combinations of the window's ``m`` snapshots, oldest first (``X^T K``); ``units, parts`` as
    :func:`unit_layout` gives them. Only the columns that differ are multiplied: a mode and its
    complex conjugate have the same share per unit (one product serves both), and a real mode
    needs no imaginary column, so a spectrum of conjugate pairs costs half of ``2 k`` columns.
    Those ``[window, c]`` coefficients multiply the stored snapshots on their device, ``block``
    weights at a time, in float32 (float64 for float64 buffers: a picture, not an analysis),
    in one compiled function per layer shape (traced once per process, whatever the window and
    the number of columns).
    """
    stored, reference, _, _, _, count = state
    window = int(stored.shape[0])
    combination = np.asarray(combination)[:, :UNIT_MODES]
    m, k = combination.shape
    count = int(count)
    held = min(count, window)
    if held != m:
        raise DataError(f"the window holds {held} snapshots, the modes combine {m}")
    slots = (count - held + np.arange(held)) % window  # oldest first
    dtype = np.float64 if stored.dtype == tf.float64 else np.float32
    if k == 0:
        return np.zeros((0, units))
    first, source, columns = _distinct_columns(combination)
    coefficients = np.zeros((window, len(columns)), dtype)
    coefficients[slots] = np.stack(columns, axis=1)
    # The snapshots are stored minus the reference: x_j = stored_j + reference.
    shift = coefficients.astype(np.float64).sum(axis=0).astype(dtype)
    width = int(stored.shape[1])
    key = ("unit_weights", units, tuple(parts), block, stored.dtype.name, reference.dtype.name,
           np.dtype(dtype).name)
    signature = [tf.TensorSpec([None, width], stored.dtype),
                 tf.TensorSpec([width], reference.dtype),
                 tf.TensorSpec([None, None], dtype),
                 tf.TensorSpec([None], dtype)]
    function = cached_function(key, lambda: tf.function(
        lambda stored, reference, coefficients, shift: _unit_power(
            stored, reference, coefficients, shift, units, parts, block),
        input_signature=signature, autograph=False))
    power = function(stored, reference, coefficients, shift).numpy().astype(np.float64)
    total = np.zeros((k, units))
    np.add.at(total, source, power)  # a mode's share: its real and imaginary columns summed
    total = total[first]
    sums = total.sum(axis=1, keepdims=True)
    return np.divide(total, sums, out=np.full_like(total, np.nan), where=sums > 0)


def _unit_power(stored, reference, coefficients, shift, units, parts, block):
    """Graph mode: ``[c, units]`` squared norms of the columns ``stored^T coefficients
    + reference shift`` summed per unit, ``block`` weights at a time."""
    dtype = coefficients.dtype
    total = tf.zeros(tf.stack([tf.shape(coefficients)[1], units]), dtype)
    for offset, size in parts:
        rows, chunk = size // units, max(1, block // units)
        for first in range(0, rows, chunk):
            start, stop = offset + first * units, offset + min(rows, first + chunk) * units
            with tf.control_dependencies([total]):  # one block at a time: bounded memory
                projected = (tf.matmul(coefficients, tf.cast(stored[:, start:stop], dtype),
                                       transpose_a=True)
                             + shift[:, tf.newaxis] * tf.cast(reference[start:stop], dtype))
            power = tf.reshape(tf.square(projected), [tf.shape(coefficients)[1], -1, units])
            total += tf.reduce_sum(power, axis=1)
    return total
