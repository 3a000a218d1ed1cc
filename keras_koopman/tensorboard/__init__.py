"""TensorBoard support: the ``koopman`` summary (a spectrum per group and step).

The summary writer :func:`spectrum` is usable on its own; the "Koopman" dashboard plugin that
reads these summaries is being built on the same format (see ``metadata.py``).
"""

from keras_koopman.tensorboard.metadata import PLUGIN_NAME
from keras_koopman.tensorboard.summary import spectrum

__all__ = ["PLUGIN_NAME", "spectrum"]
