"""What an analysis leaves behind: :class:`SpectrumRecord` and the :class:`History` of them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

__all__ = ["History", "SpectrumRecord"]

_ARRAYS = ("eigenvalues", "amplitudes", "residuals")


@dataclasses.dataclass(frozen=True)
class SpectrumRecord:
    """One analysis of one observable group.

    Attributes:
      epoch: the epoch (0-based, as Keras counts) during or after which the analysis ran.
      step: index of the newest snapshot analysed; snapshot 0 is the weights at the start of
        the first ``fit``, and each gathering adds one.
      group: the observable group's name (a layer name, ``"model"``, ...).
      eigenvalues: ``[r]`` complex128, sorted by modulus, largest first.
      amplitudes: ``[r]`` complex128, coefficients of the oldest snapshot in the window.
      residuals: ``[r]`` float64 data-driven residuals.
      rank: ``r``.
      snapshots: how many snapshots the window held.
      metrics: ``spectral_radius``, ``near_one_fraction``, ``unstable_count``,
        ``max_residual`` (see :mod:`keras_koopman.spectrum`) and ``motion``
        (``|x_newest - x_oldest| / |x_newest|`` over the window), as Python numbers. A group
        whose weights are all zero gets a record with an empty spectrum and ``motion`` 0.
    """

    epoch: int
    step: int
    group: str
    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    residuals: np.ndarray
    rank: int
    snapshots: int
    metrics: dict

    def line(self):
        """One line for a log: group, step, rank and the metrics."""
        m = self.metrics
        return (f"koopman {self.group}: step {self.step} rank {self.rank} "
                f"radius {m['spectral_radius']:.4f} at_1 {m['near_one_fraction']:.3f} "
                f"outside {m['unstable_count']} max_residual {m['max_residual']:.2e}")

    def current_weights(self):
        """``|amplitude| * |lambda|^(snapshots-1)``: each mode's weight in the newest snapshot."""
        return np.abs(self.amplitudes) * np.abs(self.eigenvalues) ** (self.snapshots - 1)

    def __eq__(self, other):
        """Field by field; arrays and metrics compare NaN equal to NaN (a saved and restored
        record equals the original)."""
        if not isinstance(other, SpectrumRecord):
            return NotImplemented
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name in _ARRAYS:
                if not np.array_equal(mine, theirs, equal_nan=True):
                    return False
            elif field.name == "metrics":
                if mine.keys() != theirs.keys() or not all(
                        np.array_equal(mine[key], theirs[key], equal_nan=True) for key in mine):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None


class History(list):
    """The records of every analysis, oldest first: a list of :class:`SpectrumRecord` with the
    queries the callbacks make, and a lossless conversion to arrays and back (no pickle).

    Example:

    >>> import numpy as np
    >>> from keras_koopman.records import History, SpectrumRecord
    >>> def record(step, group):
    ...     one = np.ones(1, complex)
    ...     return SpectrumRecord(0, step, group, one, one, np.zeros(1), 1, 3, {"motion": 0.0})
    >>> history = History([record(2, "a"), record(2, "b"), record(3, "a")])
    >>> [r.group for r in history.current()], history.latest("b").step
    (['a'], 2)
    >>> History.from_arrays(history.to_arrays()) == history
    True
    """

    def latest(self, group=None):
        """The newest record of ``group`` (of any group if ``None``), or ``None``."""
        for record in reversed(self):
            if group is None or record.group == group:
                return record
        return None

    def current(self, step=None):
        """The records of the newest analysed step (or of ``step``), one per group."""
        if step is None:
            if not self:
                return []
            step = self[-1].step
        records = []
        for record in reversed(self):
            if record.step < step:
                break
            if record.step == step:
                records.append(record)
        return records[::-1]

    def records(self, group):
        """Every record of ``group``, oldest first."""
        return [record for record in self if record.group == group]

    def to_arrays(self, start=0):
        """The records from ``start`` on as ``{name: array}`` for ``np.savez``: the spectra as
        arrays, everything else as one JSON string."""
        arrays, meta = {}, []
        for i, record in enumerate(self[start:]):
            for field in _ARRAYS:
                arrays[f"{i}/{field}"] = getattr(record, field)
            meta.append({field.name: getattr(record, field.name)
                         for field in dataclasses.fields(record) if field.name not in _ARRAYS})
        arrays["meta"] = np.array(json.dumps(meta))
        return arrays

    @classmethod
    def from_arrays(cls, arrays):
        """The inverse of :meth:`to_arrays`."""
        meta = json.loads(str(arrays["meta"]))
        return cls(SpectrumRecord(**fields, **{name: np.asarray(arrays[f"{i}/{name}"])
                                               for name in _ARRAYS})
                   for i, fields in enumerate(meta))
