"""Snapshot buffers: the last ``window`` snapshots of an observable group, on the device.

Every buffer implements one protocol, so that the tracker, the callbacks and users read a
:class:`SnapshotBuffer` (one group in its own variables, optionally sketched or stored in
bfloat16) and a :class:`PackedView` (one small group of a :class:`PackedBuffers`, where many
small groups share one set of variables) alike:

==================  ==============================================================================
``count``           snapshots appended in total (not capped at ``window``); ``len(b)``: stored now
``window``          how many of the newest snapshots are kept
``n_features``      numbers per snapshot (weights of the group)
``dtype``           dtype of the snapshots as appended and returned
``storage_dtype``   dtype they are stored in
``sketch``          ``k`` of a sketched buffer, else ``None``
``has_modes``       whether ``dmd(modes=True)`` works (not for a sketch)
``snapshots()``     ``[len(b), n_features]``, oldest first (time-major)
``gram()``          float64 Gram matrix of ``snapshots()``
``dmd(rank, ...)``  :class:`keras_koopman.DMDResult` through the streaming Gram matrix
``state()``         the tensors a Gram-space analysis reads (one traced function serves both)
``refresh()``       computes Gram rows whose computation appends deferred
``variables``       the ``tf.Variable`` objects holding the state (for checkpoints)
``nbytes``          bytes of the buffer (a view: its group's share)
``reset()``         forgets the snapshots
==================  ==============================================================================

Example:

>>> import numpy as np
>>> from keras_koopman.buffers import PackedBuffers, SnapshotBuffer
>>> pack = PackedBuffers({"a": 2, "b": 3}, window=4)
>>> single = SnapshotBuffer(3, window=4)
>>> for k in range(5):
...     x = 0.9 ** k * np.arange(1.0, 6.0, dtype=np.float32)
...     _ = pack.append_op([x])
...     single.append(x[2:])
>>> view = pack.views()[1]
>>> view.count, len(view), bool(np.allclose(view.gram(), single.gram()))
(5, 4, True)
"""

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

from keras_koopman.buffers.packed import PackedBuffers, PackedView
from keras_koopman.buffers.ring import GramReader, SnapshotBuffer

__all__ = ["GramReader", "PackedBuffers", "PackedView", "SnapshotBuffer"]
