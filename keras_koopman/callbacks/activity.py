"""layer_activity: which layers still change what they compute, from a monitor's records."""

from __future__ import annotations

import numpy as np

from keras_koopman._validation import check_number
from keras_koopman.callbacks.base import check_monitor
from keras_koopman.spectrum import mode_share

__all__ = ["layer_activity"]

IDLE_MOTION = 1e-6  # relative motion over the window below which a layer does not move ("still")


def layer_activity(monitor, tolerance=None, idle_share=0.01, idle_motion=IDLE_MOTION):
    """Per layer (observable group): how much of its weights' motion sits in non-unit modes.

    From each group's newest :class:`~keras_koopman.callbacks.SpectrumRecord`: with
    ``w_j = |b_j| |lambda_j|^(s-1)`` each mode's weight in the newest snapshot,
    ``non_unit_share = sum(w_j for |lambda_j - 1| > tolerance) / sum(w_j)``. A layer is flagged
    ``idle`` when that share is below ``idle_share`` (all its content sits at eigenvalue 1: it
    no longer changes what it computes) or its weights did not move (``motion`` below
    ``idle_motion``).

    Returns:
      ``{group: {"non_unit_share", "motion", "idle"}}`` for every analysed group.

    Example:

    >>> import numpy as np, keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
    ...                           keras.layers.Dense(1, name="out")])
    >>> model.compile("sgd", "mse")
    >>> monitor = kk.callbacks.KoopmanMonitor(window=5)
    >>> x, y = np.random.rand(32, 4), np.random.rand(32, 1)
    >>> _ = model.fit(x, y, epochs=6, verbose=0, callbacks=[monitor])
    >>> activity = kk.callbacks.layer_activity(monitor)
    >>> sorted(activity), sorted(activity["out"])
    (['hidden', 'out'], ['idle', 'motion', 'non_unit_share'])
    """
    check_monitor(monitor)
    tolerance = monitor.tolerance if tolerance is None else check_number(tolerance, "tolerance")
    idle_share = check_number(idle_share, "idle_share", 0.0, 1.0)
    report = {}
    for record in monitor.current():
        share = mode_share(record, lambda eigenvalues: np.abs(eigenvalues - 1.0) > tolerance)
        motion = float(record.metrics.get("motion", 0.0))
        report[record.group] = {
            "non_unit_share": share,
            "motion": motion,
            "idle": share < idle_share or motion < idle_motion,
        }
    return report
