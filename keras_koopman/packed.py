"""Many small observable groups in one buffer: one gather and one batched analysis for all.

A model with thousands of tiny layers would otherwise get thousands of
:class:`~keras_koopman.SnapshotBuffer` objects, each with its own branch in the compiled gather
and its own DMD call in the analysis: tracing and compiling that grows with the number of
groups (about 30 s of XLA compilation and 70 s of tracing for 200 groups here). A
:class:`PackedBuffers` keeps every small group's centred snapshots side by side in one
``[window, total]`` variable; a snapshot of all of them is one scatter, and their Gram matrices
(``[groups, window, window]``, float64) and spectra come from segment sums and one batched
Gram-space DMD (:func:`keras_koopman.dmd.batch_gram_solve`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_koopman import spectrum as spectrum_metrics
from keras_koopman.dmd import assemble_gram, batch_gram_solve, dmd, floor_epsilon

__all__ = ["PackedBuffers"]


class PackedBuffers:
    """The last ``window`` snapshots of many small groups (float32), in one set of variables.

    Args:
      sizes: ``{group name: number of weights}``, in gathering order.
      window: snapshots kept per group (at least 2).
      name: name scope of the variables.

    A group whose snapshot holds NaN or Inf is not written (its count stops; the others go on).
    :meth:`analysis_op` analyses the groups whose count is the highest (all of them unless one
    was skipped): every analysed group then has the same window, oldest first.
    """

    def __init__(self, sizes, window, name="koopman_packed"):
        self.names = list(sizes)
        self.sizes = np.array([int(sizes[n]) for n in self.names], np.int64)
        if self.sizes.size == 0 or np.any(self.sizes < 1):
            raise ValueError("sizes must name at least one group, each with >= 1 weight")
        self.window = int(window)
        self.groups = len(self.names)
        self.total = int(self.sizes.sum())
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.segments = tf.constant(np.repeat(np.arange(self.groups), self.sizes), tf.int32)
        g, w, n = self.groups, self.window, self.total
        with tf.name_scope(name):
            self.buffer = tf.Variable(tf.zeros([w, n], tf.float32), trainable=False,
                                      name="snapshots")
            self.reference = tf.Variable(tf.zeros([n], tf.float32), trainable=False,
                                         name="reference")
            self.centred_gram = tf.Variable(tf.zeros([g, w, w], tf.float64), trainable=False,
                                            name="gram")
            self.cross = tf.Variable(tf.zeros([g, w], tf.float64), trainable=False,
                                     name="cross")
            self.reference_sq = tf.Variable(tf.zeros([g], tf.float64), trainable=False,
                                            name="reference_sq")
            self.counts = tf.Variable(tf.zeros([g], tf.int64), trainable=False, name="counts")
            self.stale = tf.Variable(tf.zeros([w], tf.bool), trainable=False, name="stale")

    @property
    def variables(self):
        return [self.buffer, self.reference, self.centred_gram, self.cross, self.reference_sq,
                self.counts, self.stale]

    @property
    def nbytes(self):
        return sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables)

    def reset(self):
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))

    # ----------------------------------------------------------------------------------------
    def append_op(self, parts):
        """Graph-mode append of one snapshot of every group; ``parts`` are 1-D float32 tensors
        that concatenate to the groups' weights in order. Returns ``[groups]`` bool: False
        where a group held NaN or Inf (that group is not written)."""
        x = tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]
        segments, g, w = self.segments, self.groups, self.window
        finite = tf.math.unsorted_segment_min(
            tf.cast(tf.math.is_finite(x), tf.int32), segments, g) > 0
        write = tf.gather(finite, segments)
        x = tf.where(write, x, 0.0)
        counts = self.counts.read_value()
        first = finite & tf.equal(counts, 0)
        reference = tf.where(tf.gather(first, segments), x, self.reference.read_value())
        x64 = tf.cast(x, tf.float64)
        self.reference_sq.assign(tf.where(
            first, tf.math.unsorted_segment_sum(x64 * x64, segments, g),
            self.reference_sq.read_value()))
        self.reference.assign(reference)
        head = tf.math.floormod(counts, w)  # [g]
        head_entries = tf.gather(head, segments)
        index = tf.stack([head_entries, tf.range(self.total, dtype=tf.int64)], axis=1)
        buffer = self.buffer.read_value()
        centred = tf.where(write, x - reference, tf.gather_nd(buffer, index))
        self.buffer.assign(tf.tensor_scatter_nd_update(buffer, index, centred))
        cross = tf.math.unsorted_segment_sum(
            tf.cast(tf.where(write, centred, 0.0) * reference, tf.float64), segments, g)
        cross_index = tf.stack([tf.range(g, dtype=tf.int64), head], axis=1)
        old_cross = self.cross.read_value()
        self.cross.assign(tf.tensor_scatter_nd_update(
            old_cross, cross_index, tf.where(finite, cross, tf.gather_nd(old_cross, cross_index))))
        written = tf.reduce_any(tf.one_hot(head, w, on_value=True, off_value=False, dtype=tf.bool)
                                & finite[:, tf.newaxis], axis=0)
        self.stale.assign(self.stale.read_value() | written)
        self.counts.assign_add(tf.cast(finite, tf.int64))
        return finite

    def refresh_op(self):
        """Computes the Gram rows of the slots written since the last refresh (graph mode)."""
        buffer = tf.cast(self.buffer.read_value(), tf.float64)  # products in float64
        stale = self.stale.read_value()
        gram = self.centred_gram.read_value()
        for j in range(self.window):

            def row(gram=gram, j=j):
                products = tf.transpose(buffer * buffer[j][tf.newaxis, :])  # [n, w]
                rows = tf.math.unsorted_segment_sum(products, self.segments,
                                                    self.groups)  # [g, w]
                at_j = tf.one_hot(j, self.window, on_value=True, off_value=False,
                                  dtype=tf.bool)
                gram = tf.where(at_j[tf.newaxis, :, tf.newaxis], rows[:, tf.newaxis, :], gram)
                return tf.where(at_j[tf.newaxis, tf.newaxis, :], rows[:, :, tf.newaxis], gram)

            gram = tf.cond(stale[j], row, lambda gram=gram: gram)
        self.centred_gram.assign(gram)
        self.stale.assign(tf.zeros_like(stale))

    def analysis_op(self, code, value, tolerance):
        """Spectra, amplitudes, residuals, ranks, metrics and motion of every group whose count
        is the highest (``analysed`` marks them), as ``[groups, ...]`` tensors; run
        :meth:`refresh_op` first."""
        counts = self.counts.read_value()
        count = tf.reduce_max(counts)
        stored = tf.minimum(count, self.window)
        order = tf.math.floormod(count - stored + tf.range(stored), self.window)
        centred = tf.gather(tf.gather(self.centred_gram.read_value(), order, axis=1), order,
                            axis=2)
        gram = assemble_gram(centred, tf.gather(self.cross.read_value(), order, axis=1),
                             self.reference_sq.read_value())
        finite = tf.reduce_all(tf.math.is_finite(gram), axis=[1, 2])
        gram = tf.where(finite[:, tf.newaxis, tf.newaxis], gram, tf.zeros_like(gram))
        floor = floor_epsilon(tf.float32, "gram")
        eigenvalues, _, amplitudes, residuals, singular, rank = batch_gram_solve(
            gram, tf.constant(self.sizes), code, value, floor)
        outputs = dict(analysed=tf.equal(counts, count), finite=finite, eigenvalues=eigenvalues,
                       amplitudes=amplitudes, residuals=residuals, rank=rank,
                       top_singular=singular[:, 0],
                       motion=spectrum_metrics.window_motion(gram))
        outputs.update(spectrum_metrics.summary_batch(eigenvalues, amplitudes, residuals, rank,
                                                      tolerance))
        return outputs

    # ----------------------------------------------------------------------------------------
    def snapshots(self, index):
        """Group ``index``'s stored snapshots ``[stored, size]``, oldest first (eager)."""
        count = int(self.counts[index].numpy())
        stored = min(count, self.window)
        order = (count - stored + np.arange(stored)) % self.window
        start, size = int(self.offsets[index]), int(self.sizes[index])
        block = tf.gather(self.buffer[:, start:start + size], order)
        return block + self.reference[start:start + size][tf.newaxis, :]


class PackedView:
    """One group of a :class:`PackedBuffers`, with the reading side of a ``SnapshotBuffer``
    (``len``, ``count``, ``snapshots()``, ``dmd()``) for callbacks that read single groups."""

    sketch = None
    storage_dtype = tf.float32
    dtype = tf.float32

    def __init__(self, pack, index):
        self.pack, self.index = pack, index
        self.n_features = int(pack.sizes[index])
        self.window = pack.window

    @property
    def count(self):
        return int(self.pack.counts[self.index].numpy())

    def __len__(self):
        return min(self.count, self.window)

    @property
    def variables(self):
        return self.pack.variables

    @property
    def nbytes(self):
        return self.pack.nbytes // self.pack.groups

    def snapshots(self):
        return self.pack.snapshots(self.index)

    def dmd(self, rank=None, method="exact", dt=1.0, modes=True):
        """``kk.dmd`` of this group's stored snapshots."""
        return dmd(self.snapshots(), rank=rank, method=method, dt=dt, modes=modes)

    def __repr__(self):
        return (f"PackedView(group={self.pack.names[self.index]!r}, "
                f"n_features={self.n_features}, window={self.window}, count={self.count})")
