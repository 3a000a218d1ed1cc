"""Where each observable group's snapshots are kept: a pure function of the sizes and options.

Example:

>>> from keras_koopman.callbacks.plan import plan_storage
>>> plan = plan_storage({"big": 10_000_000, "small": 100}, window=20)
>>> plan.sketches, plan.packed
({'big': 2048}, ())
>>> plan_storage({f"unit{i}": 3 for i in range(40)}, window=5).packed[:2]
('unit0', 'unit1')
"""

from __future__ import annotations

import dataclasses

__all__ = ["StoragePlan", "plan_storage", "AUTO_SKETCH", "PACK_MAX_SIZE", "PACK_MIN_GROUPS"]

# Groups of at most PACK_MAX_SIZE weights share one PackedBuffers when there are at least
# PACK_MIN_GROUPS of them (one gather and one batched analysis instead of one per group).
PACK_MAX_SIZE = 4096
PACK_MIN_GROUPS = 32
# Numbers per snapshot of a group that sketch="auto" sketches.
AUTO_SKETCH = 2048


@dataclasses.dataclass(frozen=True)
class StoragePlan:
    """``sketches``: ``{group: k}`` for the groups stored as a ``k``-number sketch; ``packed``:
    the groups (in the given order) that share one :class:`~keras_koopman.buffers.PackedBuffers`;
    every other group gets a full :class:`~keras_koopman.SnapshotBuffer`."""

    sketches: dict
    packed: tuple


def plan_storage(sizes, window, sketch="auto", storage_dtype="float32",
                 snapshot_memory=512 * 2**20, method="exact"):
    """The storage of each group, given ``sizes`` (``{group: number of weights}``, in order).

    Sketching (``sketch``): ``None`` never sketches; an int ``k`` sketches every group with more
    than ``2 k`` weights to ``k``; ``"auto"`` keeps every group in full while all the buffers
    (``window`` snapshots each, 4 bytes a number, 2 in bfloat16) fit in ``snapshot_memory``
    bytes, and past that sketches the biggest groups to :data:`AUTO_SKETCH` numbers until they
    fit. Packing: when at least :data:`PACK_MIN_GROUPS` unsketched groups hold at most
    :data:`PACK_MAX_SIZE` weights each, they share one pack (exact DMD, float32 only).
    """
    if sketch is None:
        sketches = {}
    elif sketch != "auto":
        sketches = {name: sketch for name, size in sizes.items() if size > 2 * sketch}
    else:
        per_number = window * (2 if storage_dtype == "bfloat16" else 4)
        total = sum(sizes.values()) * per_number
        sketches = {}
        for name in sorted(sizes, key=sizes.get, reverse=True):
            if total <= snapshot_memory or sizes[name] <= 2 * AUTO_SKETCH:
                break
            sketches[name] = AUTO_SKETCH
            total -= (sizes[name] - AUTO_SKETCH) * per_number
    small = tuple(name for name, size in sizes.items()
                  if size <= PACK_MAX_SIZE and name not in sketches)
    packable = method == "exact" and storage_dtype == "float32" and len(small) >= PACK_MIN_GROUPS
    return StoragePlan(sketches=sketches, packed=small if packable else ())
