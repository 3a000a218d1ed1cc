"""TensorBoard support: the ``koopman`` summary (a spectrum per group and step).

The summary writer :func:`spectrum` is usable on its own. The "Koopman" dashboard that reads these
summaries (``plugin.py`` and ``static/index.js``) is registered with TensorBoard through the
``tensorboard_plugins`` entry point; it is not imported here, so writing summaries never loads
TensorBoard's server code.
"""

import keras_koopman._requires_tensorflow  # noqa: F401  (Keras on TensorFlow, checked first)

from keras_koopman.tensorboard.metadata import PLUGIN_NAME
from keras_koopman.tensorboard.summary import spectrum

__all__ = ["PLUGIN_NAME", "spectrum"]
