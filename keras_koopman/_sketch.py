"""The sparse random projection that sketched buffers store (NumPy only: the TensorFlow
buffer and the JAX/PyTorch rings apply the same map, drawn from the same seed)."""

from __future__ import annotations

import numpy as np

from keras_koopman._validation import check_int

__all__ = ["DENSITY", "Sketch", "make_sketch", "no_modes_error"]

# Sketch rows each sum this many sampled weights at most (see SnapshotBuffer's ``sketch``).
DENSITY = 64


class Sketch:
    """A fixed sparse random projection ``R^n -> R^k``: row ``i`` sums ``density`` distinct
    weights (sampled once, without replacement, from a seeded generator) with random signs,
    scaled by ``sqrt(n / (k * density))`` so that norms are kept on average. Only the
    ``k * density`` sampled indices are stored and read: memory and time per snapshot do not
    grow with ``n``."""

    def __init__(self, n, k, density, seed):
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(n, size=k * density, replace=False)).astype(np.int64)
        rows = rng.permutation(np.repeat(np.arange(k, dtype=np.int32), density))
        self.indices, self.rows = picked, rows
        self.signs = rng.choice(np.array([-1.0, 1.0]), size=k * density)
        self.scale = float(np.sqrt(n / (k * density)))
        self.n, self.k, self.density = n, k, density

    @property
    def nbytes(self):
        """Bytes of the sampled indices and their rows."""
        return self.indices.nbytes + self.rows.nbytes

    def pieces(self, sizes):
        """For a snapshot given as consecutive 1-D parts of lengths ``sizes``: per part, the
        sampled positions inside it (int32) and their signed scale (float64), or ``None`` for
        a part the sketch does not sample. The sampled values of every part, concatenated in
        order, times their coefficients, summed into :attr:`rows`, give ``S x``."""
        out, start = [], 0
        for size in sizes:
            low, high = np.searchsorted(self.indices, [start, start + size])
            out.append(None if high == low else (
                (self.indices[low:high] - start).astype(np.int32),
                self.signs[low:high] * self.scale))
            start += size
        return out


def make_sketch(n, sketch, density=None, seed=0):
    """The :class:`Sketch` of a buffer of ``n`` features for the arguments ``sketch``,
    ``sketch_density`` and ``seed`` of ``SnapshotBuffer`` (checked here), or ``None`` for
    ``sketch=None``."""
    seed = check_int(seed, "seed", 0)
    if sketch is None:
        if density is not None:
            check_int(density, "sketch_density", 1)
        return None
    k = check_int(sketch, "sketch", 1)
    if k >= n:
        raise ValueError(f"sketch must be smaller than n_features = {n} (or None); got {k}")
    density = min(DENSITY, n // k) if density is None else check_int(density,
                                                                      "sketch_density", 1)
    if k * density > n:
        raise ValueError(f"sketch * sketch_density = {k * density} exceeds n_features = {n}")
    return Sketch(n, k, density, seed)


def no_modes_error(sketch):
    """The error of ``dmd(modes=True)`` on a buffer sketched to ``sketch`` numbers."""
    return ValueError(
        f"this buffer is sketched (sketch={sketch}): its modes would live in the sketch "
        "space, not on the weights; call dmd(modes=False) for the spectrum, or use an "
        "unsketched buffer for modes")
