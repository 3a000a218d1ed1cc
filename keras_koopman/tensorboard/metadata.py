"""Plugin name and summary metadata of the ``koopman`` summaries.

Format (shared by the callbacks and the dashboard): one tensor summary per (group, step), tag
``koopman/<group>``, data class TENSOR, value float32 ``[r, 4]`` with columns real part, imaginary
part, |amplitude|, residual (NaN where unknown). Plugin content: JSON bytes
``{"version": FORMAT_VERSION}``.
"""

import json

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "koopman"
FORMAT_VERSION = 1
COLUMNS = ("real", "imag", "abs_amplitude", "residual")


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


def parse_plugin_metadata(content):
    """The plugin content as a dict; raises ``ValueError`` on a newer or malformed format."""
    if isinstance(content, bytes):
        content = content.decode("utf-8")
    try:
        data = json.loads(content) if content else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"koopman plugin content is not JSON: {content!r}") from error
    version = data.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"unsupported koopman summary format version {version!r}")
    return data
