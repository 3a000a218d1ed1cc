"""UpdateKoopmanPruning: gathers the wrapped weights' trajectory and updates the masks."""

from __future__ import annotations

import os

import numpy as np

from keras_koopman._validation import check_int, check_log_dir, check_window
from keras_koopman.callbacks.base import KoopmanCallback
from keras_koopman.callbacks.monitor import KoopmanMonitor
from keras_koopman._backend import implementation
from keras_koopman.host_dmd import parse_rank
from keras_koopman.portable.device import to_host
from keras_koopman.pruning.wrapper import attach_callback, detach_callback, pruning_wrappers

__all__ = ["UpdateKoopmanPruning", "koopman_scores"]


def koopman_scores(result, newest, horizon=None, weights=None):
    """Score of each weight from a DMD of its window (the NumPy reference of the mask update).

    ``horizon=None``: ``|b_j lambda_j^newest phi_j|`` for the eigenvalue ``lambda_j`` nearest
    1, i.e. the size of each weight's share of the mode that carries where training is heading,
    as it stands in the newest snapshot (``newest`` = its index in the window). An int ``h``:
    ``|w + Re sum_j b_j (mu_j^(newest + h) - lambda_j^newest) phi_j|`` with
    ``mu_j = lambda_j / max(|lambda_j|, 1)``: each weight's current value ``w`` (``weights``)
    plus the motion the DMD predicts over the next ``h`` snapshots (decaying modes run out,
    growing ones are held at unit modulus). At ``h = 0``, or once the window has converged
    (every mode at 1), that is magnitude pruning exactly; before, a weight heading to zero
    scores low while it is still large. Without ``weights`` the DMD's own reconstruction of the
    newest snapshot stands for ``w`` (exact only when the rank keeps every direction).

    Args:
      result: a :class:`keras_koopman.DMDResult` with modes.
      newest: index of the newest snapshot (window length - 1).
      horizon: ``None`` or the forecast horizon in snapshots.
      weights: ``[n]`` current values of the weights (for an int ``horizon``).

    Returns:
      float64 array ``[n]``.
    """
    eigenvalues = to_host(result.eigenvalues)  # from any backend's device, a GPU included
    amplitudes = to_host(result.amplitudes)
    modes = to_host(result.modes)
    if horizon is None:
        j = int(np.argmin(np.abs(eigenvalues - 1.0)))
        return np.abs(modes[:, j] * (amplitudes[j] * eigenvalues[j] ** newest))
    held = eigenvalues / np.maximum(np.abs(eigenvalues), 1.0)
    now = eigenvalues ** newest
    if weights is None:
        weights = np.real(modes @ (amplitudes * now))
    motion = np.real(modes @ (amplitudes * (held ** (newest + horizon) - now)))
    return np.abs(np.asarray(weights, np.float64).reshape(-1) + motion)


class UpdateKoopmanPruning(KoopmanCallback):
    """Updates the masks of every :class:`KoopmanPruning` layer of the model during ``fit``.

    A :class:`keras_koopman.callbacks.KoopmanMonitor` (gathering only, one group per wrapped
    weight) keeps the last ``window`` snapshots of the wrapped weights on the device. When a
    wrapper's schedule says so (at the end of a step or an epoch, per its ``unit``; without a
    schedule: once, as soon as the window is full), each weight is scored and the lowest scores
    are masked out up to the scheduled sparsity:

    * ``criterion="koopman"``: DMD of the weight's window (over the entries not yet pruned);
      the score is the magnitude of its component in the Koopman mode of the eigenvalue nearest
      1 (see :func:`koopman_scores`). Magnitude is used instead (and recorded) before the
      window is full and while it holds a change of the weight's mask: such a window shows
      the network's answer to the pruning step, not training. With an update every epoch only
      the first one is a Koopman update; updates at least ``window`` snapshots apart are all
      Koopman updates.
    * ``criterion="magnitude"``: ``|w|``.

    Wrappers with ``scope="global"`` share one threshold over all their weights and follow the
    schedule of the first of them; ``scope="layer"`` prunes each weight to the sparsity on its
    own. Pruned weights stay pruned. With ``log_dir``, the sparsity of each wrapper
    (``pruning/<wrapper>/sparsity``) and a histogram of the scores (``pruning/scores``) are
    written to ``<log_dir>/pruning`` at each update.

    Args:
      window: snapshots per DMD (at least 3).
      rank: DMD rank rule (``None``: Gavish-Donoho; int; energy fraction).
      log_dir: TensorBoard directory or ``None``.
      verbose: 1 prints a line per update.
      horizon: ``None`` (default): Koopman scores from the mode nearest 1, put on each
        tensor's weight scale; an int ``h``: each weight's current value plus the motion the
        DMD predicts over the next ``h`` snapshots (see :func:`koopman_scores`): magnitude
        pruning of where the weights are heading, and magnitude pruning exactly once they have
        converged (experimental: being measured in ``bench/pruning.py``).

    Attributes:
      updates: one dict per mask update: ``step`` (epoch or optimizer step, per the
        schedule's unit), ``sparsity`` (scheduled), ``criterion`` (``"koopman"`` or
        ``"magnitude"`` as used), ``layers`` (wrapper name -> sparsity after the update).
      monitor: the gathering monitor.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                           keras.layers.Dense(1)])
    >>> pruned = kk.pruning.prune_koopman(model, target_sparsity=0.75)
    >>> pruned.compile("adam", "mse")
    >>> x, y = np.random.rand(64, 8), np.random.rand(64, 1)
    >>> update = kk.pruning.UpdateKoopmanPruning(window=4)
    >>> _ = pruned.fit(x, y, epochs=5, verbose=0, callbacks=[update])
    >>> [(u["step"], u["criterion"]) for u in update.updates]
    [(2, 'koopman')]
    >>> round(kk.pruning.strip_pruning(pruned).layers[0].get_weights()[0].size * 0.25)
    32
    """

    def __init__(self, window=10, rank=None, log_dir=None, verbose=0, horizon=None):
        window = check_window(window, 3)
        self.horizon = None if horizon is None else check_int(horizon, "horizon", 0)
        parse_rank(rank)
        log_dir = check_log_dir(log_dir)
        # A gathering-only monitor of its own, one group per wrapped weight; the base forwards
        # the Keras hooks to it (it is never in the callback list). Scores need modes: never
        # sketched.
        super().__init__(KoopmanMonitor(
            observables=self._observables, window=window, rank=rank, analyze_every=None,
            sketch=None, log_dir=None if log_dir is None else os.path.join(log_dir, "pruning")))
        self.window, self.rank, self.log_dir = window, rank, log_dir
        self.verbose = verbose
        self.updates = []
        self.wrappers = []
        self._groups = {}
        self._functions = {}  # compiled mask updates, by pools (for the buffers captured)
        self._captured = None
        self._model_id = None

    def _observables(self, model):
        """``{wrapper/i: [weight]}``: the tracker's groups."""
        self._groups = {
            f"{wrapper.name}/{i}": (wrapper, weight, mask)
            for wrapper in pruning_wrappers(model) for i, (weight, mask) in
            enumerate(wrapper.masked)
        }
        return {name: [weight] for name, (_, weight, _) in self._groups.items()}

    # ------------------------------------------------------------------------------------
    # set-up
    def on_train_begin(self, logs=None):
        self.wrappers = pruning_wrappers(self.model)
        if not self.wrappers:
            raise ValueError(
                "UpdateKoopmanPruning: the model holds no KoopmanPruning layer; wrap it with "
                "kk.pruning.prune_koopman(model, target_sparsity) first")
        attach_callback(self.model, self.wrappers)
        super().on_train_begin(logs)  # the monitor watches this model's wrapped weights
        if self._model_id != id(self.model):
            self._model_id = id(self.model)
            self._done_once = set()
            self._step = 0
            self._epoch = 0
            self._changed_at = {}  # group -> monitor step of the snapshot before its last change
            self._zeros = {}
        self._by_step = any(w.schedule is not None and w.schedule.unit == "step"
                            for w in self.wrappers)
        self._step_ran = False  # a step ran whose update is still to do

    def on_train_end(self, logs=None):
        detach_callback(self.model, self.wrappers)
        super().on_train_end(logs)

    def on_train_batch_begin(self, batch, logs=None):
        # Step schedules: the update after step t runs from the hook before step t + 1 (or at
        # the end of the epoch). A begin hook, which Keras runs on the training thread before
        # the step, and which leaves its callbacks asynchronous on JAX and PyTorch (an end
        # hook makes Keras read every batch's logs to the host). It exists whatever the
        # schedules are, as Keras looks for hooks before on_train_begin, and returns at once
        # without step schedules.
        self.monitor._watch_late()  # TensorFlow: a model built in the first step (groups)
        self._step_update()
        self._step_ran = self._by_step

    def on_test_begin(self, logs=None):
        self._step_update()  # the epoch's last step, before fit's validation sees the masks
    def _step_update(self):
        if self._step_ran:
            self._step_ran = False
            self._update("step", self._step)
            self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        self._step_update()  # the epoch's last step, before the monitor's snapshot of it
        super().on_epoch_end(epoch, logs)

    def decide(self, epoch, logs):
        self._update("epoch", self._epoch)
        self._epoch += 1

    # ------------------------------------------------------------------------------------
    # mask updates
    def _due(self, wrapper, unit, t):
        """The sparsity ``wrapper`` must reach now, or ``None``."""
        schedule = wrapper.schedule
        if schedule is None:
            if unit != "epoch" or wrapper.name in self._done_once:
                return None
            full = all(self._stored(name) >= self.window for name, (w, _, _) in
                       self._groups.items() if w is wrapper)
            if not full:
                return None
            self._done_once.add(wrapper.name)
            return wrapper.target_sparsity
        if schedule.unit != unit:
            return None
        update, sparsity = schedule(t)
        return sparsity if update else None

    def _stored(self, name):
        return self.monitor.tracker.stored(name)

    def _update(self, unit, t):
        pools = []  # (sparsity, [group names])
        pooled = [w for w in self.wrappers if w.scope == "global"]
        if pooled:
            sparsity = self._due(pooled[0], unit, t)
            for other in pooled[1:]:
                self._due(other, unit, t)  # keeps the once-only bookkeeping in step
            if sparsity is not None:
                pools.append((sparsity, [name for name, g in self._groups.items()
                                         if g[0].scope == "global"]))
        for wrapper in self.wrappers:
            if wrapper.scope != "layer":
                continue
            sparsity = self._due(wrapper, unit, t)
            if sparsity is not None:
                pools.append((sparsity, [name for name, g in self._groups.items()
                                         if g[0] is wrapper]))
        if not pools:
            return
        used, layers, scores = self._apply(pools)
        record = {"step": t, "sparsity": max(s for s, _ in pools),
                  "criterion": "koopman" if used == {"koopman"} else
                  "magnitude" if used == {"magnitude"} else "mixed",
                  "layers": layers}
        self.updates.append(record)
        logger = self.monitor.logger
        for name, value in record["layers"].items():
            logger.scalar(f"pruning/{name}/sparsity", value, t)
        if scores is not None:
            logger.histogram("pruning/scores", scores, t)
        self.log_event("pruning", f"{unit} {t}: sparsity {record['sparsity']:.3f} "
                       f"({record['criterion']}); " + ", ".join(
                           f"{k} {v:.3f}" for k, v in record["layers"].items()))
        if self.verbose:
            print(f"UpdateKoopmanPruning: {unit} {t}: sparsity {record['sparsity']:.3f} "
                  f"({record['criterion']}); " + ", ".join(
                      f"{k} {v:.3f}" for k, v in record["layers"].items()))

    def _apply(self, pools):
        """Scores, selects and masks ``pools`` in one compiled call (see
        :mod:`keras_koopman.pruning.masks`); returns the criteria used, the sparsity of each
        wrapper and the logged scores (a device tensor, or ``None`` without ``log_dir``).

        The Koopman score of a weight is tried once its window is full and finite and holds
        no change of its mask: a window with a pruning step in it shows the network's answer
        to that step, not training (measured on the digits MLP of ``bench/pruning.py``: within
        one or two updates of an every-epoch schedule the share of the window's modes at 1
        fell from about 0.9 to 0 and the relative motion of the kept weights rose from 0.03 to
        0.3), so until ``window`` snapshots have been taken after the last change the update
        uses magnitude, and records it. The DMD runs on the entries the mask still keeps (entries pruned inside the window jump to zero
        there, and that jump, not a step of training, would otherwise show up as a decaying
        mode and shrink every score of the tensor). A failed DMD (a still or all-zero window)
        falls back to magnitude. The Koopman scores of a tensor are put on the scale of its
        weights (same root mean square over the kept entries): the mode decides which entries
        of a tensor matter, while a global threshold shares the sparsity among tensors as
        magnitude pruning does. Unscaled, one tensor whose mode nearest 1 sits at 0.9 or 1.05
        has all its scores shrunk or inflated by ``|lambda|^t``, and the global threshold can
        empty it (measured: 0.08 validation accuracy in a seed of the CNN bench at 90%).
        """
        self.monitor._sync_state()  # JAX: the weights and masks back in their variables
        names = [name for _, pool in pools for name in pool]
        chosen = set(names)
        others = [name for name in self._groups if name not in chosen]
        koopman = tuple(tuple(self._groups[n][0].criterion == "koopman" for n in pool)
                        for _, pool in pools)
        buffers = self.monitor.buffers
        captured = tuple(id(buffer) for buffer in buffers.values())
        if captured != self._captured:  # the monitor made new buffers: drop the old captures
            self._functions, self._captured = {}, captured
        key = (tuple(tuple(pool) for _, pool in pools), koopman, self.log_dir is not None)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = _mask_update_function()(
                [[(buffers[n], *self._groups[n][1:]) for n in pool] for _, pool in pools],
                koopman, [self._groups[n][2] for n in others], self.log_dir is not None,
                self.horizon)
        stored = {n: self._stored(n) for n in names}
        step = self.monitor.step
        ready = [self._groups[n][0].criterion == "koopman" and stored[n] >= self.window
                 and n not in self.monitor.nonfinite_groups
                 and step - self._changed_at.get(n, -self.window) >= self.window
                 for n in names]
        counts = [int(np.floor(sparsity * sum(self._size(n) for n in pool)))
                  for sparsity, pool in pools]
        code, value = parse_rank(self.rank)
        report, scores = function(
            np.asarray(counts, np.int64), np.asarray(ready, np.bool_),
            np.asarray([max(stored[n] - 1, 0) for n in names], np.int64),
            np.int32(code), np.float64(value))
        report = np.asarray(report)  # the one read of the update
        used = {"koopman" if u else "magnitude" for u in report[:len(names)]}
        zeros = dict(zip(names + others, report[len(names):].tolist()))
        for n in names:  # a window that holds this change shows its transient, not training
            if zeros[n] != self._zeros.get(n, 0):
                self._changed_at[n] = step
        self._zeros.update(zeros)
        layers = {}
        for wrapper in self.wrappers:
            mine = [n for n, g in self._groups.items() if g[0] is wrapper]
            layers[wrapper.name] = (sum(zeros[n] for n in mine)
                                    / max(sum(self._size(n) for n in mine), 1))
        return used, layers, scores if self.log_dir is not None else None

    def _size(self, name):
        return int(np.prod(self._groups[name][1].shape))


def _mask_update_function():
    """The backend's mask update: one ``tf.function`` on TensorFlow
    (:mod:`keras_koopman.pruning.masks`), ``keras.ops`` and host solves on JAX and PyTorch
    (:mod:`keras_koopman.portable.masks`)."""
    return implementation("keras_koopman.pruning.masks:mask_update_function",
                          "keras_koopman.portable.masks:mask_update_function")
