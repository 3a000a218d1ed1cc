"""UpdateKoopmanPruning: gathers the wrapped weights' trajectory and updates the masks."""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_koopman._validation import check_int, check_log_dir
from keras_koopman.callbacks.base import KoopmanCallback
from keras_koopman.callbacks.monitor import KoopmanMonitor
from keras_koopman.dmd import dmd, parse_rank
from keras_koopman.pruning.wrapper import attach_callback, detach_callback, pruning_wrappers

__all__ = ["UpdateKoopmanPruning", "koopman_scores"]


def koopman_scores(result, newest):
    """Score of each weight: ``|b_j lambda_j^newest phi_j|`` for the eigenvalue ``lambda_j``
    nearest 1, i.e. the size of each weight's share of the mode that carries where training is
    heading, as it stands in the newest snapshot (``newest`` = its index in the window).

    Args:
      result: a :class:`keras_koopman.DMDResult` with modes.
      newest: index of the newest snapshot (window length - 1).

    Returns:
      float64 array ``[n]``.
    """
    eigenvalues = np.asarray(result.eigenvalues)
    j = int(np.argmin(np.abs(eigenvalues - 1.0)))
    weight = np.asarray(result.amplitudes)[j] * eigenvalues[j] ** newest
    return np.abs(np.asarray(result.modes)[:, j] * weight)


class UpdateKoopmanPruning(KoopmanCallback):
    """Updates the masks of every :class:`KoopmanPruning` layer of the model during ``fit``.

    A :class:`keras_koopman.callbacks.KoopmanMonitor` (gathering only, one group per wrapped
    weight) keeps the last ``window`` snapshots of the wrapped weights on the device. When a
    wrapper's schedule says so (at the end of a step or an epoch, per its ``unit``; without a
    schedule: once, as soon as the window is full), each weight is scored and the lowest scores
    are masked out up to the scheduled sparsity:

    * ``criterion="koopman"``: DMD of the weight's window (over the entries not yet pruned);
      the score is the magnitude of its component in the Koopman mode of the eigenvalue nearest
      1 (see :func:`koopman_scores`). Before the window is full the magnitude is used.
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

    def __init__(self, window=10, rank=None, log_dir=None, verbose=0):
        window = check_int(window, "window", 3)
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
        self._by_step = any(w.schedule is not None and w.schedule.unit == "step"
                            for w in self.wrappers)

    def on_train_end(self, logs=None):
        detach_callback(self.model, self.wrappers)
        super().on_train_end(logs)

    def on_train_batch_end(self, batch, logs=None):
        # Keras decides before on_train_begin whether batch hooks run, so this one always
        # exists (as TF-MOT's step callback does); it returns at once without step schedules.
        if self._by_step:
            self._update("step", self._step)
            self._step += 1

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
        pools = []
        pooled = [w for w in self.wrappers if w.scope == "global"]
        if pooled:
            sparsity = self._due(pooled[0], unit, t)
            for other in pooled[1:]:
                self._due(other, unit, t)  # keeps the once-only bookkeeping in step
            if sparsity is not None:
                pools.append((sparsity, [g for g in self._groups.items()
                                         if g[1][0].scope == "global"]))
        for wrapper in self.wrappers:
            if wrapper.scope != "layer":
                continue
            sparsity = self._due(wrapper, unit, t)
            if sparsity is not None:
                for group in self._groups.items():
                    if group[1][0] is wrapper:
                        pools.append((sparsity, [group]))
        if not pools:
            return
        used, all_scores = set(), []
        for sparsity, groups in pools:
            scores = []
            for name, (wrapper, weight, mask) in groups:
                flat_mask = np.asarray(mask.numpy()).ravel()
                score, how = self._score(name, wrapper, weight, flat_mask)
                used.add(how)
                # Pruned weights stay pruned: they sort first.
                score = np.where(flat_mask == 0, -1.0, score)
                scores.append(score)
                all_scores.append(score[score >= 0])
            flat = np.concatenate(scores)
            count = int(np.floor(sparsity * flat.size))
            keep = np.ones(flat.size, bool)
            if count:
                keep[np.argpartition(flat, count - 1)[:count]] = False
            offset = 0
            for (name, (wrapper, weight, mask)), score in zip(groups, scores):
                piece = keep[offset:offset + score.size].reshape(mask.shape)
                offset += score.size
                mask.assign(piece.astype(mask.dtype))
                weight.assign(weight * keras.ops.cast(mask, weight.dtype))
        record = {"step": t, "sparsity": max(s for s, _ in pools),
                  "criterion": "koopman" if used == {"koopman"} else
                  "magnitude" if used == {"magnitude"} else "mixed",
                  "layers": {w.name: w.sparsity() for w in self.wrappers}}
        self.updates.append(record)
        logger = self.monitor.logger
        for name, value in record["layers"].items():
            logger.scalar(f"pruning/{name}/sparsity", value, t)
        logger.histogram("pruning/scores", np.concatenate(all_scores), t)
        if self.verbose:
            print(f"UpdateKoopmanPruning: {unit} {t}: sparsity {record['sparsity']:.3f} "
                  f"({record['criterion']}); " + ", ".join(
                      f"{k} {v:.3f}" for k, v in record["layers"].items()))

    def _score(self, name, wrapper, weight, mask):
        """``(scores [size], criterion used)`` for one wrapped weight (``mask``: its flat mask).

        The DMD runs on the entries the mask still keeps: entries pruned inside the window
        jump to zero there, and that jump (not a step of training) would otherwise show up as a
        decaying mode and shrink every score of the tensor. The Koopman scores of a tensor are
        then put on the scale of its weights (same root mean square over the kept entries): the
        mode decides which entries of a tensor matter, while a global threshold shares the
        sparsity among tensors as magnitude pruning does. Unscaled, one tensor whose mode
        nearest 1 sits at 0.9 or 1.05 has all its scores shrunk or inflated by ``|lambda|^t``,
        and the global threshold can empty it (measured: 0.08 validation accuracy in a seed of
        the CNN bench at 90%).
        """
        if wrapper.criterion == "koopman":
            stored = self._stored(name)
            if stored >= self.window and name not in self.monitor.nonfinite_groups:
                kept = np.flatnonzero(mask)
                scores = np.zeros(int(np.prod(weight.shape)))
                try:
                    buffer = self.monitor.buffers[name]
                    if kept.size == scores.size:
                        result = buffer.dmd(rank=self.rank)
                    else:
                        result = dmd(keras.ops.take(buffer.snapshots(), kept, axis=1),
                                     rank=self.rank)
                    scores[kept] = _on_weight_scale(koopman_scores(result, stored - 1),
                                                    weight, kept)
                    return scores, "koopman"
                except ValueError:  # a still or all-zero window: fall back to magnitude
                    pass
        return np.abs(np.asarray(weight.numpy(), np.float64)).ravel(), "magnitude"


def _on_weight_scale(scores, weight, kept):
    """``scores`` (of the ``kept`` entries) scaled to the root mean square of those weights."""
    values = np.asarray(weight.numpy(), np.float64).ravel()[kept]
    size = np.sqrt(np.mean(scores**2))
    return scores * (np.sqrt(np.mean(values**2)) / size) if size > 0 else scores
