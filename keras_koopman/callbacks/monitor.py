"""KoopmanMonitor: gathers weight snapshots during ``fit`` and analyses their Koopman spectrum."""

from __future__ import annotations

import warnings

import keras

from keras_koopman._backend import backend, implementation, io_failures, is_tensorflow
from keras_koopman._validation import DataError, check_int, check_int_or, check_log_dir
from keras_koopman._warnings import user_stacklevel
from keras_koopman.callbacks.step_gather import StepGather, supported
from keras_koopman.records import SpectrumRecord

__all__ = ["KoopmanMonitor", "SpectrumRecord"]



class KoopmanMonitor(keras.callbacks.Callback):
    """Watches training as a dynamical system: weight snapshots in, Koopman spectra out.

    At the start of training and then every epoch (or every ``every`` batches) the weights of
    each observable group are copied into its buffer (:mod:`keras_koopman.buffers`) on their
    device, by one compiled function and without a host round trip; per-batch snapshots are
    taken inside an XLA-compiled or multi-step train function, from the batch hook otherwise
    (:mod:`~keras_koopman.callbacks.step_gather`: exactly the weights after batches ``every``,
    ``2 every``, ..., whatever ``steps_per_execution``; the buffers and :attr:`step` are brought
    up to date at the end of each epoch). At the end of every ``analyze_every``
    epochs each group with at least 3 snapshots is analysed by DMD over the last ``window``; the
    result is appended to :attr:`history` as a :class:`SpectrumRecord` and, with ``log_dir``,
    written to TensorBoard: a ``koopman/<group>`` spectrum (the "Koopman" dashboard), its
    ``koopman/<group>/modes`` (the share of each of the 8 leading modes that each unit of the
    layer carries, for the dashboard's modes view; the newest in :attr:`unit_weights`) and the
    scalars ``koopman/<group>/spectral_radius``, ``near_one_fraction``, ``unstable_count``,
    ``max_residual``, at the record's ``epoch`` (the step at which Keras's
    ``TensorBoard`` callback writes ``epoch_loss``: the spectrum after epoch ``e`` sits beside
    that epoch's loss).

    The work is done by a :class:`~keras_koopman.callbacks.KoopmanTracker` (:attr:`tracker`;
    on Keras's JAX and PyTorch backends a :class:`~keras_koopman.portable.tracker.
    PortableTracker`, which gathers at the end of an epoch from the Keras hook and every ``N``
    batches on the host around each train step, with no batch hook (JAX: from the state the
    step returns; exactly the weights after batches ``N``, ``2N``, ... there too), which
    sketches and stores bfloat16 as TensorFlow does, but never packs), written through
    :attr:`logger`; decision callbacks (:class:`~keras_koopman.callbacks.
    KoopmanCallback`) read its records and forward every hook to it when it is not listed.
    Buffers survive repeated ``fit`` calls on the same model; a rebuilt model gets new buffers,
    while history and step numbers carry on. Layers without trainable weights are not
    watched; a group whose weights turn NaN or Inf is skipped from then on (one warning,
    :attr:`nonfinite_groups`). Data failures (NaN/Inf, a failed decomposition, an event file
    that cannot be written) warn once, are recorded in :attr:`errors`, and training goes on;
    configuration mistakes (an unknown layer name) raise when ``fit`` starts. A model that
    TensorFlow's ``fit`` builds only in its first train step (a subclassed model, a
    ``Sequential`` without an ``Input``) is watched from the first hook after that step: its
    initial weights are gone by then, so step 0 is counted but not stored, and an unknown
    layer name raises at the end of the first batch.

    Args:
      observables: ``"layers"`` (one group per layer with trainable weights, named after the
        layer), ``"model"`` (all trainable weights as one group), a list of layer names, or a
        callable ``model -> {group_name: [variables]}``.
      every: ``"epoch"`` or a positive number of training batches between snapshots.
      window: how many of the latest snapshots each analysis uses (at least 3).
      rank: DMD rank rule (``None``: Gavish-Donoho; int; float fraction of energy).
      method: ``"exact"`` or ``"rrr"``.
      analyze_every: analyse at the end of every this many epochs, whatever ``every`` is
        (``None``: never; the monitor then only gathers, for callbacks that run their own DMD
        on its buffers).
      log_dir: directory for TensorBoard summaries (``None``: no logging); created at
        construction, where a path that cannot be written raises ``ValueError``.
      tolerance: the one tolerance of the spectrum's regions (:mod:`keras_koopman.spectrum`):
        "at 1" within it of 1 (``near_one_fraction``), "outside" beyond ``1 + tolerance`` in
        modulus (``unstable_count``), "inside" otherwise.
      verbose: 1 prints one line per analysis.
      sketch: ``"auto"`` (default: groups in full while all buffers fit in
        ``snapshot_memory`` bytes, then the biggest sketched to 2048 numbers), an int ``k``
        (groups over ``2 k`` weights sketched to ``k``) or ``None`` (never); see
        :func:`keras_koopman.callbacks.plan.plan_storage`. A sketched group keeps its spectrum
        but has no modes (:class:`KoopmanAccelerator` skips it).
      storage_dtype: ``"float32"`` or ``"bfloat16"`` (half the memory, about 3 digits of the
        motion; the Gram matrices stay float64).
      snapshot_memory: the byte budget of ``sketch="auto"`` (default 512 MiB).
      backup_dir: where to keep the monitor's state for resuming after a crash (``None``: no
        backup), with ``keras.callbacks.BackupAndRestore`` (the same directory is fine): saved
        after every epoch (two newest states kept), resumed at the epoch ``BackupAndRestore``
        resumes from, so history and TensorBoard steps continue as in an uninterrupted run;
        removed when ``fit`` ends normally.
      unit_modes: with ``log_dir``, also write ``koopman/<group>/modes`` (the share of each of
        the 8 leading modes that each unit of the layer carries: the tab's modes view). It costs
        one ``[c, window]`` by ``[window, weights]`` product per group and analysis, ``c`` the
        distinct real and imaginary parts of those modes (at most 16; a conjugate pair shares
        one product); ``bench/unit_weights_cost.py``, 2 CPU cores: +8 ms per analysis for an
        85k-weight MLP, +20 ms for 1.1M weights (half of what a 16-column product cost in the
        same run). ``False`` leaves it out. Read when ``fit`` starts.

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

    def __init__(self, observables="layers", every="epoch", window=20, rank=None,
                 method="exact", analyze_every=1, log_dir=None, tolerance=0.01, verbose=0,
                 sketch="auto", storage_dtype="float32", snapshot_memory=512 * 2**20,
                 backup_dir=None, unit_modes=True):
        super().__init__()
        self.every = check_int_or(every, "every", ("epoch",))
        if every != "epoch" and is_tensorflow():
            # Only then a batch hook: any callback with one makes Keras run every callback
            # synchronously after each batch, which costs a host sync per batch. (JAX and
            # torch gather around the train function, always: no hook there.)
            self.on_train_batch_end = self._on_train_batch_end
        self.tracker = _tracker_class()(observables, window, rank, method, tolerance, sketch,
                                        storage_dtype, snapshot_memory)
        self.analyze_every = (None if analyze_every is None
                              else check_int(analyze_every, "analyze_every", 1))
        log_dir = check_log_dir(log_dir)
        self.logger = _summary_logger(log_dir)(log_dir, on_error=self.tracker.report)
        self.backup_dir = check_log_dir(backup_dir, "backup_dir")
        self.backup = None
        if self.backup_dir:
            from keras_koopman.callbacks._backup import Backup

            self.backup = Backup(self.backup_dir)
        self.verbose = verbose
        if not isinstance(unit_modes, bool):
            raise TypeError(f"unit_modes must be True or False; got {unit_modes!r}")
        self.unit_modes = unit_modes
        self._in_fit = False
        self._fit_token = None  # which fit on_train_begin last started
        self._last_event = {}  # per hook, the newest event it ran for: each runs once per event
        self._resume_pending = False
        self._since_analysis = 0
        self._step_gather = None if every == "epoch" else StepGather(self.tracker, self.every)
        self._in_graph = False  # gathering inside the train function in this fit
        self._calls_seen = 0
        self._calls_at_epoch = 0
        self._own_loop_warned = False
        self._watch_pending = False  # TensorFlow: a model fit builds in its first step
        self._jax = backend() == "jax"


    @property
    def log_dir(self):
        return self.logger.log_dir

    def latest(self, group=None):
        """The newest :class:`SpectrumRecord` of ``group`` (of any group if ``None``), or None;
        ``KeyError`` listing the groups for an unknown one."""
        return self.tracker.latest(group)

    def current(self):
        """The records of the newest analysed step (one per group analysed then), or []."""
        return self.tracker.current()

    def stored(self, group=None):
        """How many snapshots of ``group`` the window holds now (at most ``window``); ``None``:
        the fewest any group holds (one device read)."""
        return self.tracker.stored(group)

    def records(self, group):
        """Every :class:`SpectrumRecord` of ``group``, oldest first."""
        return self.tracker.records(group)

    def restart(self):
        """Forgets the trajectory (after the weights were re-initialised) and snapshots anew.

        History and step numbers carry on (TensorBoard steps are epochs, which Keras carries
        on). Before any fit it only resets the schedule.
        """
        self._since_analysis = 0
        self.tracker.restart()

    def ensure_started(self, model):
        """Starts the monitor on ``model`` if this fit has not started it yet (what decision
        callbacks do when the monitor is not in the callback list)."""
        self.set_model(model)
        self.on_train_begin()

    # ----------------------------------------------------------------------------------------
    # Keras hooks: each runs once per event, whether Keras or a decision callback calls it.
    def _once(self, hook, *event):
        # Events of one hook come in order within a fit, so remembering the newest suffices.
        if self._last_event.get(hook) == event:
            return False
        self._last_event[hook] = event
        return True

    def on_train_begin(self, logs=None):
        # One fit's callbacks share Keras's params dict (a decision callback hands its own to a
        # monitor left out of the list): a new dict is a new fit, even after one that raised.
        token = (id(self.model), id(self.params))
        if self._in_fit and self._fit_token == token:
            return  # already started in this fit (by a decision callback or Keras)
        tracker = self.tracker
        self._watch_pending = False
        if not tracker.watching(self.model):
            if is_tensorflow() and not self.model.built:
                # TensorFlow builds a subclassed model (or a Sequential without an Input) in
                # the first trace of its train step: watch it once that has run.
                self._watch_pending = True
            elif tracker.watch(self.model):  # ValueError for an unknown layer name
                self._new_trajectory(start=True)
        self._in_fit, self._fit_token, self._last_event = True, token, {}
        self._in_graph = (self._step_gather is not None and not tracker.disabled
                          and not self._watch_pending and supported(self.model)
                          and self._step_gather.install(self.model, self.params))
        self._calls_seen = 0 if self._step_gather is None else self._step_gather.calls
        resuming = self._resume_pending or (self._watch_pending and self.backup
                                            and self.backup.saved_epochs())
        self.logger.open(self.model, None if resuming else tracker.epoch)
        # The tab's modes view: per-unit weights of the leading modes, only for summaries.
        tracker.unit_modes = self.unit_modes and self.logger.active

    def on_epoch_begin(self, epoch, logs=None):
        if self._once("epoch_begin", epoch):
            self._resume(epoch)
            self.tracker.epoch = epoch
            if self._step_gather is not None:
                self._step_gather.epoch_begin()
                self._step_gather.plan_until((self.params or {}).get("steps"),
                                             getattr(self.model, "steps_per_execution", 1))
                self._calls_at_epoch = self._step_gather.calls

    def _new_trajectory(self, start):
        """After :meth:`KoopmanTracker.watch`: resume from ``backup_dir`` if it holds a state,
        else take the weights training starts from (``start``), or count them as a snapshot
        not taken (a model built only in its first train step: those weights are gone)."""
        self._since_analysis = 0  # a new trajectory, a new schedule
        if self.backup and self.backup.saved_epochs():
            self._resume_pending = True  # once the epoch to resume is known
            if not start:
                self._resume(self.tracker.epoch)
        elif start:
            self.tracker.gather()
        else:
            self.tracker.skip()  # step 0, as for a model built before fit

    def _watch_late(self):
        """TensorFlow: watches a model that ``fit`` built in its first train step (the first
        hook after it; ``ValueError`` there for an unknown layer name)."""
        if self._watch_pending and self.model.built:
            self._watch_pending = False
            if self.tracker.watch(self.model):
                self._new_trajectory(start=False)

    def _on_train_batch_end(self, batch, logs=None):
        self._watch_late()
        if self.disabled or not self._once("batch", self.tracker.epoch, batch):
            return
        gather = self._step_gather
        if self._in_graph:
            if gather.calls != self._calls_seen:  # the train function ran (and gathered)
                self._calls_seen = gather.calls
                return
            # A loop with a step of its own (not model.train_function): gather from here.
            gather.remove(self.model)
            self._in_graph = False
        # Here too without XLA, under a tf.distribute strategy, run_eagerly or another monitor.
        action = gather.batch_end(batch)
        if action == "gather":
            self._sync_state()
            self.tracker.gather()
        elif action == "skip":
            self.tracker.skip()

    def on_epoch_end(self, epoch, logs=None):
        self._watch_late()
        if not self._once("epoch_end", epoch):
            return
        self._resume(epoch)
        self.tracker.epoch = epoch
        if not self.disabled and self.every == "epoch":
            self._sync_state()
            self.tracker.gather()
        if self._in_graph:
            self._step_gather.disarm()  # armed again by the next epoch's plan
            if not is_tensorflow() and self._step_gather.calls == self._calls_at_epoch:
                self._warn_own_loop()
        self._analysis_due()
        self.logger.flush()
        if self.backup and not self.disabled:
            state = self.state_dict()  # outside the try: a bug here is not a disk failure
            try:
                self.backup.save(epoch + 1, state, self.tracker.variables, self.tracker.history)
            except io_failures() as error:
                self.tracker.report("saving to backup_dir", error)

    def _warn_own_loop(self):
        """JAX, PyTorch: an epoch ran without ``model.train_function``, which is where the
        every-``N`` snapshots are taken there (no batch hook): say so once."""
        if self._own_loop_warned:
            return
        self._own_loop_warned = True
        warnings.warn(
            f"KoopmanMonitor(every={self.every}) took no snapshot in this epoch: on "
            f"{backend()} it gathers around model.train_function after each step, and this "
            "training loop did not call it (a loop of its own). Use every='epoch' with such a "
            "loop, or Keras's fit / train_on_batch.", RuntimeWarning, stacklevel=user_stacklevel())

    def on_train_end(self, logs=None):
        if not self._in_fit:
            return
        self._in_fit = False
        if self._step_gather is not None:
            self._step_gather.remove(self.model)  # Keras's own train function again
        self._in_graph = False
        self.tracker.sync()
        self.logger.flush()
        if self.backup:
            self.backup.remove()

    def _sync_state(self):
        """On JAX, Keras keeps the training state outside the model's variables during an
        epoch: reading ``self.model`` puts it back (``jax_state_sync``, no copy) before a
        gather reads the variables. Nothing to do on the other backends."""
        if self._jax:
            self.model  # noqa: B018  (Callback.model syncs the JAX state)

    # ----------------------------------------------------------------------------------------
    def _analysis_due(self):
        """The analysis schedule: at the end of every ``analyze_every`` epochs."""
        self.tracker.sync()  # snapshots taken inside the train function, NaN/Inf flags
        self._since_analysis += 1
        if self.analyze_every is None or self._since_analysis < self.analyze_every:
            return
        self._since_analysis = 0
        for record in self.tracker.analyse():
            self.logger.spectrum(record, self.tracker.unit_weights.get(record.group))
            if self.verbose:
                print(record.line())

    def state_dict(self):
        """The tracker's state plus the schedule's counters (JSON-able)."""
        batches = None if self._step_gather is None else self._step_gather.state_dict()
        return {"tracker": self.tracker.state_dict(),
                "schedule": {"since_analysis": self._since_analysis, "batches": batches}}

    def _resume(self, epoch):
        """Loads the state saved when ``epoch`` was next (after a crash), once per fit."""
        if not self._resume_pending:
            return
        self._resume_pending = False
        try:
            restored = self._restore(epoch)
        except (*io_failures(), DataError) as error:
            self.tracker.report("resuming from backup_dir", error)
            restored = None
        if not restored:
            if restored is False and epoch > 0:
                self.tracker.report("resuming from backup_dir", DataError(
                    f"no saved state matches epoch {epoch}; the trajectory starts anew"))
            self.tracker.restart()  # clean buffers (a failed read may have filled some)
        # TensorBoard drops what this run's files hold from this epoch on: epochs logged after
        # the saved state (before the crash) are logged again, once.
        self.logger.session_start(epoch)

    def _restore(self, epoch):
        saved = self.backup.read_state(epoch)
        if saved is None:
            return False
        state, count = saved
        self.tracker.check_layout(state["tracker"]["layout"])
        schedule = state["schedule"]
        if not isinstance(schedule.get("batches"), dict if self._step_gather else type(None)):
            raise DataError("the saved state is of another gathering schedule (every=) than "
                            f"this monitor's (every={self.every!r})")
        history = self.backup.read_history(count)
        arrays = self.backup.read_variables(epoch, self.tracker.variables)  # the last read
        if arrays is not None:  # JAX, torch: the tracker's arrays anew
            self.tracker.load_variables(arrays)
        self.tracker.load_state_dict(state["tracker"], history)
        self._since_analysis = schedule["since_analysis"]
        if self._step_gather is not None:
            self._step_gather.load_state_dict(schedule["batches"])
        return True


# The tracker's state, readable on the monitor (see KoopmanTracker for each).
for _name in ("observables", "window", "rank", "method", "tolerance", "sketch", "storage_dtype",
              "snapshot_memory", "history", "errors", "groups", "buffers", "step", "epoch",
              "nonfinite_groups", "disabled", "unit_weights"):
    setattr(KoopmanMonitor, _name, property(lambda self, name=_name: getattr(self.tracker, name),
                                            doc=f"The tracker's ``{_name}``."))


def _tracker_class():
    """The tracker of the Keras backend: TensorFlow's compiled one, or the backend-neutral
    path's (JAX, torch)."""
    return implementation("keras_koopman.callbacks.tracker:KoopmanTracker",
                          "keras_koopman.portable.tracker:PortableTracker")


def _summary_logger(log_dir):
    """SummaryLogger (TensorBoard events are written with ``tf.summary`` on every backend, as
    Keras's own TensorBoard callback does); on JAX and PyTorch without ``log_dir`` a stand-in
    that writes nothing (TensorFlow is not even imported), and where TensorFlow is not
    installed one that refuses a ``log_dir`` with a clear ImportError."""
    if log_dir is None and backend() != "tensorflow":
        return _NoSummaries
    try:
        from keras_koopman.callbacks.logger import SummaryLogger
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        return _NoSummaries
    return SummaryLogger


class _NoSummaries:
    """The logger where TensorFlow is not installed: no ``log_dir``."""

    active = False
    log_dir = None

    def __init__(self, log_dir, on_error=None):
        if log_dir is not None:
            raise ImportError("log_dir needs TensorFlow installed: TensorBoard events are "
                              "written with tf.summary on every Keras backend (as Keras's own "
                              "TensorBoard callback does); `pip install tensorflow-cpu`, or "
                              "leave log_dir=None")

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
