"""The pruning mask update on JAX and PyTorch (what :mod:`keras_koopman.pruning.masks` is on
TensorFlow, with the same inputs, outputs and rules).

Per tensor, the Koopman score needs the float64 Gram matrix of its window over the entries its
mask keeps (the tracker's own when nothing is pruned yet; else one float64 product of the
masked snapshots on the device), the ``[m, m]`` eigenproblem on the host (as every analysis
here) and one product ``X^T c`` on the device for the mode nearest 1. The selection (exactly
``count`` entries of a pool, pruned ones first, ties by position) is a stable sort on the
device, and masks and weights are assigned there; the host reads a few numbers per tensor
(whether it is all kept, whether its scores are finite, its count of pruned entries).
"""

from __future__ import annotations

import numpy as np

from keras_koopman import host_dmd
from keras_koopman._backend import backend
from keras_koopman.portable import device as dev

__all__ = ["koopman_scores", "mask_update_function", "on_weight_scale", "stable_argsort"]


def stable_argsort(x):
    """Indices that sort the 1-D tensor ``x``, equal values in their order (``keras.ops``
    does not promise a stable sort)."""
    if backend() == "torch":
        import torch

        return torch.argsort(x, stable=True)
    import jax.numpy as jnp

    return jnp.argsort(x, stable=True)


def koopman_scores(view, keep, code, value, newest, horizon=None, values=None):
    """``(scores [n] float64, valid)`` of one group's entries (see
    :func:`keras_koopman.pruning.masks.koopman_graph_scores`): ``view`` is the tracker's
    buffer of the group, ``keep`` float32 ``[n]`` (1 where unpruned)."""
    import keras

    ops = keras.ops
    snapshots = view.snapshots()  # [m, n], oldest first
    if bool(ops.all(keep > 0)):
        gram = view.gram()
    else:
        gram = dev.to_host(dev.gram(ops.cast(snapshots * keep[None, :], "float64")))
    if not np.all(np.isfinite(gram)):
        return None, False
    n_kept = int(dev.to_host(ops.sum(keep)))
    floor = host_dmd.floor_epsilon(np.float32, "gram")
    eigenvalues, combination, _, amplitudes, singular, _ = host_dmd.gram_solve(
        gram, n_kept, code, value, floor, "exact")
    if singular.size == 0 or not singular[0] > 0:
        return None, False
    if horizon is None:
        j = int(np.argmin(np.abs(eigenvalues - 1.0)))
        c = combination[:, j] * (amplitudes[j] * eigenvalues[j] ** newest)
    else:
        held = eigenvalues / np.maximum(np.abs(eigenvalues), 1.0)
        motion = held ** (newest + horizon) - eigenvalues ** newest
        c = combination @ (amplitudes * motion)
    # In the snapshots' precision, as TensorFlow's update (float32 weights: float32 products).
    dtype = keras.backend.standardize_dtype(snapshots.dtype)
    stacked = dev.to_tensor(np.stack([c.real, c.imag], axis=1), dtype)  # [m, 2]
    product = ops.cast(dev.matmul(ops.transpose(snapshots), stacked), "float64")  # [n, 2]
    if horizon is None:
        scores = ops.sqrt(ops.sum(product * product, axis=1))
    else:  # the real part: conjugate pairs cancel the imaginary one
        scores = ops.abs(values + product[:, 0])
    scores = scores * ops.cast(keep, "float64")
    return scores, bool(ops.all(ops.isfinite(scores)))


def on_weight_scale(scores, values, keep):
    """``scores`` scaled to the root mean square of the kept ``values`` (float64 ``[n]``)."""
    import keras

    ops = keras.ops
    keep = ops.cast(keep, "float64")
    kept = ops.maximum(ops.sum(keep), 1.0)
    size = ops.sqrt(ops.sum(scores * scores * keep) / kept)
    target = ops.sqrt(ops.sum(values * values * keep) / kept)
    return ops.where(size > 0, scores * (target / ops.where(size > 0, size, 1.0)), scores)


def mask_update_function(groups, koopman, others, log_scores, horizon=None):
    """The mask update of ``groups`` (see :func:`keras_koopman.pruning.masks.
    mask_update_function`: the same arguments, the same function of ``(counts, ready, newest,
    code, value)`` returning ``(report, scores)``; here ``report`` is NumPy and ``scores`` a
    NumPy array of the kept scores when ``log_scores``)."""
    import keras

    ops = keras.ops

    def run(counts, ready, newest, code, value):
        used, zeros, logged = [], [], []
        index = 0
        for p, pool in enumerate(groups):
            scores = []
            for g, (view, weight, mask) in enumerate(pool):
                values = ops.cast(ops.reshape(weight.value, (-1,)), "float64")
                keep = ops.cast(ops.reshape(mask.value, (-1,)) != 0, "float32")
                magnitude = ops.abs(values)
                score, valid = magnitude, False
                if koopman[p][g] and ready[index] and bool(ops.any(keep > 0)):
                    raw, valid = koopman_scores(view, keep, int(code), float(value),
                                                int(newest[index]), horizon, values)
                    if valid:
                        score = raw if horizon is not None else on_weight_scale(raw, values,
                                                                                 keep)
                # Pruned weights stay pruned (they sort first); a NaN score sorts last.
                score = ops.where(ops.isnan(score), float("inf"), score)
                scores.append(ops.where(keep > 0, score, -1.0))
                used.append(int(valid))
                index += 1
            flat = ops.concatenate(scores, axis=0)
            pruned = int(dev.to_host(ops.sum(ops.cast(flat < 0, "int32"))))
            count = max(int(counts[p]), pruned)
            n = int(flat.shape[0])
            if count > 0:
                order = stable_argsort(flat)[:count]
                prune = ops.scatter(ops.expand_dims(order, 1), ops.ones((count,), "int32"),
                                    (n,)) > 0
            else:
                prune = ops.zeros((n,), "bool")
            offset = 0
            for (view, weight, mask), score in zip(pool, scores):
                size = int(score.shape[0])
                piece = ops.reshape(ops.logical_not(prune[offset:offset + size]), mask.shape)
                offset += size
                mask.assign(ops.cast(piece, mask.dtype))
                weight.assign(weight.value * ops.cast(piece, weight.dtype))
                zeros.append(size - int(dev.to_host(ops.sum(ops.cast(piece, "int32")))))
            if log_scores:
                values = dev.to_host(flat)
                logged.append(values[values >= 0])
        zeros += [int(np.sum(dev.to_host(mask.value) == 0)) for mask in others]
        report = np.asarray(used + zeros, np.int64)
        return report, (np.concatenate(logged) if log_scores else np.zeros(0))

    return run
