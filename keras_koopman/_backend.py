"""Checks that Keras runs on TensorFlow before anything else is imported."""

import os

_HOW_TO = (
    "keras-koopman needs the TensorFlow backend of Keras 3. Set it before importing "
    "keras or keras_koopman, e.g. `export KERAS_BACKEND=tensorflow` in the shell or "
    "`os.environ['KERAS_BACKEND'] = 'tensorflow'` at the top of your script "
    "(or set \"backend\": \"tensorflow\" in ~/.keras/keras.json)."
)


def check_environment():
    """Raises ImportError with instructions if ``KERAS_BACKEND`` asks for another backend
    (without importing Keras: this runs when the package is imported)."""
    requested = os.environ.get("KERAS_BACKEND")
    if requested and requested.strip().lower() != "tensorflow":
        raise ImportError(f"KERAS_BACKEND is {requested!r}. {_HOW_TO}")


def check_backend():
    """Raises ImportError with instructions if Keras is not on the TensorFlow backend (it
    imports Keras: run by every module of the package that uses TensorFlow, before it)."""
    check_environment()
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(f"Keras is using the {backend!r} backend. {_HOW_TO}")
