"""KoopmanPruning: a Keras 3 wrapper that holds a mask per prunable weight of a layer."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_koopman._backend import backend
from keras_koopman._warnings import user_stacklevel

from keras_koopman.pruning.schedule import PruningSchedule, check_sparsity

__all__ = ["KoopmanPruning", "attach_callback", "compressed_size", "detach_callback",
           "prune_koopman", "strip_pruning", "pruning_wrappers"]

CRITERIA = ("koopman", "magnitude")
SCOPES = ("global", "layer")
# Weights pruned by default, by attribute name: Dense/EinsumDense/Conv kernels, embeddings.
_DEFAULT_ATTRIBUTES = ("kernel", "embeddings")


@keras.saving.register_keras_serializable(package="keras_koopman")
class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask after every optimizer step (then applies ``inner``).

    On JAX the optimizer applies constraints in a stateless scope of its own that maps only
    the trainable and optimizer variables: read there, the mask (a non-trainable weight,
    dropped from memory while Keras trains on JAX) would be its initializer's ones, and
    nothing would stay pruned. So the wrapper's forward pass in training, where Keras maps
    every model variable to the train step's state, hands this constraint the mask's traced
    value (:meth:`hold`), and the constraint uses it once, in the same train step.

    ``owner``: the :class:`KoopmanPruning` wrapper, whose guard (training needs
    :class:`~keras_koopman.pruning.UpdateKoopmanPruning`) runs here too: the optimizer applies
    constraints only in training, also in a model whose ``call`` takes no ``training``
    argument and so passes none to the wrapper.
    """

    def __init__(self, mask, inner=None, owner=None):
        self.mask = mask
        self.inner = inner
        self.owner = owner
        self._held = None

    def hold(self, value):
        """The mask's value in the train step being traced (JAX), for the next call."""
        self._held = value

    def __call__(self, w):
        if self.owner is not None:
            self.owner._guard(in_constraint=True)
        if self.inner is not None:
            w = self.inner(w)
        if self._held is None and getattr(self.mask, "_value", True) is None:
            # JAX, and the forward pass held nothing: the mask is purged and would read as
            # ones. Keep the weight as it is rather than unmask it, and say so.
            warnings.warn(f"{self.mask.path}: the pruning mask is not visible to the "
                          "optimizer's constraint in this JAX train step (the wrapper's "
                          "forward pass did not run in it); pruned weights are not held at "
                          "zero in this step", RuntimeWarning, stacklevel=user_stacklevel())
            return w
        mask, self._held = (self.mask if self._held is None else self._held), None
        return w * keras.ops.cast(mask, w.dtype)

    def get_config(self):  # the mask is a weight of the wrapper, rebuilt with it
        return {}


def _check_constraints(wrappers):
    """``ValueError`` (when a fit with the callback starts, before any trace) for a wrapped
    weight whose :class:`MaskConstraint` was replaced after the wrapper was built."""
    for wrapper in wrappers:
        for weight, _ in wrapper.masked:
            if not isinstance(weight.constraint, MaskConstraint):
                raise ValueError(
                    f"the constraint of {weight.path} was replaced after KoopmanPruning "
                    f"wrapped it (it is {type(weight.constraint).__name__}); the pruning mask "
                    "no longer holds. Set a constraint on the layer before wrapping it")


def prunable_weights(layer):
    """The weights of ``layer`` that pruning masks: ``layer.get_prunable_weights()`` if the
    layer defines it, else its ``kernel`` and ``embeddings`` attributes."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    return [getattr(layer, name) for name in _DEFAULT_ATTRIBUTES
            if isinstance(getattr(layer, name, None), keras.Variable)]


@keras.saving.register_keras_serializable(package="keras_koopman")
class KoopmanPruning(keras.layers.Wrapper):
    """Wraps a layer so that its prunable weights can be pruned by masks.

    For each prunable weight (Dense and Conv kernels, ``Embedding`` embeddings, or what the layer
    lists in ``get_prunable_weights()``) the wrapper holds a non-trainable mask of the same shape
    (ones at first). The stored weight is kept equal to ``weight * mask``, so the forward pass
    uses the masked weight and pruned entries stay exactly zero: a constraint on the weight
    multiplies it by the mask after every optimizer step (inside the compiled train step), and
    :class:`UpdateKoopmanPruning` applies a mask as soon as it changes.

    Training a model that holds these wrappers needs :class:`UpdateKoopmanPruning` among the
    callbacks of ``fit``: without it the train step fails with an error naming it, with or
    without XLA (``jit_compile``), also in a later ``fit`` that would reuse a train step traced
    with the callback (see :func:`attach_callback`). On JAX such a ``fit`` trains on with a
    warning and the masks fixed (pruned weights stay zero): an error raised while Keras traces
    JAX's first train step would lose the model's weights. Inference needs no callback. One gap: a
    ``fit`` with the callback that is interrupted (Ctrl-C, an exception) ends without Keras's
    ``on_train_end``, so the model stays cleared to train until the next ``fit`` with the
    callback ends.

    Args:
      layer: the Keras layer to wrap.
      target_sparsity: fraction of the prunable weights to remove, in ``[0, 1)``.
      schedule: a :class:`PruningSchedule` or ``None`` (prune to ``target_sparsity`` once the
        first snapshot window is full, then keep the masks).
      criterion: ``"koopman"`` or ``"magnitude"``.
      scope: ``"global"`` (one threshold over every wrapped weight of the model) or
        ``"layer"`` (each weight pruned to the sparsity on its own).

    Example:

    >>> import keras, keras_koopman as kk
    >>> dense = kk.pruning.KoopmanPruning(keras.layers.Dense(4), target_sparsity=0.5)
    >>> model = keras.Sequential([keras.Input((3,)), dense])
    >>> [w.path.split("/")[-1] for w in dense.non_trainable_weights]
    ['kernel_mask', 'callback_attached']
    """

    def __init__(self, layer, target_sparsity=0.5, schedule=None, criterion="koopman",
                 scope="global", **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"layer must be a keras Layer; got {type(layer).__name__}")
        kwargs.setdefault("name", f"prune_{layer.name}")
        super().__init__(layer, **kwargs)
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        if schedule is not None and not isinstance(schedule, PruningSchedule):
            raise TypeError(
                "schedule must be kk.pruning.ConstantSparsity, PolynomialDecay (a "
                f"PruningSchedule) or None; got {type(schedule).__name__}")
        self.schedule = schedule
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
        self.criterion = criterion
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}")
        self.scope = scope
        self.masked = []  # [(weight, mask)]
        # Set by attach_callback / cleared by detach_callback; checked whenever the train step
        # is traced (or run eagerly). Not saved: a loaded wrapper starts detached.
        self._callback_active = False
        self._refused = False  # a train step was refused since the last attach_callback

    def build(self, input_shape=None):
        super().build(input_shape)
        weights = prunable_weights(self.layer)
        if not weights:
            raise ValueError(
                f"layer {self.layer.name!r} ({type(self.layer).__name__}) has no prunable "
                "weights (no kernel or embeddings, no get_prunable_weights()); do not name it "
                "in prune_koopman(layers=...)")
        self.masked = []
        for weight in weights:
            mask = self.add_weight(name=f"{weight.name}_mask", shape=weight.shape,
                                   initializer="ones", trainable=False, dtype=weight.dtype)
            weight.constraint = MaskConstraint(mask, weight.constraint, owner=self)
            self.masked.append((weight, mask))
        # Built inside the first train step (TensorFlow, a subclassed model): attached already
        # if attach_callback ran before.
        self.callback_attached = self.add_weight(
            name="callback_attached", shape=(), trainable=False, dtype="int32",
            initializer="ones" if self._callback_active else "zeros")

    def call(self, inputs, *args, training=None, **kwargs):
        if training:
            self._guard()
        if backend() == "jax" and training is not False:
            # See MaskConstraint. Also with training=None: Keras's JAX train step passes
            # training=True only to a model whose call() takes it, and a subclassed model's
            # call(self, x) leaves it None for the layers inside.
            for weight, mask in self.masked:
                constraint = weight.constraint
                if isinstance(constraint, MaskConstraint):  # else _check_constraints warns
                    constraint.hold(mask.value)
        return self.layer(inputs, *args, **kwargs)

    def _guard(self, in_constraint=False):
        """Training needs :class:`UpdateKoopmanPruning`: checked in the forward pass with
        ``training=True`` and in the mask constraint (which the optimizer applies only in
        training, whatever ``training`` the model's ``call`` passes on)."""
        # In Python whenever the train step is traced (or runs eagerly): this holds under XLA
        # too, which drops Assert ops.
        if not self._callback_active and not (in_constraint and self._refused):
            self._refused = True
            if backend() != "jax":
                if in_constraint:
                    # Eager (PyTorch, run_eagerly): the optimizer has just stepped; at least
                    # keep the pruned weights at zero before refusing.
                    for weight, mask in self.masked:
                        weight.assign(weight.value * keras.ops.cast(mask.value, weight.dtype))
                raise RuntimeError(_missing_callback(self.name))
            # On JAX an error raised while the first train step of a fit is traced loses
            # every weight of the model (Keras has dropped them from the variables and
            # holds them only in that step's state), so train on with the masks held by the
            # constraint, fixed, and say so.
            warnings.warn(
                f"{self.name}: fit without kk.pruning.UpdateKoopmanPruning() among its "
                "callbacks: the pruning masks stay as they are (pruned weights stay "
                "zero) and are not updated. Add it: model.fit(..., callbacks=[kk.pruning."
                "UpdateKoopmanPruning()]). (On TensorFlow and PyTorch this fit is refused; "
                "on JAX an error raised while Keras traces the train step would lose the "
                "model's weights.)", stacklevel=user_stacklevel())
        # And in the graph, for a train function traced in an earlier fit with the callback
        # and reused by a later one without it (no retrace). detach_callback makes a model
        # compiled with XLA retrace instead, as XLA drops this op. (TensorFlow only: a JAX
        # train step is traced anew after detach_callback, and a PyTorch one runs this
        # Python check at every step.)
        if backend() == "tensorflow":
            import tensorflow as tf

            tf.debugging.assert_positive(tf.convert_to_tensor(self.callback_attached),
                                         message=_missing_callback(self.name))

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def sparsity(self):
        """Fraction of masked-out entries over this wrapper's prunable weights."""
        total = sum(int(np.prod(mask.shape)) for _, mask in self.masked)
        zeros = sum(int(np.sum(keras.ops.convert_to_numpy(mask.value) == 0))
                    for _, mask in self.masked)
        return zeros / max(total, 1)

    def get_config(self):
        config = super().get_config()
        config.update(target_sparsity=self.target_sparsity,
                      schedule=None if self.schedule is None
                      else keras.saving.serialize_keras_object(self.schedule),
                      criterion=self.criterion, scope=self.scope)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects)
        if config.get("schedule") is not None:
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def _missing_callback(name):
    return (f"{name}: a model with KoopmanPruning layers trains only with "
            "kk.pruning.UpdateKoopmanPruning() among the callbacks of fit (it updates the "
            "pruning masks); add it: model.fit(..., callbacks=[kk.pruning."
            "UpdateKoopmanPruning()]). Inference (predict, evaluate, model(x)) needs no callback")


def attach_callback(model, wrappers):
    """Lets ``wrappers`` (:class:`KoopmanPruning` layers of ``model``) train: what
    :class:`UpdateKoopmanPruning` calls in ``on_train_begin``.

    Sets the Python flag that the train step checks when it is traced and the
    ``callback_attached`` weight that a train step traced earlier checks as it runs. If a
    wrapper refused a train step since the last call, ``model.train_function`` is made anew
    (``fit`` looks it up at every step): the refusal may have broken off the first trace of
    the step, the one in which ``tf.function`` lets the optimizer create its variables, and
    the cached function would refuse to create them in the next trace.
    """
    _check_constraints(wrappers)
    refused = False
    for wrapper in wrappers:
        refused = refused or wrapper._refused
        wrapper._refused = False
        wrapper._callback_active = True
        if wrapper.built:  # else build() sets the weight from the flag
            wrapper.callback_attached.assign(1)
    # (TensorFlow only: a JAX step traced without the callback is the same step, and a
    # rebuild would drop a monitor's gathering train function installed before this.)
    if (refused and backend() == "tensorflow" and model is not None
            and getattr(model, "train_function", None) is not None):
        model.make_train_function(force=True)


def detach_callback(model, wrappers):
    """Makes ``wrappers`` refuse to train again: what :class:`UpdateKoopmanPruning` calls in
    ``on_train_end`` (``model``: the model that was fit).

    Clears the flag and the ``callback_attached`` weight. Under XLA
    (``model.jit_compile``), which drops the train step's ``Assert`` on that weight, it also
    drops ``model.train_function`` so that the next ``fit`` traces the train step again and
    the check at trace time runs: a ``fit`` without the callback then fails, and one with it
    compiles afresh (once per ``fit``). Without XLA the traced train step is kept: its assert
    on the weight does the check.
    """
    for wrapper in wrappers:
        wrapper._callback_active = False
        if wrapper.built:
            wrapper.callback_attached.assign(0)
    compiled = backend() == "jax" or getattr(model, "jit_compile", False)
    if model is not None and compiled and hasattr(model, "train_function"):
        model.train_function = None


def pruning_wrappers(model):
    """Every :class:`KoopmanPruning` layer in ``model`` (nested models included), in order."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, KoopmanPruning) and layer not in found:
            found.append(layer)
    return found


def _copy_of(layer):
    return layer.__class__.from_config(layer.get_config())


def _check_model(model, name):
    if not isinstance(model, keras.Model):
        raise TypeError(f"{name} must be a keras Model or Layer; got {type(model).__name__}")
    if not (isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"):
        raise ValueError(
            f"{name}: only Sequential and Functional models can be cloned; wrap the layers of "
            "a subclassed model yourself with kk.pruning.KoopmanPruning")


def _copy_weights(source, target):
    """Copies weights layer by layer (same order); wrapped layers get the inner weights."""
    for original, clone in zip(source.layers, target.layers):
        if isinstance(clone, KoopmanPruning) and not isinstance(original, KoopmanPruning):
            clone.layer.set_weights(original.get_weights())
        elif isinstance(original, KoopmanPruning) and not isinstance(clone, KoopmanPruning):
            weights = {id(w): w for w in original.layer.weights}
            masks = {id(w): m for w, m in original.masked}
            values = [keras.ops.convert_to_numpy(w.value * keras.ops.cast(masks[id(w)].value,
                                                                          w.dtype))
                      if id(w) in masks else w.numpy() for w in weights.values()]
            clone.set_weights(values)
        else:
            clone.set_weights(original.get_weights())


def prune_koopman(model_or_layer, target_sparsity, schedule=None, criterion="koopman",
                  layers=None, scope="global"):
    """Wraps a model's prunable layers (or one layer) in :class:`KoopmanPruning`.

    A Sequential or Functional model is cloned (its weights copied; shared layers stay shared)
    with every layer that has prunable weights wrapped, or only the layers named in ``layers``.
    Train the result with :class:`UpdateKoopmanPruning` among the callbacks, then
    :func:`strip_pruning` it.

    Args:
      model_or_layer: a Sequential or Functional ``keras.Model``, or a single layer.
      target_sparsity: fraction of the prunable weights to remove, in ``[0, 1)``.
      schedule: :class:`ConstantSparsity`, :class:`PolynomialDecay` or ``None`` (prune to
        ``target_sparsity`` as soon as the first snapshot window is full, keep it after).
      criterion: ``"koopman"`` (score = magnitude of each weight's component in the Koopman
        mode of the eigenvalue nearest 1; Redman et al., ICLR 2022) or ``"magnitude"``.
      layers: names of the layers to prune (default: every layer with prunable weights).
      scope: ``"global"`` threshold across the pruned layers or ``"layer"`` per weight.

    Returns:
      The wrapped model (uncompiled) or the wrapped layer.

    Example:

    >>> import keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"),
    ...                           keras.layers.Dense(2, name="b")])
    >>> pruned = kk.pruning.prune_koopman(model, target_sparsity=0.9)
    >>> [layer.name for layer in pruned.layers]
    ['prune_a', 'prune_b']
    """
    options = dict(target_sparsity=target_sparsity, schedule=schedule, criterion=criterion,
                   scope=scope)
    if isinstance(model_or_layer, keras.layers.Layer) and not isinstance(
            model_or_layer, keras.Model):
        if layers is not None:
            raise ValueError("layers names layers of a model; got a single layer to wrap")
        return KoopmanPruning(model_or_layer, **options)
    model = model_or_layer
    _check_model(model, "model_or_layer")
    KoopmanPruning(keras.layers.Identity(), **options)  # validates the options up front
    names = [layer.name for layer in model.layers]
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"layers must be a list of layer names; got {layers!r}")
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers names {unknown}, not layers of the model ({names})")
        for name in layers:
            if not prunable_weights(model.get_layer(name)):
                raise ValueError(
                    f"layer {name!r} ({type(model.get_layer(name)).__name__}) has no prunable "
                    "weights (kernel, embeddings or get_prunable_weights())")
    chosen = set(layers) if layers is not None else {
        layer.name for layer in model.layers if prunable_weights(layer)}
    if not chosen:
        raise ValueError("the model has no layer with prunable weights")

    def wrap(layer):
        if layer.name in chosen:
            return KoopmanPruning(_copy_of(layer), **options)
        return _copy_of(layer)

    pruned = keras.models.clone_model(model, clone_function=wrap)
    _copy_weights(model, pruned)
    return pruned


def strip_pruning(model):
    """A plain Keras model: every :class:`KoopmanPruning` replaced by its layer, with the masks
    applied to the weights (pruned entries exactly 0). The result holds no wrapper and no mask
    and loads without keras-koopman.

    Example:

    >>> import keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="a")])
    >>> small = kk.pruning.strip_pruning(kk.pruning.prune_koopman(model, 0.5))
    >>> [type(layer).__name__ for layer in small.layers]
    ['Dense']
    """
    _check_model(model, "model")

    def unwrap(layer):
        return _copy_of(layer.layer if isinstance(layer, KoopmanPruning) else layer)

    plain = keras.models.clone_model(model, clone_function=unwrap)
    _copy_weights(model, plain)
    return plain


def compressed_size(model):
    """Bytes of ``model`` saved as ``.keras`` with every member deflated (``.keras`` files are
    stored uncompressed): the size a pruned model shrinks to once zipped.

    Save an uncompiled model to compare like with like: a compiled one also stores its
    optimizer's state.

    Example:

    >>> import keras, keras_koopman as kk
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])
    >>> zeros = keras.models.clone_model(model)
    >>> zeros.set_weights([0 * w for w in model.get_weights()])
    >>> kk.pruning.compressed_size(zeros) < 0.2 * kk.pruning.compressed_size(model)
    True
    """
    import os
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        deflated = os.path.join(folder, "model.zip")
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(
                deflated, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.namelist():
                target.writestr(item, source.read(item))
        return os.path.getsize(deflated)
