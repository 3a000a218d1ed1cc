"""KoopmanMonitor: gathers weight snapshots during ``fit`` and analyses their Koopman spectrum."""

from __future__ import annotations

import dataclasses
import types
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_koopman import spectrum as spectrum_metrics
from keras_koopman._validation import check_int, check_log_dir, check_number
from keras_koopman.dmd import check_method, parse_rank
from keras_koopman.packed import PackedBuffers, PackedView
from keras_koopman.snapshots import (
    SnapshotBuffer,
    _buffer_dmd,
    _chronological_gram,
    state_signature,
)
from keras_koopman.callbacks import _backup
from keras_koopman.tensorboard import summary as tb_summary

__all__ = ["KoopmanMonitor", "SpectrumRecord"]

_LOGGED_SCALARS = ("spectral_radius", "near_one_fraction", "unstable_count", "max_residual")
_METRICS = (*_LOGGED_SCALARS, "motion")


@dataclasses.dataclass(frozen=True)
class SpectrumRecord:
    """One analysis of one observable group.

    Attributes:
      epoch: the epoch (0-based, as Keras counts) during or after which the analysis ran.
      step: index of the newest snapshot analysed; snapshot 0 is the weights at the start of
        the first ``fit``, and each gathering adds one.
      group: the observable group's name (a layer name, ``"model"``, ...).
      eigenvalues: ``[r]`` complex128, sorted by modulus, largest first.
      amplitudes: ``[r]`` complex128, coefficients of the oldest snapshot in the window.
      residuals: ``[r]`` float64 data-driven residuals.
      rank: ``r``.
      snapshots: how many snapshots the window held.
      metrics: ``spectral_radius``, ``near_one_fraction``, ``unstable_count``,
        ``max_residual`` (see :mod:`keras_koopman.spectrum`) and ``motion``
        (``|x_newest - x_oldest| / |x_newest|`` over the window), as Python numbers. A group
        whose weights are all zero gets a record with an empty spectrum and ``motion`` 0.
    """

    epoch: int
    step: int
    group: str
    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    residuals: np.ndarray
    rank: int
    snapshots: int
    metrics: dict

    def current_weights(self):
        """``|amplitude| * |lambda|^(snapshots-1)``: each mode's weight in the newest snapshot."""
        return np.abs(self.amplitudes) * np.abs(self.eigenvalues) ** (self.snapshots - 1)


class KoopmanMonitor(keras.callbacks.Callback):
    """Watches training as a dynamical system: weight snapshots in, Koopman spectra out.

    At the start of training and then every epoch (or every ``every`` batches) one compiled
    ``tf.function`` copies the weights of each observable group into that group's
    :class:`keras_koopman.SnapshotBuffer`, on the weights' device and without a host round trip.
    Every ``analyze_every`` gatherings each group with at least 3 snapshots is analysed by DMD
    over the last ``window`` snapshots; the result is appended to :attr:`history` as a
    :class:`SpectrumRecord` and, with ``log_dir``, written to TensorBoard: the spectrum as a
    ``koopman/<group>`` tensor summary (the "Koopman" dashboard) and the scalars
    ``koopman/<group>/spectral_radius``, ``near_one_fraction``, ``unstable_count``,
    ``max_residual`` (the Scalars dashboard).

    Other Koopman callbacks take ``monitor=`` and read its history, so snapshots are gathered
    once per step however many callbacks use them. Buffers survive repeated ``fit`` calls on the
    same model; a different model (rebuilt between fits) gets new buffers, while history and
    step numbers carry on. Layers without trainable weights (``Flatten``, ``Dropout``, frozen
    layers) are not watched; weights that do not move give a spectrum ``{1}`` with ``motion`` 0;
    a group whose weights turn NaN or Inf is skipped from then on with one warning and listed
    in :attr:`nonfinite_groups`. The monitor never stops training: a failure warns once, is
    recorded in :attr:`errors`, and monitoring carries on (or, if the set-up failed, switches
    itself off).

    Args:
      observables: ``"layers"`` (one group per layer with trainable weights, named after the
        layer), ``"model"`` (all trainable weights as one group), a list of layer names, or a
        callable ``model -> {group_name: [variables]}``.
      every: ``"epoch"`` or a positive number of training batches between snapshots.
      window: how many of the latest snapshots each analysis uses (at least 3).
      rank: DMD rank rule (``None``: Gavish-Donoho; int; float fraction of energy).
      method: ``"exact"`` or ``"rrr"``.
      analyze_every: analyse after every this many gatherings (``None``: never; the monitor
        then only gathers, for callbacks that run their own DMD on its buffers).
      log_dir: directory for TensorBoard summaries (``None``: no logging); created at
        construction, where a path that cannot be written raises ``ValueError``.
      tolerance: distance to 1 counted as "at 1" by ``near_one_fraction``.
      verbose: 1 prints one line per analysis.
      sketch: how big groups are stored. ``"auto"`` (default): every group in full while all
        the buffers together fit in ``snapshot_memory`` bytes; past that, the biggest groups
        are sketched to 2048 numbers per snapshot (see :class:`keras_koopman.SnapshotBuffer`)
        until they fit. An int ``k``: every group with more than ``2 k`` weights is sketched to
        ``k``. ``None``: never sketch. A sketched group keeps its spectrum (for low-rank
        weight dynamics) but has no modes: :class:`KoopmanAccelerator` skips it.
      storage_dtype: ``"float32"`` or ``"bfloat16"`` (half the memory, about 3 digits of the
        motion; the Gram matrices stay float64).
      snapshot_memory: the byte budget of ``sketch="auto"`` (default 512 MiB).
      backup_dir: where to keep the monitor's state for resuming after a crash (``None``: no
        backup). Use it with ``keras.callbacks.BackupAndRestore`` (the same directory is fine):
        after every epoch the buffers, counters and history are saved (the two newest states
        are kept); a process killed mid-fit and started again with the same command resumes
        from the state that matches the epoch ``BackupAndRestore`` resumes from, so history
        and TensorBoard steps continue as in an uninterrupted run (a session-start event in the
        event file makes TensorBoard drop the steps logged after that state; so does a new
        process that logs to the same ``log_dir`` without resuming: its steps replace the old
        run's from its first step on). The state is removed when ``fit`` ends normally, as
        ``BackupAndRestore`` removes its own.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    >>> model.compile("sgd", "mse")
    >>> monitor = kk.callbacks.KoopmanMonitor(window=5)
    >>> x, y = np.random.rand(32, 4), np.random.rand(32, 3)
    >>> _ = model.fit(x, y, epochs=4, verbose=0, callbacks=[monitor])
    >>> [(r.epoch, r.group, r.snapshots) for r in monitor.history]
    [(1, 'dense', 3), (2, 'dense', 4), (3, 'dense', 5)]
    """

    def __init__(
        self,
        observables="layers",
        every="epoch",
        window=20,
        rank=None,
        method="exact",
        analyze_every=1,
        log_dir=None,
        tolerance=0.01,
        verbose=0,
        sketch="auto",
        storage_dtype="float32",
        snapshot_memory=512 * 2**20,
        backup_dir=None,
    ):
        super().__init__()
        if not (
            observables in ("layers", "model")
            or callable(observables)
            or (
                isinstance(observables, (list, tuple))
                and observables
                and all(isinstance(name, str) for name in observables)
            )
        ):
            raise ValueError(
                "observables must be 'layers', 'model', a non-empty list of layer names or a "
                f"callable model -> {{name: [variables]}}; got {observables!r}"
            )
        if every != "epoch":
            every = check_int(every, "every (when not 'epoch')", 1)
        self.observables = observables
        self.every = every
        if every != "epoch":
            # Only then a batch hook: any callback with one makes Keras run every callback
            # synchronously after each batch, which costs a host sync per batch.
            self.on_train_batch_end = self._on_train_batch_end
        self.window = check_int(window, "window", 3)
        parse_rank(rank)
        self.rank = rank
        self.method = check_method(method)
        self.analyze_every = (None if analyze_every is None
                              else check_int(analyze_every, "analyze_every", 1))
        self.log_dir = check_log_dir(log_dir)
        self.tolerance = check_number(tolerance, "tolerance")
        self.verbose = verbose
        if not (sketch is None or sketch == "auto"):
            sketch = check_int(sketch, "sketch (when not 'auto' or None)", 1)
        self.sketch = sketch
        if storage_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"storage_dtype must be 'float32' or 'bfloat16'; got {storage_dtype!r}")
        self.storage_dtype = storage_dtype
        self.snapshot_memory = check_int(snapshot_memory, "snapshot_memory", 1)
        self.backup_dir = check_log_dir(backup_dir, "backup_dir")
        self._resume_pending = False

        self.history = []
        self.errors = []
        self.buffers = {}
        self.groups = {}
        self.step = -1  # index of the newest snapshot
        self.epoch = 0
        self.disabled = False
        self.nonfinite_groups = set()
        self._model_id = None
        self._gather = None
        self._writer = None
        self._warned = set()
        self._in_fit = False
        self._since_analysis = 0
        self._pending_flags = []
        self._batches = 0
        self._next_batch_gather = every if every != "epoch" else 0
        self._last_batch = -1
        self._analysed_steps = set()
        self._analysis_functions = {}
        self._stored = {}
        self._fit_index = 0
        self._epoch_done = None

    # ----------------------------------------------------------------------------------------
    # results
    def latest(self, group=None):
        """The newest :class:`SpectrumRecord` of ``group`` (of any group if ``None``), or None."""
        for record in reversed(self.history):
            if group is None or record.group == group:
                return record
        return None

    def current(self):
        """The records of the newest analysed step (one per group analysed then), or []."""
        records = []
        for record in reversed(self.history):
            if record.step != self.step:
                break
            records.append(record)
        return records[::-1]

    def records(self, group):
        """Every :class:`SpectrumRecord` of ``group``, oldest first."""
        return [record for record in self.history if record.group == group]

    # ----------------------------------------------------------------------------------------
    # failure handling: warn once per kind, record always, never raise into fit
    def _fail(self, where, error, group=None):
        message = f"{type(error).__name__}: {error}"
        self.errors.append({"epoch": self.epoch, "step": self.step, "group": group,
                            "where": where, "error": message})
        key = (where, group, type(error).__name__)
        if key not in self._warned:
            self._warned.add(key)
            target = f" for group {group!r}" if group else ""
            warnings.warn(
                f"KoopmanMonitor: {where} failed{target} ({message}); training goes on "
                "(see monitor.errors)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------------------------------
    # set-up
    def _resolve_groups(self, model):
        observables = self.observables
        if callable(observables):
            groups = dict(observables(model))
        elif observables == "model":
            groups = {"model": list(model.trainable_weights)}
        elif observables == "layers":
            groups = {
                layer.name: list(layer.trainable_weights)
                for layer in model.layers
                if layer.trainable_weights
            }
        else:
            names = [layer.name for layer in model.layers]
            unknown = [name for name in observables if name not in names]
            if unknown:
                raise ValueError(
                    f"observables names layers {unknown} that the model does not have; "
                    f"its layers are {names}"
                )
            groups = {name: list(model.get_layer(name).trainable_weights) for name in observables}
        groups = {name: variables for name, variables in groups.items() if variables}
        if not groups:
            raise ValueError("no observable group has trainable weights to watch")
        return groups

    def _build(self):
        self.groups = self._resolve_groups(self.model)
        sizes = {name: sum(int(np.prod(v.shape)) for v in variables)
                 for name, variables in self.groups.items()}
        sketches = self._sketch_sizes(sizes)
        small = [name for name, size in sizes.items()
                 if size <= _PACK_MAX_SIZE and name not in sketches]
        self._pack = None
        if (len(small) >= _PACK_MIN_GROUPS and self.method == "exact"
                and self.storage_dtype == "float32"):
            # Many small groups: one buffer and one batched analysis for all of them.
            self._pack = PackedBuffers({name: sizes[name] for name in small}, self.window)
        self.buffers = {
            name: (PackedView(self._pack, self._pack.names.index(name))
                   if self._pack is not None and name in self._pack.names else
                   SnapshotBuffer(size, self.window, name=f"koopman_{name}",
                                  sketch=sketches.get(name), storage_dtype=self.storage_dtype))
            for name, size in sizes.items()
        }
        self._gather = self._make_gather(jit_compile=True)
        self._analysis_functions = {}
        self._stored = {name: 0 for name in self.buffers}
        self._model_id = id(self.model)
        # A new model (rebuilt between fits) starts a new trajectory in new buffers; history
        # and step numbers carry on, so TensorBoard steps never repeat.
        self.nonfinite_groups = set()
        self._pending_flags = []
        self._since_analysis = 0

    def _storages(self):
        """The distinct objects holding the buffers' variables: every unpacked
        ``SnapshotBuffer`` and the pack (once, however many groups it holds)."""
        unpacked = [b for b in self.buffers.values() if not isinstance(b, PackedView)]
        return unpacked + ([self._pack] if self._pack is not None else [])

    def _sketch_sizes(self, sizes):
        """``{group: k}`` for the groups to sketch, per the ``sketch`` rule."""
        if self.sketch is None:
            return {}
        if self.sketch != "auto":
            return {name: self.sketch for name, size in sizes.items() if size > 2 * self.sketch}
        k = _AUTO_SKETCH
        per_number = self.window * (2 if self.storage_dtype == "bfloat16" else 4)
        total = sum(sizes.values()) * per_number
        chosen = {}
        for name in sorted(sizes, key=sizes.get, reverse=True):
            if total <= self.snapshot_memory or sizes[name] <= 2 * k:
                break
            chosen[name] = k
            total -= (sizes[name] - k) * per_number
        return chosen

    def _make_gather(self, jit_compile):
        groups = [(name, self.buffers[name], variables)
                  for name, variables in self.groups.items()]
        pack = self._pack

        def flat(variables):
            return [tf.reshape(tf.cast(_value(v), tf.float32), [-1]) for v in variables]

        def gather():
            flags = {}
            if pack is not None:
                packed = pack.append_op([part for name in pack.names
                                         for part in flat(self.groups[name])])
                flags.update({name: packed[i] for i, name in enumerate(pack.names)})
            for name, buffer, variables in groups:
                if name not in flags:  # not packed
                    # Each variable goes straight into its slice of the buffer row (no
                    # concatenated copy); the Gram rows wait for the next analysis: one product
                    # there instead of a pass over the buffer at every snapshot.
                    flags[name] = buffer.append_op(flat(variables), update_gram=False)
            return tf.stack([flags[name] for name, _, _ in groups])

        return tf.function(gather, jit_compile=jit_compile, autograph=False)

    # ----------------------------------------------------------------------------------------
    # Keras hooks
    def on_train_begin(self, logs=None):
        if self._in_fit:  # already started by a dependent callback in this fit
            return
        self._in_fit = True
        self._fit_index += 1
        if self.disabled:
            return
        try:
            if self._model_id != id(self.model):
                self._build()
                if self.backup_dir and _backup.saved_epochs(self.backup_dir):
                    # Resume once the epoch training restarts from is known (on_epoch_begin).
                    self._resume_pending = True
                else:
                    self._take_snapshot()  # the weights training starts from
            if self.log_dir and self._writer is None and _writes_summaries(self.model):
                self._writer = tf.summary.create_file_writer(self.log_dir)
                if not self._resume_pending:
                    # TensorBoard takes a run's first session start as its beginning and any
                    # later one as a restart (see _resume).
                    _backup.write_session_start(self._writer, max(self.step, 0))
        except Exception as error:  # noqa: BLE001 - never break fit
            self.disabled = True
            self._fail("set-up", error)

    def on_epoch_begin(self, epoch, logs=None):
        self._resume(epoch)
        self.epoch = epoch
        self._last_batch = -1

    def _resume(self, epoch):
        """Loads the state saved when ``epoch`` was next (after a crash), once per fit."""
        if not self._resume_pending:
            return
        self._resume_pending = False
        try:
            restored = _backup.load(self, self.backup_dir, epoch)
        except Exception as error:  # noqa: BLE001
            self._fail("resuming from backup_dir", error)
            restored = False
        if not restored:
            if epoch > 0:
                self._fail("resuming from backup_dir", ValueError(
                    f"no saved state matches epoch {epoch}; the trajectory starts anew"))
            self._take_snapshot()
            return
        if self._writer is not None:
            # TensorBoard drops what this run's files hold from this step on: steps logged
            # after the restored state (before the crash) are logged again, once.
            _backup.write_session_start(self._writer, self.step + 1)

    def _on_train_batch_end(self, batch, logs=None):
        if self.disabled:
            return
        # With steps_per_execution > 1 Keras reports only the last batch of each execution.
        self._batches += batch - self._last_batch
        self._last_batch = batch
        if self._batches >= self._next_batch_gather:
            self._next_batch_gather = (self._batches // self.every + 1) * self.every
            self._take_snapshot()

    def on_epoch_end(self, epoch, logs=None):
        # Idempotent per epoch: a dependent callback listed before the monitor calls it first.
        if self._epoch_done == (self._fit_index, epoch):
            return
        self._epoch_done = (self._fit_index, epoch)
        self._resume(epoch)
        self.epoch = epoch
        if not self.disabled and self.every == "epoch":
            self._take_snapshot()
        if self._writer is not None:
            self._writer.flush()
        if self.backup_dir and not self.disabled:
            try:
                self._check_flags()
                _backup.save(self, self.backup_dir, epoch + 1)
            except Exception as error:  # noqa: BLE001
                self._fail("saving to backup_dir", error)

    def on_train_end(self, logs=None):
        self._in_fit = False
        if self._writer is not None:
            self._writer.flush()
        if self.backup_dir:
            _backup.remove(self.backup_dir)

    def restart(self):
        """Forgets the trajectory (after the weights were re-initialised) and snapshots anew.

        History and step numbers carry on, so TensorBoard steps stay monotonic.
        """
        for storage in self._storages():
            storage.reset()
        self._stored = {name: 0 for name in self.buffers}
        self._pending_flags = []
        self._since_analysis = 0
        self.nonfinite_groups = set()
        if not self.disabled:
            self._take_snapshot()

    def ensure_started(self, model):
        """Called by dependent callbacks: starts the monitor if it is not in the callback list."""
        if self.model is None or self.model is not model:
            self.set_model(model)
        if not self._in_fit:
            self.on_train_begin()

    # ----------------------------------------------------------------------------------------
    # gathering and analysis
    def _take_snapshot(self):
        try:
            try:
                flags = self._gather()
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                # XLA cannot compile this set-up (a device or dtype without XLA support): fall
                # back to a plain graph, which copies the buffers instead of updating in place.
                self._fail("XLA compilation of the snapshot step", error)
                self._gather = self._make_gather(jit_compile=False)
                flags = self._gather()
        except Exception as error:  # noqa: BLE001
            self._fail("snapshot", error)
            return
        self.step += 1
        self._pending_flags.append(flags)
        self._since_analysis += 1
        if self.analyze_every is None:
            if len(self._pending_flags) >= self.window:  # bounded; readers check the rest
                self._check_flags()
        elif self._since_analysis >= self.analyze_every:
            self._since_analysis = 0
            self._check_flags()
            self._analyze()

    def _check_flags(self):
        names = list(self.buffers)
        if not self._pending_flags:
            return
        # One host read for every snapshot since the last analysis.
        for flags in np.asarray(tf.stack(self._pending_flags)):
            for name, ok in zip(names, flags):
                if ok:
                    self._stored[name] += 1
                else:
                    self.nonfinite_groups.add(name)
                    self._fail("snapshot", ValueError("weights hold NaN or Inf; not recorded"), name)
        self._pending_flags = []

    def _analyze(self):
        if self.step in self._analysed_steps:
            return
        self._analysed_steps.add(self.step)
        eligible = tuple(name for name in self.buffers if self._stored[name] >= 3)
        if not eligible:
            return
        try:
            if eligible not in self._analysis_functions:
                self._analysis_functions[eligible] = self._make_analysis(eligible)
            outputs = self._analysis_functions[eligible]()
            outputs = {name: {key: np.asarray(value) for key, value in values.items()}
                       for name, values in outputs.items()}
            outputs.update(_unpack(outputs.pop(_PACKED, None), self._pack))
        except Exception as error:  # noqa: BLE001
            self._fail("analysis", error)
            return
        for name in eligible:
            if name not in outputs:  # a packed group behind the others (a skipped snapshot)
                continue
            values = outputs[name]
            stored = min(self._stored[name], self.window)
            metrics = {key: values[key].item() for key in _METRICS}
            if not values["finite"]:
                self._fail("analysis", ValueError("the Gram matrix holds NaN or Inf"), name)
                continue
            if values["top_singular"] == 0:
                # Weights that are exactly zero (and stay so) have no spectrum: record the
                # absence of motion instead of failing.
                self._record_still(name, stored, metrics["motion"])
                continue
            record = SpectrumRecord(
                epoch=self.epoch,
                step=self.step,
                group=name,
                eigenvalues=values["eigenvalues"],
                amplitudes=values["amplitudes"],
                residuals=values["residuals"],
                rank=int(values["rank"]),
                snapshots=stored,
                metrics=metrics,
            )
            self.history.append(record)
            self._log(record)
            if self.verbose:
                print(
                    f"koopman {name}: step {record.step} rank {record.rank} "
                    f"radius {metrics['spectral_radius']:.4f} "
                    f"near_1 {metrics['near_one_fraction']:.3f} "
                    f"unstable {metrics['unstable_count']} "
                    f"max_residual {metrics['max_residual']:.2e}"
                )

    def _make_analysis(self, names):
        """One function analysing every group in ``names``: one dispatch per analysis. The DMD
        and metrics inside it are a function shared by every monitor, traced once per process:
        a new model costs a cheap outer trace, not a trace of the whole DMD."""
        rule = parse_rank(self.rank)  # Python numbers: the batched rank rule branches on them
        code = tf.constant(rule[0], tf.int32)
        value = tf.constant(rule[1], tf.float64)
        pack = self._pack
        packed = pack is not None and any(name in pack.names for name in names)
        buffers = [(name, self.buffers[name]) for name in names
                   if pack is None or name not in pack.names]
        method, tolerance = self.method, self.tolerance

        def analyse():
            outputs = {}
            if packed:
                pack.refresh_op()
                outputs[_PACKED] = pack.analysis_op(*rule, tolerance)
            for name, buffer in buffers:
                buffer.refresh_op()
                function = _analysis_function(method, buffer.storage_dtype, buffer.dtype,
                                              tolerance)
                outputs[name] = function(*buffer._state(), code, value)
            return outputs

        return tf.function(analyse, autograph=False)

    def _record_still(self, name, stored, motion):
        empty = np.zeros(0, np.complex128)
        record = SpectrumRecord(
            epoch=self.epoch, step=self.step, group=name, eigenvalues=empty, amplitudes=empty,
            residuals=np.zeros(0), rank=0, snapshots=stored,
            metrics={"spectral_radius": 0.0, "near_one_fraction": 0.0, "unstable_count": 0,
                     "max_residual": float("nan"), "motion": motion},
        )
        self.history.append(record)
        self._log(record)

    def _log(self, record):
        if self._writer is None:
            return
        try:
            with self._writer.as_default(step=record.step):
                tb_summary.spectrum(
                    f"koopman/{record.group}",
                    record.eigenvalues,
                    amplitudes=record.amplitudes,
                    residuals=record.residuals,
                )
                for key, value in record.metrics.items():
                    if key in _LOGGED_SCALARS:
                        tf.summary.scalar(f"koopman/{record.group}/{key}", float(value))
        except Exception as error:  # noqa: BLE001
            self._fail("TensorBoard logging", error, record.group)


_ANALYSIS_FUNCTIONS = {}
# Groups of at most _PACK_MAX_SIZE weights share one PackedBuffers when there are at least
# _PACK_MIN_GROUPS of them.
_PACK_MAX_SIZE = 4096
_PACK_MIN_GROUPS = 32
_PACKED = "\x00packed"  # key of the packed groups' outputs (no group can be named so)
_AUTO_SKETCH = 2048  # numbers per snapshot of a group that sketch="auto" sketches


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
        unpacked[name] = values
    return unpacked


def _analysis_function(method, storage_dtype, dtype, tolerance):
    """The spectrum, metrics and motion of one buffer's state, traced once per process for each
    (method, dtypes, tolerance)."""
    key = (method, storage_dtype, dtype, tolerance)
    if key not in _ANALYSIS_FUNCTIONS:

        def analyse(snapshots, reference, centred, cross, reference_sq, count, code, value):
            finite, eigenvalues, _, amplitudes, residuals, singular, rank = _buffer_dmd(
                snapshots, reference, centred, cross, reference_sq, count, code, value, method,
                with_modes=False)
            result = types.SimpleNamespace(
                eigenvalues=eigenvalues, amplitudes=amplitudes, residuals=residuals)
            gram = _chronological_gram(centred, cross, reference_sq, count)
            return dict(finite=finite, eigenvalues=eigenvalues, amplitudes=amplitudes,
                        residuals=residuals, rank=rank, top_singular=singular[0],
                        motion=spectrum_metrics.window_motion(gram),
                        **spectrum_metrics.summary(result, tolerance))

        _ANALYSIS_FUNCTIONS[key] = tf.function(
            analyse, input_signature=state_signature(storage_dtype, dtype), autograph=False)
    return _ANALYSIS_FUNCTIONS[key]


def _writes_summaries(model):
    """False on the workers of a multi-worker strategy other than the chief: only the chief
    writes TensorBoard events (every worker gathers and analyses the same, all-reduced
    weights, so every worker takes the same decisions)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_save_summary", True))


def _value(variable):
    """The tensor behind a Keras or TensorFlow variable."""
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)
