"""Plugin name and summary metadata of the ``koopman`` summaries.

Format (shared by the callbacks and the dashboard):

* spectra: one tensor summary per (group, step), tag ``koopman/<group>``, data class TENSOR,
  value float32 ``[r, 4 + u]``: columns real part, imaginary part, |amplitude|, residual (NaN
  where unknown), then (format 2) ``u`` columns of per-unit mode weights: row ``i``'s share of
  mode ``i`` carried by each unit of the layer (summing to 1; NaN rows past the leading modes,
  ``u = 0`` when the group has none). Plugin content: JSON bytes ``{"version": 2, "columns":
  [...], "units": U, "unit_size": s}`` (no ``"kind"``, or ``"kind": "spectrum"``): the layer
  has ``U`` units, and each of the ``u = ceil(U / s)`` stored columns sums ``s`` consecutive
  ones (``s > 1`` only past ``MAX_UNITS`` units). Format 1 (before the modes view) is ``[r, 4]``
  with ``{"version": 1, "columns": [...]}``; both are read.
* events of training (early stop, restart, a jump kept or undone, a pruning update): one tensor
  summary per event, tag ``koopman_events/<kind>``, data class TENSOR, value a scalar string
  tensor (the reason, UTF-8), at the step (epoch) of the event. Plugin content: JSON bytes
  ``{"version": EVENT_FORMAT_VERSION, "kind": "event"}``; logs written before events existed
  simply have none.
"""

import json

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "koopman"
FORMAT_VERSION = 2
COLUMNS = ("real", "imag", "abs_amplitude", "residual")
MAX_UNITS = 1024  # per-unit columns stored per spectrum; more units are summed in bins

EVENT_FORMAT_VERSION = 1
EVENT_TAG_PREFIX = "koopman_events/"
SPECTRUM = "spectrum"
EVENT = "event"


def create_summary_metadata(description=None, units=0, unit_size=1):
    """A ``SummaryMetadata`` proto for one ``koopman`` spectrum summary (``units``: the layer's
    units, each stored column summing ``unit_size`` of them)."""
    content = json.dumps({"version": FORMAT_VERSION, "columns": list(COLUMNS),
                          "units": int(units), "unit_size": int(unit_size)}).encode("utf-8")
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


def summary_kind(content):
    """``SPECTRUM`` or ``EVENT`` for readable plugin content, ``None`` for unreadable (newer or
    malformed) content or an unknown kind."""
    try:
        data = parse_plugin_metadata(content)
    except ValueError:
        return None
    kind = data.get("kind", SPECTRUM)
    return kind if kind in (SPECTRUM, EVENT) else None


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
    newest = EVENT_FORMAT_VERSION if data.get("kind") == EVENT else FORMAT_VERSION
    if not isinstance(version, int) or version > newest:
        raise ValueError(f"unsupported koopman summary format version {version!r}")
    return data
