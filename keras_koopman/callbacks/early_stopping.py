"""KoopmanEarlyStopping: stop when the Koopman spectrum of the weights says training converged."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_koopman._validation import check_int, check_monitor, check_number

__all__ = ["KoopmanEarlyStopping", "convergence"]


def convergence(record, tolerance=0.01):
    """``(mass_at_one, velocity)`` of one :class:`SpectrumRecord`.

    With ``w_j = |b_j| |lambda_j|^(s-1)``, the length of mode ``j``'s component in the newest of
    the ``s`` snapshots (modes have unit norm) and ``W = sum_j w_j``:

    * ``mass_at_one = sum(w_j for |lambda_j - 1| <= tolerance) / W``: how much of the current
      weights sits in modes at 1 (the fixed point training is heading to);
    * ``velocity = sum_j w_j |lambda_j - 1| / W``: the displacement of the next step that the
      fitted modes predict, relative to the size of the weights (a bound by the triangle
      inequality). It is small only when every mode away from 1 has decayed; a steady drift,
      which DMD fits with a pair of eigenvalues near 1 and large opposite amplitudes, keeps it
      up.
    """
    weights = record.current_weights()
    total = float(np.sum(weights))
    if not np.isfinite(total) or total <= 0:
        return 0.0, float("inf")
    distance = np.abs(record.eigenvalues - 1.0)
    mass = float(np.sum(weights[distance <= tolerance]) / total)
    velocity = float(np.sum(weights * distance) / total)
    return mass, velocity


class KoopmanEarlyStopping(keras.callbacks.Callback):
    """Stops training when the Koopman spectrum of the weights says it has converged.

    The rule, checked at every analysis of ``monitor`` (each epoch by default), for every
    observable group (or the ``groups`` given): with :func:`convergence` of the group's newest
    record, the group has converged when

    * ``mass_at_one >= mass``: the eigenvalues within ``tolerance`` of 1 carry at least ``mass``
      of the current weights, and
    * ``velocity <= max_velocity``: the rest have decayed, so the modes predict a next step
      smaller than ``max_velocity`` times the size of the weights.

    When every group has converged for ``patience`` analyses in a row, and at least
    ``min_epochs`` epochs have run, training stops (``model.stop_training = True``) and
    ``stopped_epoch`` is set, as with ``keras.callbacks.EarlyStopping``. With
    ``restore_best_weights`` the weights of the epoch with the best ``val_loss`` (``loss`` when
    there is no validation) are restored when it stops.

    Args:
      monitor: the :class:`KoopmanMonitor` whose analyses to read (it may come before or after
        this callback in the list, or be left out of it: it is then driven from here).
      tolerance: distance to 1 that counts as "at 1".
      mass: fraction of the current weights that must sit in modes at 1.
      max_velocity: largest predicted relative step still counted as converged.
      patience: consecutive converged analyses needed.
      min_epochs: never stop before this many epochs.
      groups: names of the groups to require (default: all analysed groups).
      restore_best_weights: restore the best epoch's weights on stopping.
      verbose: 1 prints a line when it stops.

    Attributes:
      stopped_epoch: the epoch training stopped at (0 if it did not).
      decisions: one dict per analysis: ``epoch``, ``step``, ``converged`` and per group
        ``(mass_at_one, velocity)``.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> x = np.random.default_rng(0).normal(size=(128, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> monitor = kk.callbacks.KoopmanMonitor(window=8)
    >>> stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5)
    >>> _ = model.fit(x, y, epochs=200, batch_size=128, verbose=0, callbacks=[monitor, stop])
    >>> 5 <= stop.stopped_epoch < 199
    True
    """

    def __init__(
        self,
        monitor,
        tolerance=0.01,
        mass=0.99,
        max_velocity=1e-3,
        patience=3,
        min_epochs=10,
        groups=None,
        restore_best_weights=False,
        verbose=0,
    ):
        super().__init__()
        self.monitor = check_monitor(monitor)
        self.tolerance = check_number(tolerance, "tolerance")
        self.mass = check_number(mass, "mass", 0.0, 1.0)
        self.max_velocity = check_number(max_velocity, "max_velocity")
        self.patience = check_int(patience, "patience", 1)
        self.min_epochs = check_int(min_epochs, "min_epochs", 0)
        if groups is not None and (
            isinstance(groups, str) or not all(isinstance(g, str) for g in groups)
        ):
            raise ValueError(f"groups must be None or a list of group names; got {groups!r}")
        self.groups = None if groups is None else list(groups)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose
        self.stopped_epoch = 0
        self.decisions = []
        self.wait = 0
        self.best = np.inf
        self.best_epoch = 0
        self.best_weights = None
        self._last_step = None

    def on_train_begin(self, logs=None):
        self.monitor.ensure_started(self.model)
        self.stopped_epoch = 0
        self.wait = 0
        self.best = np.inf
        self.best_epoch = 0
        self.best_weights = None
        self._last_step = None

    def _track_best(self, epoch, logs):
        logs = logs or {}
        value = logs.get("val_loss", logs.get("loss"))
        if value is None or not np.isfinite(value):
            return
        if value < self.best:
            self.best = float(value)
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        self.monitor.on_epoch_end(epoch, logs)  # no-op if the monitor already ran this epoch
        self._track_best(epoch, logs)
        step = self.monitor.step
        records = self.monitor.current()
        if self.groups is not None:
            records = [r for r in records if r.group in self.groups]
            missing = set(self.groups) - {r.group for r in records}
            if missing and records:
                records = []  # a required group was not analysed: no decision this time
        if not records or step == self._last_step:
            return
        self._last_step = step
        measures = {r.group: convergence(r, self.tolerance) for r in records}
        converged = all(
            mass >= self.mass and velocity <= self.max_velocity
            for mass, velocity in measures.values()
        )
        self.decisions.append(
            {"epoch": epoch, "step": step, "converged": converged, "groups": measures}
        )
        self.wait = self.wait + 1 if converged else 0
        if self.wait >= self.patience and epoch + 1 >= self.min_epochs:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                try:
                    self.model.set_weights(self.best_weights)
                except Exception as error:  # noqa: BLE001 - never break fit
                    warnings.warn(f"KoopmanEarlyStopping could not restore weights: {error}",
                                  RuntimeWarning, stacklevel=2)
            if self.verbose:
                print(
                    f"KoopmanEarlyStopping: spectrum converged for {self.wait} analyses; "
                    f"stopping at epoch {epoch + 1}"
                    + (f", restoring epoch {self.best_epoch + 1}" if self.best_weights else "")
                )
