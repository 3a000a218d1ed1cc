"""Plugin name and summary metadata of the ``koopman`` summaries.

Format (shared by the callbacks and the dashboard):

* spectra: one tensor summary per (group, step), tag ``koopman/<group>``, data class TENSOR,
  value float32 ``[r, 4]`` with columns real part, imaginary part, |amplitude|, residual (NaN
  where unknown). Plugin content: JSON bytes ``{"version": FORMAT_VERSION, "columns": [...]}``
  (no ``"kind"``, or ``"kind": "spectrum"``).
* events of training (early stop, restart, a jump kept or undone, a pruning update): one tensor
  summary per event, tag ``koopman_events/<kind>``, data class TENSOR, value a scalar string
  tensor (the reason, UTF-8), at the step (epoch) of the event. Plugin content: JSON bytes
  ``{"version": EVENT_FORMAT_VERSION, "kind": "event"}``; logs written before events existed
  simply have none.
* modes across units (the dashboard's modes view): one tensor summary per (group, step), tag
  ``<spectrum tag>/modes`` (``koopman/<group>/modes``), data class TENSOR, value float32
  ``[k, u]``: row ``i`` is the share of the spectrum's ``i``-th mode (same order, the ``k``
  leading ones) that each unit of the layer carries (each row sums to 1; a NaN row where it is
  unknown). Plugin content: JSON bytes ``{"version": MODES_FORMAT_VERSION, "kind": "modes",
  "units": U, "unit_size": s}``: the layer has ``U`` units and each stored column sums ``s``
  consecutive ones (``s > 1`` only past ``MAX_UNITS`` units). A kind of its own, next to the
  unchanged spectra, so that a dashboard of an earlier version still reads the spectra of new
  logs, and the spectra stay small; logs written before it simply have none.
"""

import json

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "koopman"
FORMAT_VERSION = 1
COLUMNS = ("real", "imag", "abs_amplitude", "residual")

EVENT_FORMAT_VERSION = 1
EVENT_TAG_PREFIX = "koopman_events/"
MODES_FORMAT_VERSION = 1
MODES_SUFFIX = "/modes"
MAX_UNITS = 256  # unit columns stored per step (bars a plot can show); more are binned
SPECTRUM = "spectrum"
EVENT = "event"
MODES = "modes"
_NEWEST = {SPECTRUM: FORMAT_VERSION, EVENT: EVENT_FORMAT_VERSION, MODES: MODES_FORMAT_VERSION}


def create_summary_metadata(description=None):
    """A ``SummaryMetadata`` proto for one ``koopman`` spectrum summary."""
    content = json.dumps({"version": FORMAT_VERSION, "columns": list(COLUMNS)}).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        summary_description=description or "",
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def create_event_metadata(description=None):
    """A ``SummaryMetadata`` proto for one ``koopman`` event summary (a string tensor)."""
    content = json.dumps({"version": EVENT_FORMAT_VERSION, "kind": EVENT}).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        summary_description=description or "",
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def create_modes_metadata(units, unit_size=1, description=None):
    """A ``SummaryMetadata`` proto for one ``koopman`` modes summary (per-unit mode weights of
    a layer of ``units`` units, each stored column summing ``unit_size`` of them)."""
    content = json.dumps({"version": MODES_FORMAT_VERSION, "kind": MODES, "units": int(units),
                          "unit_size": int(unit_size)}).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        summary_description=description or "",
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def summary_kind(content):
    """``SPECTRUM``, ``EVENT`` or ``MODES`` for readable plugin content, ``None`` for
    unreadable (newer or malformed) content or an unknown kind."""
    try:
        data = parse_plugin_metadata(content)
    except ValueError:
        return None
    kind = data.get("kind", SPECTRUM)
    return kind if kind in _NEWEST else None


def parse_plugin_metadata(content):
    """The plugin content as a dict; raises ``ValueError`` on a newer or malformed format."""
    if isinstance(content, bytes):
        content = content.decode("utf-8")
    try:
        data = json.loads(content) if content else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"koopman plugin content is not JSON: {content!r}") from error
    if not isinstance(data, dict):
        raise ValueError(f"koopman plugin content is not a JSON object: {content!r}")
    version = data.get("version", 0)
    newest = _NEWEST.get(data.get("kind", SPECTRUM), FORMAT_VERSION)
    if not isinstance(version, int) or version > newest:
        raise ValueError(f"unsupported koopman summary format version {version!r}")
    return data
