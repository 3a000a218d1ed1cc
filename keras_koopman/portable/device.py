"""Device operations of the backend-neutral path (JAX, PyTorch; TensorFlow for its tests).

Everything O(n) (n: weights in a group) runs here, on the backend's device, in as few
dispatches as the backend allows; the host only ever receives small ``[m, m]`` matrices, the
flags and counts of the gathers, and ``[n, r]`` modes when a user asks for them.
"""

from __future__ import annotations

import numpy as np

from keras_koopman._backend import backend

__all__ = ["complex_from", "gram", "matmul", "model_loss", "modes", "to_host", "to_tensor"]


def to_tensor(x, dtype=None):
    """``x`` (NumPy, a list or a backend tensor) as a tensor of the Keras backend."""
    import keras

    if dtype is None and isinstance(x, np.ndarray):
        dtype = x.dtype.name  # keep float64 and complex128 (torch would take floatx)
    return keras.ops.convert_to_tensor(x, dtype=dtype)


def to_host(x):
    """``x`` (a tensor of any backend, a Keras variable, a list) as a NumPy array: one
    device-to-host copy through Keras (``np.asarray`` of a torch tensor on a GPU raises)."""
    if isinstance(x, np.ndarray):
        return x
    import keras

    if keras.ops.is_tensor(x) or isinstance(x, keras.Variable):
        return np.asarray(keras.ops.convert_to_numpy(x))
    return np.asarray(x)


def complex_from(real, imag):
    """``real + i imag`` as a complex tensor of the backend (``keras.ops`` has no such op)."""
    name = backend()
    if name == "jax":
        import jax

        return jax.lax.complex(real, imag)
    if name == "torch":
        import torch

        return torch.complex(real, imag)
    import tensorflow as tf

    return tf.complex(real, imag)


def matmul(a, b):
    """``a @ b`` in the inputs' dtype (``keras.ops.matmul`` on torch 2.13 returns float32 for
    float64 inputs, so torch's own product is used there; on JAX the product is asked for at
    full float32 precision: XLA's default on a GPU is TensorFloat-32, 10-bit mantissas, which
    lost the spectra's digits on an H200)."""
    name = backend()
    if name == "torch":
        import torch

        return torch.matmul(a, b)
    if name == "jax":
        return jax_matmul(a, b)
    import keras

    return keras.ops.matmul(a, b)


def jax_matmul(a, b):
    import jax
    import jax.numpy as jnp

    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def gram(x):
    """The float64 Gram matrix ``X X^T`` ``[m, m]`` of time-major snapshots ``x [m, n]`` (a
    backend tensor), on the device, as TensorFlow's engine forms it
    (:func:`keras_koopman.dmd.snapshot_gram`): centred on the first snapshot, the centred
    products in the data's precision (float32 data: fast float32 products), assembled in
    float64. Float64 data: one float64 product. On JAX the products are summed over blocks of
    columns (:func:`jax_column_blocks`), in float64."""
    import keras

    float64 = keras.backend.standardize_dtype(x.dtype) == "float64"
    if backend() == "jax":
        if not _JAX_GRAM:
            import jax

            _JAX_GRAM.extend([jax.jit(_jax_centred_gram), jax.jit(_jax_plain_gram)])
        return _JAX_GRAM[float64](x)
    if float64:
        return matmul(x, keras.ops.transpose(x))
    return _centred_gram(x)


_JAX_GRAM = []
_JAX_BLOCK = 2**13  # columns per block of a Gram product on JAX


def jax_column_blocks(block_sum, arrays, initial):
    """``initial`` plus the sum of ``block_sum(*blocks)`` over blocks of ``2**13`` columns (the
    last axis) of ``arrays`` (JAX, traced inside ``jax.jit``; pytrees of arrays). XLA's CPU
    product over a long contraction is several times slower in one piece than in cache-sized
    blocks (measured on 2 cores: 64 x 1e6 float32, ``X X^T`` 226 ms whole, 54 ms in blocks of
    2**13; 20 x 1.1M widened to float64, 300 ms as 20 fused rows, 26 ms in blocks)."""
    import jax

    n = arrays[0].shape[-1]
    blocks = n // _JAX_BLOCK
    add = lambda total, part: jax.tree.map(lambda a, b: a + b, total, part)  # noqa: E731

    def body(i, total):
        return add(total, block_sum(*(jax.lax.dynamic_slice_in_dim(
            a, i * _JAX_BLOCK, _JAX_BLOCK, axis=a.ndim - 1) for a in arrays)))

    total = initial
    if blocks:  # static: the body is traced only where a whole block exists
        total = jax.lax.fori_loop(0, blocks, body, total)
    if n % _JAX_BLOCK:
        total = add(total, block_sum(*(a[..., blocks * _JAX_BLOCK:] for a in arrays)))
    return total


def _jax_centred_gram(x):
    import jax.numpy as jnp

    reference = x[0]

    def products(columns, reference):
        centred = columns - reference[None, :]
        return (jax_matmul(centred, centred.T).astype(jnp.float64),
                jax_matmul(centred, reference).astype(jnp.float64))

    m = x.shape[0]
    yy, cross = jax_column_blocks(products, (x, reference),
                                  (jnp.zeros((m, m), jnp.float64), jnp.zeros(m, jnp.float64)))
    wide = reference.astype(jnp.float64)
    return yy + cross[:, None] + cross[None, :] + jnp.sum(wide * wide)


def _jax_plain_gram(x):
    import jax.numpy as jnp

    return jax_column_blocks(lambda columns: jax_matmul(columns, columns.T), (x,),
                             jnp.zeros((x.shape[0],) * 2, x.dtype))


def _centred_gram(x):
    import keras

    ops = keras.ops
    reference = x[0]
    centred = x - reference[None, :]
    yy = ops.cast(matmul(centred, ops.transpose(centred)), "float64")
    cross = ops.cast(matmul(centred, reference[:, None])[:, 0], "float64")
    wide = ops.cast(reference, "float64")
    return yy + cross[:, None] + cross[None, :] + ops.sum(wide * wide)


def modes(x, combination):
    """Unit-norm modes ``X^T K`` ``[..., n, r]`` complex128 (a backend tensor) and the norms
    the columns were divided by (NumPy ``[..., r]``), from snapshots ``x [..., m, n]`` on the
    device and the host's complex coefficients ``combination [..., m, r]`` (leading batch axes
    alike): one product that reads ``x`` once, in ``x``'s precision as TensorFlow's engine
    does (float32 snapshots: float32 products, widened to float64 after), then renormalised
    in float64."""
    import keras

    combination = np.asarray(combination, np.complex128)
    dtype = keras.backend.standardize_dtype(x.dtype)
    stacked = to_tensor(np.concatenate([combination.real, combination.imag], axis=-1), dtype)
    name = backend()
    if name == "jax":  # one jitted function: XLA fuses everything after the product
        modes_, norms = _jax_modes()(x, stacked)
    elif name == "torch":
        modes_, norms = _torch_modes(x, stacked)
    else:
        modes_, norms = _ops_modes(x, stacked)
    return modes_, to_host(norms)[..., 0, :]


def _ops_modes(x, stacked):
    import keras

    ops = keras.ops
    r = stacked.shape[-1] // 2
    product = ops.cast(matmul(ops.swapaxes(x, -1, -2), stacked), "float64")  # [..., n, 2r]
    real, imag = product[..., :r], product[..., r:]
    norms = ops.sqrt(ops.sum(real * real + imag * imag, axis=-2, keepdims=True))
    safe = ops.where(norms > 0, norms, ops.ones_like(norms))
    return complex_from(real / safe, imag / safe), safe


_JAX_MODES = []


def _jax_modes():
    if not _JAX_MODES:
        import jax

        _JAX_MODES.append(jax.jit(_ops_modes))
    return _JAX_MODES[0]


def _torch_modes(x, stacked):
    """The same on torch, laid out for it: the product as ``[..., 2r, n]`` rows (contiguous),
    the norms accumulated in float64 along them, the complex modes built once and returned
    as the ``[..., n, r]`` view of those rows."""
    import torch

    r = stacked.shape[-1] // 2
    with torch.no_grad():
        product = torch.matmul(stacked.transpose(-1, -2), x)  # [..., 2r, n], x's precision
        lengths = torch.linalg.vector_norm(product, dim=-1, dtype=torch.float64)  # [..., 2r]
        norms = torch.sqrt(lengths[..., :r] ** 2 + lengths[..., r:] ** 2)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))[..., None]  # [..., r, 1]
        modes_ = torch.complex(product[..., :r, :].to(torch.float64),
                               product[..., r:, :].to(torch.float64))
        modes_ /= safe
    return modes_.transpose(-1, -2), safe.transpose(-1, -2)


def model_loss(model, x, y):
    """``model``'s training loss on ``(x, y)`` in inference mode, as a function of no
    arguments (what :func:`keras_koopman._tf.compiled_loss` is on TensorFlow)."""
    import keras

    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    y = keras.tree.map_structure(keras.ops.convert_to_tensor, y)

    def loss():
        prediction = model(x, training=False)
        # Detached: a probe is not trained on (torch would keep the graph).
        return keras.ops.stop_gradient(
            model.compute_loss(x=x, y=y, y_pred=prediction, training=False))

    return loss
