"""What every tracker shares, whatever the Keras backend: arguments, groups, failures,
records and queries (TensorFlow: :class:`~keras_koopman.callbacks.KoopmanTracker`; JAX and
PyTorch: :class:`~keras_koopman.portable.tracker.PortableTracker`). No TensorFlow here."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_koopman import host_dmd
from keras_koopman.host_dmd import check_method, parse_rank
from keras_koopman._validation import (DataError, check_choice, check_int, check_int_or,
                                       check_names, check_number, check_window)
from keras_koopman.records import History, SpectrumRecord

__all__ = ["DATA_FAILURES", "TrackerCore", "UNIT_MODES", "host_ring", "shared_last_axis",
           "unit_layout"]

# What a Koopman callback survives inside fit (one warning, a record in ``errors``): data it
# cannot use (NaN/Inf, all zero: DataError), a decomposition that fails at run time (an
# eigensolver that does not converge), numbers that overflow. Anything else is a programming
# or configuration error and propagates.
DATA_FAILURES = (DataError, ArithmeticError, np.linalg.LinAlgError)
if keras.backend.backend() == "tensorflow":  # (no backend() here: importing flips no flag)
    import tensorflow as _tf

    DATA_FAILURES += (_tf.errors.InvalidArgumentError,)
_METRICS = ("spectral_radius", "near_one_fraction", "unstable_count", "max_residual", "motion")
UNIT_MODES = 8  # leading modes whose per-unit weights a record carries (the tab's modes view)


class TrackerCore:
    """The backend-neutral half of a tracker (see
    :class:`~keras_koopman.callbacks.KoopmanTracker` for the interface): a subclass provides
    ``watch``, ``gather``, ``skip``, ``sync``, ``stored``, ``analyse`` (which hands the host
    outputs of each group to :meth:`_record`), ``restart``, ``state_dict`` and
    ``load_state_dict``, and ``_unit_weights``."""

    def __init__(self, observables="layers", window=20, rank=None, method="exact",
                 tolerance=0.01, sketch="auto", storage_dtype="float32",
                 snapshot_memory=512 * 2**20, name="KoopmanMonitor"):
        if isinstance(observables, str):
            check_choice(observables, "observables", ("layers", "model"))
        elif not callable(observables):
            observables = check_names(observables, "observables (a list of layer names, "
                                      "'layers', 'model' or a callable)", allow_none=False)
        self.observables = observables
        self.window = check_window(window, 3)
        parse_rank(rank)
        self.rank = rank
        self.method = check_method(method)
        self.tolerance = check_number(tolerance, "tolerance")
        self.sketch = check_int_or(sketch, "sketch", ("auto", None))
        self.storage_dtype = check_choice(storage_dtype, "storage_dtype",
                                          ("float32", "bfloat16"))
        self.snapshot_memory = check_int(snapshot_memory, "snapshot_memory", 1)
        self.name = name
        self.history = History()
        self.errors = []
        self.groups = {}
        self.buffers = {}
        self.step = -1  # index of the newest snapshot
        self.epoch = 0
        self.disabled = False  # nothing to watch in the model
        self.nonfinite_groups = set()
        self._model = None
        self._warned = set()
        self._last_analysed = None
        self.unit_modes = False  # per-unit weights of the leading modes, in unit_weights
        self.unit_weights = {}
        self._units = {}

    def watching(self, model):
        """Whether the buffers are those of ``model`` (a rebuilt model needs :meth:`watch`)."""
        return self._model is model

    def _resolve(self, model):
        observables = self.observables
        if callable(observables):
            groups = dict(observables(model))
        elif observables == "model":
            groups = {"model": list(model.trainable_weights)}
        elif observables == "layers":
            groups = {layer.name: list(layer.trainable_weights) for layer in model.layers}
        else:
            names = [layer.name for layer in model.layers]
            unknown = [name for name in observables if name not in names]
            if unknown:
                raise ValueError(f"observables names layers {unknown} that the model does not "
                                 f"have; its layers are {names}")
            groups = {name: list(model.get_layer(name).trainable_weights) for name in observables}
        return {name: variables for name, variables in groups.items() if variables}

    def report(self, where, error, group=None):
        """Records a failure in :attr:`errors` and warns once per (where, group, kind)."""
        message = f"{type(error).__name__}: {error}"
        self.errors.append({"epoch": self.epoch, "step": self.step, "group": group,
                            "where": where, "error": message})
        key = (where, group, type(error).__name__)
        if key not in self._warned:
            self._warned.add(key)
            target = f" for group {group!r}" if group else ""
            warnings.warn(f"{self.name}: {where} failed{target} ({message}); training goes on "
                          "(see .errors)", RuntimeWarning, stacklevel=3)

    def stored(self, name=None):
        """How many finite snapshots group ``name`` holds (at most ``window``); ``None``: the
        fewest any group holds. One device read either way."""
        if name is not None and name not in self._stored:
            raise KeyError(f"no observable group {name!r} is watched; the groups are "
                           f"{list(self._stored)}")
        self.sync()
        held = self._stored[name] if name is not None else min(self._stored.values(), default=0)
        return min(held, self.window)

    def _note_nonfinite(self, bad):
        """Marks and reports the groups whose NaN/Inf count ``bad`` (per group, never reset)
        grew since the last sync: one entry of :attr:`errors` per such snapshot, one warning
        per group."""
        names = list(self.buffers)
        for index in np.flatnonzero(bad > self._synced_bad):
            name = names[index]
            self.nonfinite_groups.add(name)
            for _ in range(int(bad[index] - self._synced_bad[index])):
                self.report("snapshot", DataError("weights hold NaN or Inf; not recorded"), name)
        self._synced_bad = bad

    def check_layout(self, layout):
        """``DataError`` unless a saved ``layout`` is this tracker's."""
        if layout != self.layout():
            raise DataError(f"the saved state is of other observable groups ({layout}) than "
                             f"this model's ({self.layout()})")

    def _record(self, eligible, outputs):
        """The records of one analysis from each group's host outputs (``{group: values}``,
        as :func:`host_ring` gives them), appended to :attr:`history` and returned."""
        records = []
        for name in eligible:
            if name not in outputs:  # a packed group behind the others (a skipped snapshot)
                continue
            values = outputs[name]
            if not values["finite"]:
                self.report("analysis", DataError("the Gram matrix holds NaN or Inf"), name)
                continue
            metrics = {key: np.asarray(values[key]).item() for key in _METRICS}
            still = values["top_singular"] == 0  # weights exactly zero: no spectrum, no motion
            if still:
                metrics.update(spectral_radius=0.0, near_one_fraction=0.0, unstable_count=0,
                               max_residual=float("nan"))
            empty = np.zeros(0, np.complex128)
            if self.unit_modes and not still:
                weights = self._unit_weights(name, values["combination"])
                if weights is not None:
                    self.unit_weights[name] = weights
            records.append(SpectrumRecord(
                epoch=self.epoch, step=self.step, group=name,
                eigenvalues=empty if still else values["eigenvalues"],
                amplitudes=empty if still else values["amplitudes"],
                residuals=np.zeros(0) if still else values["residuals"],
                rank=0 if still else int(values["rank"]),
                snapshots=min(self._stored[name], self.window), metrics=metrics))
        self.history.extend(records)
        return records

    # ----------------------------------------------------------------------------------------
    # queries
    def _check_group(self, group):
        known = set(self.buffers) | {record.group for record in self.history}
        if group not in known:
            raise KeyError(f"no observable group {group!r}; the groups are {sorted(known)}")

    def latest(self, group=None):
        """The newest record of ``group`` (of any group if ``None``), or ``None``.

        Raises:
          KeyError: ``group`` is not a group of the watched model or of the history.
        """
        if group is not None and (self.buffers or self.history):
            self._check_group(group)
        return self.history.latest(group)

    def current(self):
        """The records of the newest snapshot's analysis (one per group analysed), or []."""
        return self.history.current(self.step) if self.history else []

    def records(self, group):
        """Every record of ``group``, oldest first (``KeyError`` for an unknown group once a
        model is watched)."""
        if self.buffers or self.history:
            self._check_group(group)
        return self.history.records(group)


def host_ring(gram, n_cols, code, value, floor, method, tolerance):
    """One buffer's spectrum, metrics and motion from its Gram matrix, on the host."""
    finite = bool(np.all(np.isfinite(gram)))
    if not finite:
        return {"finite": False}
    eigenvalues, combination, residuals, amplitudes, singular, rank = host_dmd.gram_solve(
        gram, n_cols, code, value, floor, method)
    combination, amplitudes = host_dmd.unit_modes(combination, amplitudes, gram)
    values = dict(finite=True, eigenvalues=eigenvalues, amplitudes=amplitudes,
                  combination=combination,
                  residuals=residuals, rank=rank, top_singular=singular[0],
                  motion=host_dmd.window_motion(gram))
    values.update(host_dmd.summary(eigenvalues, amplitudes, residuals, tolerance))
    return values


def unit_layout(layer, variables):
    """``(units, [(offset, size), ...])`` of a layer whose variables all end in an axis of the
    same length, its output units or channels (Dense, Conv, Embedding, normalization,
    recurrent layers: there the gates' columns), the variables flattened one after the other
    as the buffers store them; ``None`` for anything else: a group that is not one layer, a
    nested model, a transposed convolution (its kernel ends in the input channels)."""
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                  keras.layers.Conv3DTranspose)
    units = shared_last_axis(variables)
    if layer is None or isinstance(layer, (keras.Model, *transposed)) or units is None:
        return None
    parts, offset = [], 0
    for variable in variables:
        size = int(np.prod(variable.shape))
        parts.append((offset, size))
        offset += size
    return units, parts


def shared_last_axis(variables):
    """The length of the last axis every one of ``variables`` ends in (the output units of
    Dense and Conv kernels and biases), or ``None`` when they do not share one."""
    shapes = [tuple(v.shape) for v in variables]
    if not shapes or any(len(shape) == 0 or shape[-1] is None for shape in shapes):
        return None
    units = int(shapes[0][-1])
    return units if units >= 1 and all(int(shape[-1]) == units for shape in shapes) else None




def _representative(combination):
    """Per mode (column of ``combination``), the first column that is it or its exact complex
    conjugate (an eigensolver of a real matrix returns conjugate pairs exactly; near misses are
    distinct modes and get products of their own)."""
    k = combination.shape[1]
    first = np.arange(k)
    for j in range(k):
        for i in range(j):
            if first[i] == i and np.array_equal(combination[:, j], np.conj(combination[:, i])):
                first[j] = i
                break
    return first


def _distinct_columns(combination):
    """``(first, source, columns)``: :func:`_representative`'s ``first``, then the real and
    (where not zero) imaginary parts of the modes that are their own representative, and for
    each column the mode it belongs to."""
    first = _representative(combination)
    source, columns = [], []
    for j in range(combination.shape[1]):
        if first[j] != j:
            continue
        for part in (combination[:, j].real, combination[:, j].imag):
            if np.any(part != 0):
                source.append(j)
                columns.append(part)
    if not columns:  # every mode zero: one zero column keeps the shapes valid
        source, columns = [0], [np.zeros(combination.shape[0])]
    return first, np.asarray(source), columns


