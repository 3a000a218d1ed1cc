"""Linear systems with a known spectrum, and comparisons that ignore ordering and phase."""

import numpy as np


def block_matrix(eigenvalues):
    """Real block-diagonal matrix with the given eigenvalues.

    Real eigenvalues give 1x1 blocks; a complex value ``a+bi`` (give only the one with b > 0)
    gives the 2x2 block ``[[a, -b], [b, a]]`` with eigenvalues ``a +- bi``.
    """
    blocks = []
    for value in eigenvalues:
        value = complex(value)
        if value.imag == 0:
            blocks.append(np.array([[value.real]]))
        else:
            a, b = value.real, abs(value.imag)
            blocks.append(np.array([[a, -b], [b, a]]))
    size = sum(len(b) for b in blocks)
    out = np.zeros((size, size))
    i = 0
    for b in blocks:
        out[i : i + len(b), i : i + len(b)] = b
        i += len(b)
    return out


def full_spectrum(eigenvalues):
    out = []
    for value in eigenvalues:
        value = complex(value)
        out.append(value)
        if value.imag != 0:
            out.append(value.conjugate())
    return np.array(out)


def linear_system(eigenvalues, n, m, rng, orthonormal=False):
    """Trajectory ``x_{k+1} = A x_k`` in R^n, time-major ``[m, n]``.

    ``A = Q T Q^+`` with ``T`` from :func:`block_matrix` and a random ``Q [n, d]`` (``n >= d``),
    with orthonormal columns if ``orthonormal`` (then the data is well conditioned). ``A`` is
    never formed: ``x_k = Q T^k z``.
    Returns ``(snapshots, true_eigenvalues, true_eigenvectors)``.
    """
    t = block_matrix(eigenvalues)
    d = len(t)
    q = rng.standard_normal((n, d))
    if orthonormal:
        q = np.linalg.qr(q)[0]
    # Every eigen-direction starts with weight 0.5..1.5, so none is lost in rounding.
    z = rng.uniform(0.5, 1.5, d) * rng.choice([-1.0, 1.0], d)
    latent = [z]
    for _ in range(m - 1):
        latent.append(t @ latent[-1])
    x = np.stack(latent) @ q.T
    values, vectors = np.linalg.eig(t)
    vectors = q @ vectors
    vectors /= np.linalg.norm(vectors, axis=0)
    return x, values, vectors


def numpy_exact_modes(snapshots, rank):
    """Exact DMD of time-major ``snapshots`` in NumPy (SVD of X0, rank ``rank``): eigenvalues
    largest modulus first and the modes as columns (independent of the package's Gram path)."""
    x0, x1 = snapshots[:-1].T, snapshots[1:].T
    u, s, vh = np.linalg.svd(x0, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].conj().T
    eigenvalues, w = np.linalg.eig(u.conj().T @ x1 @ v / s)
    modes = x1 @ v / s @ w
    order = np.argsort(-np.abs(eigenvalues), kind="stable")
    return eigenvalues[order], modes[:, order]


def match(reference, values):
    """Permutation of ``values`` closest to ``reference`` (greedy; fine for separated values)."""
    reference = np.asarray(reference)
    values = np.asarray(values)
    order = []
    free = list(range(len(values)))
    for value in reference:
        j = min(free, key=lambda i: abs(values[i] - value))
        order.append(j)
        free.remove(j)
    return np.array(order)


def assert_same_spectrum(reference, values, rtol):
    reference = np.asarray(reference)
    values = np.asarray(values)
    assert len(reference) == len(values), (reference, values)
    order = match(reference, values)
    error = np.abs(values[order] - reference) / np.maximum(np.abs(reference), 1e-300)
    assert np.max(error) <= rtol, (reference, values[order], error)
    return order


def phase_alignment(a, b):
    """``|<a_j, b_j>| / (|a_j| |b_j|)`` per column: 1 when equal up to a complex scale."""
    a = np.asarray(a)
    b = np.asarray(b)
    inner = np.abs(np.sum(np.conj(a) * b, axis=0))
    return inner / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


# Start of the subprocess scripts that run a model over two logical CPUs (the devices must be
# configured before TensorFlow starts, hence a fresh process): imports, devices, inputs x.
TWO_CPUS_SCRIPT = r"""
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, keras_koopman as kk

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype("float32")
"""


def sobolev_reference(residual, s, axes, lengths, window=None):
    """Independent: full complex FFT, signed wavenumbers, sum over every coefficient / N^2."""
    residual = np.asarray(residual, np.float64)
    axes = tuple(a % residual.ndim for a in axes)
    lengths = list(lengths)
    if window == "even":
        for a in axes:
            residual = np.concatenate([residual, np.flip(residual, a)], axis=a)
        lengths = [2 * v for v in lengths]
    if window == "hann":
        for a in axes:
            n = residual.shape[a]
            w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
            shape = [1] * residual.ndim
            shape[a] = n
            residual = residual * (w / np.sqrt(np.mean(w ** 2))).reshape(shape)
    spectrum = np.fft.fftn(residual, axes=axes)
    squared = 0.0
    for position, a in enumerate(axes):
        n = residual.shape[a]
        k = np.fft.fftfreq(n, 1.0 / n)
        shape = [1] * residual.ndim
        shape[a] = n
        squared = squared + ((2 * np.pi * k / lengths[position]) ** 2).reshape(shape)
    total = np.prod([residual.shape[a] for a in axes])
    return np.sum((1 + squared) ** (-s) * np.abs(spectrum) ** 2, axis=axes) / total ** 2


def reference_scores(snapshots, mask, weight, newest, horizon=None):
    """NumPy/eager reference of one tensor's scores: the DMD of its unpruned entries alone
    (``kk.dmd`` of the kept columns), ``koopman_scores``, scaled to the root mean square of the
    kept weights (forecast scores, ``horizon`` given, are not rescaled); pruned entries -1."""
    import keras_koopman as kk

    kept = np.flatnonzero(mask)
    values = weight[kept].astype(np.float64)
    raw = kk.pruning.koopman_scores(kk.dmd(snapshots[:, kept], rank=4), newest, horizon,
                                    weights=values)
    score = np.full(mask.size, -1.0)
    scale = 1.0 if horizon is not None else np.sqrt(np.mean(values**2) / np.mean(raw**2))
    score[kept] = raw * scale
    return score


def weight_recorder(layers, per_batch=False):
    """A Keras callback that records each named layer's flattened weights as NumPy, read
    through Keras (``get_weights``, on every backend): at the first ``fit``'s start, then
    after every epoch (or batch): the independent record the monitor is checked against."""
    import keras

    class WeightRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.layers, self.per_batch = layers, per_batch
            self.snapshots = {name: [] for name in layers}

        def record(self):
            for name in self.layers:
                weights = self.model.get_layer(name).get_weights()
                self.snapshots[name].append(np.concatenate([w.ravel() for w in weights]))

        def on_train_begin(self, logs=None):
            if not any(self.snapshots.values()):
                self.record()

        def on_train_batch_end(self, batch, logs=None):
            if self.per_batch:
                self.record()

        def on_epoch_end(self, epoch, logs=None):
            if not self.per_batch:
                self.record()

    return WeightRecorder()
