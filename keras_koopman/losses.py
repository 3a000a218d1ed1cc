"""The negative-Sobolev (H^-s) loss: fit the coarse scales first, let the noise go.

The squared H^-s norm of the residual weighs each Fourier component by ``(1 + (2 pi k / L)^2)^-s``:
smooth, large-scale errors cost almost what they cost under the mean squared error, while
oscillating errors (where white noise puts most of its energy) cost little. Trained with it, a
network fits the signal's scales and stops short of fitting the noise, without early stopping.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_koopman._validation import check_choice, check_int, check_number

# TensorFlow: tf.signal, with run-time shapes and the in-graph batch check. JAX and PyTorch:
# keras.ops (their shapes are known when the step is traced or run).
_TENSORFLOW = keras.backend.backend() == "tensorflow"  # (importing flips no JAX flag)
if _TENSORFLOW:
    import tensorflow as tf

__all__ = ["NegativeSobolev", "negative_sobolev"]

_WINDOWS = (None, "hann", "even")
_KERAS_BATCH_SIZE = 32  # what Model.fit uses when batch_size is not given


def _in_xla_context():
    """Whether the graph being traced is compiled by XLA (``jit_compile=True``), which cannot
    call back to Python. TensorFlow has no public test for it; if its internal one moves, the
    answer is "yes" (the run-time check is skipped, never broken)."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return True
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def _check_s(s):
    return check_number(s, "s", None)


def _check_axes(axis):
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    if not axes or len(axes) > 2:
        raise ValueError(f"axis must be an int or a tuple of one or two ints; got {axis!r}")
    return tuple(check_int(a, "axis") for a in axes)


def _check_lengths(length, count):
    if length is None:
        return (1.0,) * count
    lengths = (length,) * count if not isinstance(length, (tuple, list)) else tuple(length)
    if len(lengths) != count:
        raise ValueError(
            f"length must be a positive number or one per axis ({count}); got {length!r}")
    return tuple(check_number(v, "length", 0.0, open_low=True) for v in lengths)


def _check_window(window):
    return check_choice(window, "window", _WINDOWS)


def _sobolev_weights(sizes, lengths, s):
    """NumPy weights ``[..., n_last // 2 + 1]`` on the real-FFT coefficients, Parseval-scaled.

    ``sizes`` are the signal lengths along the transformed axes (the last one gets the real FFT).
    Each coefficient's weight is ``(1 + |2 pi k / L|^2)^-s`` times how many full-FFT
    coefficients it stands for (the real FFT keeps one of each conjugate pair), over the number
    of points squared, so that ``s = 0`` gives the mean of the squared residual.
    """
    squared = 0.0
    for position, (size, length) in enumerate(zip(sizes, lengths)):
        last = position == len(sizes) - 1
        cycles = np.fft.rfftfreq(size, 1.0 / size) if last else np.fft.fftfreq(size, 1.0 / size)
        shape = [1] * len(sizes)
        shape[position] = len(cycles)
        squared = squared + ((2.0 * np.pi * cycles / length) ** 2).reshape(shape)
    weights = (1.0 + squared) ** (-s)
    multiplicity = np.full(sizes[-1] // 2 + 1, 2.0)
    multiplicity[0] = 1.0
    if sizes[-1] % 2 == 0:
        multiplicity[-1] = 1.0
    return weights * multiplicity / float(np.prod(sizes)) ** 2


def _dynamic_weights(sizes, lengths, s):
    """The same weights built with TensorFlow ops, for lengths known only at run time."""
    squared = tf.zeros([], tf.float32)
    count = len(sizes)
    for position, (size, length) in enumerate(zip(sizes, lengths)):
        last = position == count - 1
        size_f = tf.cast(size, tf.float32)
        if last:
            cycles = tf.range(size // 2 + 1, dtype=tf.float32)
        else:
            index = tf.range(size, dtype=tf.float32)
            cycles = tf.where(index < (size_f + 1.0) // 2.0, index, index - size_f)
        shape = [1] * count
        shape[position] = -1
        squared = squared + tf.reshape((2.0 * np.pi * cycles / length) ** 2, shape)
    weights = tf.pow(1.0 + squared, -s)
    last = sizes[-1]
    bins = tf.range(last // 2 + 1)
    single = tf.logical_or(tf.equal(bins, 0), tf.logical_and(tf.equal(last % 2, 0),
                                                             tf.equal(bins, last // 2)))
    multiplicity = tf.where(single, 1.0, 2.0)
    total = tf.cast(tf.reduce_prod(tf.stack(sizes)), tf.float32)
    return weights * multiplicity / (total * total)


def _hann(size, dtype):
    # Periodic Hann window scaled to mean square 1, so an error spread evenly costs the same.
    # Written out: tf.signal.hann_window(periodic=True) returned a symmetric window for some
    # odd lengths here (TensorFlow 2.21, length 5).
    phase = tf.range(size, dtype=dtype) / tf.cast(size, dtype)
    window = 0.5 - 0.5 * tf.cos(2.0 * np.pi * phase)
    return window * tf.math.rsqrt(tf.reduce_mean(window * window))


def negative_sobolev(y_true, y_pred, s=1.0, axis=-1, length=None, window=None):
    """Squared H^-s norm of ``y_pred - y_true`` along ``axis`` (the other axes are kept).

    ``sum_k (1 + (2 pi k / L)^2)^-s |r_hat_k|^2``, with ``r_hat`` the discrete Fourier
    coefficients of the residual along ``axis``, ``k`` the wavenumber in cycles across the signal
    and ``L = length`` (default 1.0); scaled so that ``s = 0`` is exactly the mean squared error
    along ``axis`` (Parseval). ``s < 0`` gives the positive Sobolev norm.

    Args:
      y_true, y_pred: tensors of the same shape; float16/bfloat16 are computed in float32.
      s: the Sobolev order (finite).
      axis: an int or a tuple of two ints (e.g. ``(1, 2)`` for NHWC images). ``axis=0`` is the
        sample axis: full-batch fitting of a function sampled on an ordered grid.
      length: the physical length of the domain along each axis (a number or one per axis).
      window: ``None`` (the residual is taken as periodic), ``"hann"`` (a periodic Hann window,
        scaled to mean square 1, tapers the ends: use it for non-periodic signals whose error
        at the two ends differs, so that the jump does not leak into every wavenumber) or
        ``"even"`` (the residual is mirrored to twice its length before the FFT, a cosine
        transform: no jump at the ends at all; ``s = 0`` is still the MSE). With ``"hann"``,
        ``s = 0`` is the window-weighted mean square ``mean((w r)^2)``: the MSE for an error
        spread evenly over the signal, less for one at the ends.

    Returns:
      float32 tensor: ``y_true``'s shape without ``axis``.

    Example:

    >>> import numpy as np
    >>> from keras_koopman.losses import negative_sobolev
    >>> x = np.linspace(0, 1, 64, endpoint=False)
    >>> tone = np.sin(2 * np.pi * 3 * x)[None]       # 3 cycles: mean square 1/2
    >>> float(negative_sobolev(np.zeros_like(tone), tone, s=0.0)[0])
    0.5
    >>> weight = (1 + (2 * np.pi * 3) ** 2) ** -1.0
    >>> bool(np.isclose(float(negative_sobolev(np.zeros_like(tone), tone, s=1.0)[0]), 0.5 * weight))
    True
    """
    s = _check_s(s)
    axes = _check_axes(axis)
    lengths = _check_lengths(length, len(axes))
    window = _check_window(window)
    if not _TENSORFLOW:
        return _ops_negative_sobolev(y_true, y_pred, s, axis, axes, lengths, window)
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    dtype = y_pred.dtype if y_pred.dtype in (tf.float32, tf.float64) else tf.float32
    residual = tf.cast(y_pred, dtype) - tf.cast(y_true, dtype)
    rank = residual.shape.rank
    if rank is None:
        raise ValueError("negative_sobolev needs inputs of known rank")
    kept, resolved = _resolve_axes(tuple(residual.shape), axes, axis)
    residual = tf.transpose(residual, kept + resolved)
    if window == "hann":
        for position in range(len(resolved)):
            size = tf.shape(residual)[len(kept) + position]
            shape = [1] * rank
            shape[len(kept) + position] = -1
            residual = residual * tf.reshape(_hann(size, dtype), shape)
    elif window == "even":
        for position in range(len(resolved)):
            along = len(kept) + position
            residual = tf.concat([residual, tf.reverse(residual, [along])], axis=along)
        lengths = tuple(2.0 * v for v in lengths)
    static = [residual.shape[len(kept) + p] for p in range(len(resolved))]
    if all(size is not None for size in static):
        weights = tf.constant(_cached_weights(tuple(static), lengths, s), dtype)
    else:
        dynamic = [tf.shape(residual)[len(kept) + p] for p in range(len(resolved))]
        weights = tf.cast(_dynamic_weights(dynamic, lengths, s), dtype)
    spectrum = tf.signal.rfft(residual) if len(resolved) == 1 else tf.signal.rfft2d(residual)
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2
    value = tf.reduce_sum(power * weights, axis=list(range(len(kept), rank)))
    return tf.cast(value, tf.float32) if value.dtype != tf.float64 else value


def _resolve_axes(shape, axes, axis):
    """``(kept, resolved)``: the axes left alone and the transformed ones (non-negative, in the
    order given), checked against ``shape`` (``None`` for a size known only at run time)."""
    rank = len(shape)
    resolved = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"axis {a} is out of range for inputs of rank {rank}")
        resolved.append(a % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"axis must not repeat an axis; got {axis!r}")
    for a in resolved:
        size = shape[a]
        if size is not None and size < 2:
            raise ValueError(
                f"the signal along axis {a} has length {size}; it needs at least 2 points"
            )
    # Transformed axes last, in the order given.
    return [a for a in range(rank) if a not in resolved], resolved


def _hann_numpy(size):
    """The periodic Hann window of :func:`_hann`, scaled to mean square 1, in NumPy."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(size) / size)
    return window / np.sqrt(np.mean(window * window))


def _ops_negative_sobolev(y_true, y_pred, s, axis, axes, lengths, window):
    """:func:`negative_sobolev` in ``keras.ops`` (JAX, PyTorch): the same weights, a real FFT
    along the last transformed axis and, for two axes, a full FFT along the other
    (``keras.ops`` has no ``rfft2``)."""
    ops = keras.ops
    y_pred, y_true = ops.convert_to_tensor(y_pred), ops.convert_to_tensor(y_true)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    dtype = dtype if dtype in ("float32", "float64") else "float32"
    residual = ops.cast(y_pred, dtype) - ops.cast(y_true, dtype)
    rank = len(residual.shape)
    kept, resolved = _resolve_axes(tuple(residual.shape), axes, axis)
    residual = ops.transpose(residual, kept + resolved)
    first = len(kept)
    if window == "hann":
        for position in range(len(resolved)):
            shape = [1] * rank
            shape[first + position] = -1
            taper = _hann_numpy(residual.shape[first + position]).reshape(shape)
            residual = residual * ops.convert_to_tensor(taper, dtype)
    elif window == "even":
        for position in range(len(resolved)):
            along = first + position
            residual = ops.concatenate([residual, ops.flip(residual, axis=along)], axis=along)
        lengths = tuple(2.0 * v for v in lengths)
    sizes = tuple(int(residual.shape[first + p]) for p in range(len(resolved)))
    weights = ops.convert_to_tensor(_cached_weights(sizes, lengths, s), dtype)
    real, imag = ops.rfft(residual)
    if len(resolved) == 2:  # the full FFT along the first transformed axis
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        real, imag = ops.fft((ops.transpose(real, swap), ops.transpose(imag, swap)))
        real, imag = ops.transpose(real, swap), ops.transpose(imag, swap)
    power = real * real + imag * imag
    value = ops.sum(power * weights, axis=tuple(range(first, rank)))
    return value if dtype == "float64" else ops.cast(value, "float32")


_WEIGHT_CACHE = {}


def _cached_weights(sizes, lengths, s):
    key = (sizes, lengths, s)
    if key not in _WEIGHT_CACHE:
        if len(_WEIGHT_CACHE) > 64:
            _WEIGHT_CACHE.clear()
        _WEIGHT_CACHE[key] = _sobolev_weights(sizes, lengths, s)
    return _WEIGHT_CACHE[key]


@keras.saving.register_keras_serializable(package="keras_koopman")
class NegativeSobolev(keras.losses.Loss):
    """The squared H^-s norm of the residual, as a Keras loss for ``compile()``.

    See :func:`negative_sobolev` for the definition and the arguments ``s``, ``axis``,
    ``length`` and ``window``. With ``axis=-1`` each sample is a signal (sequence models,
    spectra); with ``axis=0`` the batch is the signal: fit a function sampled on an ordered grid
    with ``batch_size=len(x_grid), shuffle=False``, the set-up where H^-s training reconstructs
    a multi-scale signal under heavy noise. With Keras's defaults (``batch_size=32``,
    ``shuffle=True``) each batch is 32 shuffled points, not the grid, and the loss means nothing.

    ``grid_size`` (with ``axis=0``): the number of points of the grid. With ``axis=0`` the loss
    warns once (a ``UserWarning``) when it can tell that the batch is not the grid: a batch of
    another size than ``grid_size``, or, without ``grid_size``, a batch of Keras's default 32
    points. It sees the batch size when the step is traced if the size is static; ``fit`` on
    arrays leaves it unknown there, and then a comparison in the graph finds it, except under
    ``jit_compile=True`` (XLA cannot call back to Python): there only static sizes are
    checked. Shuffling it cannot see: pass ``shuffle=False``.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> x = np.linspace(0, 1, 128, endpoint=False)[:, None].astype("float32")
    >>> y = np.sin(2 * np.pi * x) + np.random.default_rng(0).normal(0, 1, x.shape)
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(32, activation="tanh"),
    ...                           keras.layers.Dense(1)])
    >>> model.compile("adam", loss=kk.losses.NegativeSobolev(s=1.0, axis=0))
    >>> history = model.fit(x, y, batch_size=len(x), shuffle=False, epochs=3, verbose=0)
    >>> len(history.history["loss"])
    3
    """

    def __init__(self, s=1.0, axis=-1, length=None, window=None, grid_size=None,
                 name="negative_sobolev", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.s = _check_s(s)
        self.axis = _check_axes(axis)
        self.length = None if length is None else _check_lengths(length, len(self.axis))
        self.window = _check_window(window)
        if grid_size is not None:
            grid_size = check_int(grid_size, "grid_size", 2)
        self.grid_size = grid_size
        self._warned = False

    def call(self, y_true, y_pred):
        y_pred = keras.ops.convert_to_tensor(y_pred)
        rank = y_pred.shape.rank if _TENSORFLOW else len(y_pred.shape)
        if not self._warned and rank and 0 in [a % rank for a in self.axis if -rank <= a < rank]:
            self._check_batch(y_pred)
        axis = self.axis[0] if len(self.axis) == 1 else self.axis
        return negative_sobolev(y_true, y_pred, self.s, axis, self.length, self.window)

    def _wrong(self, size):
        """Why a batch of ``size`` points is not the grid, or ``None``."""
        if self.grid_size is not None:
            return (None if size == self.grid_size
                    else f"a batch of {size} points, not grid_size={self.grid_size}")
        if size == _KERAS_BATCH_SIZE:
            return (f"a batch of {size} points, Keras's default batch_size (pass "
                    f"grid_size={size} if your grid really has {size} points)")
        return None

    def _warn(self, size):
        reason = None if self._warned else self._wrong(int(size))
        if reason is not None:
            self._warned = True
            warnings.warn(
                f"NegativeSobolev(axis=0) transforms the batch axis as one signal, but it got "
                f"{reason}. Fit the whole ordered grid in one batch: "
                f"model.fit(x, y, batch_size=len(x), shuffle=False).", UserWarning, stacklevel=3)

    def _check_batch(self, y_pred):
        """Warns once when the batch axis, which ``axis=0`` transforms, is not the grid. A
        static batch size (``evaluate``, ``predict``, datasets of fixed batches) is checked
        when the step is traced, at no cost per step and under XLA too; Keras's ``fit`` on
        arrays traces with an unknown batch size, checked in the graph (a comparison per step,
        Python only when it is wrong), except under XLA, which cannot call back to Python."""
        size = y_pred.shape[0]
        if size is not None:
            self._warn(size)
            return
        if not _TENSORFLOW or tf.executing_eagerly() or _in_xla_context():
            return
        size = tf.shape(y_pred)[0]
        wrong = (tf.not_equal(size, self.grid_size) if self.grid_size is not None
                 else tf.equal(size, _KERAS_BATCH_SIZE))

        def warn():
            tf.py_function(lambda value: self._warn(value.numpy()) or 0, [size], tf.int32)
            return tf.constant(0)

        tf.cond(wrong, warn, lambda: tf.constant(0))

    def get_config(self):
        config = super().get_config()
        config.update({
            "s": self.s,
            "axis": self.axis[0] if len(self.axis) == 1 else list(self.axis),
            "length": None if self.length is None else list(self.length),
            "window": self.window,
            "grid_size": self.grid_size,
        })
        return config
