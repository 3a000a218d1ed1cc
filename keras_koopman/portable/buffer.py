"""SnapshotBuffer on the JAX and PyTorch backends (see :class:`keras_koopman.SnapshotBuffer`)."""

from __future__ import annotations

import numpy as np

from keras_koopman import host_dmd
from keras_koopman._sketch import make_sketch, no_modes_error
from keras_koopman._validation import check_int, check_window
from keras_koopman.portable import device as dev
from keras_koopman.portable import ring
from keras_koopman.portable.engine import gram_dmd

__all__ = ["RingReader", "SnapshotBuffer", "chronological"]

_DTYPES = ("float32", "float64")


def chronological(count, window):
    """The slots of the stored snapshots, oldest first (``count``: snapshots ever written)."""
    held = min(count, window)
    return (count - held + np.arange(held)) % window


class RingReader:
    """The reading side of a buffer on a :class:`~keras_koopman.portable.ring.Rings` group
    (the public :class:`SnapshotBuffer` and the tracker's groups): a subclass provides
    ``_rings``, ``_group``, ``count``, ``window``, ``n_features``, ``dtype``, ``refresh()``
    and ``__len__``."""

    @property
    def sketch(self):
        """``k`` of a sketched buffer, else ``None``."""
        projection = self._rings.projections[self._group]
        return None if projection is None else projection.k

    @property
    def nbytes(self):
        """Bytes held by this buffer's arrays and sketch indices."""
        return self._rings.group_nbytes(self._group)

    @property
    def storage_dtype(self):
        """The dtype the snapshots are stored in (``"bfloat16"``: centred on a float32
        reference, see :class:`~keras_koopman.portable.ring.Rings`)."""
        return self._rings.dtype

    @property
    def has_modes(self):
        """Whether :meth:`dmd` can form modes (``False`` for a sketched buffer)."""
        return self.sketch is None

    def snapshots(self):
        """The stored snapshots ``[len(self), n_features]``, oldest first (a backend tensor;
        ``[len(self), sketch]`` for a sketched buffer)."""
        import keras

        order = dev.to_tensor(chronological(self.count, self.window).astype(np.int32))
        return keras.ops.take(self._rings.snapshot_array(self._group), order, axis=0)

    def gram(self):
        """Float64 Gram matrix ``S S^T`` of ``S = snapshots()`` (NumPy, on the host)."""
        self.refresh()
        matrices, _ = ring.grams(self._rings, [self._group])
        order = chronological(self.count, self.window)
        return matrices[0][np.ix_(order, order)]

    def dmd(self, rank=None, method="exact", dt=1.0, modes=True):
        """DMD of the stored snapshots through the Gram matrix (as the TensorFlow buffer's:
        the same result as ``kk.dmd(self.snapshots(), rank, method, dt, solver="gram")``).

        A sketched buffer has no modes: ``modes=True`` raises there.

        Raises:
          ValueError: fewer than 2 snapshots stored, or bad arguments.
        """
        host_dmd.parse_rank(rank)
        host_dmd.check_method(method)
        host_dmd.check_dt(dt)
        if modes and not self.has_modes:
            raise no_modes_error(self.sketch)
        if len(self) < 2:
            raise ValueError(f"{type(self).__name__}.dmd needs at least 2 snapshots; "
                             f"{len(self)} stored so far")
        return gram_dmd(self.gram(), self.sketch or self.n_features, self.dtype, rank,
                        method, dt, self._modes if modes else None)

    def _modes(self, combination):
        """The modes read from the ring in place: the coefficients of each chronological
        snapshot put at its slot (zero for slots not held), no gathered copy."""
        combination = np.asarray(combination)
        slots = np.zeros((self.window, combination.shape[1]), combination.dtype)
        slots[chronological(self.count, self.window)] = combination
        return dev.modes(self._rings.snapshot_array(self._group), slots)


class SnapshotBuffer(RingReader):
    """A ring buffer of the last ``window`` snapshots of ``n_features`` numbers, on the device
    of the JAX or PyTorch backend, with its float64 Gram matrix.

    :meth:`append` writes one snapshot in place (O(n_features); on JAX a jitted update whose
    buffer is donated, on torch ``copy_``) and marks its Gram row stale; :meth:`gram` and
    :meth:`dmd` compute the stale rows in one float64 product with the buffer, then the
    ``[window, window]`` eigenproblems run on the host. Same results as the TensorFlow buffer
    (:class:`keras_koopman.buffers.SnapshotBuffer`), the same sketch from the same seed, and
    the same centred bfloat16 storage.

    Snapshots are time-major: :meth:`snapshots` returns ``[len(self), n_features]``, oldest
    first.

    Args:
      n_features: length of one snapshot vector.
      window: how many of the latest snapshots are kept (at least 2).
      dtype: ``"float32"`` (default) or ``"float64"``.
      name: a name for the buffer (its ``repr``).
      sketch: ``None`` (store snapshots in full) or ``k < n_features``: store a ``k``-number
        sparse random sketch of each snapshot (see the TensorFlow buffer; no modes then).
      storage_dtype: ``None`` (the dtype) or ``"bfloat16"`` (float32 snapshots only): half
        the memory; each snapshot is stored as its bfloat16 difference from the first one
        after a reset, kept in float32, as TensorFlow's buffer does.
      sketch_density: weights summed per sketch coordinate (``None``: ``min(64, n // k)``).
      seed: seed of the sketch.

    Example (with ``KERAS_BACKEND=jax`` or ``torch``):

    >>> import numpy as np, keras_koopman as kk
    >>> buffer = kk.SnapshotBuffer(n_features=3, window=8)
    >>> for k in range(12):                       # x_k = 0.8**k * [1, 2, 3]
    ...     buffer.append(0.8 ** k * np.array([1.0, 2.0, 3.0], np.float32))
    >>> buffer.count, tuple(buffer.snapshots().shape)    # the 8 newest are kept
    (12, (8, 3))
    >>> round(float(np.asarray(buffer.dmd(rank=1).eigenvalues)[0].real), 4)
    0.8
    """

    def __init__(self, n_features, window, dtype="float32", name="snapshot_buffer", *,
                 sketch=None, storage_dtype=None, sketch_density=None, seed=0):
        import keras

        self._n = check_int(n_features, "n_features", 1)
        self._window = check_window(window, 2)
        try:
            dtype = keras.backend.standardize_dtype(dtype)
        except (TypeError, ValueError) as error:
            raise TypeError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from error
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
        self._dtype = dtype
        storage = dtype if storage_dtype is None else str(storage_dtype)
        if storage not in (dtype, "bfloat16") or (storage == "bfloat16" and dtype != "float32"):
            raise ValueError(f"storage_dtype must be None, the dtype or 'bfloat16' (for "
                             f"dtype='float32'); got {storage_dtype!r}")
        sketch = make_sketch(self._n, sketch, sketch_density, seed)
        self.name = name
        self._rings = ring.Rings([self._n], self._window, storage,
                                 None if sketch is None else [(sketch, [self._n])])
        self._group = 0
        self._count = 0
        self._stale = set()

    n_features = property(lambda self: self._n)
    window = property(lambda self: self._window)
    dtype = property(lambda self: self._dtype)
    count = property(lambda self: self._count,
                     doc="How many snapshots were appended in total (not capped at window).")

    @property
    def variables(self):
        """The buffer's device arrays (on JAX valid until the next :meth:`append`, which
        donates them to the in-place update: copy them to keep them): the stored snapshots and
        their Gram matrix, and for bfloat16 storage the float32 reference, the cross products
        with it and its squared norm (the snapshots are then differences from the reference,
        the Gram matrix theirs: :meth:`snapshots` and :meth:`gram` put them together)."""
        return self._rings.arrays

    def __len__(self):
        return min(self._count, self._window)

    def __repr__(self):
        extra = "" if self.sketch is None else f", sketch={self.sketch}"
        return (f"SnapshotBuffer(n_features={self._n}, window={self._window}, "
                f"dtype={self._dtype!r}{extra}, count={self._count})")

    def append(self, x):
        """Appends one snapshot ``x`` ``[n_features]``; the oldest drops out when full.

        Raises:
          ValueError: wrong shape, or ``x`` holds NaN or Inf (the buffer is left unchanged).
          TypeError: ``x`` is not real numbers.
        """
        import keras

        ops = keras.ops
        if isinstance(x, keras.Variable):
            x = x.value
        if not ops.is_tensor(x):
            array = np.asarray(x)
            if array.dtype.kind not in "fiub":
                raise TypeError(f"x must hold real numbers; got dtype {array.dtype}")
            x = dev.to_tensor(array.astype(self._dtype))
        elif not keras.backend.standardize_dtype(x.dtype).startswith(("float", "int", "uint")):
            raise TypeError(f"x must hold real numbers; got dtype {x.dtype}")
        shape = tuple(x.shape)
        if shape == (1, self._n):
            x = ops.reshape(x, (self._n,))
        elif shape != (self._n,):
            raise ValueError(f"x must be a vector of shape [n_features] = [{self._n}]; got "
                             f"{shape}")
        x = ops.cast(x, self._dtype)
        if not bool(ops.all(ops.isfinite(x))):
            raise ValueError("x holds NaN or Inf; the buffer is left unchanged")
        slot = self._count % self._window
        ring.write(self._rings, [[x]], slot)
        self._stale.add(slot)
        self._count += 1

    def reset(self):
        """Forgets every snapshot."""
        self._rings.reset()
        self._count, self._stale = 0, set()

    def refresh(self):
        """Computes the Gram rows of the snapshots appended since the last read."""
        ring.gram_rows(self._rings, 0, self._stale)
        self._stale = set()

