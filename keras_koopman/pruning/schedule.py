"""Pruning schedules: when to update the masks and to which sparsity, as TF-MOT users know them."""

from __future__ import annotations

import keras

from keras_koopman._validation import check_int, check_number

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruningSchedule"]

_UNITS = ("step", "epoch")


def check_sparsity(value, name):
    """A sparsity in ``[0, 1)``, or ValueError naming the argument."""
    sparsity = check_number(value, name, 0.0, 1.0)
    if sparsity >= 1.0:
        raise ValueError(f"{name} must be in [0, 1): 1 would remove every weight; got {value!r}")
    return sparsity


class PruningSchedule:
    """Base class: ``schedule(t) -> (update_now, sparsity)`` for ``t`` in ``unit`` (0-based).

    ``unit="step"`` counts optimizer steps (batches), ``unit="epoch"`` counts epochs; the
    callback calls the schedule at the end of each batch or epoch accordingly.
    """

    def __init__(self, begin, end, frequency, unit):
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {_UNITS}; got {unit!r}")
        self.begin = check_int(begin, "begin_step", 0)
        self.end = -1 if end == -1 else check_int(end, "end_step", 0)
        if self.end != -1 and self.end < self.begin:
            raise ValueError(f"end_step ({end}) must be -1 or >= begin_step ({begin})")
        self.frequency = check_int(frequency, "frequency", 1)
        self.unit = unit

    def _active(self, t):
        """Mask updates happen at ``begin``, then every ``frequency`` until ``end``."""
        if t < self.begin or (self.end != -1 and t > self.end):
            return False
        return (t - self.begin) % self.frequency == 0 or t == self.end

    def sparsity(self, t):
        raise NotImplementedError

    def __call__(self, t):
        return self._active(t), self.sparsity(t)

    def get_config(self):
        return {"begin_step": self.begin, "end_step": self.end, "frequency": self.frequency,
                "unit": self.unit}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="keras_koopman")
class ConstantSparsity(PruningSchedule):
    """The same ``target_sparsity`` at ``begin_step`` and every ``frequency`` after it.

    Example:

    >>> import keras_koopman as kk
    >>> schedule = kk.pruning.ConstantSparsity(0.8, begin_step=2, frequency=2, unit="epoch")
    >>> [schedule(t) for t in range(5)]
    [(False, 0.8), (False, 0.8), (True, 0.8), (False, 0.8), (True, 0.8)]
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100, unit="step"):
        super().__init__(begin_step, end_step, frequency, unit)
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")

    def sparsity(self, t):
        return self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_koopman")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` between ``begin_step``
    and ``end_step``: ``final + (initial - final) * (1 - progress)**power`` (Zhu and Gupta 2017,
    as in TF-MOT), held at ``final_sparsity`` after ``end_step``.

    Example:

    >>> import keras_koopman as kk
    >>> schedule = kk.pruning.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=4, frequency=2)
    >>> [(update, round(s, 4)) for update, s in (schedule(t) for t in range(6))]
    [(True, 0.0), (False, 0.5203), (True, 0.7875), (False, 0.8859), (True, 0.9), (False, 0.9)]
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100, unit="step"):
        if end_step == -1:
            raise ValueError("end_step must be set (>= begin_step) for PolynomialDecay")
        super().__init__(begin_step, end_step, frequency, unit)
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.power = check_number(power, "power", 0.0)

    def sparsity(self, t):
        span = max(self.end - self.begin, 1)
        progress = min(max((t - self.begin) / span, 0.0), 1.0)
        return (self.final_sparsity
                + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power)

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "power": self.power,
                **super().get_config()}
