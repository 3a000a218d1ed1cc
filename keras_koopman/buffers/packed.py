"""Many small observable groups in one buffer: one gather and one batched analysis for all.

A model with thousands of tiny layers would otherwise get thousands of
:class:`~keras_koopman.SnapshotBuffer` objects, each with its own branch in the compiled gather
and its own DMD call in the analysis: tracing and compiling that grows with the number of
groups (about 30 s of XLA compilation and 70 s of tracing for 200 groups here). A
:class:`PackedBuffers` keeps every small group's centred snapshots side by side in one
``[window, total]`` variable; a snapshot of all of them is one scatter, and their Gram matrices
(``[groups, window, window]``, float64) and spectra come from segment sums and one batched
Gram-space DMD (:func:`keras_koopman.host_dmd.batch_gram_solve`, on the host).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_koopman.buffers.ring import GramReader
from keras_koopman.dmd import assemble_gram

__all__ = ["PackedBuffers", "PackedView"]


class PackedBuffers:
    """The last ``window`` snapshots of many small groups (float32), in one set of variables.

    Args:
      sizes: ``{group name: number of weights}``, in gathering order.
      window: snapshots kept per group (at least 2).
      name: name scope of the variables.

    A group whose snapshot holds NaN or Inf is not written (its count stops; the others go on).
    :meth:`grams_op` hands over the Gram matrices of the groups whose count is the highest (all of them unless one
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
        self._refresh_function = None

    @property
    def variables(self):
        return [self.buffer, self.reference, self.centred_gram, self.cross, self.reference_sq,
                self.counts, self.stale]

    @property
    def nbytes(self):
        return sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables)

    def reset(self):
        """Forgets every group's snapshots."""
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))

    def reset_group(self, index):
        """Forgets group ``index``'s snapshots only. Its count then lags the others', so the
        batched analysis skips it until the whole pack is reset; its
        :class:`PackedView` still reads and analyses it on its own."""
        start, end = int(self.offsets[index]), int(self.offsets[index] + self.sizes[index])
        self.buffer[:, start:end].assign(tf.zeros([self.window, end - start], tf.float32))
        self.reference[start:end].assign(tf.zeros([end - start], tf.float32))
        self.centred_gram[index].assign(tf.zeros([self.window, self.window], tf.float64))
        self.cross[index].assign(tf.zeros([self.window], tf.float64))
        self.reference_sq[index].assign(tf.constant(0.0, tf.float64))
        self.counts[index].assign(tf.constant(0, tf.int64))

    def refresh(self):
        """Computes the Gram rows of the slots written since the last refresh (eager)."""
        if self._refresh_function is None:
            self._refresh_function = tf.function(self.refresh_op, autograph=False)
        self._refresh_function()

    def views(self):
        """One :class:`PackedView` per group, in order."""
        return [PackedView(self, index) for index in range(self.groups)]

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
            tf.cast(tf.where(write, centred, 0.0), tf.float64) * tf.cast(reference, tf.float64),
            segments, g)
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

    def grams_op(self):
        """``counts [groups]`` and the chronological Gram matrices ``[groups, s, s]`` (float64)
        of the ``s`` newest snapshots, where ``s`` is what the fullest group holds (graph mode;
        run :meth:`refresh_op` first). The spectra come from these on the host
        (:func:`keras_koopman.host_dmd.batch_gram_solve`)."""
        counts = self.counts.read_value()
        count = tf.reduce_max(counts)
        stored = tf.minimum(count, self.window)
        order = tf.math.floormod(count - stored + tf.range(stored), self.window)
        centred = tf.gather(tf.gather(self.centred_gram.read_value(), order, axis=1), order,
                            axis=2)
        gram = assemble_gram(centred, tf.gather(self.cross.read_value(), order, axis=1),
                             self.reference_sq.read_value())
        return {"counts": counts, "gram": gram}


class PackedView(GramReader):
    """One group of a :class:`PackedBuffers`, with the whole buffer protocol of a
    :class:`~keras_koopman.SnapshotBuffer` (see :mod:`keras_koopman.buffers`): the same
    ``snapshots()``, ``gram()`` and ``dmd()`` for the same data, since both read a state tuple
    of the same form (here: this group's columns of the pack and its slice of the Gram
    variables). Snapshots are appended for every group at once through the pack's
    :meth:`PackedBuffers.append_op`; ``variables`` are the pack's (shared by its groups), and
    ``nbytes`` is this group's share, as much as a ``SnapshotBuffer`` of its size holds."""

    sketch = None
    storage_dtype = tf.float32
    dtype = tf.float32

    def __init__(self, pack, index):
        self.pack, self.index = pack, int(index)
        self.name = pack.names[self.index]
        self.n_features = int(pack.sizes[self.index])
        self.window = pack.window
        self._start = int(pack.offsets[self.index])

    @property
    def count(self):
        return int(self.pack.counts[self.index].numpy())

    @property
    def variables(self):
        """The pack's variables (shared with its other groups)."""
        return self.pack.variables

    @property
    def nbytes(self):
        """Bytes of this group's share: its snapshot columns and reference (float32), its
        Gram matrix, cross terms and squared reference norm (float64), its count and the stale
        flags, as a ``SnapshotBuffer`` of the same size holds."""
        n, w = self.n_features, self.window
        return 4 * (w * n + n) + 8 * (w * w + w + 1) + 8 + w

    def state(self):
        start, end = self._start, self._start + self.n_features
        pack, i = self.pack, self.index
        return (pack.buffer.read_value()[:, start:end], pack.reference.read_value()[start:end],
                pack.centred_gram.read_value()[i], pack.cross.read_value()[i],
                pack.reference_sq.read_value()[i], pack.counts.read_value()[i])

    def refresh(self):
        self.pack.refresh()

    def reset(self):
        """Forgets this group's snapshots (see :meth:`PackedBuffers.reset_group`)."""
        self.pack.reset_group(self.index)

    def __repr__(self):
        return (f"PackedView(group={self.name!r}, n_features={self.n_features}, "
                f"window={self.window}, count={self.count})")
