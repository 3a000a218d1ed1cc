"""TensorBoard support: the ``koopman`` summaries (a spectrum per group and step, its modes
across the layer's units, and events of training).

The summary writers :func:`spectrum`, :func:`modes` and :func:`event` are usable on their own.
The "Koopman" dashboard that reads these summaries (``plugin.py`` and ``static/index.js``) is
registered with TensorBoard through the ``tensorboard_plugins`` entry point; it is not imported
here, so writing summaries never loads TensorBoard's server code.
"""


from keras_koopman.tensorboard.metadata import PLUGIN_NAME
from keras_koopman.tensorboard.summary import event, modes, spectrum

__all__ = ["PLUGIN_NAME", "event", "modes", "spectrum"]
