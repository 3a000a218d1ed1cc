"""On-device snapshot ring buffers with a streaming float64 Gram matrix."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from keras_koopman._sketch import make_sketch, no_modes_error
from keras_koopman._tf import cached_function
from keras_koopman._validation import DataError, check_dtype, check_int, check_window
from keras_koopman.dmd import (
    assemble_gram,
    check_dt,
    check_method,
    floor_epsilon,
    gram_solve,
    guard_finite,
    form_modes,
    parse_rank,
    unit_modes,
    result_from,
)

__all__ = ["SnapshotBuffer", "GramReader"]


# Columns per block when stored snapshots are widened to float64 for a product: bounds the
# transient copy to window * _BLOCK * 8 bytes.
_BLOCK = 1 << 18


def float64_products(a, b):
    """``a b^T`` in float64 (``a [r, n]``, ``b [w, n]``; ``n`` static or not). Stored float32
    or bfloat16 snapshots are widened to float64 block by block before the product, never the
    whole buffer at once: the products of two float32 numbers are exact in float64, and a
    float32 accumulation over a million weights would cost the Gram matrix (and, squared, the
    eigenvalues) digits (measured: eigenvalue errors ~1e-2 at 1e6 weights with float32
    products, ~1e-5 with float64)."""
    if a.dtype == tf.float64:
        return tf.matmul(a, b, transpose_b=True)
    n = b.shape[1]
    if n is not None:
        n = int(n)
        total = None
        for start in range(0, n, _BLOCK):
            # One block at a time: each waits for the sum so far, so at most one widened block
            # is alive (TensorFlow would otherwise run them all at once).
            with tf.control_dependencies([] if total is None else [total]):
                block = tf.matmul(tf.cast(a[:, start:start + _BLOCK], tf.float64),
                                  tf.cast(b[:, start:start + _BLOCK], tf.float64),
                                  transpose_b=True)
            total = block if total is None else total + block
        return total
    n = tf.shape(b)[1]

    def body(start, total):
        size = tf.minimum(_BLOCK, n - start)
        block = tf.matmul(tf.cast(tf.slice(a, [0, start], [-1, size]), tf.float64),
                          tf.cast(tf.slice(b, [0, start], [-1, size]), tf.float64),
                          transpose_b=True)
        return start + _BLOCK, total + block

    zeros = tf.zeros(tf.stack([tf.shape(a)[0], tf.shape(b)[0]]), tf.float64)
    return tf.while_loop(lambda start, _: start < n, body, [tf.constant(0), zeros],
                         parallel_iterations=1)[1]


def refresh_gram(stored, gram, stale):
    """The centred Gram matrix ``gram`` with the rows and columns flagged ``stale`` computed
    from ``stored`` (graph mode; shapes may be dynamic)."""

    def some_rows():
        index = tf.where(stale)  # [s, 1] int64
        return _replace_rows(gram, index, float64_products(tf.gather_nd(stored, index), stored))

    def every_row():
        # One product of the buffer with itself: cheaper than gathering many rows.
        return float64_products(stored, stored)

    count = tf.reduce_sum(tf.cast(stale, tf.int32))
    many = 4 * count >= tf.shape(stale)[0]
    return tf.cond(count > 0, lambda: tf.cond(many, every_row, some_rows), lambda: gram)


def refresh_function(storage_dtype):
    """:func:`refresh_gram` traced once per process for each storage dtype."""

    def build():
        return tf.function(refresh_gram, autograph=False,
                           experimental_attributes={"_noinline": True}, input_signature=[
            tf.TensorSpec([None, None], storage_dtype), tf.TensorSpec([None, None], tf.float64),
            tf.TensorSpec([None], tf.bool)])

    return cached_function(("refresh_gram", tf.as_dtype(storage_dtype).name), build)


def _project(sketch, parts, sizes, dtype):
    """``S x`` of a :class:`~keras_koopman._sketch.Sketch` for ``x`` given as consecutive 1-D
    ``parts`` of lengths ``sizes`` (graph mode)."""
    values = []
    for part, piece in zip(parts, sketch.pieces(sizes)):
        if piece is not None:
            local, coefficients = piece
            values.append(tf.gather(part, local) * tf.constant(coefficients, dtype))
    values = tf.concat(values, axis=0) if len(values) > 1 else values[0]
    return tf.math.unsorted_segment_sum(values, sketch.rows, sketch.k)


class GramReader:
    """The reading side of the buffer protocol, shared by :class:`SnapshotBuffer` and
    :class:`keras_koopman.buffers.PackedView`: everything comes from :meth:`state` (after
    :meth:`refresh`), so both give the same snapshots, Gram matrix and DMD for the same data.

    A subclass provides ``window``, ``dtype``, ``storage_dtype``, ``sketch``, ``count``,
    ``state()`` and ``refresh()``.
    """

    @property
    def has_modes(self):
        """Whether :meth:`dmd` can form modes (``False`` for a sketched buffer)."""
        return self.sketch is None

    def __len__(self):
        return min(self.count, self.window)

    def snapshots(self):
        """The stored snapshots ``[len(self), n_features]``, oldest first (time-major).

        They are stored relative to the first snapshot ever appended, so each comes back equal to
        what was appended up to one rounding in the buffer's dtype.
        """
        stored, reference, _, _, _, count = self.state()
        # Gather from a read tensor: a gather on the variable itself would switch it to
        # copy-on-read, making every later read copy the whole buffer.
        order = order_slots(count, self.window)
        return tf.cast(tf.gather(stored, order), self.dtype) + reference[tf.newaxis, :]

    def gram(self):
        """Float64 Gram matrix ``S S^T`` of ``S = snapshots()``, ``[len(self), len(self)]``."""
        self.refresh()
        _, _, centred, cross, reference_sq, count = self.state()
        return chronological_gram(centred, cross, reference_sq, count)

    def dmd(self, rank=None, method="exact", dt=1.0, modes=True):
        """DMD of the stored snapshots through the streaming Gram matrix.

        Same result as ``kk.dmd(self.snapshots(), rank, method, dt, solver="gram")``, but the
        Gram matrix is already there: only ``[window, window]`` eigenproblems run, and the
        snapshots are read once to form the modes.

        Args:
          rank, method, dt: as in :func:`keras_koopman.dmd`.
          modes: ``False`` skips the one pass over the snapshots (``result.modes`` is ``None``):
            the spectrum, amplitudes and residuals then cost only ``[window, window]`` work.
            A sketched buffer has no modes: ``modes=True`` raises there.

        Returns:
          A :class:`keras_koopman.DMDResult`.

        Raises:
          ValueError: fewer than 2 snapshots stored, or bad arguments.
        """
        code, value = parse_rank(rank)
        check_method(method)
        dt = check_dt(dt)
        if modes and not self.has_modes:
            raise no_modes_error(self.sketch)
        stored = len(self)
        if stored < 2:
            raise ValueError(f"{type(self).__name__}.dmd needs at least 2 snapshots; {stored} "
                             "stored so far")
        self.refresh()
        function = _dmd_function(method, bool(modes), self.storage_dtype, self.dtype)
        outputs = function(*self.state(), tf.constant(code, tf.int32),
                           tf.constant(value, tf.float64))
        return result_from(outputs, dt, method, "the stored snapshots")


class SnapshotBuffer(GramReader):
    """A ring buffer of the last ``window`` snapshots of ``n_features`` numbers, on device.

    The snapshots live in a ``tf.Variable`` ``[window, n_features]`` on the device where the
    buffer is created (inside a ``tf.distribute`` scope or ``tf.device`` block, where you create
    it). Next to them a ``[window, window]`` float64 Gram matrix: :meth:`append` only writes the
    snapshot (``O(n_features)``, in place) and marks its Gram row stale; the next :meth:`gram`
    or :meth:`dmd` computes every stale row in one float64 product with the buffer
    (``O(n_features * window)`` per row, exact products of the stored float32 numbers summed in
    float64). Appending many snapshots between two reads thus costs one product, not one per
    snapshot. :meth:`dmd` then gets eigenvalues and residuals from the Gram matrix alone (method
    of snapshots) and reads the stored snapshots once, to form the modes.

    For precision the buffer stores each snapshot minus the first one ever appended (the
    reference), and the Gram matrix is assembled from the centred parts in float64: weight
    vectors of size ~1 that move by ~1e-3 per step keep the digits of their motion.

    **Big vectors.** ``storage_dtype="bfloat16"`` stores the centred snapshots in half the
    memory (about 3 significant digits of the motion); the Gram matrix is still accumulated in
    float64 (products widened to float64 block by block). ``sketch=k`` stores a fixed sparse
    random projection of each snapshot to ``k`` numbers instead (compressed DMD): each of the
    ``k`` sketch coordinates is a signed sum of ``sketch_density`` weights sampled once without
    replacement (default ``min(64, n_features // k)``), so memory is ``O(k * window)`` and a
    snapshot reads ``k * sketch_density`` weights whatever ``n_features`` is (the NaN/Inf check
    too: a NaN in a weight the sketch does not sample cannot reach the buffer, and goes unseen). For low-rank
    weight dynamics (rank below ``window``, spread over many weights) the sketch keeps the
    eigenvalues; :meth:`snapshots` then returns the sketched ``[count, k]`` vectors and modes
    are not available (``dmd(modes=True)`` raises): callers that need modes (the pruning
    callback, the accelerator) use unsketched buffers.

    Snapshots are time-major: :meth:`snapshots` returns ``[count, n_features]``, oldest first.

    Args:
      n_features: length of one snapshot vector.
      window: how many of the latest snapshots are kept (at least 2).
      dtype: ``"float32"`` (default) or ``"float64"``: the snapshots' dtype (what
        :meth:`append` takes and :meth:`snapshots` returns).
      name: name scope for the variables.
      sketch: ``None`` (store snapshots in full) or ``k < n_features``: store a ``k``-number
        random sketch of each snapshot.
      storage_dtype: ``None`` (= ``dtype``), ``"float32"``, ``"float64"`` or ``"bfloat16"``.
      sketch_density: weights summed per sketch coordinate (``None``: ``min(64, n // k)``).
      seed: seed of the sketch.

    Example:

    >>> import numpy as np, keras_koopman as kk
    >>> buffer = kk.SnapshotBuffer(n_features=3, window=8)
    >>> for k in range(12):                       # x_k = 0.8**k * [1, 2, 3]
    ...     buffer.append(0.8 ** k * np.array([1.0, 2.0, 3.0], np.float32))
    >>> buffer.count, buffer.snapshots().shape    # the 8 newest are kept
    (12, TensorShape([8, 3]))
    >>> round(float(buffer.dmd(rank=1).eigenvalues.numpy()[0].real), 4)
    0.8
    >>> big = kk.SnapshotBuffer(n_features=100_000, window=8, sketch=256)   # 256 numbers kept
    >>> for k in range(8):
    ...     big.append(0.8 ** k * np.ones(100_000, np.float32))
    >>> spectrum = big.dmd(rank=1, modes=False).eigenvalues.numpy()
    >>> big.nbytes < 100_000 * 4, round(float(spectrum[0].real), 4)
    (True, 0.8)
    """

    def __init__(self, n_features, window, dtype="float32", name="snapshot_buffer", *,
                 sketch=None, storage_dtype=None, sketch_density=None, seed=0):
        self._n = check_int(n_features, "n_features", 1)
        self._window = check_window(window, 2)
        self._dtype = check_dtype(dtype)
        self._storage = (self._dtype if storage_dtype is None else check_dtype(
            storage_dtype, "storage_dtype", (tf.float32, tf.float64, tf.bfloat16)))
        self._sketch = make_sketch(self._n, sketch, sketch_density, seed)
        self._width = self._n if self._sketch is None else self._sketch.k
        with tf.name_scope(name):
            self._buffer = tf.Variable(
                tf.zeros([self._window, self._width], self._storage), trainable=False,
                name="snapshots"
            )
            self._reference = tf.Variable(
                tf.zeros([self._width], self._dtype), trainable=False, name="reference"
            )
            self._centred_gram = tf.Variable(
                tf.zeros([self._window, self._window], tf.float64), trainable=False, name="gram"
            )
            self._cross = tf.Variable(
                tf.zeros([self._window], tf.float64), trainable=False, name="cross"
            )
            self._reference_sq = tf.Variable(
                tf.constant(0.0, tf.float64), trainable=False, name="reference_sq"
            )
            self._count = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="count")
            # Slots whose Gram row was deferred by append_op(update_gram=False).
            self._stale = tf.Variable(
                tf.zeros([self._window], tf.bool), trainable=False, name="stale"
            )
        # XLA updates the buffer in place; a plain scatter into a variable would make TensorFlow
        # copy the whole buffer on every later read.
        self._append_function = tf.function(
            lambda x: self.append_op(x, update_gram=False),
            input_signature=[tf.TensorSpec([self._n], self._dtype)],
            autograph=False,
            jit_compile=True,
        )

    # ----------------------------------------------------------------------------------------
    # properties
    @property
    def n_features(self):
        return self._n

    @property
    def window(self):
        return self._window

    @property
    def dtype(self):
        return self._dtype

    @property
    def storage_dtype(self):
        return self._storage

    @property
    def sketch(self):
        """``k`` of a sketched buffer, else ``None``."""
        return None if self._sketch is None else self._sketch.k

    @property
    def nbytes(self):
        """Bytes held by the buffer's variables and sketch indices."""
        total = sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables)
        if self._sketch is not None:
            total += self._sketch.nbytes
        return total

    @property
    def count(self):
        """How many snapshots were appended in total (not capped at ``window``)."""
        return int(self._count.numpy())

    @property
    def variables(self):
        """Every ``tf.Variable`` of the buffer (for checkpoints)."""
        return [
            self._buffer,
            self._reference,
            self._centred_gram,
            self._cross,
            self._reference_sq,
            self._count,
            self._stale,
        ]

    def __repr__(self):
        extra = "" if self._storage == self._dtype else f", storage_dtype={self._storage.name!r}"
        if self._sketch is not None:
            extra += f", sketch={self._sketch.k}"
        return (
            f"SnapshotBuffer(n_features={self._n}, window={self._window}, "
            f"dtype={self._dtype.name!r}{extra}, count={self.count})"
        )

    # ----------------------------------------------------------------------------------------
    # appending
    def append(self, x):
        """Appends one snapshot ``x`` of shape ``[n_features]``; the oldest drops out when full.

        One compiled call that writes ``x`` into its slot in place; the snapshot's Gram row is
        computed when the Gram matrix is next read (:meth:`gram`, :meth:`dmd`, :meth:`refresh`).

        Raises:
          ValueError: wrong shape, or ``x`` holds NaN or Inf (the buffer is left unchanged).
        """
        x = tf.convert_to_tensor(x)
        if x.shape.rank == 2 and x.shape[0] == 1:
            x = tf.reshape(x, [-1])
        if x.shape.rank != 1 or x.shape[0] != self._n:
            raise ValueError(
                f"x must be a vector of shape [n_features] = [{self._n}]; got {tuple(x.shape)}"
            )
        if not (x.dtype.is_floating or x.dtype.is_integer):
            raise TypeError(f"x must be real numbers; got dtype {x.dtype.name}")
        if x.dtype != self._dtype:
            x = tf.cast(x, self._dtype)
        if not bool(self._append_function(x)):
            raise DataError("x contains NaN or Inf; the snapshot was not appended")

    def append_op(self, x, update_gram=True):
        """Graph-mode append for use inside a ``tf.function`` (no Python-side checks).

        ``x`` must be a ``[n_features]`` tensor of the buffer's dtype, or a list of 1-D tensors
        of that dtype whose lengths add up to ``n_features`` (the pieces of one snapshot, say one
        per layer variable): each piece is then written straight into its slice of the buffer,
        with no concatenated copy. Returns a boolean tensor: ``False`` when ``x`` holds NaN or
        Inf, in which case nothing is written. Compile the calling function with
        ``jit_compile=True`` so that the buffer is updated in place.

        With ``update_gram=False`` only the snapshot is written and its Gram row is left for
        :meth:`refresh_op` (which :meth:`gram` and :meth:`dmd` run first): many appends between
        two analyses then cost one matrix product instead of one pass over the buffer each.
        """
        parts = list(x) if isinstance(x, (list, tuple)) else [x]
        sizes = [int(part.shape[0]) for part in parts]
        if sum(sizes) != self._n:
            raise ValueError(
                f"the pieces of x add up to {sum(sizes)} numbers; the buffer holds {self._n}"
            )
        if self._sketch is not None:
            # Only the sampled weights are read, the finiteness check included: a NaN in a
            # weight the sketch does not sample cannot reach the buffer.
            parts = [_project(self._sketch, parts, sizes, self._dtype)]
        return ring_append(self.variables, parts, update_gram)

    def refresh_op(self):
        """Computes the Gram rows that appends with ``update_gram=False`` left out (graph mode)."""
        self._centred_gram.assign(refresh_gram(self._buffer.read_value(),
                                               self._centred_gram.read_value(),
                                               self._stale.read_value()))
        self._stale.assign(tf.zeros_like(self._stale))

    def refresh(self):
        """Computes the Gram rows that appends with ``update_gram=False`` left out: one
        float64 product of the stale rows with the buffer, by a function traced once per
        process for all buffers."""
        function = refresh_function(self._storage)
        self._centred_gram.assign(function(self._buffer.read_value(),
                                           self._centred_gram.read_value(),
                                           self._stale.read_value()))
        self._stale.assign(tf.zeros_like(self._stale))

    def reset(self):
        """Forgets every snapshot (the next append sets a new reference)."""
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))

    def state(self):
        """The tensors a Gram-space analysis reads: ``(stored [window, width], reference
        [width], centred Gram [window, window], cross [window], |reference|^2, count)``."""
        return (
            self._buffer.read_value(),
            self._reference.read_value(),
            self._centred_gram.read_value(),
            self._cross.read_value(),
            self._reference_sq.read_value(),
            self._count.read_value(),
        )


def ring_append(variables, parts, update_gram=True):
    """Graph mode: appends one snapshot, given as consecutive 1-D ``parts`` (of the snapshot
    dtype), to the ring buffer held in ``variables`` (a :class:`SnapshotBuffer`'s
    ``variables``, in that order; unsketched widths). Returns whether the parts were finite
    (nothing is written otherwise). A function of the variables, not of a buffer object, so that
    one traced function serves every buffer of the same shapes (see the tracker's gather)."""
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(p)) for p in parts]))
    tf.cond(finite, lambda: _write(variables, parts, update_gram), tf.no_op)
    return finite


def _write(variables, parts, update_gram):
    buffer_var, reference_var, gram_var, cross_var, reference_sq_var, count_var, stale_var = (
        variables)
    window = int(buffer_var.shape[0])
    sizes = [int(part.shape[0]) for part in parts]
    offsets = np.cumsum([0] + sizes[:-1]).tolist()

    def set_reference():
        reference = reference_var.read_value()
        reference_sq = tf.zeros([], tf.float64)
        for part, offset in zip(parts, offsets):
            reference = _update_slice(reference, part, [offset])
            part64 = tf.cast(part, tf.float64)
            reference_sq += tf.reduce_sum(part64 * part64)
        reference_var.assign(reference)
        reference_sq_var.assign(reference_sq)
        return tf.no_op()

    # Only the first snapshot sets the reference: no pass over x for it afterwards.
    tf.cond(tf.equal(count_var, 0), set_reference, tf.no_op)
    reference = reference_var.read_value()
    head = tf.math.floormod(count_var, window)
    snapshots = buffer_var.read_value()
    cross = tf.zeros([], tf.float64)
    for part, offset, size in zip(parts, offsets, sizes):
        part_reference = reference[offset:offset + size]
        stored = tf.cast(part - part_reference, buffer_var.dtype)
        snapshots = _update_slice(snapshots, stored[tf.newaxis], [head, offset])
        # From the stored (rounded) values, so that the Gram matrix matches the buffer.
        # Exact float64 products summed in float64, as in the Gram rows.
        cross += tf.reduce_sum(tf.cast(stored, tf.float64)
                               * tf.cast(part_reference, tf.float64))
    index = head[tf.newaxis, tf.newaxis]
    if update_gram:
        # tf.gather, not snapshots[head]: XLA would make a strided slice's start a
        # compile-time constant and compile anew for every value of the count.
        row = float64_products(tf.gather(snapshots, head[tf.newaxis]), snapshots)[0]
        gram_var.assign(_replace_rows(gram_var.read_value(), index, row[None]))
    stale_var.assign(tf.tensor_scatter_nd_update(
        stale_var.read_value(), index, tf.constant([not update_gram])
    ))
    buffer_var.assign(snapshots)
    cross_var.assign(tf.tensor_scatter_nd_update(cross_var.read_value(), index, cross[None]))
    count_var.assign_add(1)
    return tf.no_op()



def _update_slice(tensor, update, start):
    """``tensor`` with ``update`` written at ``start``: in place under XLA."""
    return xla.dynamic_update_slice(tensor, update, tf.stack(start))


def _replace_rows(gram, index, rows):
    """The symmetric ``gram`` with rows and columns ``index`` ([s, 1]) set to ``rows`` [s, w]."""
    gram = tf.tensor_scatter_nd_update(gram, index, rows)
    return tf.tensor_scatter_nd_update(tf.transpose(gram), index, rows)


def order_slots(count, window):
    """Slots of the stored snapshots, oldest first."""
    stored = tf.minimum(count, window)
    return tf.math.floormod(count - stored + tf.range(stored), window)


def chronological_gram(centred, cross, reference_sq, count):
    order = order_slots(count, tf.shape(centred, tf.int64)[0])
    centred = tf.gather(tf.gather(centred, order), order, axis=1)
    return assemble_gram(centred, tf.gather(cross, order), reference_sq)


def buffer_dmd(buffer, reference, centred, cross, reference_sq, count, code, value, method,
                with_modes):
    """DMD of a buffer's state; shape-polymorphic so one trace serves every buffer."""
    # The snapshots' dtype, not the storage's: bfloat16 rounds the centred motion, whose size
    # next to the top singular value (that of the uncentred weights) is unknown here; the rank
    # rule sees the rounding as noise.
    floor = floor_epsilon(reference.dtype, "gram")
    finite, gram = guard_finite(chronological_gram(centred, cross, reference_sq, count))
    outputs = gram_solve(gram, tf.shape(buffer)[1], code, value, floor, method)
    eigenvalues, combination, residuals, amplitudes, singular, k = outputs
    combination, amplitudes = unit_modes(combination, amplitudes, gram)
    if not with_modes:
        return finite, eigenvalues, None, amplitudes, residuals, singular, k
    window = tf.shape(buffer, tf.int64)[0]
    slots = tf.scatter_nd(
        order_slots(count, window)[:, tf.newaxis],
        combination,
        tf.stack([window, tf.shape(combination, tf.int64)[1]]),
    )
    modes, norms = form_modes(tf.cast(buffer, reference.dtype), slots, reference)
    amplitudes *= tf.cast(norms, tf.complex128)
    return finite, eigenvalues, modes, amplitudes, residuals, singular, k


def state_signature(storage_dtype, dtype):
    """Input signature of a function of a buffer's ``state()`` plus the rank ``code, value``:
    shape-polymorphic, so one trace serves every buffer of those dtypes."""
    return [
        tf.TensorSpec([None, None], storage_dtype),
        tf.TensorSpec([None], dtype),
        tf.TensorSpec([None, None], tf.float64),
        tf.TensorSpec([None], tf.float64),
        tf.TensorSpec([], tf.float64),
        tf.TensorSpec([], tf.int64),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float64),
    ]


def _dmd_function(method, with_modes, storage_dtype, dtype):
    """One traced function per (method, modes, dtypes), shared by every buffer."""

    def build():
        def run(buffer, reference, centred, cross, reference_sq, count, code, value):
            return buffer_dmd(buffer, reference, centred, cross, reference_sq, count, code,
                               value, method, with_modes)

        return tf.function(run, input_signature=state_signature(storage_dtype, dtype),
                           autograph=False)

    return cached_function(("buffer_dmd", method, with_modes, storage_dtype, dtype), build)
