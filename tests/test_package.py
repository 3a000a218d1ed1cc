"""Packaging promises: import hygiene, the backend check, the public API, runnable docstrings."""

import doctest
import os
import subprocess
import sys

import pytest

import keras_koopman as kk


def run_python(code, **env):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )


def test_import_adds_no_matplotlib_and_runs_no_tensorflow_work():
    # Keras itself imports matplotlib when it is installed; keras_koopman must add nothing.
    done = run_python(
        "import sys, keras, tensorflow as tf\n"
        "before = set(sys.modules)\n"
        "import keras_koopman\n"
        "new = set(sys.modules) - before\n"
        "print(any(m.split('.')[0] == 'matplotlib' for m in new), tf.executing_eagerly())"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_import_loads_tensorflow_only_when_a_part_is_first_used():
    done = run_python(
        "import sys\n"
        "import keras_koopman as kk\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        "print(kk.dmd([[1.0], [0.5], [0.25]]).rank, 'tensorflow' in sys.modules)\n"
        "print(sorted(set(kk.__all__) - set(dir(kk))), kk.callbacks.KoopmanMonitor.__name__)\n"
        "import keras_koopman.pruning  # imports the submodule keras_koopman/dmd.py\n"
        "print(callable(kk.dmd), kk.dmd.__name__)\n"
        "try:\n"
        "    kk.no_such_thing\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False False", "1 True", "[] KoopmanMonitor", "True dmd",
        "module 'keras_koopman' has no attribute 'no_such_thing'"]


def test_import_works_without_matplotlib():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import keras_koopman as kk\n"
        "print(kk.dmd([[1.0], [0.5], [0.25]]).rank)"
    )
    done = run_python(blocker)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_public_api_names():
    for name in ("dmd", "dmd_batch", "DMDResult", "SnapshotBuffer", "spectrum", "pruning"):
        assert hasattr(kk, name), name
    for name in ("spectral_radius", "near_one_fraction", "unstable_count", "max_residual"):
        assert callable(getattr(kk.spectrum, name))


@pytest.mark.parametrize(
    "module",
    [
        "keras_koopman",
        "keras_koopman.dmd",
        "keras_koopman.host_dmd",
        "keras_koopman.buffers",
        "keras_koopman.buffers.ring",
        "keras_koopman.spectrum",
        "keras_koopman.records",
        "keras_koopman.callbacks.plan",
        "keras_koopman.callbacks.tracker",
        "keras_koopman.callbacks.logger",
        "keras_koopman.callbacks.base",
        "keras_koopman.callbacks.activity",
        "keras_koopman.tensorboard.summary",
        "keras_koopman.callbacks.monitor",
        "keras_koopman.callbacks.early_stopping",
        "keras_koopman.callbacks.restart",
        "keras_koopman.callbacks.accelerator",
        "keras_koopman.losses",
        "keras_koopman.depth",
        "keras_koopman.pruning",
        "keras_koopman.pruning.schedule",
        "keras_koopman.pruning.wrapper",
        "keras_koopman.pruning.callback",
    ],
)
def test_docstring_examples_run(module):
    __import__(module)
    outcome = doctest.testmod(sys.modules[module], optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0, f"{module} has no runnable example"
    assert outcome.failed == 0


def _package_imports():
    """``{module: {keras_koopman modules it imports}}``, from the source (function-level
    imports included)."""
    import ast
    import pathlib

    root = pathlib.Path(kk.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "keras_koopman"):
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = {m for m in imported if m in {*graph, *_all_modules(root)}} - {module}
    return graph


def _all_modules(root):
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_import_cycle_between_modules():
    graph = _package_imports()
    packages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}
    cycles = []

    def visit(module, path):
        for other in graph.get(module, ()):
            if other in packages:  # a package's __init__ re-exports its modules
                continue
            if other in path:
                cycles.append(path[path.index(other):] + [other])
            elif len(path) < 12:
                visit(other, path + [other])

    for module in graph:
        if module not in packages:
            visit(module, [module])
    assert not cycles, cycles
    # The old circle _validation -> callbacks.monitor -> callbacks._backup is gone, and the
    # validation module imports nothing of the package.
    assert graph["keras_koopman._validation"] == set()


def test_decision_callbacks_do_not_import_tensorflow():
    import ast
    import pathlib

    root = pathlib.Path(kk.__file__).parent / "callbacks"
    for name in ("base.py", "early_stopping.py", "restart.py", "accelerator.py", "monitor.py",
                 "activity.py", "plan.py"):
        tree = ast.parse((root / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in imported), name
