"""Ring buffers of snapshots on the device of the JAX or PyTorch backend.

A set of rings (one per observable group) is ``[window, n_g]`` arrays in the storage dtype,
each with a ``[window, window]`` float64 Gram matrix, and one ``[groups]`` int64 count of the
snapshots that held NaN or Inf. Three operations, each one dispatch per set on JAX:

* :func:`write` puts one snapshot of every group into slot ``slot`` (in place: on JAX a jitted
  function whose buffers are donated, on torch ``copy_``) and counts the non-finite ones on
  the device: no host read;
* :func:`gram_rows` computes the Gram rows of the slots written since the last read (each one
  float64 pass over the buffer; torch: one product for all of them), also in place;
* :func:`grams` reads the Gram matrices and the counts to the host (one transfer).
"""

from __future__ import annotations

import functools

import numpy as np

from keras_koopman._backend import backend

__all__ = ["Rings", "gram_rows", "grams", "write"]

_TORCH_CHUNK = 2**16  # columns per float64 product on torch (bounded temporary memory)
_JAX_BLOCK = 2**13  # columns per float64 block of a whole Gram matrix on JAX


class Rings:
    """The device arrays of a set of rings (see the module docstring)."""

    def __init__(self, widths, window, dtype="float32"):
        import keras

        ops = keras.ops
        self.widths, self.window, self.dtype = list(widths), int(window), dtype
        self.buffers = [ops.zeros((self.window, n), dtype) for n in self.widths]
        self.grams = [ops.zeros((self.window, self.window), "float64") for _ in self.widths]
        self.bad = ops.zeros((len(self.widths),), "int64")

    def reset(self):
        """Zeros everything but the NaN/Inf counts (those are never reset)."""
        bad = self.bad
        self.__init__(self.widths, self.window, self.dtype)
        self.bad = bad

    @property
    def nbytes(self):
        item = np.dtype(self.dtype).itemsize
        return sum(self.window * n * item + self.window**2 * 8 for n in self.widths)


def write(rings, weights, slot):
    """Writes one snapshot per group into ``slot``: ``weights[g]`` is a list of the group's
    tensors, flattened one after the other (each cast to the storage dtype)."""
    if backend() == "torch":
        import torch

        with torch.no_grad():
            for g, (buffer, tensors) in enumerate(zip(rings.buffers, weights)):
                offset = 0
                for tensor in tensors:
                    flat = tensor.detach().reshape(-1)
                    buffer[slot, offset:offset + flat.shape[0]].copy_(flat)
                    offset += flat.shape[0]
                rings.bad[g] += (~torch.isfinite(buffer[slot]).all()).to(rings.bad.dtype)
        return
    buffers, rings.bad = _jax_write(tuple(rings.buffers), rings.bad,
                                    tuple(tuple(group) for group in weights),
                                    np.int32(slot))  # a NumPy scalar: no device op to wait on
    rings.buffers = list(buffers)


@functools.lru_cache(maxsize=None)
def _jax_functions():
    import jax
    import jax.numpy as jnp

    def write_all(buffers, bad, weights, slot):
        # Each tensor straight into its columns, its finite flag from the tensor itself: a
        # concatenated row read by both the update and the flag made XLA copy the whole
        # buffer (measured, 20 x 1.1M float32: 41 ms a write, against 0.6 ms this way).
        new, flags = [], []
        for buffer, tensors in zip(buffers, weights):
            offset, finite = 0, []
            for tensor in tensors:
                part = jnp.ravel(tensor).astype(buffer.dtype)
                buffer = jax.lax.dynamic_update_slice(buffer, part[None, :],
                                                      (slot, jnp.int32(offset)))
                finite.append(jnp.all(jnp.isfinite(part)))
                offset += part.shape[0]
            flags.append(jnp.all(jnp.stack(finite)))
            new.append(buffer)
        return tuple(new), bad + (~jnp.stack(flags)).astype(bad.dtype)

    def row(buffer, gram, slot):
        # Written as a product and a sum, which XLA fuses into one pass over the buffer in
        # float64 (5x faster on a CPU than a float64 dot, which first widens the buffer).
        new = jax.lax.dynamic_index_in_dim(buffer, slot, keepdims=False)
        products = (buffer.astype(jnp.float64) * new.astype(jnp.float64)[None, :]).sum(-1)
        return gram.at[slot, :].set(products).at[:, slot].set(products)

    def every_row(buffer):
        # The whole Gram matrix as float64 products of column blocks small enough to stay in
        # cache (measured, 20 x 1.1M float32 on a 2-core CPU: 26 ms in blocks of 2^13
        # columns, 164 ms in blocks of 2^18, 300 ms as 20 fused rows).
        blocks = buffer.shape[1] // _JAX_BLOCK

        def body(i, total):
            block = jax.lax.dynamic_slice_in_dim(buffer, i * _JAX_BLOCK, _JAX_BLOCK, axis=1)
            block = block.astype(jnp.float64)
            return total + block @ block.T

        total = jnp.zeros((buffer.shape[0],) * 2, jnp.float64)
        if blocks:  # static: the body is traced only where a whole block exists
            total = jax.lax.fori_loop(0, blocks, body, total)
        rest = buffer[:, blocks * _JAX_BLOCK:].astype(jnp.float64)
        return total + rest @ rest.T

    return (jax.jit(write_all, donate_argnums=(0, 1)), jax.jit(row, donate_argnums=(1,)),
            jax.jit(every_row))


def _jax_write(*arguments):
    return _jax_functions()[0](*arguments)


def gram_rows(rings, group, slots):
    """Computes the Gram rows (and columns) of ``slots`` of ``group`` in place."""
    if not len(slots):
        return
    slots = np.asarray(sorted(slots), np.int32)
    if backend() == "torch":
        import torch

        buffer, gram = rings.buffers[group], rings.grams[group]
        index = torch.as_tensor(slots, device=buffer.device, dtype=torch.long)
        with torch.no_grad():
            products = torch.zeros((len(slots), rings.window), dtype=torch.float64,
                                   device=buffer.device)
            for start in range(0, buffer.shape[1], _TORCH_CHUNK):
                block = buffer[:, start:start + _TORCH_CHUNK].to(torch.float64)
                products += block[index] @ block.T
            gram[index, :] = products
            gram[:, index] = products.T
        return
    import jax.numpy as jnp

    if 4 * len(slots) >= rings.window:  # many new rows: the whole matrix costs less
        rings.grams[group] = _jax_functions()[2](rings.buffers[group])
        return
    update = _jax_functions()[1]  # one row per call: one trace per buffer shape
    for slot in slots:
        rings.grams[group] = update(rings.buffers[group], rings.grams[group], jnp.int32(slot))


def grams(rings, groups):
    """The Gram matrices of ``groups`` (slot order) and every group's NaN/Inf count, on the
    host, in one transfer."""
    import keras

    ops = keras.ops
    if not groups:
        return [], np.asarray(ops.convert_to_numpy(rings.bad))
    stacked = ops.stack([rings.grams[g] for g in groups])
    flat = ops.concatenate([ops.reshape(stacked, (-1,)), ops.cast(rings.bad, "float64")])
    values = np.asarray(ops.convert_to_numpy(flat))
    w = rings.window
    matrices = values[:len(groups) * w * w].reshape(len(groups), w, w)
    return list(matrices), values[len(groups) * w * w:].astype(np.int64)
