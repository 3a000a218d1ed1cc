"""Writes one section of bench/RESULTS.md, leaving the other benchmarks' sections alone."""

import datetime
import os
import platform
import re
import subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine():
    """CPU model, cores, GPU and library versions, for the record."""
    model = cpu_model()
    from importlib import metadata

    import numpy
    import tensorflow as tf

    try:
        pydmd_version = metadata.version("pydmd")
    except metadata.PackageNotFoundError:
        pydmd_version = "not installed"
    gpus = tf.config.list_physical_devices("GPU")
    return (
        f"{model}, {os.cpu_count()} cores, "
        f"{'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'no GPU'}; Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}, NumPy {numpy.__version__}, "
        f"PyDMD {pydmd_version}"
    )


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _commit_now():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "keras_koopman", "bench"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # A benchmark's own outputs (RESULTS.md, its plots) are not changes of the code.
    changed = [line for line in dirty.splitlines() if not line.endswith((".md", ".png"))]
    return head + (" +changes" if changed else "")


# Taken when the benchmark starts (it imports this module first): the code it runs is the code
# of that moment, whatever is committed while it runs.
_COMMIT = _commit_now()


def commit():
    """The commit the benchmark started on; ``+changes`` when the package or the benchmarks
    differed from it then (figures of uncommitted code say so)."""
    return _COMMIT


def header(command):
    """The first lines of every section: the command that made it, the machine, the commit and
    the date."""
    return [f"- command: `{command}`", f"- machine: {machine()}", f"- commit: {commit()}",
            f"- date: {stamp()}"]


def write_section(title, body, path=RESULTS):
    """Replaces (or appends) the ``## title`` section of RESULTS.md with ``body``."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    with open(path, "w") as handle:
        handle.write(text.rstrip() + "\n")
    return path


def report(title, body, output=None):
    """Prints ``body`` and writes it as the ``## title`` section (of ``output`` if given)."""
    print(body)
    path = write_section(title, body, output or RESULTS)
    print("written to", path)
    return path
