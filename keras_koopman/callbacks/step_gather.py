"""Snapshots inside the model's train function: no separate dispatch per snapshot.

A monitor that gathers every ``N`` batches would otherwise run its compiled gather from a batch
hook: one more dispatch and host round trip after every ``N``-th batch, and with
``steps_per_execution > 1`` a batch hook sees only the last batch of each execution.
:class:`StepGather` instead puts the tracker's gather into the train step itself (after the
optimizer's update, as a nested XLA function, or inlined where the train function is already
compiled with XLA) for the duration of one ``fit``:

* ``steps_per_execution=1``: two train functions, one that gathers and Keras's own, picked
  on the host for each batch (a ``tf.cond`` in an XLA step costs more than it saves); a
  snapshot that would leave the window before the end of the epoch (when the buffers are
  read) is not taken at all, only counted;
* ``steps_per_execution=K > 1`` and ``every=N > 1``: a step counter on the device and a
  ``tf.cond``, so that exactly the weights after batches ``N, 2N, ...`` are gathered whatever
  ``K`` is (``every=1``: every step gathers).

Keras's own train function is put back when ``fit`` ends (and is kept, so that the next ``fit``
does not trace again). Not used where the train function is not compiled with XLA and runs one
step per call (Keras's default on a CPU: a nested XLA gather would copy the buffers each time),
under a ``tf.distribute`` strategy (the train step runs per replica there) nor with
``run_eagerly=True``: the monitor then gathers from its batch hook, which
:meth:`StepGather.batch_end` schedules (counting the batches that ``steps_per_execution`` hides,
and skipping snapshots that would leave the window before the end of the epoch).

On JAX and PyTorch the gather runs on the host around each train step instead
(:class:`_HostDispatch`): Keras's train function is wrapped, and after each step the
monitors' gathers are dispatched (on JAX one jitted, donated write from the step's returned
state, the weights never synced back into the model's variables; on torch in-place copies of
the live variables). The monitor then needs no batch hook, and Keras keeps dispatching its
callbacks asynchronously (a batch hook makes it read every batch's logs to the host). There
is no batch-hook fallback on these backends: a loop that never calls ``model.train_function``
(a ``fit`` of its own) gets no snapshots, and the monitor warns once at the end of its first
epoch. Gatherers that a ``fit`` which raised left in the dispatch (their ``on_train_end``
never ran) are dropped when a monitor installs for the next ``fit``; a later ``fit`` with no
monitor at all runs them within their one-epoch budget.
"""

from __future__ import annotations

import warnings

from keras_koopman._backend import backend, is_tensorflow

__all__ = ["StepGather", "supported"]


def supported(model):
    """Whether the gather can run inside ``model``'s train step: on TensorFlow not under a
    distribution strategy (the step runs once per replica there) nor eagerly; on JAX and
    PyTorch always (around the step, on the host)."""
    if not is_tensorflow():
        return True  # JAX, torch: on the host around each train step (_HostDispatch)
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    default = tf.distribute.get_strategy()
    if strategy is not None and type(strategy) is not type(default):
        return False
    return not getattr(model, "run_eagerly", False)


class StepGather:
    """Installs a tracker's gather in ``model``'s train function for one ``fit``.

    Args:
      tracker: the :class:`~keras_koopman.callbacks.KoopmanTracker` (watching ``model``).
      every: gather after every this many batches.

    The host learns how many snapshots were taken from the tracker's device counters
    (:meth:`~keras_koopman.callbacks.KoopmanTracker.sync`), once per epoch. The gathering train
    function only gathers within the epoch it was armed for (:meth:`plan_until`, at most the
    epoch's number of calls): a fit that raised, and so never put Keras's function back, does
    not keep gathering in later fits without the monitor.
    """

    def __init__(self, tracker, every):
        self.tracker = tracker
        self.every = int(every)
        self.active = False     # our train function is installed
        self.calls = 0          # calls of the installed train function (host count)
        self.batches = 0        # batches run since the watched trajectory began (host count)
        self.plan = None        # (first batch taken, last batch) of this epoch, or None
        self._budget = 0        # calls that may still gather in this epoch (None: no bound)
        self._model = None
        self._built = {}        # Keras's train function -> (ours, device counter, steps a call)
        self._counter = None    # the device batch counter in use (steps_per_execution > 1)
        self._last_batch = -1
        self._dispatch = None   # JAX, torch: the _HostDispatch this gather is installed in
        self._read = None       # JAX: reads the groups' weights from a train step's state
        self._fit = None        # what identifies the fit this gather was installed for

    # ----------------------------------------------------------------------------------------
    def install(self, model, fit=None):
        """Puts the gathering train function in place of ``model.train_function``. Returns
        ``False`` (nothing installed; the monitor gathers from its batch hook) when another
        monitor's gathering function is in place, or when the train function is not compiled
        with XLA and runs one step a call. On JAX and PyTorch it always installs
        (:class:`_HostDispatch`). ``fit``: what identifies the ``fit`` being started, the same
        object for every monitor in it (Keras's params dict); a gathering function or gatherer
        left by an earlier fit that raised (never put back) is dropped."""
        if not is_tensorflow():
            return self._install_on_host(model, fit)
        per_call = int(getattr(model, "steps_per_execution", 1) or 1)
        if not getattr(model, "jit_compile", False) and per_call == 1:
            # Without XLA around it, the nested XLA gather copies its buffers on every call
            # (measured: +76-78% of fit time at 1.1M weights, against +53% from the batch hook,
            # whose own compiled call updates them in place): the batch hook is as exact here.
            return False
        model.make_train_function()  # Keras builds it before on_train_begin; a loop may not
        current = model.train_function
        owner = getattr(current, "_koopman_owner", None)
        if owner is not None and owner is not self and owner.active:
            if owner._fit is fit:
                return False  # another monitor of this fit gathers in the train function
            owner.active, owner._budget = False, 0  # left by a fit that raised: unwrapped
        self._fit = fit
        # Ours or another's left over by a fit that raised: unwrap it.
        original = getattr(current, "_koopman_original", current)
        if self._model is not model:
            self._model, self._built = model, {}
        if original not in self._built:
            self._built = {original: self._build(model)}  # a re-compiled model: a new one
        gathering, self._counter, per_call = self._built[original]
        if self._counter is not None:
            self._counter.assign(self.batches)
        if per_call > 1:  # several steps a call: the device decides (or every step gathers)
            chosen = self._wrap(gathering, original)
        else:
            chosen = self._alternate(gathering, original)
        chosen._koopman_original, chosen._koopman_owner = original, self
        model.train_function = chosen
        self.active, self._budget = True, 0
        return True

    def _install_on_host(self, model, fit):
        model.make_train_function()
        current = model.train_function
        dispatch = getattr(current, "_koopman_dispatch", None)
        if dispatch is None or dispatch.model is not model:  # Keras's own function
            if self._model is not model:
                self._model, self._built = model, {}
            if current not in self._built:  # a re-compiled model: a new one
                self._built = {current: _HostDispatch(model, current)}
            dispatch = self._built[current]
        for stale in [g for g in dispatch.gatherers if g._fit is not fit]:
            # Left by a fit that raised (its on_train_end never ran): it would gather into
            # its monitor's buffers during this fit.
            dispatch.gatherers.remove(stale)
            stale._dispatch, stale.active, stale._budget = None, False, 0
        self._fit = fit
        if self not in dispatch.gatherers:
            dispatch.gatherers.append(self)
        # Kept also when joining another monitor's dispatch: a later fit of this monitor alone
        # reuses it (on JAX with steps_per_execution > 1, no second compile).
        self._dispatch, self._model = dispatch, model
        self._built = {dispatch.original: dispatch}
        self._read = self.tracker.state_reader(model) if backend() == "jax" else None
        model.train_function = dispatch.function
        self.active, self._budget = True, 0
        return True

    def after_step(self, state):
        """What :class:`_HostDispatch` runs after each train step (``state``: JAX's training
        state the step returned, ``None`` on torch)."""
        if not self._armed():
            return
        action = self._next_batch()
        if action == "skip":
            self.tracker.skip()
        elif action == "gather":
            self.tracker.gather(None if state is None else self._read(state))

    def remove(self, model):
        """Puts Keras's train function back."""
        if self._dispatch is not None:
            dispatch, self._dispatch = self._dispatch, None
            if self in dispatch.gatherers:
                dispatch.gatherers.remove(self)
            if not dispatch.gatherers and model.train_function is dispatch.function:
                model.train_function = dispatch.original
            self.active, self._budget = False, 0
            return
        if self.active and model is self._model:
            current = model.train_function
            if getattr(current, "_koopman_owner", None) is self:
                model.train_function = current._koopman_original
            self.batches = self._device_batches()
        self.active, self._budget = False, 0

    def _device_batches(self):
        return self.batches if self._counter is None else int(self._counter.numpy())

    # ----------------------------------------------------------------------------------------
    def _build(self, model):
        """Keras's train function made again around a train step that gathers after the
        update; with ``steps_per_execution > 1`` and ``every > 1`` a device counter decides."""
        import tensorflow as tf

        gather = self.tracker.step_gather_function()
        every = self.every
        step_function = model.train_step
        counter = None
        per_call = int(getattr(model, "steps_per_execution", 1) or 1)
        if every > 1 and per_call > 1:
            counter = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                  name="koopman_batches")

        def train_step(data):
            logs = step_function(data)
            if counter is None:
                gather()
            else:
                batches = counter.assign_add(1)
                tf.cond(tf.equal(tf.math.floormod(batches, every), 0),
                        lambda: gather(), lambda: tf.constant(False))
            return logs

        # Keras's own builder, so that its distribution, XLA and steps_per_execution logic
        # wraps this step as it wraps the original one; then its function (and a train_step
        # the user set on the instance) is put back.
        kept, own_step = model.train_function, vars(model).get("train_step")
        model.train_step = train_step
        try:
            model.make_train_function(force=True)
            gathering = model.train_function
        finally:
            del model.train_step
            if own_step is not None:
                model.train_step = own_step
            model.train_function = kept
        return gathering, counter, per_call

    def _armed(self):
        """Whether this call may gather (and counts it)."""
        self.calls += 1
        if self._budget is None:
            return True
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    def _wrap(self, gathering, original):
        def train_function(iterator):
            return gathering(iterator) if self._armed() else original(iterator)

        return train_function

    def _alternate(self, gathering, original):
        tracker = self.tracker

        def train_function(iterator):
            if not self._armed():
                return original(iterator)
            action = self._next_batch()
            if action == "skip":
                tracker.skip()
            return gathering(iterator) if action == "gather" else original(iterator)

        return train_function

    def _next_batch(self):
        """Counts one batch; returns what follows it: ``"gather"``, ``"skip"`` (a snapshot
        that would leave the window before the end of the epoch: only counted) or ``None``."""
        self.batches += 1
        if self.batches % self.every:
            return None
        if self.plan is not None and self.batches < self.plan[0]:
            return "skip"
        return "gather"

    # ----------------------------------------------------------------------------------------
    # the batch hook's schedule, where the train function cannot gather
    def epoch_begin(self):
        self._last_batch = -1

    def batch_end(self, batch):
        """What a batch hook does after Keras's ``batch`` (of this epoch): ``"gather"``,
        ``"skip"`` (a snapshot that would leave the window before the end of the epoch) or
        ``None``. With ``steps_per_execution > 1`` Keras reports only the last batch of each
        execution."""
        before = self.batches // self.every
        self.batches += batch - self._last_batch
        self._last_batch = batch
        if self.batches // self.every == before:
            return None
        if self.plan is not None and self.batches < self.plan[0]:
            return "skip"
        return "gather"

    def state_dict(self):
        return {"batches": self._device_batches() if self.active else self.batches}

    def load_state_dict(self, state):
        self.batches = int(state["batches"])
        if self.active and self._counter is not None:
            self._counter.assign(self.batches)

    def plan_until(self, batches_ahead, per_call=1):
        """Arms the train function for the next ``batches_ahead`` batches (``None``: unknown,
        no bound) and takes only the last ``window`` snapshots among them: whoever reads the
        buffers after them (an analysis, a decision at the end of the epoch) sees no more."""
        if batches_ahead is None:
            self.plan, self._budget = None, None
            return
        batches_ahead = int(batches_ahead)
        if self._dispatch is not None:
            per_call = 1  # the host dispatch counts steps, not calls
        self._budget = -(-batches_ahead // max(int(per_call), 1))
        last = self.batches + batches_ahead
        last_gather = last - last % self.every
        self.plan = (last_gather - (self.tracker.window - 1) * self.every, last)

    def disarm(self):
        """No gathering until the next :meth:`plan_until` (the end of an epoch)."""
        self._budget = 0


class _HostDispatch:
    """Keras's train function on JAX or PyTorch with the installed gathers run after each
    train step (:meth:`StepGather.after_step`), shared by every monitor of the model that
    gathers every ``N`` batches.

    One step a call: the wrapper calls Keras's function, then the gathers. JAX with
    ``steps_per_execution=K > 1``, whose train function runs its jitted step ``K`` times in
    Python: Keras's own builder (``_make_function``) makes the train function again around a
    step that gathers after it (traced once per compiled model), so that exactly the weights
    after batches ``N, 2N, ...`` are taken there too.
    """

    def __init__(self, model, original):
        self.model, self.original, self.gatherers = model, original, []
        jax = backend() == "jax"
        per_call = int(getattr(model, "steps_per_execution", 1) or 1)

        def after(state):
            for gatherer in tuple(self.gatherers):
                gatherer.after_step(state)

        if not jax:
            def function(*args):
                logs = original(*args)
                after(None)
                return logs
        elif per_call == 1 or not hasattr(model, "_make_function"):
            if per_call > 1:
                warnings.warn("this Keras has no JAXTrainer._make_function: with "
                              "steps_per_execution > 1 each call's last weights are gathered "
                              "as one batch's", stacklevel=3)

            def function(state, data):
                logs, state = original(state, data)
                after(state)
                return logs, state
        else:
            function = self._rebuilt(model, after)
        function._koopman_dispatch = self
        self.function = function

    @staticmethod
    def _rebuilt(model, after):
        make = model._make_function

        def make_gathering(step_function, *args, **kwargs):
            def step(state, data):
                logs, state = step_function(state, data)
                after(state)
                return logs, state

            return make(step, *args, **kwargs)

        kept = model.train_function
        model._make_function = make_gathering
        try:
            model.make_train_function(force=True)
            return model.train_function
        finally:
            del model._make_function
            model.train_function = kept
