"""KoopmanCallback: the base of every decision callback (stop, restart, jump, prune)."""

from __future__ import annotations

import keras

from keras_koopman._backend import is_tensorflow
from keras_koopman.callbacks.monitor import KoopmanMonitor

__all__ = ["KoopmanCallback", "check_monitor"]


def check_monitor(monitor, name="monitor"):
    """``monitor`` if it is a :class:`KoopmanMonitor`, else ``TypeError``."""
    if not isinstance(monitor, KoopmanMonitor):
        raise TypeError(f"{name} must be a kk.callbacks.KoopmanMonitor; got "
                        f"{type(monitor).__name__}: create one with "
                        "kk.callbacks.KoopmanMonitor() and pass it to both")
    return monitor


class KoopmanCallback(keras.callbacks.Callback):
    """A callback that decides from a :class:`KoopmanMonitor`'s records, as Keras's
    ``EarlyStopping`` does from ``MonitorCallback``.

    The base owns the shared mechanics: it checks ``monitor``, forwards every Keras hook to
    the monitor before its own work (so the monitor may be listed before it, after it, or not
    at all, and gathers exactly as a listed one: each monitor hook runs once per event), and
    after each epoch calls :meth:`decide` with the monitor's newest analysis in
    :attr:`records`. :meth:`log_scalar`, :meth:`log_text` and :meth:`log_event` write through
    the monitor's logger (chief only, at the monitor's step). A subclass writes :meth:`decide`, and
    ``on_train_begin`` (calling ``super()``) to reset its state.

    Args:
      monitor: the :class:`KoopmanMonitor` to read.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> class StopWhenStill(kk.callbacks.KoopmanCallback):
    ...     def decide(self, epoch, logs):
    ...         if self.records and all(r.metrics["motion"] < 1e-3 for r in self.records):
    ...             self.model.stop_training = True
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.0), "mse")   # learning rate 0: nothing moves
    >>> monitor = kk.callbacks.KoopmanMonitor(window=4)
    >>> history = model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=10, verbose=0,
    ...                     callbacks=[StopWhenStill(monitor)])   # monitor left out
    >>> len(history.epoch)
    2
    """

    def __init__(self, monitor):
        super().__init__()
        self.monitor = check_monitor(monitor)
        if monitor.every != "epoch" and is_tensorflow():
            # A batch hook only where the monitor gathers per batch from one (TensorFlow; on
            # JAX and torch it gathers around the train step, and a hook would make Keras
            # run every callback synchronously); a subclass's own hook runs after it.
            own = self.on_train_batch_end

            def on_train_batch_end(batch, logs=None):
                self.monitor.on_train_batch_end(batch, logs)
                own(batch, logs)

            self.on_train_batch_end = on_train_batch_end

    # ----------------------------------------------------------------------------------------
    @property
    def records(self):
        """The monitor's records of its newest snapshot (one per group analysed then)."""
        return self.monitor.current()

    def decide(self, epoch, logs):
        """Called after every epoch, once the monitor has gathered (and analysed) it."""

    def log_scalar(self, tag, value):
        """Writes a scalar to the monitor's TensorBoard log at the current epoch (Keras's
        TensorBoard step for epoch summaries)."""
        self.monitor.logger.scalar(tag, value, self.monitor.epoch)

    def log_text(self, tag, text):
        """Writes text to the monitor's TensorBoard log at the current epoch."""
        self.monitor.logger.text(tag, text, self.monitor.epoch)
        self.monitor.logger.flush()

    def log_event(self, kind, reason):
        """Writes an event of training (``kind``: ``"early_stop"``, ``"restart"``, ...) with its
        ``reason`` to the monitor's TensorBoard log at the current epoch; the Koopman dashboard
        marks it on its step axis."""
        self.monitor.logger.event(kind, reason, self.monitor.epoch)
        self.monitor.logger.flush()

    # ----------------------------------------------------------------------------------------
    # Keras hooks, forwarded to the monitor first (a no-op where it already ran for the event).
    def on_train_begin(self, logs=None):
        # This fit's params dict tells the monitor which fit it is in, when it is not listed.
        self.monitor.set_params(self.params)
        self.monitor.ensure_started(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.monitor.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.monitor.on_epoch_end(epoch, logs)
        self.decide(epoch, logs or {})

    def on_train_end(self, logs=None):
        self.monitor.on_train_end(logs)
