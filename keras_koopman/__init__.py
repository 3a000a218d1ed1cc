"""keras-koopman: Koopman mode analysis of Keras training.

Training is a dynamical system on weight space; Dynamic Mode Decomposition (DMD) of the
weight trajectory approximates its Koopman operator. This package provides the DMD engine
(:func:`dmd`), on-device snapshot buffers (:class:`SnapshotBuffer`) and spectrum metrics
(:mod:`keras_koopman.spectrum`).

Example:

>>> import numpy as np, keras_koopman as kk
>>> x = np.outer(0.9 ** np.arange(10), np.ones(3))   # x_k = 0.9**k * [1, 1, 1]
>>> result = kk.dmd(x, rank=1)
>>> round(float(result.eigenvalues[0].numpy().real), 12)
0.9
"""

from keras_koopman._backend import check_backend as _check_backend

_check_backend()

from keras_koopman import (  # noqa: E402
    buffers, callbacks, depth, losses, pruning, spectrum, tensorboard)
from keras_koopman.dmd import DMDResult, dmd, dmd_batch  # noqa: E402
from keras_koopman.buffers import SnapshotBuffer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DMDResult",
    "SnapshotBuffer",
    "buffers",
    "callbacks",
    "depth",
    "dmd",
    "dmd_batch",
    "losses",
    "pruning",
    "spectrum",
    "tensorboard",
    "__version__",
]
