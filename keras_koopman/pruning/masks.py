"""The pruning mask update as one ``tf.function``: scores, selection, new masks, masked weights.

:class:`~keras_koopman.pruning.UpdateKoopmanPruning` calls :func:`mask_update_function` once per
update. Everything runs where the weights live (the GPU when there is one): the DMD of each
weight's window (over its unpruned entries), the Koopman score of each entry, the choice of the
entries to prune (exactly ``floor(sparsity * size)`` of each pool, pruned ones first) and the
assignment of masks and weights. The host gets back one small vector (the criterion used and
the number of pruned entries per weight); the scores stay on the device unless they are logged.

The Koopman score of an entry is ``|phi_j b_j lambda_j^newest|`` (see
:func:`keras_koopman.pruning.koopman_scores`, the NumPy reference): only the mode nearest 1 is
formed, as one product ``X^T c`` with ``c = K_j b_j lambda_j^newest``. Mode normalisation
cancels in that product, so no ``[n, rank]`` modes are built.
"""

from __future__ import annotations

import tensorflow as tf

from keras_koopman.buffers.ring import chronological_gram, float64_products, order_slots
from keras_koopman.dmd import assemble_gram, floor_epsilon, gram_solve, guard_finite
from keras_koopman.portable.masks import on_weight_scale  # keras.ops: every backend

__all__ = ["kth_smallest", "mask_update_function", "on_weight_scale", "select_smallest"]


def koopman_graph_scores(state, keep, code, value, newest, horizon=None, values=None):
    """Scores ``[n]`` float64 of one buffer's entries and whether the DMD succeeded.

    ``state``: the buffer's ``state()`` (after a refresh); ``keep``: float ``[n]``, 1 where the
    entry is unpruned. Pruned entries are zeroed in every snapshot, which is the DMD of the
    unpruned entries alone (their columns add nothing to the Gram matrix) with zero modes there.
    ``horizon=None``: the entry's share of the mode nearest 1 in the newest snapshot; an int
    ``h``: ``|w + predicted motion|``, the entry's current value ``values`` (float64 ``[n]``)
    plus the motion the DMD predicts over the next ``h`` snapshots, every mode included
    (growing ones held at unit modulus), in the weights' own units.
    """
    stored, reference, centred, cross, reference_sq, count = state
    window = tf.shape(stored, tf.int64)[0]
    order = order_slots(count, window)
    all_kept = tf.reduce_all(keep > 0)

    def masked_gram():
        # From the stored (centred) rows, as the buffer's own Gram: float64 products, so the
        # precision does not depend on whether anything is pruned yet.
        centred = tf.gather(stored, order) * tf.cast(keep, stored.dtype)
        kept_reference = reference * keep
        other = tf.cast(kept_reference, stored.dtype) if stored.dtype == tf.float64 \
            else kept_reference
        return assemble_gram(
            float64_products(centred, centred),
            float64_products(centred, other[tf.newaxis, :])[:, 0],
            tf.reduce_sum(tf.square(tf.cast(kept_reference, tf.float64))))

    gram = tf.cond(all_kept, lambda: chronological_gram(centred, cross, reference_sq, count),
                   masked_gram)
    finite, gram = guard_finite(gram)
    floor = floor_epsilon(reference.dtype, "gram")
    n_kept = tf.cast(tf.reduce_sum(keep), tf.int32)
    eigenvalues, combination, _, amplitudes, singular, _ = gram_solve(
        gram, n_kept, code, value, floor, "exact")
    if horizon is None:
        j = tf.argmin(tf.abs(eigenvalues - 1.0))
        weight = amplitudes[j] * eigenvalues[j] ** tf.cast(newest, tf.complex128)
        c = combination[:, j] * weight  # [m] over the chronological snapshots
    else:
        moduli = tf.abs(eigenvalues)
        held = eigenvalues / tf.cast(tf.maximum(moduli, 1.0), tf.complex128)
        now = tf.cast(newest, tf.complex128)
        motion = held ** (now + tf.cast(horizon, tf.complex128)) - eigenvalues ** now
        c = tf.linalg.matvec(combination, amplitudes * motion)
    slots = tf.scatter_nd(order[:, tf.newaxis], c, tf.reshape(window, [1]))
    stacked = tf.stack([tf.math.real(slots), tf.math.imag(slots)], axis=1)  # [window, 2]
    # X^T c with X = stored + 1 reference^T, read from the stored buffer in place.
    product = tf.matmul(tf.cast(stored, reference.dtype), tf.cast(stacked, reference.dtype),
                        transpose_a=True)
    product += reference[:, tf.newaxis] * tf.cast(tf.reduce_sum(stacked, 0), reference.dtype)
    product = tf.cast(product, tf.float64)
    if horizon is None:
        scores = tf.sqrt(tf.reduce_sum(product * product, axis=1))
    else:  # the real part: conjugate pairs cancel the imaginary one
        scores = tf.abs(values + product[:, 0])
    scores = scores * tf.cast(keep, tf.float64)
    valid = finite & (singular[0] > 0) & tf.reduce_all(tf.math.is_finite(scores))
    return scores, valid


_DIGIT = 16  # bits per pass of the radix selection (4 passes over a float64)


def kth_smallest(scores, candidates, k):
    """The ``k``-th smallest (1-based) of the non-negative float64 ``scores`` where
    ``candidates`` is True, by a radix selection: four passes, each counting the next 16 bits of
    the values' IEEE bit patterns (ordered as integers for non-negative floats) with one
    segment sum. Exact, O(n) and free of a sort (TensorFlow's CPU sort of 1e7 float64 takes
    2.2 s here, this 0.13 s; NumPy's ``argpartition`` 0.16 s)."""
    bits = tf.bitcast(scores, tf.int64)
    bins = 1 << _DIGIT
    prefix, remaining, match = tf.constant(0, tf.int64), tf.cast(k, tf.int64), candidates
    for shift in range(64 - _DIGIT, -1, -_DIGIT):
        digit = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, shift), bins - 1),
                        tf.int32)
        if shift != 64 - _DIGIT:  # only the values whose higher digits are the prefix
            match &= tf.equal(tf.bitwise.right_shift(bits, shift + _DIGIT), prefix)
        # A segment sum of int32 ones: it has a GPU kernel (int64 bincount has none, and the
        # GPU bincount refuses deterministic mode).
        counts = tf.math.unsorted_segment_sum(tf.ones_like(digit), tf.where(match, digit, bins),
                                              bins + 1)[:bins]
        total = tf.cumsum(tf.cast(counts, tf.int64))
        d = tf.argmax(tf.cast(total >= remaining, tf.int32), output_type=tf.int64)
        remaining -= tf.where(d > 0, total[tf.maximum(d - 1, 0)], 0)
        prefix = tf.bitwise.bitwise_or(tf.bitwise.left_shift(prefix, _DIGIT), d)
    return tf.bitcast(prefix, tf.float64)


def select_smallest(scores, count):
    """Bool ``[n]``: exactly ``count`` entries of the smallest float64 ``scores`` (ties by
    position). Negative scores (pruned entries) come first; among the others the
    ``count``-th smallest, ``t``, is found by :func:`kth_smallest`; every score below ``t`` is
    taken, and the first scores equal to ``t`` fill up to ``count``."""
    count = tf.cast(count, tf.int64)
    negative = scores < 0
    rest = count - tf.reduce_sum(tf.cast(negative, tf.int64))

    def some():
        kept = ~negative
        threshold = kth_smallest(tf.abs(tf.where(kept, scores, 0.0)), kept, rest)  # -0 -> +0
        below = kept & (scores < threshold)
        tied = kept & tf.equal(scores, threshold)
        room = rest - tf.reduce_sum(tf.cast(below, tf.int64))
        rank = tf.cumsum(tf.cast(tied, tf.int64), exclusive=True)
        return negative | below | (tied & (rank < room))

    def first_negatives():  # count does not reach past the negative scores
        rank = tf.cumsum(tf.cast(negative, tf.int64), exclusive=True)
        return negative & (rank < count)

    return tf.cond(rest > 0, some, first_negatives)


def mask_update_function(groups, koopman, others, log_scores, horizon=None):
    """A ``tf.function`` that updates the masks of ``groups`` in one call.

    Args:
      groups: list of pools, each a list of ``(buffer, weight, mask)``; a pool shares one
        threshold.
      koopman: per pool, per group: whether the wrapper's criterion is Koopman (fixed when
        traced; whether its window is ready is an input).
      others: the masks of the weights in no pool (their pruned entries are counted).
      log_scores: also return the kept scores of all pools (for a histogram).
      horizon: ``None`` (scores from the mode nearest 1, scaled to each tensor's weights) or
        the horizon of the predicted motion added to the weights (see
        :func:`koopman_graph_scores`; in the weights' units already, so not rescaled).

    The function takes ``(counts [pools] int64, ready [groups] bool, newest [groups] int64,
    code, value)`` (``counts``: entries to prune per pool; ``ready``: Koopman scores may be
    tried) and returns ``(report [2 * groups + others] int64, scores)``: per group 1 where the
    Koopman score was used, then per group and per other mask the number of pruned entries.
    """

    def run(counts, ready, newest, code, value):
        used, zeros, logged = [], [], []
        index = 0
        for p, pool in enumerate(groups):
            scores = []
            for g, (buffer, weight, mask) in enumerate(pool):
                values = tf.cast(tf.reshape(weight.value, [-1]), tf.float64)
                keep = tf.cast(tf.reshape(mask.value, [-1]) != 0, buffer.dtype)
                magnitude = tf.abs(values)
                if koopman[p][g]:
                    def tried(buffer=buffer, keep=keep, i=index):
                        buffer.refresh()  # the Gram rows the monitor deferred
                        return koopman_graph_scores(buffer.state(), keep, code, value,
                                                    newest[i], horizon, values)

                    # A tensor pruned to nothing has no DMD: magnitude (all -1 below anyway).
                    raw, valid = tf.cond(ready[index] & tf.reduce_any(keep > 0), tried,
                                         lambda: (magnitude, tf.constant(False)))
                    scaled = raw if horizon is not None else on_weight_scale(raw, values, keep)
                    score = tf.where(valid, scaled, magnitude)
                else:
                    score, valid = magnitude, tf.constant(False)
                # Pruned weights stay pruned: they sort first; a NaN score (NaN weights) sorts
                # last, so the count is still filled from finite scores.
                score = tf.where(tf.math.is_nan(score), tf.constant(float("inf"), tf.float64),
                                 score)
                scores.append(tf.where(keep > 0, score, -1.0))
                used.append(tf.cast(valid, tf.int64))
                index += 1
            flat = tf.concat(scores, axis=0)
            pruned = tf.reduce_sum(tf.cast(flat < 0, tf.int64))
            prune = select_smallest(flat, tf.maximum(counts[p], pruned))
            offset = 0
            for (buffer, weight, mask), score in zip(pool, scores):
                size = score.shape[0]
                piece = tf.reshape(~prune[offset:offset + size], mask.shape)
                offset += size
                new_mask = tf.cast(piece, mask.dtype)
                mask.assign(new_mask)
                weight.assign(weight.value * tf.cast(new_mask, weight.dtype))
                zeros.append(tf.reduce_sum(tf.cast(~piece, tf.int64)))
            if log_scores:
                logged.append(flat[flat >= 0])
        zeros += [tf.reduce_sum(tf.cast(mask.value == 0, tf.int64)) for mask in others]
        report = tf.stack(used + zeros)
        return report, (tf.concat(logged, axis=0) if log_scores else tf.zeros([0], tf.float64))

    compiled = tf.function(run, autograph=False)

    def update(counts, ready, newest, code, value):
        return compiled(tf.constant(counts, tf.int64), tf.constant(ready, tf.bool),
                        tf.constant(newest, tf.int64), tf.constant(code, tf.int32),
                        tf.constant(value, tf.float64))

    update.function = compiled  # the tf.function (its traces: one per fit's pools)
    update.experimental_get_tracing_count = compiled.experimental_get_tracing_count
    return update
