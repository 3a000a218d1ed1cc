"""KoopmanAccelerator: jump the weights ahead along their Koopman modes, guarded by the loss."""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np
from keras import ops

from keras_koopman import _engine
from keras_koopman._backend import implementation
from keras_koopman._validation import check_choice, check_int
from keras_koopman.callbacks.base import KoopmanCallback
from keras_koopman.callbacks._tracking import DATA_FAILURES, shared_last_axis
from keras_koopman.host_dmd import parse_rank

__all__ = ["KoopmanAccelerator"]

_OPTIMIZER_STATES = ("keep", "reset")
_GUARDS = ("auto", "next_epoch", "loss", None)
_OBSERVABLES = ("layers", "nodes", "auto")


def _finite_loss(logs):
    """``logs["loss"]`` as a float, or ``None`` when it is missing or not finite."""
    value = (logs or {}).get("loss")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def node_index(variables):
    """``[units, fan_in + 1]`` column indices of each output unit's weights in a group's flat
    snapshot (variables concatenated, each flattened row-major), or ``None`` when the variables
    do not share their last axis (the output units of Dense and Conv kernels and biases)."""
    units = shared_last_axis(variables)
    if units is None:
        return None
    columns, offset = [], 0
    for variable in variables:
        size = int(np.prod(variable.shape))
        # Element (p, j) of the [size / units, units] view sits at offset + p * units + j.
        columns.append(offset + np.arange(size).reshape(-1, units).T)
        offset += size
    return np.concatenate(columns, axis=1)


def optimizer_slots(optimizer):
    """The optimizer's per-weight state (momentum, Adam moments, ...): its variables except the
    step counter, the learning rate and other scalars."""
    keep = {id(optimizer.iterations)}
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.Variable):
        keep.add(id(rate))
    return [v for v in optimizer.variables if id(v) not in keep and len(v.shape) > 0]


class KoopmanAccelerator(KoopmanCallback):
    """Every ``every`` epochs, moves the weights ``horizon`` steps ahead along their DMD modes.

    For each observable group of ``monitor`` with at least 3 snapshots, the DMD of the window
    predicts the weights ``horizon`` snapshots past the newest one:
    ``Re(modes diag(lambda^t) amplitudes)``, with the eigenvalues within the monitor's
    ``tolerance`` of 1 taken as exactly 1. Where the spectrum has converged (eigenvalues at 1,
    the rest decaying), a long horizon lands on the fixed point training is heading to.

    ``observables="layers"`` fits one DMD per group (the monitor's groups: one per layer by
    default). ``observables="nodes"`` fits Dogra and Redman's node-wise operators ("Optimizing
    Neural Networks via Koopman Operator Theory", NeurIPS 2020): one small DMD per output unit
    over its incoming weights and bias (Dense and Conv kernels and biases share their last axis:
    the units), all units of a layer in one batched call (:func:`keras_koopman.dmd_batch`).
    Groups whose variables do not share their last axis fall back to one DMD per group.
    ``observables="auto"`` chooses per group and jump: both are fitted to the window without its
    newest snapshot, and the one that predicts that snapshot more closely makes the jump (two
    more small DMDs per group and jump; the choices in :attr:`choices` and in each jump's
    record). Measured against layer-wise jumps on the tuning seeds (``bench/acceleration.py
    --variants default auto``): the same epochs to the target in 10 of 15 task/optimizer rows,
    fewer on the GRU with momentum and Adam (1.51x less wall time with Adam against 1.26x),
    and wall-time ratios 7-17% lower than layer-wise on the MLPs (not the digits MLP with SGD),
    where both make the same jumps and auto pays two more small DMDs per jump. Use it for
    recurrent layers; ``"layers"`` stays the default.

    Guards. A kept jump doubles the horizon (up to ``max_horizon``); an undone one puts every
    weight back exactly as it was and halves it (down to ``min_horizon``). A jump to weights
    that are not finite in the variables' dtype is never made. ``guard="auto"`` (the default)
    is ``"loss"`` when a ``probe`` is given and ``"next_epoch"`` otherwise, so
    ``KoopmanAccelerator(monitor)`` runs with nothing else:

    * ``"next_epoch"``: the jump is made and training goes on from it for one epoch; the jump
      stands when that epoch's training loss (``logs["loss"]``, Keras's mean over the epoch's
      batches) is not above the loss of the epoch before the jump. Otherwise the weights and
      the optimizer state are put back exactly as they were before the jump, and the epoch
      trained from it is lost. It costs one copy of the weights and of the optimizer state on
      their device while a jump is on trial, nothing per batch, and one epoch per undone jump;
      no jump is tried at the last epoch (nothing would judge it).
    * ``"loss"``: the loss on the ``probe`` data ``(x, y)`` (the model's compiled loss plus its
      regularization losses, inference mode, one compiled call) is evaluated before and after
      the jump, which is kept only if it did not get worse. Use it with held-out data; keep the
      probe small (a few thousand samples): it is evaluated in one batch.
    * ``None``: every finite jump is kept.

    After a jump the monitor forgets its trajectory (:meth:`KoopmanMonitor.restart`): the jump
    is not a step of the dynamics.

    Optimizer state: ``"reset"`` (default) sets the per-weight optimizer state (momentum, Adam
    moments) to zero after a kept jump, since it describes the trajectory before the jump;
    ``"keep"`` leaves it as it is. On the tuning seeds of ``bench/acceleration.py`` reset was
    ahead with Adam on all five tasks (wall time 1.26-2.24x less than plain against 0.99-1.38x
    with keep) and mixed with SGD + momentum; plain SGD has no state.

    Measured with the defaults (``bench/acceleration.py --seeds report``, seeds nothing was
    tuned on; ``bench/RESULTS.md``): with Adam 1.42-2.00x less wall time to the plain run's
    best training loss on a digits MLP, a small CNN, a breast-cancer MLP and a GRU (1.02x on a
    diabetes regression, whose epochs are short next to the fixed costs); with SGD 1.74-3.00x
    fewer epochs and 1.39-2.10x less time (1.5x or more on the MLPs and the CNN); with SGD +
    momentum 1.29-2.01x, and 1.03x on the diabetes regression. The median final loss was below
    plain's in every row. ``observables="nodes"`` won 4 of 15 rows on the tuning seeds (none
    with Adam): layer-wise is the default.

    Fixed cost: the first jump of a new model traces the DMD functions (a few tenths of a
    second here); each jump after that costs a DMD per group (plus two probe evaluations with
    ``guard="loss"``; ~15 ms for a 5k-weight MLP on 2 CPU cores).

    Args:
      monitor: the :class:`KoopmanMonitor` that gathers the snapshots. Groups it sketches
        (big groups, see its ``sketch``) have no modes and are not extrapolated (one
        warning); give the monitor ``sketch=None`` to extrapolate every group.
      every: epochs between jump attempts.
      horizon: initial number of snapshot steps to jump ahead.
      observables: ``"layers"``, ``"nodes"`` or ``"auto"`` (see above).
      guard: ``"auto"``, ``"next_epoch"``, ``"loss"`` or ``None`` (see above).
      probe: ``(x, y)`` evaluated by ``guard="loss"`` (required there).
      optimizer_state: ``"reset"`` or ``"keep"``.
      rank: DMD rank rule of the jumps: ``"monitor"`` (the monitor's ``rank``), ``None``
        (Gavish-Donoho, per group or per unit), an int or an energy fraction.
      min_horizon, max_horizon: bounds of the adapted horizon.
      verbose: 1 prints a line per attempt.

    Attributes:
      jumps: one dict per attempt: ``epoch`` (of the jump), ``horizon``, ``guard``,
        ``loss_before``, ``loss_after`` (probe losses, or with ``"next_epoch"`` the training
        losses of the epochs before and after the jump), ``accepted``, ``reason`` and, once the
        prediction was made, ``observables`` (``{group: "layers" or "nodes"}``); an attempt on
        trial under ``"next_epoch"`` is listed once it is judged.
      horizon: the current horizon.
      choices: ``{group: "layers" or "nodes"}``: the observables of the latest prediction.
      held_out_errors: with ``observables="auto"``, ``{group: {"layers": e, "nodes": e}}``:
        each fit's error on the held-out newest snapshot at the latest prediction.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.02), "mse")
    >>> monitor = kk.callbacks.KoopmanMonitor(window=8, rank=4)
    >>> jump = kk.callbacks.KoopmanAccelerator(monitor, every=8, horizon=50)
    >>> _ = model.fit(x, y, epochs=17, batch_size=64, verbose=0, callbacks=[monitor, jump])
    >>> [(j["epoch"], j["guard"], j["accepted"]) for j in jump.jumps]
    [(7, 'next_epoch', True), (15, 'next_epoch', True)]
    """

    def __init__(self, monitor, every=5, horizon=10, observables="layers", guard="auto",
                 probe=None, optimizer_state="reset", rank="monitor", min_horizon=1,
                 max_horizon=10_000, verbose=0):
        super().__init__(monitor)
        self._sketched_warned = set()
        self.observables = check_choice(observables, "observables", _OBSERVABLES)
        if not (isinstance(rank, str) and rank == "monitor"):
            parse_rank(rank)
        self._rank = rank
        self.every = check_int(every, "every", 1)
        self.max_horizon = check_int(max_horizon, "max_horizon", 1)
        self.min_horizon = check_int(min_horizon, "min_horizon", 1)
        if self.min_horizon > self.max_horizon:
            raise ValueError(
                f"min_horizon ({min_horizon}) must not exceed max_horizon ({max_horizon})"
            )
        self.horizon = min(max(check_int(horizon, "horizon", 1), self.min_horizon),
                           self.max_horizon)
        check_choice(guard, "guard", _GUARDS)
        if probe is not None and (not isinstance(probe, (tuple, list)) or len(probe) != 2):
            raise TypeError(f"probe must be a pair (x, y), got {type(probe).__name__}")
        if guard == "auto":
            guard = "next_epoch" if probe is None else "loss"
        if guard == "loss" and probe is None:
            raise ValueError("guard='loss' needs probe=(x, y): the data the loss is checked "
                             "on (guard='next_epoch' needs none)")
        check_choice(optimizer_state, "optimizer_state", _OPTIMIZER_STATES)
        self.guard = guard
        self.probe = probe
        self.optimizer_state = optimizer_state
        self.verbose = verbose
        self.jumps = []
        self.choices = {}  # group -> "layers" or "nodes": the observables of the latest jump
        self.held_out_errors = {}  # group -> {"layers": e, "nodes": e} of the latest auto choice
        self._probe_function = None
        self._trial = None  # a jump on trial under guard="next_epoch"
        self._warned_no_loss = False

    @property
    def rank(self):
        """The DMD rank rule of the jumps (the monitor's unless one was given)."""
        return self.monitor.rank if isinstance(self._rank, str) else self._rank

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._probe_function = None  # traced anew each fit: the model may have been recompiled
        self._trial = None

    def on_train_end(self, logs=None):
        if self._trial is not None:  # fit ended before the epoch that judges the jump
            self._judge(None, {})
        super().on_train_end(logs)

    def _probe_loss(self):
        if self._probe_function is None:
            self._probe_function = _compiled_loss()(self.model, *self.probe)
        try:
            return float(self._probe_function())
        except Exception:  # noqa: BLE001 - a model compute_loss cannot trace: Keras' evaluate
            self._probe_function = self._evaluate_probe
            return self._evaluate_probe()

    def _evaluate_probe(self):
        x, y = self.probe
        result = self.model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
        return float(result["loss"])

    def _targets(self):
        """``[(variables, new values)]`` for every group with enough snapshots (the
        observables each one used in :attr:`choices`)."""
        targets, self.choices, self.held_out_errors = [], {}, {}
        for name, buffer in self.monitor.buffers.items():
            if len(buffer) < 3 or name in self.monitor.nonfinite_groups:
                continue
            if not buffer.has_modes:
                if name not in self._sketched_warned:
                    self._sketched_warned.add(name)
                    warnings.warn(f"KoopmanAccelerator: the monitor sketches group {name!r}; "
                                  "a sketch has no modes, so that group is not extrapolated "
                                  "(KoopmanMonitor(sketch=None) keeps every group in full)",
                                  RuntimeWarning, stacklevel=2)
                continue
            variables = self.monitor.groups[name]
            steps = len(buffer) - 1 + self.horizon  # amplitudes belong to the oldest snapshot
            index = None if self.observables == "layers" else node_index(variables)
            if index is None:
                self.choices[name] = "layers"
                result = buffer.dmd(rank=self.rank, method=self.monitor.method)
                state = self._predict(result, steps)[0]
            else:
                snapshots = buffer.snapshots()  # [m, n]
                self.choices[name] = "nodes"
                if self.observables == "auto":
                    self.choices[name] = self._held_out_choice(name, snapshots, index)
                if self.choices[name] == "layers":  # the same computation as the default's
                    result = buffer.dmd(rank=self.rank, method=self.monitor.method)
                    state = self._predict(result, steps)[0]
                else:
                    state = self._node_state(snapshots, index, steps)
            # TensorFlow: on the device, the predicted weights never pass through the host (on
            # JAX and PyTorch the prediction is formed on the host, then sent back once).
            values, offset = [], 0
            for variable in variables:  # a cast that overflows gives inf: checked below
                size = int(np.prod(variable.shape))
                piece = ops.reshape(state[offset:offset + size], variable.shape)
                values.append(ops.cast(piece, variable.dtype))
                offset += size
            targets.append((variables, values))
        return targets

    def _layer_state(self, snapshots, steps):
        """The layer-wise DMD's state ``steps`` snapshots after the oldest of ``snapshots``."""
        return self._predict(_engine("dmd")(snapshots, rank=self.rank,
                                            method=self.monitor.method),
                             steps)[0]

    def _node_state(self, snapshots, index, steps):
        """The node-wise DMDs' state ``steps`` snapshots after the oldest, as one flat vector."""
        nodes = ops.transpose(ops.take(snapshots, index, axis=1), [1, 0, 2])
        predicted = self._predict(_engine("dmd_batch")(nodes, rank=self.rank), steps)[:, 0]
        return ops.scatter(index.reshape(-1, 1), ops.reshape(predicted, [-1]), (index.size,))

    def _held_out_choice(self, name, snapshots, index):
        """``"layers"`` or ``"nodes"``: whichever, fitted to the window without its newest
        snapshot, predicts that snapshot more closely (``"layers"`` with fewer than 4; the
        errors in :attr:`held_out_errors`)."""
        m = int(snapshots.shape[0])
        if m < 4:
            return "layers"
        older, newest = snapshots[:-1], ops.cast(snapshots[-1], "float64")
        layers, nodes = (float(ops.norm(state - newest)) for state in (
            self._layer_state(older, m - 1), self._node_state(older, index, m - 1)))
        self.held_out_errors[name] = {"layers": layers, "nodes": nodes}
        return "nodes" if np.isfinite(nodes) and not nodes >= layers else "layers"

    def _predict(self, result, steps):
        """The DMD's state ``steps`` snapshots after the oldest.

        Eigenvalues within the monitor's tolerance of 1 are the converged part: taken as exactly
        1, so that a long jump does not raise 1 + 1e-4 to a large power. Growing modes are
        extrapolated like the others (with cross-entropy the logit scale grows, and following
        it lowers the loss); where that overshoots, the guard undoes the jump.
        """
        eigenvalues = ops.convert_to_numpy(result.eigenvalues)  # [r] or [units, p]: small
        snapped = np.where(np.abs(eigenvalues - 1) <= self.monitor.tolerance, 1.0 + 0j,
                           eigenvalues)
        return dataclasses.replace(result, eigenvalues=snapped).predict([steps])

    def decide(self, epoch, logs):
        if self._trial is not None:
            self._judge(epoch, logs or {})
            return
        if (epoch + 1) % self.every or self.monitor.disabled:
            return
        attempt = {"epoch": epoch, "horizon": self.horizon, "guard": self.guard,
                   "loss_before": None, "loss_after": None, "accepted": False, "reason": ""}
        if self.guard == "next_epoch":
            if epoch + 1 >= (self.params or {}).get("epochs", np.inf):
                return  # no epoch left to judge a jump
            attempt["loss_before"] = _finite_loss(logs)
            if attempt["loss_before"] is None:
                if not self._warned_no_loss:
                    self._warned_no_loss = True
                    warnings.warn("KoopmanAccelerator: guard='next_epoch' needs a finite "
                                  "training loss in the epoch logs; no jump is made without "
                                  "it (give probe=(x, y) for guard='loss')", RuntimeWarning,
                                  stacklevel=2)
                return
        saved = None
        try:
            targets = self._targets()
            if not targets:
                return
            attempt["observables"] = dict(self.choices)
            finite = ops.stack([ops.all(ops.isfinite(v)) for _, values in targets
                                for v in values])
            if not bool(ops.all(finite)):  # one host read for every group
                attempt["reason"] = "the prediction is not finite"
                self._adapt(False)
                self._record(attempt, epoch)
                return
            if self.guard == "loss":
                attempt["loss_before"] = self._probe_loss()
            # The undo copy stays on the device (an assignment never writes into a value
            # that is still referenced).
            saved = [(v, ops.copy(v.value)) for variables, _ in targets for v in variables]
            if self.guard == "next_epoch":  # the optimizer state too: the next epoch moves it
                saved += [(v, ops.copy(v.value)) for v in self._optimizer_slots()]
            for variables, values in targets:
                for variable, value in zip(variables, values):
                    variable.assign(value)
            if self.guard == "next_epoch":
                self._reset_optimizer()
                self.monitor.restart()
                self._trial = (attempt, saved)  # judged by the next epoch's training loss
                return
            accepted = True
            if self.guard == "loss":
                attempt["loss_after"] = self._probe_loss()
                accepted = bool(np.isfinite(attempt["loss_after"])
                                and attempt["loss_after"] <= attempt["loss_before"])
                attempt["reason"] = "loss did not get worse" if accepted else "loss got worse"
            if accepted:
                saved = None
                self._reset_optimizer()
                self.monitor.restart()
            else:
                self._restore(saved)
            attempt["accepted"] = accepted
            self._adapt(accepted)
        except BaseException as error:  # never lose the weights, whatever failed
            self._trial = None
            if saved is not None:
                self._restore(saved)
            if not isinstance(error, DATA_FAILURES):
                raise  # a programming error: the weights are back, the error propagates
            attempt["reason"] = f"failed: {error}"
            warnings.warn(f"KoopmanAccelerator: jump failed and was undone: {error}",
                          RuntimeWarning, stacklevel=2)
        self._record(attempt, epoch)

    def _judge(self, epoch, logs):
        """Keeps or undoes the jump on trial by the training loss of the epoch after it
        (``epoch=None``: fit ended first, and an unjudged jump is undone)."""
        attempt, saved = self._trial
        self._trial = None
        after = None if epoch is None else _finite_loss(logs)
        attempt["loss_after"] = after
        accepted = after is not None and after <= attempt["loss_before"]
        if accepted:
            attempt["reason"] = "the next epoch's training loss did not get worse"
        else:
            self._restore(saved)
            self.monitor.restart()  # the snapshots since the jump are of undone weights
            attempt["reason"] = ("fit ended before an epoch judged it" if epoch is None else
                                 "the next epoch's training loss got worse" if after is not None
                                 else "the next epoch's training loss is not finite")
        attempt["accepted"] = accepted
        self._adapt(accepted)
        self._record(attempt, attempt["epoch"] + 1 if epoch is None else epoch)

    def _record(self, attempt, epoch):
        self.jumps.append(attempt)
        self.log_event("jump_kept" if attempt["accepted"] else "jump_undone",
                       f"Epoch {epoch + 1}: jump of epoch {attempt['epoch'] + 1}, horizon "
                       f"{attempt['horizon']}: {'kept' if attempt['accepted'] else 'undone'} "
                       f"({attempt['reason']})")
        if self.verbose:
            print(f"Epoch {epoch + 1}: KoopmanAccelerator: jump of epoch {attempt['epoch'] + 1}"
                  f", horizon {attempt['horizon']}: "
                  f"{'kept' if attempt['accepted'] else 'undone'} ({attempt['reason']})")

    def _optimizer_slots(self):
        optimizer = getattr(self.model, "optimizer", None)
        return [] if optimizer is None else optimizer_slots(optimizer)

    def _reset_optimizer(self):
        if self.optimizer_state == "reset":
            for variable in self._optimizer_slots():
                variable.assign(ops.zeros(variable.shape, variable.dtype))

    @staticmethod
    def _restore(saved):
        for variable, value in saved:
            variable.assign(value)

    def _adapt(self, accepted):
        if accepted:
            self.horizon = min(2 * self.horizon, self.max_horizon)
        else:
            self.horizon = max(self.horizon // 2, self.min_horizon)


def _compiled_loss():
    """The probe's loss function of the backend: one ``tf.function`` on TensorFlow; on JAX and
    PyTorch the model's own call and ``compute_loss``."""
    return implementation("keras_koopman._tf:compiled_loss",
                          "keras_koopman.portable.device:model_loss")
