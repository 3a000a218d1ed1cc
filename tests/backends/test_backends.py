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
