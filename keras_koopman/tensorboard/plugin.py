"""The "Koopman" TensorBoard dashboard: spectra per run, group and step.

Installed through the ``tensorboard_plugins`` entry point, so ``tensorboard --logdir DIR`` shows
a "Koopman" tab next to Scalars once keras-koopman is installed. The backend reads only through
TensorBoard's data provider; the frontend is one ES module (``static/index.js``) with no build
step and nothing fetched from the network.

Routes, under ``/data/plugin/koopman/``:

* ``index.js``: the frontend module.
* ``tags``: ``{run: {tag: {"description": str, "max_step": int, "last_wall_time": float}}}``
  for every ``koopman`` spectrum summary, answered from the data provider's listing alone (no
  tensor is read: the number of steps comes with ``spectra``).
* ``spectra?run=R&tag=T``: ``{"run", "tag", "steps": [{"step", "wall_time", "eigenvalues":
  [[re, im], ...], "amplitudes": [...], "residuals": [...]}, ...], "warnings": [...],
  "downsampled": bool}``, oldest step first, at most ``MAX_STEPS`` steps (evenly downsampled
  past that). Missing or unknown ``run``/``tag``: 400 with a message. A stored tensor that is
  not ``[r, 4]`` is skipped with a line in ``warnings``; NaN (unknown amplitude or residual)
  comes back as ``null``.
* ``modes?run=R&tag=T&step=S``: ``{"run", "tag", "step", "units", "unit_size", "weights":
  [[w_1, ..., w_u] or null, ...]}``: for the leading eigenvalues of spectrum ``T`` at step
  ``S`` (in the order of ``spectra``), the share of each one's mode that each unit of the layer
  carries (from the ``T/modes`` summary; ``null`` where unknown). Each of the ``u`` columns sums
  ``unit_size`` consecutive units of ``units``. ``units`` 0 and ``weights`` ``[]`` when that
  step has none (logs of earlier versions, groups without units). Missing or non-integer
  parameter, unknown run or tag: 400 with a message.
* ``events?run=R``: ``{"run", "events": [{"kind", "step", "wall_time", "reason", "run"},
  ...]}``, the events of training (``koopman_events/<kind>`` summaries: early stop, restart, a
  jump kept or undone, a pruning update) of run ``R`` and of the runs in its subdirectories
  (``R/pruning``, where ``UpdateKoopmanPruning`` writes), oldest step first; ``[]`` for a run
  without any (logs written before events existed). Missing ``run``: 400; a run TensorBoard
  does not know: ``[]``.
"""

from __future__ import annotations

import importlib.resources
import json
import math

import numpy as np
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from keras_koopman.tensorboard import metadata

__all__ = ["KoopmanPlugin", "KoopmanLoader", "MAX_STEPS", "STORED_STEPS"]

MAX_STEPS = 1000  # steps per spectra response; more are evenly downsampled
STORED_STEPS = 1000  # tensors per tag TensorBoard keeps (its default for unknown plugins is 10)

_JSON = "application/json"


def _finite_or_none(values):
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _spectrum_json(datum):
    """One stored step as JSON-ready data, or ``None`` when the tensor is malformed."""
    array = np.asarray(datum.numpy)
    if array.ndim != 2 or array.shape[1] != len(metadata.COLUMNS):
        return None
    array = array.astype(np.float64)
    pairs = array[:, :2]
    keep = np.all(np.isfinite(pairs), axis=1)  # an eigenvalue must be a number to be drawn
    array = array[keep]
    return {
        "step": int(datum.step),
        "wall_time": float(datum.wall_time),
        "eigenvalues": array[:, :2].tolist(),
        "amplitudes": _finite_or_none(array[:, 2]),
        "residuals": _finite_or_none(array[:, 3]),
    }


def _event_reason(value):
    """The reason of a stored event (a scalar string tensor) as text."""
    array = np.asarray(value)
    item = array.reshape(-1)[0] if array.size else b""
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def _even_sample(items, limit):
    """At most ``limit`` items, evenly spaced, always keeping the first and the last."""
    if len(items) <= limit:
        return items, False
    if limit == 1:
        return items[-1:], True
    index = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in index], True


class KoopmanPlugin(base_plugin.TBPlugin):
    """Serves the ``koopman`` spectrum summaries and the dashboard that draws them.

    Example (in a test, the way TensorBoard builds it):

    >>> from tensorboard.backend import application
    >>> from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    >>> from tensorboard.plugins import base_plugin
    >>> from werkzeug import test
    >>> import tempfile
    >>> logdir = tempfile.mkdtemp()
    >>> multiplexer = plugin_event_multiplexer.EventMultiplexer()
    >>> _ = multiplexer.AddRunsFromDirectory(logdir)
    >>> _ = multiplexer.Reload()
    >>> context = base_plugin.TBContext(
    ...     logdir=logdir,
    ...     data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir))
    >>> client = test.Client(application.TensorBoardWSGI([KoopmanPlugin(context)]))
    >>> client.get("/data/plugin/koopman/tags").get_json()
    {}
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider
        hints = context.sampling_hints or {}
        self._max_steps = int(hints.get(self.plugin_name, MAX_STEPS))

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_js,
            "/tags": self._serve_tags,
            "/spectra": self._serve_spectra,
            "/events": self._serve_events,
            "/modes": self._serve_modes,
        }

    def is_active(self):
        return False  # TensorBoard asks the data provider (see data_plugin_names)

    def data_plugin_names(self):
        return (self.plugin_name,)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Koopman")

    # ------------------------------------------------------------------------------------------
    def _list(self, request):
        return self._data_provider.list_tensors(
            plugin_util.context(request.environ),
            experiment_id=plugin_util.experiment_id(request.environ),
            plugin_name=self.plugin_name,
        )

    @wrappers.Request.application
    def _serve_js(self, request):
        source = importlib.resources.files("keras_koopman.tensorboard").joinpath(
            "static/index.js"
        )
        return http_util.Respond(request, source.read_text("utf-8"), "application/javascript")

    def _read(self, request, runs, tags):
        return self._data_provider.read_tensors(
            plugin_util.context(request.environ),
            experiment_id=plugin_util.experiment_id(request.environ),
            plugin_name=self.plugin_name,
            downsample=STORED_STEPS,
            run_tag_filter=provider.RunTagFilter(runs=runs, tags=tags),
        )

    @wrappers.Request.application
    def _serve_tags(self, request):
        # The listing alone: reading every tensor to count steps costs ~25 us per stored
        # tensor (235 ms at 10,000); the frontend learns the count from ``spectra``.
        body = {}
        for run, tags in self._list(request).items():
            for tag, series in tags.items():
                if metadata.summary_kind(series.plugin_content) != metadata.SPECTRUM:
                    continue  # an event, or a newer format: never drawn wrongly
                body.setdefault(run, {})[tag] = {
                    "description": series.description or "",
                    "max_step": int(series.max_step),
                    "last_wall_time": float(series.max_wall_time),
                }
        return http_util.Respond(request, body, _JSON)

    @wrappers.Request.application
    def _serve_events(self, request):
        run = request.args.get("run")
        if run is None:
            return self._bad_request(request, "missing query parameter run")
        # The run's events and those of the runs in its subdirectories: UpdateKoopmanPruning
        # given the monitor's log_dir writes to <log_dir>/pruning, a run without spectra.
        wanted = {}
        for name, series in self._list(request).items():
            if name != run and not name.startswith(run.rstrip("/") + "/"):
                continue
            tags = [tag for tag, info in series.items()
                    if metadata.summary_kind(info.plugin_content) == metadata.EVENT]
            if tags:
                wanted[name] = tags
        events = []
        if wanted:
            data = self._read(request, sorted(wanted),
                              sorted({tag for tags in wanted.values() for tag in tags}))
            for name, tags in wanted.items():
                for tag in tags:
                    kind = tag[len(metadata.EVENT_TAG_PREFIX):] if tag.startswith(
                        metadata.EVENT_TAG_PREFIX) else tag
                    for datum in data.get(name, {}).get(tag, []):
                        events.append({"kind": kind, "step": int(datum.step),
                                       "wall_time": float(datum.wall_time),
                                       "reason": _event_reason(datum.numpy), "run": name})
        events.sort(key=lambda event: (event["step"], event["wall_time"], event["kind"]))
        return http_util.Respond(request, {"run": run, "events": events}, _JSON)

    @wrappers.Request.application
    def _serve_spectra(self, request):
        run = request.args.get("run")
        tag = request.args.get("tag")
        if run is None or tag is None:
            missing = " and ".join(name for name, v in (("run", run), ("tag", tag)) if v is None)
            return self._bad_request(request, f"missing query parameter {missing}")
        listing = self._list(request)
        if run not in listing:
            return self._bad_request(request, f"unknown run {run!r}")
        if (tag not in listing[run] or metadata.summary_kind(listing[run][tag].plugin_content)
                != metadata.SPECTRUM):
            return self._bad_request(request, f"unknown tag {tag!r} in run {run!r}")
        data = self._read(request, [run], [tag])
        steps, warnings = [], []
        for datum in data.get(run, {}).get(tag, []):
            entry = _spectrum_json(datum)
            if entry is None:
                warnings.append(
                    f"step {int(datum.step)}: expected a [r, {len(metadata.COLUMNS)}] tensor, "
                    f"got shape {list(np.shape(datum.numpy))}; skipped"
                )
                continue
            steps.append(entry)
        steps.sort(key=lambda entry: entry["step"])
        steps, downsampled = _even_sample(steps, self._max_steps)
        body = {"run": run, "tag": tag, "steps": steps, "warnings": warnings,
                "downsampled": downsampled}
        return http_util.Respond(request, json.dumps(body, allow_nan=False), _JSON)

    @wrappers.Request.application
    def _serve_modes(self, request):
        run, tag, step = (request.args.get(name) for name in ("run", "tag", "step"))
        missing = [name for name, v in (("run", run), ("tag", tag), ("step", step)) if v is None]
        if missing:
            return self._bad_request(request, f"missing query parameter {' and '.join(missing)}")
        try:
            step = int(step)
        except ValueError:
            return self._bad_request(request, f"step must be an integer; got {step!r}")
        series = self._list(request).get(run, {})
        if tag not in series or metadata.summary_kind(series[tag].plugin_content) != (
                metadata.SPECTRUM):
            return self._bad_request(request, f"unknown tag {tag!r} in run {run!r}")
        body = {"run": run, "tag": tag, "step": step, "units": 0, "unit_size": 1, "weights": []}
        modes_tag = tag + metadata.MODES_SUFFIX
        info = series.get(modes_tag)
        if info is None or metadata.summary_kind(info.plugin_content) != metadata.MODES:
            return http_util.Respond(request, body, _JSON)  # logs without modes: none
        # The data provider reads a tag's stored steps at once (no single-step read): at most
        # STORED_STEPS tensors of [k, <= MAX_UNITS] floats.
        found = [datum for datum in self._read(request, [run], [modes_tag]).get(run, {}).get(
            modes_tag, []) if int(datum.step) == step]
        array = np.asarray(found[-1].numpy, np.float64) if found else None
        if array is not None and array.ndim == 2 and array.shape[1] > 0:
            content = metadata.parse_plugin_metadata(info.plugin_content)
            body.update(units=int(content.get("units", array.shape[1])),
                        unit_size=int(content.get("unit_size", 1)),
                        weights=[_finite_or_none(row) if np.all(np.isfinite(row)) else None
                                 for row in array])
        return http_util.Respond(request, json.dumps(body, allow_nan=False), _JSON)

    @staticmethod
    def _bad_request(request, message):
        return http_util.Respond(request, {"error": message}, _JSON, code=400)


class KoopmanLoader(base_plugin.TBLoader):
    """Loads :class:`KoopmanPlugin` and lets TensorBoard keep enough spectra per tag.

    TensorBoard keeps 10 tensors per tag for a plugin it does not know; unless the user set
    ``--samples_per_plugin koopman=N``, this raises it to ``STORED_STEPS``.
    """

    def fix_flags(self, flags):
        samples = getattr(flags, "samples_per_plugin", None)
        if isinstance(samples, dict):
            samples.setdefault(metadata.PLUGIN_NAME, STORED_STEPS)

    def load(self, context):
        return KoopmanPlugin(context)
