"""SummaryLogger: the Koopman callbacks' TensorBoard writing, in one place."""

from __future__ import annotations

import time

import tensorflow as tf

from keras_koopman._backend import io_failures, is_chief
from keras_koopman.tensorboard import summary as tb_summary

__all__ = ["SummaryLogger", "LOGGED_SCALARS"]

LOGGED_SCALARS = ("spectral_radius", "near_one_fraction", "unstable_count", "max_residual")


class SummaryLogger:
    """Writes spectra, scalars and text to one TensorBoard log directory, on the chief only.

    Nothing is written before :meth:`open` (on the workers of a multi-worker strategy other
    than the chief, nor ever), and without ``log_dir``; every write then goes through this
    object, so callbacks never touch a ``tf.summary`` writer. A write that fails (disk full, ...)
    is handed to ``on_error(where, error, group)`` instead of raising.

    Args:
      log_dir: directory of the event files, or ``None`` (a logger that writes nothing).
      on_error: ``(where, error, group) -> None``, called when a write fails.

    Example:

    >>> import tempfile
    >>> from keras_koopman.callbacks.logger import SummaryLogger
    >>> logger = SummaryLogger(tempfile.mkdtemp())
    >>> logger.open()
    True
    >>> logger.scalar("koopman/restarts", 1.0, step=3)
    >>> logger.close()
    """

    def __init__(self, log_dir, on_error=None):
        self.log_dir = log_dir
        self._on_error = on_error
        self._writer = None

    @property
    def active(self):
        """Whether writes reach an event file."""
        return self._writer is not None

    def open(self, model=None, start_step=None):
        """Creates the writer (once, on the chief); with ``start_step`` also writes a session
        start there. Returns :attr:`active`."""
        if self.log_dir and self._writer is None and is_chief(model):
            self._writer = tf.summary.create_file_writer(self.log_dir)
            if start_step is not None:
                # TensorBoard takes a run's first session start as its beginning and any later
                # one as a restart (see session_start).
                self.session_start(start_step)
        return self.active

    def session_start(self, step):
        """A ``SessionLog.START`` event at ``step``. TensorBoard takes a run's first one as its
        beginning; at any later one it drops the events of the run with ``step`` or later that
        it read before (its "orphaned data" purge after a restart)."""
        if self._writer is None:
            return
        from tensorboard.compat.proto import event_pb2
        from tensorflow.python.ops import summary_ops_v2

        event = event_pb2.Event(step=int(step), wall_time=time.time(), session_log=event_pb2.
                                SessionLog(status=event_pb2.SessionLog.START))
        self._write("TensorBoard session start", None, lambda: summary_ops_v2.import_event(
            tf.constant(event.SerializeToString())), step=None)
        self.flush()

    def spectrum(self, record, unit_weights=None):
        """A :class:`~keras_koopman.callbacks.SpectrumRecord` as the ``koopman/<group>``
        spectrum summary (and ``koopman/<group>/modes``, the per-unit weights of its leading
        modes ``[k, units]``, when given) and the ``koopman/<group>/<metric>`` scalars, at its
        ``epoch`` (the step of Keras's own ``epoch_loss``: see the README's "Epoch
        numbering")."""

        def write():
            tag = f"koopman/{record.group}"
            tb_summary.spectrum(tag, record.eigenvalues, amplitudes=record.amplitudes,
                                residuals=record.residuals)
            if unit_weights is not None:
                tb_summary.modes(tag, unit_weights)
            for key in LOGGED_SCALARS:
                tf.summary.scalar(f"koopman/{record.group}/{key}", float(record.metrics[key]))

        self._write("TensorBoard logging", record.group, write, record.epoch)

    def event(self, kind, reason, step):
        """An event of training (``kind``, ``reason``) at ``step``: the ``koopman_events/<kind>``
        summary the Koopman dashboard marks on its step axis."""
        self._write("TensorBoard logging", None,
                    lambda: tb_summary.event(kind, str(reason)), step)

    def scalar(self, tag, value, step):
        self._write("TensorBoard logging", None,
                    lambda: tf.summary.scalar(tag, float(value)), step)

    def text(self, tag, value, step):
        self._write("TensorBoard logging", None, lambda: tf.summary.text(tag, str(value)), step)

    def histogram(self, tag, values, step):
        self._write("TensorBoard logging", None, lambda: tf.summary.histogram(tag, values), step)

    def flush(self):
        if self._writer is not None:
            self._write("TensorBoard flush", None, self._writer.flush, step=None)

    def close(self):
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None

    def _write(self, where, group, write, step):
        if self._writer is None:
            return
        try:
            if step is None:
                with self._writer.as_default():
                    write()
            else:
                with self._writer.as_default(step=int(step)):
                    write()
        except io_failures() as error:  # warned about and survived, never fatal to fit
            if self._on_error is None:
                raise
            self._on_error(where, error, group)
