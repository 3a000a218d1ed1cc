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

A sketched group (:mod:`keras_koopman._sketch`, the TensorFlow buffer's map from the same
seed) stores ``S x``, ``k`` numbers, computed in the same write from the sampled weights only.
"""

from __future__ import annotations

import functools

import numpy as np

from keras_koopman._backend import backend

__all__ = ["Projection", "Rings", "gram_rows", "grams", "write"]

_TORCH_CHUNK = 2**16  # columns per float64 product on torch (bounded temporary memory)


class Projection:
    """A :class:`~keras_koopman._sketch.Sketch` of a group of tensors (``sizes`` numbers each,
    flattened one after the other) on the backend's device: per tensor ``None`` or its sampled
    positions and coefficients, and the rows they are summed into."""

    def __init__(self, sketch, sizes, dtype):
        from keras_koopman.portable import device as dev

        self.sketch, self.k = sketch, sketch.k
        pieces = sketch.pieces(sizes)
        self.parts = tuple(None if piece is None else
                           (dev.to_tensor(piece[0]), dev.to_tensor(piece[1], dtype))
                           for piece in pieces)
        self.rows = dev.to_tensor(sketch.rows, "int64" if backend() == "torch" else "int32")
        self.zeros = dev.to_tensor(np.zeros(self.k), dtype)  # (its shape tells JAX k)

    def tree(self):
        """What the jitted write takes (a pytree of arrays)."""
        return self.parts, self.rows, self.zeros


class Rings:
    """The device arrays of a set of rings (see the module docstring). ``widths``: the
    numbers per snapshot of each group; ``dtype``: the storage dtype (``"float32"``,
    ``"float64"`` or ``"bfloat16"``); ``sketches``: per group ``None`` or a ``(Sketch,
    tensor sizes)`` pair, whose group then stores ``Sketch.k`` numbers per snapshot.

    bfloat16 rings are *centred*, as TensorFlow's buffer: the first snapshot after a reset is
    kept in float32 (:attr:`references`) and the others are stored as their bfloat16 difference
    from it (8 bits of the motion, not of the weights); each group's Gram matrix is then
    assembled from the centred one, the float64 cross products with the reference
    (:attr:`cross`) and its squared norm (:attr:`reference_sq`)."""

    def __init__(self, widths, window, dtype="float32", sketches=None):
        self.widths, self.window, self.dtype = list(widths), int(window), dtype
        self.centred = dtype == "bfloat16"
        self.compute = "float32" if self.centred else dtype  # the dtype of a snapshot
        self.projections = [None if spec is None else Projection(*spec, self.compute)
                            for spec in (sketches or [None] * len(self.widths))]
        self.stored = [n if p is None else p.k for n, p in zip(self.widths, self.projections)]
        self.bad = _zeros((len(self.widths),), "int64")
        self.reset()

    def reset(self):
        """Zeros everything but the NaN/Inf counts (those are never reset)."""
        self.buffers = [_zeros((self.window, n), self.dtype) for n in self.stored]
        self.grams = [_zeros((self.window, self.window), "float64") for _ in self.stored]
        self.references = self.cross = self.reference_sq = None
        if self.centred:
            self.references = [_zeros((n,), self.compute) for n in self.stored]
            self.cross = [_zeros((self.window,), "float64") for _ in self.stored]
            self.reference_sq = _zeros((len(self.stored),), "float64")
        self.reference_set = False  # the next write sets the references (centred rings)

    @property
    def arrays(self):
        """Every device array but the NaN/Inf counts, in a fixed order (what a backup saves)."""
        arrays = [*self.buffers, *self.grams]
        if self.centred:
            arrays += [*self.references, *self.cross, self.reference_sq]
        return arrays

    def load(self, arrays):
        """Puts host arrays of :attr:`arrays`' order and shapes back (``reference_set``: left
        to the caller, who knows whether a snapshot was written since the reset)."""
        groups = len(self.stored)
        arrays = list(arrays)
        take = lambda count, dtype: [_tensor(a, dtype) for a in (arrays.pop(0)  # noqa: E731
                                                                 for _ in range(count))]
        self.buffers = take(groups, self.dtype)
        self.grams = take(groups, "float64")
        if self.centred:
            self.references = take(groups, self.compute)
            self.cross = take(groups, "float64")
            self.reference_sq = take(1, "float64")[0]

    def snapshot_array(self, group):
        """Group ``group``'s ``[window, stored]`` buffer in the snapshots' dtype (a centred
        ring's differences widened and the reference added back: a new array)."""
        buffer = self.buffers[group]
        if not self.centred:
            return buffer
        import keras

        return keras.ops.cast(buffer, self.compute) + self.references[group][None, :]

    def group_nbytes(self, group):
        """Bytes of one group's buffer, Gram matrix, reference and sketch indices."""
        n, projection = self.stored[group], self.projections[group]
        total = self.window * n * _ITEMSIZE[self.dtype] + self.window**2 * 8
        if self.centred:
            total += 4 * n + 8 * self.window + 8
        return total + (0 if projection is None else projection.sketch.nbytes)

    @property
    def nbytes(self):
        """Bytes of every group (:meth:`group_nbytes`)."""
        return sum(self.group_nbytes(g) for g in range(len(self.stored)))


_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2}


def _zeros(shape, dtype):
    import keras

    return keras.ops.zeros(shape, dtype)


def _tensor(array, dtype):
    from keras_koopman.portable import device as dev

    return dev.to_tensor(np.asarray(array), dtype)


def write(rings, weights, slot):
    """Writes one snapshot per group into ``slot``: ``weights[g]`` is a list of the group's
    tensors, flattened one after the other (each cast to the storage dtype; a centred ring's
    first write after a reset also sets its references)."""
    if rings.centred and not rings.reference_set:
        _set_references(rings, weights)
    if backend() == "torch":
        import torch

        with torch.no_grad():
            for g, (buffer, tensors) in enumerate(zip(rings.buffers, weights)):
                reference = None if rings.references is None else rings.references[g]
                for offset, values in _torch_parts(tensors, rings.projections[g],
                                                   rings.compute):
                    if reference is not None:
                        values = values - reference[offset:offset + values.shape[0]]
                    buffer[slot, offset:offset + values.shape[0]].copy_(values)
                rings.bad[g] += (~torch.isfinite(buffer[slot]).all()).to(rings.bad.dtype)
        return
    buffers, rings.bad = _jax_write(tuple(rings.buffers), rings.bad,
                                    tuple(tuple(group) for group in weights),
                                    np.int32(slot),  # a NumPy scalar: no device op to wait on
                                    _jax_projections(rings),
                                    None if rings.references is None else
                                    tuple(rings.references))
    rings.buffers = list(buffers)


def _set_references(rings, weights):
    """A centred ring's references: each group's snapshot in float32, and its squared norm."""
    if backend() == "torch":
        import torch

        with torch.no_grad():
            rows = [torch.cat([values for _, values in _torch_parts(tensors, projection,
                                                                     rings.compute)])
                    for tensors, projection in zip(weights, rings.projections)]
    else:
        rows = _jax_functions()[3](tuple(tuple(group) for group in weights),
                                   _jax_projections(rings))
    import keras

    ops = keras.ops
    rings.references = list(rows)
    rings.reference_sq = ops.stack([ops.sum(ops.square(ops.cast(row, "float64")))
                                    for row in rows])
    rings.reference_set = True


def _jax_projections(rings):
    return tuple(None if p is None else p.tree() for p in rings.projections)


def _sampled(tensors, parts):
    """The ``(tensor, (positions, coefficients))`` pairs of the tensors a sketch samples."""
    return [(tensor, piece) for tensor, piece in zip(tensors, parts) if piece is not None]


def _torch_parts(tensors, projection, dtype):
    """``(offset, values)`` of one group's snapshot in ``dtype``: each tensor flattened at its
    offset, or for a sketched group ``S x`` at 0 (only the sampled weights are read)."""
    import torch

    dtype = getattr(torch, dtype)
    if projection is None:
        out, offset = [], 0
        for tensor in tensors:
            flat = tensor.detach().reshape(-1).to(dtype)
            out.append((offset, flat))
            offset += flat.shape[0]
        return out
    values = [tensor.detach().reshape(-1)[local].to(dtype) * coefficients
              for tensor, (local, coefficients) in _sampled(tensors, projection.parts)]
    row = torch.zeros(projection.k, dtype=dtype, device=values[0].device)
    return [(0, row.index_add_(0, projection.rows, torch.cat(values)))]


@functools.lru_cache(maxsize=None)
def _jax_functions():
    import jax
    import jax.numpy as jnp

    from keras_koopman.portable.device import jax_matmul, jax_column_blocks

    def parts(tensors, projection, dtype):
        # (offset, values) of one group's snapshot: each tensor at its offset, or S x at 0
        # from the sampled weights only (a NaN in a weight the sketch does not sample cannot
        # reach the buffer).
        if projection is None:
            out, offset = [], 0
            for tensor in tensors:
                out.append((offset, jnp.ravel(tensor).astype(dtype)))
                offset += out[-1][1].shape[0]
            return out
        pieces, rows, zeros = projection
        values = [jnp.ravel(tensor)[local].astype(dtype) * coefficients
                  for tensor, (local, coefficients) in _sampled(tensors, pieces)]
        return [(0, zeros.astype(dtype).at[rows].add(jnp.concatenate(values)))]

    def write_all(buffers, bad, weights, slot, projections, references):
        # Each tensor straight into its columns, its finite flag from the tensor itself: a
        # concatenated row read by both the update and the flag made XLA copy the whole
        # buffer (measured, 20 x 1.1M float32: 41 ms a write, against 0.6 ms this way).
        new, flags = [], []
        for g, (buffer, tensors, projection) in enumerate(zip(buffers, weights, projections)):
            compute = buffer.dtype if references is None else references[g].dtype
            finite = []
            for offset, values in parts(tensors, projection, compute):
                if references is not None:  # centred: the difference from the reference
                    values = values - references[g][offset:offset + values.shape[0]]
                part = values.astype(buffer.dtype)
                buffer = jax.lax.dynamic_update_slice(buffer, part[None, :],
                                                      (slot, jnp.int32(offset)))
                finite.append(jnp.all(jnp.isfinite(part)))
            flags.append(jnp.all(jnp.stack(finite)))
            new.append(buffer)
        return tuple(new), bad + (~jnp.stack(flags)).astype(bad.dtype)

    def references_of(weights, projections):
        return tuple(jnp.concatenate([values for _, values in parts(tensors, projection,
                                                                   jnp.float32)])
                     for tensors, projection in zip(weights, projections))

    def cross_of(buffer, reference):
        # A centred ring's cross products: every stored difference with the reference.
        return (buffer.astype(jnp.float64) * reference.astype(jnp.float64)[None, :]).sum(-1)

    def row(buffer, gram, slot):
        # Written as a product and a sum, which XLA fuses into one pass over the buffer in
        # float64 (5x faster on a CPU than a float64 dot, which first widens the buffer).
        new = jax.lax.dynamic_index_in_dim(buffer, slot, keepdims=False)
        products = (buffer.astype(jnp.float64) * new.astype(jnp.float64)[None, :]).sum(-1)
        return gram.at[slot, :].set(products).at[:, slot].set(products)

    def every_row(buffer):
        # The whole Gram matrix, as float64 products of column blocks.
        def products(columns):
            columns = columns.astype(jnp.float64)
            return jax_matmul(columns, columns.T)

        return jax_column_blocks(products, (buffer,),
                                 jnp.zeros((buffer.shape[0],) * 2, jnp.float64))

    return (jax.jit(write_all, donate_argnums=(0, 1)), jax.jit(row, donate_argnums=(1,)),
            jax.jit(every_row), jax.jit(references_of), jax.jit(cross_of))


def _jax_write(*arguments):
    return _jax_functions()[0](*arguments)


def gram_rows(rings, group, slots):
    """Computes the Gram rows (and columns) of ``slots`` of ``group`` in place (of a centred
    ring: of the stored differences, and the cross products of every slot)."""
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
            cross = torch.zeros(rings.window, dtype=torch.float64, device=buffer.device)
            for start in range(0, buffer.shape[1], _TORCH_CHUNK):
                block = buffer[:, start:start + _TORCH_CHUNK]
                if rings.centred:  # bfloat16 -> float64 through float32: 4x faster on a CPU
                    block = block.to(torch.float32)
                block = block.to(torch.float64)
                products += block[index] @ block.T
                if rings.centred:
                    cross += block @ rings.references[group][
                        start:start + _TORCH_CHUNK].to(torch.float64)
            gram[index, :] = products
            gram[:, index] = products.T
            if rings.centred:
                rings.cross[group] = cross
        return
    import jax.numpy as jnp

    if rings.centred:
        rings.cross[group] = _jax_functions()[4](rings.buffers[group], rings.references[group])
    if 4 * len(slots) >= rings.window:  # many new rows: the whole matrix costs less
        rings.grams[group] = _jax_functions()[2](rings.buffers[group])
        return
    update = _jax_functions()[1]  # one row per call: one trace per buffer shape
    for slot in slots:
        rings.grams[group] = update(rings.buffers[group], rings.grams[group], jnp.int32(slot))


def grams(rings, groups):
    """The Gram matrices of ``groups`` (slot order; of a centred ring assembled as
    ``C + c 1^T + 1 c^T + |r|^2`` from its parts) and every group's NaN/Inf count, on the host,
    in one transfer."""
    import keras

    ops = keras.ops
    if not groups:
        return [], np.asarray(ops.convert_to_numpy(rings.bad))
    pieces = [ops.reshape(ops.stack([rings.grams[g] for g in groups]), (-1,))]
    if rings.centred:
        pieces += [ops.concatenate([rings.cross[g] for g in groups]),
                   ops.take(rings.reference_sq, np.asarray(groups, np.int32))]
    values = np.asarray(ops.convert_to_numpy(ops.concatenate(
        [*pieces, ops.cast(rings.bad, "float64")])))
    w, count = rings.window, len(groups)
    matrices = values[:count * w * w].reshape(count, w, w)
    rest = values[count * w * w:]
    if rings.centred:
        cross = rest[:count * w].reshape(count, w)
        squared = rest[count * w:count * w + count]
        matrices = matrices + cross[:, :, None] + cross[:, None, :] + squared[:, None, None]
        rest = rest[count * w + count:]
    return list(matrices), rest.astype(np.int64)
