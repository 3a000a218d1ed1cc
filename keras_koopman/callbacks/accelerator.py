"""KoopmanAccelerator: jump the weights ahead along their Koopman modes, guarded by the loss."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_koopman._validation import check_int, check_monitor

__all__ = ["KoopmanAccelerator"]

_OPTIMIZER_STATES = ("keep", "reset")


class KoopmanAccelerator(keras.callbacks.Callback):
    """Every ``every`` epochs, moves the weights ``horizon`` steps ahead along their DMD modes.

    For each observable group of ``monitor`` with at least 3 snapshots, the DMD of the window
    (the monitor's ``rank`` rule) predicts the weights ``horizon`` snapshots past the newest one:
    ``Re(modes diag(lambda^t) amplitudes)``, with the eigenvalues within the monitor's
    ``tolerance`` of 1 taken as exactly 1. Where the spectrum has converged (eigenvalues at 1,
    the rest decaying), a long horizon lands on the fixed point training is heading to.

    The guard (``guard="loss"``): the loss on the ``probe`` data ``(x, y)`` is evaluated before
    and after the jump; the jump is kept only if the loss did not get worse, and then the horizon
    doubles (up to ``max_horizon``); otherwise every weight is put back exactly as it was and the
    horizon halves (down to ``min_horizon``). A jump to non-finite weights is always undone. With
    ``guard=None`` every finite jump is kept. After a kept jump the monitor forgets its
    trajectory (:meth:`KoopmanMonitor.restart`): the jump is not a step of the dynamics.

    Optimizer state: ``"keep"`` (default) leaves momentum and Adam moments as they are;
    ``"reset"`` sets them to zero after a kept jump.

    Args:
      monitor: the :class:`KoopmanMonitor` that gathers the snapshots.
      every: epochs between jump attempts.
      horizon: initial number of snapshot steps to jump ahead.
      guard: ``"loss"`` or ``None``.
      probe: ``(x, y)`` evaluated by the guard (required with ``guard="loss"``).
      optimizer_state: ``"keep"`` or ``"reset"``.
      min_horizon, max_horizon: bounds of the adapted horizon.
      verbose: 1 prints a line per attempt.

    Attributes:
      jumps: one dict per attempt: ``epoch``, ``horizon``, ``loss_before``, ``loss_after``,
        ``accepted`` and ``reason``.
      horizon: the current horizon.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.02), "mse")
    >>> monitor = kk.callbacks.KoopmanMonitor(window=8, rank=4)
    >>> jump = kk.callbacks.KoopmanAccelerator(monitor, every=8, horizon=50, probe=(x, y))
    >>> _ = model.fit(x, y, epochs=16, batch_size=64, verbose=0, callbacks=[monitor, jump])
    >>> [j["accepted"] for j in jump.jumps]
    [True, True]
    """

    def __init__(self, monitor, every=5, horizon=10, guard="loss", probe=None,
                 optimizer_state="keep", min_horizon=1, max_horizon=10_000, verbose=0):
        super().__init__()
        self.monitor = check_monitor(monitor)
        self.every = check_int(every, "every", 1)
        self.max_horizon = check_int(max_horizon, "max_horizon", 1)
        self.min_horizon = check_int(min_horizon, "min_horizon", 1)
        if self.min_horizon > self.max_horizon:
            raise ValueError(
                f"min_horizon ({min_horizon}) must not exceed max_horizon ({max_horizon})"
            )
        self.horizon = min(max(check_int(horizon, "horizon", 1), self.min_horizon),
                           self.max_horizon)
        if guard not in ("loss", None):
            raise ValueError(f"guard must be 'loss' or None; got {guard!r}")
        if guard == "loss" and (not isinstance(probe, (tuple, list)) or len(probe) != 2):
            raise ValueError("guard='loss' needs probe=(x, y): the data the loss is checked on")
        if optimizer_state not in _OPTIMIZER_STATES:
            raise ValueError(
                f"optimizer_state must be one of {_OPTIMIZER_STATES}; got {optimizer_state!r}"
            )
        self.guard = guard
        self.probe = probe
        self.optimizer_state = optimizer_state
        self.verbose = verbose
        self.jumps = []

    def on_train_begin(self, logs=None):
        self.monitor.ensure_started(self.model)

    def _probe_loss(self):
        x, y = self.probe
        result = self.model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
        return float(result["loss"])

    def _targets(self):
        """``[(variables, new values)]`` for every group with enough snapshots."""
        targets = []
        for name, buffer in self.monitor.buffers.items():
            if len(buffer) < 3 or name in self.monitor.nonfinite_groups:
                continue
            result = buffer.dmd(rank=self.monitor.rank, method=self.monitor.method)
            eigenvalues = np.asarray(result.eigenvalues)
            # Eigenvalues within the monitor's tolerance of 1 are the converged part: taken as
            # exactly 1, so that a long jump does not raise 1 + 1e-4 to a large power.
            eigenvalues = np.where(np.abs(eigenvalues - 1) <= self.monitor.tolerance,
                                   1.0 + 0j, eigenvalues)
            steps = len(buffer) - 1 + self.horizon  # amplitudes belong to the oldest snapshot
            state = np.real(np.asarray(result.modes)
                            @ (np.asarray(result.amplitudes) * eigenvalues ** steps))
            variables = self.monitor.groups[name]
            sizes = [int(np.prod(v.shape)) for v in variables]
            pieces = np.split(state, np.cumsum(sizes)[:-1])
            targets.append((variables, [p.reshape(v.shape) for p, v in zip(pieces, variables)]))
        return targets

    def on_epoch_end(self, epoch, logs=None):
        self.monitor.on_epoch_end(epoch, logs)  # no-op if the monitor already ran this epoch
        if (epoch + 1) % self.every or self.monitor.disabled:
            return
        attempt = {"epoch": epoch, "horizon": self.horizon, "loss_before": None,
                   "loss_after": None, "accepted": False, "reason": ""}
        saved = None
        try:
            targets = self._targets()
            if not targets:
                return
            if not all(np.all(np.isfinite(v)) for _, values in targets for v in values):
                attempt["reason"] = "the prediction is not finite"
                self._adapt(False)
                self.jumps.append(attempt)
                return
            if self.guard == "loss":
                attempt["loss_before"] = self._probe_loss()
            saved = [(v, np.array(v.numpy(), copy=True)) for variables, _ in targets
                     for v in variables]
            for variables, values in targets:
                for variable, value in zip(variables, values):
                    variable.assign(value.astype(variable.dtype))
            accepted = True
            if self.guard == "loss":
                attempt["loss_after"] = self._probe_loss()
                accepted = bool(np.isfinite(attempt["loss_after"])
                                and attempt["loss_after"] <= attempt["loss_before"])
                attempt["reason"] = "loss did not get worse" if accepted else "loss got worse"
            if accepted:
                saved = None
                if self.optimizer_state == "reset" and self.model.optimizer is not None:
                    for variable in self.model.optimizer.variables:
                        if "iteration" not in variable.path:
                            variable.assign(np.zeros(variable.shape, variable.dtype))
                self.monitor.restart()
            else:
                self._restore(saved)
            attempt["accepted"] = accepted
            self._adapt(accepted)
        except Exception as error:  # noqa: BLE001 - never break fit, never lose the weights
            if saved is not None:
                self._restore(saved)
            attempt["reason"] = f"failed: {error}"
            warnings.warn(f"KoopmanAccelerator: jump failed and was undone: {error}",
                          RuntimeWarning, stacklevel=2)
        self.jumps.append(attempt)
        if self.verbose:
            print(f"KoopmanAccelerator: epoch {epoch + 1}, horizon {attempt['horizon']}: "
                  f"{'kept' if attempt['accepted'] else 'undone'} ({attempt['reason']})")

    @staticmethod
    def _restore(saved):
        for variable, value in saved:
            variable.assign(value)

    def _adapt(self, accepted):
        if accepted:
            self.horizon = min(2 * self.horizon, self.max_horizon)
        else:
            self.horizon = max(self.horizon // 2, self.min_horizon)
