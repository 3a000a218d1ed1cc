"""The core subset (``test_core.py``) on JAX and on PyTorch, each in a process of its own
(Keras picks its backend once per process), and what the package says at import there."""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(code_or_args, backend, **env):
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                       CUDA_VISIBLE_DEVICES="", **env)
    environment.pop("JAX_ENABLE_X64", None)
    environment.update(env)
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=900)


def needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (.ci/run installs it)")


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=needs("jax")),
                                     pytest.param("torch", marks=needs("torch"))])
def test_the_core_subset_passes_on_the_backend(backend):
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning",
                os.path.join(HERE, "test_core.py")], backend)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary, summary


@needs("jax")
def test_jax_float64_is_switched_on_with_a_warning_unless_already_on():
    code = ("import warnings, numpy as np\n"
            "warnings.simplefilter('always')\n"
            "import keras_koopman as kk, jax\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    r = kk.dmd(np.outer(0.5 ** np.arange(5), [1.0, 2.0]), rank=1)\n"
            "print(jax.config.read('jax_enable_x64'), r.eigenvalues.dtype,\n"
            "      sum('jax_enable_x64' in str(w.message) for w in caught))\n")
    off = run(code, "jax")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["True", "complex128", "1"]
    on = run(code, "jax", JAX_ENABLE_X64="1")
    assert on.returncode == 0, on.stderr
    assert on.stdout.split() == ["True", "complex128", "0"]


def test_an_unsupported_keras_backend_raises_a_clear_error():
    done = run("import keras_koopman", "numpy")
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "'numpy'" in done.stderr
    assert "tensorflow, jax, torch" in done.stderr and "KERAS_BACKEND" in done.stderr


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=needs("jax")),
                                     pytest.param("torch", marks=needs("torch"))])
def test_the_backend_path_needs_no_tensorflow(backend):
    # What a machine with JAX or PyTorch and no TensorFlow gets (a GPU image, say): the engine,
    # the buffer, a monitored fit with early stopping and jumps, the loss; log_dir says why not.
    code = (
        # A finder whose modules fail to load, as an absent package does (torch asks
        # importlib.util.find_spec for TensorFlow and must not get an exception there).
        "import sys, importlib.machinery\n"
        "class Absent:\n"
        "    def create_module(self, spec):\n"
        "        raise ModuleNotFoundError('no ' + spec.name, name=spec.name.split('.')[0])\n"
        "    def exec_module(self, module):\n"
        "        pass\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tensorboard'):\n"
        "            return importlib.machinery.ModuleSpec(name, Absent())\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, keras, keras_koopman as kk\n"
        "x = np.outer(0.9 ** np.arange(8), np.ones(3))\n"
        "print(round(float(np.asarray(kk.dmd(x, rank=1).eigenvalues)[0].real), 9))\n"
        "b = kk.SnapshotBuffer(3, 4)\n"
        "for row in x: b.append(row.astype('float32'))\n"
        "print(b.count, round(float(np.asarray(b.dmd(rank=1).eigenvalues)[0].real), 5))\n"
        "rng = np.random.default_rng(0)\n"
        "xs = rng.normal(size=(128, 3)).astype('float32'); ys = xs @ np.ones((3, 1), 'float32')\n"
        "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])\n"
        "loss = kk.losses.NegativeSobolev(s=1.0, axis=0, grid_size=128)\n"
        "model.compile(keras.optimizers.SGD(0.1), loss)\n"
        "m = kk.callbacks.KoopmanMonitor(window=6)\n"
        "cbs = [m, kk.callbacks.KoopmanEarlyStopping(m), kk.callbacks.KoopmanAccelerator(m)]\n"
        "model.fit(xs, ys, epochs=12, batch_size=128, shuffle=False, verbose=0, callbacks=cbs)\n"
        "print(len(m.history) > 0, m.errors)\n"
        "print(float(kk.spectrum.spectral_radius([0.5, -1.2j])))\n"
        "wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8), keras.layers.Dense(1)])\n"
        "pruned = kk.pruning.prune_koopman(wide, 0.5)\n"
        "pruned.compile('adam', 'mse')\n"
        "pruned.fit(xs, ys, epochs=5, verbose=0,\n"
        "           callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])\n"
        "kernels = [layer.get_weights()[0] for layer in kk.pruning.strip_pruning(pruned).layers]\n"
        "print(sum(k.size - np.count_nonzero(k) for k in kernels))  # half of 24 + 8\n"
        "try:\n"
        "    kk.callbacks.KoopmanMonitor(log_dir='logs')\n"
        "except ImportError as error:\n"
        "    print('log_dir:', 'needs TensorFlow installed' in str(error))\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'tensorflow'))\n")
    done = run(code, backend, JAX_ENABLE_X64="1")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.splitlines() == ["0.9", "8 0.9", "True []", "1.2", "16",
                                         "log_dir: True", "[]"]
