"""KoopmanEarlyStopping: stop when the Koopman spectrum of the weights says training converged."""

from __future__ import annotations

import warnings

import numpy as np

from keras_koopman._validation import check_choice, check_int, check_names, check_number
from keras_koopman.callbacks.base import KoopmanCallback
from keras_koopman.callbacks._tracking import DATA_FAILURES
from keras_koopman.spectrum import mode_share

__all__ = ["KoopmanEarlyStopping", "convergence", "forecast_gain", "progress_gain"]

_CRITERIA = ("either", "weights", "loss")
_REFERENCES = ("best", "progress")
# The loss rule never fires while the training loss has risen above this factor times its
# smallest value over the window: that is divergence, not convergence.
_DIVERGENCE_FACTOR = 1.1
# forecast_gain keeps delay-embedding directions above this fraction of the largest one.
_NOISE_FLOOR = 1e-6


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
    mass = mode_share(record, lambda eigenvalues: np.abs(eigenvalues - 1.0) <= tolerance)
    velocity = mode_share(record, lambda eigenvalues: np.abs(eigenvalues - 1.0),
                          empty=float("inf"))
    return mass, velocity


def forecast_gain(values, horizon=30, rank=3):
    """Improvement on the best of ``values`` that their Koopman modes predict over ``horizon``.

    ``values`` is the recent history of a scalar observable of training (a loss, one value an
    epoch), positive values taken in log space. It is delay-embedded (``len(values) // 2``
    delays) and fitted by DMD with the constant function kept as an observable: the linear map
    ``h_{k+1} = A h_k + c`` on the leading ``rank`` directions of the embedding, so that the
    plateau is a Koopman mode at exactly 1 and the eigenvalues of ``A`` carry the decay (or the
    growth). The fitted map runs ``horizon`` steps on from the newest value, and the gain is the relative improvement of the
    smallest forecast value on the smallest value seen: ``(best - min forecast) / best``
    (negative when the modes predict only worse values, as when a validation loss turns up).

    Returns ``(gain, forecast)``: a float and the ``[horizon]`` forecast values.

    Example:

    >>> import numpy as np
    >>> from keras_koopman.callbacks import forecast_gain
    >>> t = np.arange(20)
    >>> loss = np.exp(-1.0 + 0.5 * 0.8 ** t)  # log-loss: a plateau plus one decaying mode
    >>> gain, forecast = forecast_gain(loss, horizon=30)
    >>> print(f"{gain:.5f} {1 - np.exp(0.5 * (0.8 ** 49 - 0.8 ** 19)):.5f}")
    0.00717 0.00717
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 4:
        raise ValueError(f"values must be a 1-D sequence of at least 4 numbers; got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    horizon = check_int(horizon, "horizon", 1)
    rank = check_int(rank, "rank", 1)
    positive = bool(np.all(values > 0))
    series = np.log(values) if positive else values
    forecast = _affine_dmd_forecast(series, horizon, rank)
    best = float(series.min())
    lowest = float(forecast.min())
    if positive:
        with np.errstate(over="ignore"):  # a forecast that blows up: gain -inf, no warning
            return 1.0 - float(np.exp(lowest - best)), np.exp(forecast)
    return (best - lowest) / max(abs(best), np.finfo(np.float64).tiny), forecast


def _affine_dmd_forecast(series, horizon, rank):
    """Runs the series ``horizon`` steps on with DMD of its delay embedding plus a constant.

    The constant function is a Koopman eigenfunction with eigenvalue exactly 1; keeping it as
    an observable (``h_{k+1} = A h_k + c``) gives the plateau a mode at 1 that no fitting noise
    can move, while the other eigenvalues of ``A`` carry the decay (or growth). ``A`` acts on
    the leading ``rank`` directions of the embedding, less any below ``_NOISE_FLOOR``.
    """
    delays = len(series) // 2
    hankel = np.lib.stride_tricks.sliding_window_view(series, delays)  # [time, delays]
    mean = hankel.mean(axis=0)
    _, singular, vt = np.linalg.svd(hankel - mean, full_matrices=False)
    kept = int(np.sum(singular > _NOISE_FLOOR * max(singular[0], np.finfo(float).tiny)))
    basis = vt[: max(1, min(rank, kept, len(hankel) - 2))]  # [r, delays]
    z = (hankel - mean) @ basis.T  # [time, r]
    inputs = np.hstack([z[:-1], np.ones((len(z) - 1, 1))])
    operator, *_ = np.linalg.lstsq(inputs, z[1:], rcond=None)  # [r + 1, r]: [A^T; c]
    state = z[-1]
    out = np.empty(horizon)
    for step in range(horizon):
        state = state @ operator[:-1] + operator[-1]
        out[step] = mean[-1] + state @ basis[:, -1]
    return out


def progress_gain(values, forecast):
    """The forecast improvement on the best of ``values`` as a fraction of the improvement made
    since the first of them: ``(best - min forecast) / (values[0] - best)`` (``inf`` while
    nothing has improved). A loss that creeps towards 0 (a training loss) keeps a sizeable
    relative gain long after most of what training will do is done; measured against the
    progress so far, its remaining modes say when that is."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    best = float(values.min())
    made = float(values[0]) - best
    if made <= 0:
        return float("inf")
    return (best - float(np.min(forecast))) / made


class KoopmanEarlyStopping(KoopmanCallback):
    """Stops training when the Koopman spectrum says it has converged.

    Two rules, each a Koopman reading of training; ``criterion`` picks which may stop it
    (``"either"``, the default, ``"weights"`` or ``"loss"``):

    * **weights**, checked at every analysis of ``monitor`` (each epoch by default) for every
      observable group (or the ``groups`` given): with :func:`convergence` of the group's newest
      record, the group has converged when ``mass_at_one >= mass`` (the eigenvalues within
      ``tolerance`` of 1 carry at least ``mass`` of the current weights) and
      ``velocity <= max_velocity`` (the rest have decayed: the modes predict a next step smaller
      than ``max_velocity`` times the size of the weights). The rule holds when every group has
      converged. Plain gradient descent settles this way; adaptive optimizers such as Adam keep
      the weights drifting long after the loss has stopped improving, so there the second rule
      decides.
    * **loss**, checked every epoch once ``loss_window`` epochs have run: the loss is an
      observable of the weights too (a function on weight space), so its values along
      training are a trajectory of the same Koopman operator. :func:`forecast_gain` fits that
      operator on a delay embedding of the last ``loss_window`` values, with the constant
      function kept as an observable (affine DMD): the constant is an eigenfunction at exactly
      1, which carries the plateau the loss is heading to, and the other eigenvalues carry
      what is still decaying (or growing). Running the fitted modes ``horizon`` epochs ahead,
      the rule holds when the predicted improvement on the best value so far is below
      ``min_gain`` (relative): the mode at 1 carries the loss and the rest have decayed, or
      the loss is turning up (overfitting). It never holds while the training loss stands above 1.1 times
      its smallest value over the window (divergence is not convergence) or when the window
      holds a non-finite loss. The loss watched is ``val_loss`` when there is validation,
      else ``loss``.

    **Without validation data** (no ``validation_data`` or ``validation_split``), the loss rule
    reads the training loss and stops when its Koopman forecast promises less than ``min_gain``
    more: all the data can then go to training. The training loss of a model that can still fit
    noise keeps creeping down, so this stops later than a validation loss would; the weights
    rule reads only the weights and is the same with or without validation.

    **What the benchmark supports** (``bench/early_stopping.py``, six tasks, Adam and SGD with
    momentum, seeds 100-109 that nothing was tuned on; ``bench/RESULTS.md``): against
    ``EarlyStopping(patience=10, restore_best_weights=True)`` the defaults stop after 0.28-0.87x
    the epochs. The best validation loss stays within 2% on the digits MLP and GRU, the digits
    CNN with Adam, the diabetes MLP and the breast-cancer MLP. It is 3.7% worse on the digits CNN with SGD, and
    25-120% worse on the Friedman regression, whose noisy validation loss looks like a plateau
    to an 8-epoch forecast. The saving is below 25% on the digits GRU and on the cancer MLP
    with Adam. It is never worse than patience 3, 5, 10 or 20 on both epochs and validation
    loss. Without validation it matches or beats patience 10 (with a 20% validation split) on
    test accuracy for the digits MLP and the cancer MLP, in fewer epochs, but not on
    regressors whose test error turns up while the training loss falls.

    When a rule chosen by ``criterion`` has held for ``patience`` checks in a row, and at least
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
      patience: consecutive checks a rule must hold.
      min_epochs: never stop before this many epochs.
      groups: names of the groups to require (default: all analysed groups).
      restore_best_weights: restore the best epoch's weights on stopping.
      criterion: ``"either"``, ``"weights"`` or ``"loss"``: which rule may stop training.
      loss_window: how many of the latest loss values the loss rule analyses (at least 6);
        ``"auto"``: 8 with validation, 20 without.
      horizon: how many epochs ahead the loss rule forecasts.
      min_gain: smallest predicted relative improvement still worth training for.
      loss_rank: DMD rank of the loss rule (a constant and a decaying mode need 2; 3 leaves
        room for a second time scale).
      gain_reference: what ``min_gain`` is a fraction of: ``"best"``, the best loss so far
        (:func:`forecast_gain`), or ``"progress"``, the improvement made since the first epoch
        (:func:`progress_gain`); ``"auto"``: ``"best"`` with validation, ``"progress"``
        without.
      verbose: 1 prints a line when it stops.

    Attributes:
      stopped_epoch: the epoch training stopped at (0 if it did not).
      decisions: one dict per epoch checked: ``epoch``, ``step``, ``converged`` (the weights
        rule; ``None`` when no new analysis came), ``groups`` (per group
        ``(mass_at_one, velocity)``), ``loss_gain`` (``None`` before ``loss_window`` epochs),
        ``stop_rule`` (``"weights"``, ``"loss"`` or ``None``) and ``reason`` (when it stopped:
        which rule fired with its numbers, as the message and the TensorBoard text
        ``koopman/stop_reason`` say it).

    Epochs are numbered as Keras numbers them: ``stopped_epoch``, ``best_epoch`` and the
    ``epoch`` of a decision are the 0-based index Keras passes to ``on_epoch_end`` (as
    ``keras.callbacks.EarlyStopping.stopped_epoch``); messages say ``Epoch N`` with
    ``N = epoch + 1``, as the progress bar does; the TensorBoard events are written at step
    ``epoch``, where Keras's ``TensorBoard`` callback writes that epoch's ``epoch_loss``.
    ``step`` counts the monitor's snapshots after the first (with one snapshot per epoch it
    equals ``N``).

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
        patience=2,
        min_epochs=10,
        groups=None,
        restore_best_weights=False,
        criterion="either",
        loss_window="auto",
        horizon=30,
        min_gain=0.02,
        loss_rank=3,
        gain_reference="auto",
        verbose=0,
    ):
        super().__init__(monitor)
        self.tolerance = check_number(tolerance, "tolerance")
        self.mass = check_number(mass, "mass", 0.0, 1.0)
        self.max_velocity = check_number(max_velocity, "max_velocity")
        self.patience = check_int(patience, "patience", 1)
        self.min_epochs = check_int(min_epochs, "min_epochs", 0)
        self.groups = check_names(groups, "groups")
        self.restore_best_weights = bool(restore_best_weights)
        self.criterion = check_choice(criterion, "criterion", _CRITERIA)
        self.loss_window = loss_window if loss_window == "auto" else check_int(
            loss_window, "loss_window", 6)
        self.horizon = check_int(horizon, "horizon", 1)
        self.min_gain = check_number(min_gain, "min_gain")
        self.loss_rank = check_int(loss_rank, "loss_rank", 1)
        self.gain_reference = check_choice(gain_reference, "gain_reference",
                                           ("auto",) + _REFERENCES)
        self.verbose = verbose
        self.stopped_epoch = 0
        self.decisions = []
        self._reset()

    def _reset(self):
        self.wait = {"weights": 0, "loss": 0}
        self.best = np.inf
        self.best_epoch = 0
        self.best_weights = None
        self._last_step = None
        self._watched = []
        self._training = []
        self._has_validation = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.stopped_epoch = 0
        self._reset()

    def _track(self, epoch, logs):
        if "val_loss" in logs and not self._has_validation:
            # Validation from here on (e.g. validation_freq > 1 starts it late): the loss rule
            # watches val_loss only, from its first value.
            self._has_validation = True
            self._watched, self._training = [], []
        if self._has_validation and "val_loss" not in logs:
            return  # an epoch without validation: nothing new for the loss rule
        value = logs.get("val_loss", logs.get("loss"))
        self._watched.append(np.nan if value is None else float(value))
        self._training.append(float(logs.get("loss", np.nan)))
        if value is None or not np.isfinite(value):
            return
        if value < self.best:
            self.best = float(value)
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()

    def _weights_rule(self):
        """``(converged or None, measures)`` from the monitor's newest analysis."""
        step = self.monitor.step
        records = self.records
        if self.groups is not None:
            records = [r for r in records if r.group in self.groups]
            missing = set(self.groups) - {r.group for r in records}
            if missing and records:
                records = []  # a required group was not analysed: no decision this time
        if not records or step == self._last_step:
            return None, {}
        self._last_step = step
        measures = {r.group: convergence(r, self.tolerance) for r in records}
        converged = all(
            mass >= self.mass and velocity <= self.max_velocity
            for mass, velocity in measures.values()
        )
        return converged, measures

    def _loss_settings(self):
        """``(loss_window, gain_reference)`` in force: the ``"auto"`` defaults are 8 epochs
        against the best value with validation, 20 epochs against the progress made without
        (chosen on seeds 0-4 of ``bench/early_stopping.py``; see the class docstring)."""
        window, reference = self.loss_window, self.gain_reference
        if window == "auto":
            window = 8 if self._has_validation else 20
        if reference == "auto":
            reference = "best" if self._has_validation else "progress"
        return window, reference

    def _loss_rule(self):
        """``(holds, gain)``; gain is ``None`` until the window is full or while it is not finite."""
        window, reference = self._loss_settings()
        watched = np.asarray(self._watched[-window:])
        training = np.asarray(self._training[-window:])
        if len(watched) < window or not np.all(np.isfinite(watched)):
            return False, None
        try:
            gain, forecast = forecast_gain(watched, self.horizon, self.loss_rank)
            if reference == "progress":
                gain = progress_gain(self._watched, forecast)
        except DATA_FAILURES as error:  # a fit that fails: no verdict this epoch
            warnings.warn(f"KoopmanEarlyStopping: loss forecast failed: {error}",
                          RuntimeWarning, stacklevel=3)
            return False, None
        diverging = not np.all(np.isfinite(training)) or (
            training[-1] > _DIVERGENCE_FACTOR * training.min()
        )
        return bool(gain < self.min_gain and not diverging), gain

    def decide(self, epoch, logs):
        self._track(epoch, logs)
        converged, measures = self._weights_rule()
        loss_holds, gain = self._loss_rule()
        if converged is not None:
            self.wait["weights"] = self.wait["weights"] + 1 if converged else 0
        self.wait["loss"] = self.wait["loss"] + 1 if loss_holds else 0
        rules = ("weights", "loss") if self.criterion == "either" else (self.criterion,)
        fired = next((r for r in rules if self.wait[r] >= self.patience), None)
        if epoch + 1 < self.min_epochs:
            fired = None
        reason = None if fired is None else self._reason(fired, measures, gain)
        decision = {"epoch": epoch, "step": self.monitor.step, "converged": converged,
                    "groups": measures, "loss_gain": gain, "stop_rule": fired,
                    "reason": reason}
        self.decisions.append(decision)
        if fired is None:
            return
        self.stopped_epoch = epoch
        self.model.stop_training = True
        restored = ""
        if self.restore_best_weights and self.best_weights is not None:
            try:
                self.model.set_weights(self.best_weights)
                restored = f"; restored the weights of epoch {self.best_epoch + 1}"
            except DATA_FAILURES as error:
                warnings.warn(f"KoopmanEarlyStopping could not restore weights: {error}",
                              RuntimeWarning, stacklevel=2)
        message = f"Epoch {epoch + 1}: {reason}{restored}"
        self.log_text("koopman/stop_reason", message)
        self.log_event("early_stop", message)
        if self.verbose:
            print(f"Epoch {epoch + 1}: KoopmanEarlyStopping: stopping: {reason}{restored}")

    def _reason(self, fired, measures, gain):
        """Which rule stopped training, with its numbers (and the other rule's state)."""
        watched = "val_loss" if self._has_validation else "loss"
        loss_text = (None if gain is None else
                     f"the Koopman forecast of {watched} gains {gain:.2%} over the next "
                     f"{self.horizon} epochs (< {self.min_gain:.2%})")
        if measures:
            slowest = max(measures.items(), key=lambda item: item[1][1])
            weights_text = (f"the weight spectra sit at 1 (lowest mass at 1 "
                            f"{min(m for m, _ in measures.values()):.3f} >= {self.mass:g}, "
                            f"largest velocity {slowest[1][1]:.1e} <= {self.max_velocity:g}, "
                            f"{slowest[0]})")
        else:
            weights_text = None
        weights_text = weights_text or "the weight spectra sat at 1 at the last analysis"
        both = (self.criterion == "either" and self.wait["weights"] >= self.patience
                and self.wait["loss"] >= self.patience)
        if both:
            return f"both rules hold for {self.patience} checks: {weights_text}; {loss_text}"
        if fired == "weights":
            return f"weights rule for {self.wait['weights']} checks: {weights_text}"
        text = f"loss rule for {self.wait['loss']} checks: {loss_text}"
        if measures:
            moving = [name for name, (m, v) in measures.items()
                      if not (m >= self.mass and v <= self.max_velocity)]
            if moving:
                text += (f" (the weights still move: {', '.join(moving)}; the loss has "
                         "converged, not every weight)")
        return text
