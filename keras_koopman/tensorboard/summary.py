"""The ``koopman`` summary ops: a Koopman spectrum as one ``[r, 4]`` float32 tensor, the share
of its leading modes per unit of the layer, and an event of training (its reason as a string
tensor)."""

import numpy as np
import tensorflow as tf

from keras_koopman.tensorboard import metadata


def spectrum(name, eigenvalues, step=None, amplitudes=None, residuals=None, description=None):
    """Writes a Koopman spectrum summary for the "Koopman" TensorBoard dashboard.

    Writes one tensor ``[r, 4]`` (float32 columns: real part, imaginary part, |amplitude|,
    residual; NaN where a column is not given) under the tag ``name`` with plugin name
    ``koopman``. Use it like any ``tf.summary`` op, inside a default writer.

    Args:
      name: tag, e.g. ``"koopman/dense_1"``.
      eigenvalues: ``[r]`` complex (or real) eigenvalues, e.g. ``DMDResult.eigenvalues``.
      step: int64 step; defaults to ``tf.summary.experimental.get_step()``.
      amplitudes: optional ``[r]`` amplitudes (complex or real; their modulus is stored).
      residuals: optional ``[r]`` residuals.
      description: optional Markdown description of the summary.

    Returns:
      True on success, False if no default writer is active (as ``tf.summary.write``).

    Raises:
      ValueError: when ``amplitudes`` or ``residuals`` do not have one entry per eigenvalue.

    Example:

    >>> import tempfile, numpy as np, tensorflow as tf, keras_koopman as kk
    >>> writer = tf.summary.create_file_writer(tempfile.mkdtemp())
    >>> with writer.as_default():
    ...     ok = kk.tensorboard.spectrum("koopman/dense", np.array([1.0, 0.5 + 0.2j]), step=3)
    >>> bool(ok)
    True
    """
    values = tf.reshape(tf.convert_to_tensor(eigenvalues), [-1])
    if not values.dtype.is_complex:
        values = tf.complex(tf.cast(values, tf.float64), tf.zeros_like(values, tf.float64))
    count = values.shape[0]
    columns = [tf.cast(tf.math.real(values), tf.float32), tf.cast(tf.math.imag(values), tf.float32)]
    for label, extra in (("amplitudes", amplitudes), ("residuals", residuals)):
        if extra is None:
            columns.append(tf.fill(tf.shape(columns[0]), np.float32(np.nan)))
            continue
        extra = tf.reshape(tf.convert_to_tensor(extra), [-1])
        if count is not None and extra.shape[0] is not None and extra.shape[0] != count:
            raise ValueError(
                f"{label} must have one entry per eigenvalue ({count}); got {extra.shape[0]}"
            )
        columns.append(tf.cast(tf.abs(extra) if label == "amplitudes" else extra, tf.float32))
    tensor = tf.stack(columns, axis=1)
    summary_metadata = metadata.create_summary_metadata(description)
    with tf.summary.experimental.summary_scope(
            name, "koopman_spectrum_summary", values=[tensor]) as (tag, _):
        return tf.summary.write(tag=tag, tensor=tensor, step=step, metadata=summary_metadata)


def event(kind, reason, step=None, description=None):
    """Writes an event of training (``kind`` with its ``reason``) for the "Koopman" dashboard,
    which marks it on the step axis.

    Writes a scalar string tensor ``reason`` under the tag ``koopman_events/<kind>`` with plugin
    name ``koopman`` and its own plugin content (``{"kind": "event"}``), so that the spectra
    listing leaves it out. Use it like any ``tf.summary`` op, inside a default writer.

    Args:
      kind: a short name, e.g. ``"early_stop"``, ``"restart"``, ``"jump_kept"``,
        ``"jump_undone"``, ``"pruning"`` (letters, digits, ``_`` and ``-``).
      reason: the text shown with the marker.
      step: int64 step; defaults to ``tf.summary.experimental.get_step()``.
      description: optional Markdown description of the summary.

    Returns:
      True on success, False if no default writer is active.

    Example:

    >>> import tempfile, tensorflow as tf, keras_koopman as kk
    >>> writer = tf.summary.create_file_writer(tempfile.mkdtemp())
    >>> with writer.as_default():
    ...     ok = kk.tensorboard.event("restart", "diverging: |λ| > 1", step=4)
    >>> bool(ok)
    True
    """
    kind = str(kind)
    if not kind or not all(c.isalnum() or c in "_-" for c in kind):
        raise ValueError(f"event kind must be letters, digits, '_' or '-'; got {kind!r}")
    return tf.summary.write(
        tag=metadata.EVENT_TAG_PREFIX + kind, tensor=tf.constant(str(reason), tf.string),
        step=step, metadata=metadata.create_event_metadata(description),
    )


def modes(name, unit_weights, step=None, description=None):
    """Writes the per-unit weights of a spectrum's leading modes (the "Koopman" dashboard's
    modes view).

    Writes one float32 tensor ``[k, u]`` under the tag ``name + "/modes"`` (``name``: the
    spectrum's tag, e.g. ``"koopman/dense"``) with plugin name ``koopman`` and its own plugin
    content (``{"kind": "modes"}``, see :mod:`keras_koopman.tensorboard.metadata`). Row ``i``
    belongs to the spectrum's ``i``-th eigenvalue (the order :func:`spectrum` was given). Past
    ``MAX_UNITS`` units, consecutive units are summed in bins (recorded in the plugin content).

    Args:
      name: the spectrum's tag, e.g. ``"koopman/dense"``.
      unit_weights: ``[k, units]``: row ``i``, the share of mode ``i`` that each unit of the
        layer carries (``KoopmanTracker.unit_weights``; each row sums to 1).
      step: int64 step; defaults to ``tf.summary.experimental.get_step()``.
      description: optional Markdown description of the summary.

    Returns:
      True on success, False if no default writer is active.

    Raises:
      ValueError: ``unit_weights`` is not a ``[k, units]`` array with ``k, units >= 1``.

    Example:

    >>> import tempfile, numpy as np, tensorflow as tf, keras_koopman as kk
    >>> writer = tf.summary.create_file_writer(tempfile.mkdtemp())
    >>> with writer.as_default():
    ...     ok = kk.tensorboard.modes("koopman/dense", np.array([[0.75, 0.25]]), step=3)
    >>> bool(ok)
    True
    """
    weights = np.asarray(unit_weights, np.float64)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ValueError(f"unit_weights must be [k, units] with k, units >= 1; got shape "
                         f"{weights.shape}")
    units = weights.shape[1]
    unit_size = -(-units // metadata.MAX_UNITS)
    if unit_size > 1:  # bins of unit_size consecutive units (the last one may be shorter)
        padded = np.zeros((weights.shape[0], -(-units // unit_size) * unit_size))
        padded[:, :units] = weights
        weights = padded.reshape(weights.shape[0], -1, unit_size).sum(axis=2)
    return tf.summary.write(
        tag=name + metadata.MODES_SUFFIX, tensor=tf.constant(weights, tf.float32), step=step,
        metadata=metadata.create_modes_metadata(units, unit_size, description))
