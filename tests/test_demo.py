"""The README's main job: python -m keras_koopman.demo trains, reports and writes logs."""

import glob
import os
import re
import subprocess
import sys

from keras_koopman import demo


def test_demo_trains_reports_each_layer_and_writes_logs_and_a_picture(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "keras_koopman.demo", "--logdir", str(tmp_path), "--epochs", "8",
         "--window", "5"],
        capture_output=True, text=True, timeout=600,
        # As a user runs it: nothing set to quiet TensorFlow.
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # None of TensorFlow's native start-up lines (absl, oneDNN, CUDA probing, XLA service).
    for stream in (done.stdout, done.stderr):
        assert not re.search(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|cudart", stream, re.M), (
            stream[-3000:])
    progress = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 8  # from epoch 1 on
    # Snapshot 0 is the start, one more after each epoch: the window of 5 is full after epoch 4.
    assert [line.split("|")[1].strip() for line in progress[:3]] == [
        f"collecting snapshots ({k}/5)" for k in (2, 3, 4)]
    assert all("hidden_1 r=" in line and "output r=" in line for line in progress[4:])
    verdicts = re.findall(r"r=[\d.]+ (\w+)", " ".join(progress[4:]))
    assert verdicts and set(verdicts) <= {"converged", "moving", "growing", "still"}
    table = out[out.index("layer "):].splitlines()[1:4]
    assert out[out.index("layer "):].split()[4:6] == ["at", "1"]  # the column headings
    assert "none is both" in out and "still = the weights did not move" in out
    assert [row.split()[0] for row in table] == ["hidden_1", "hidden_2", "output"]
    assert table[0].split()[1] == f"{64 * 64 + 64:,}"
    assert f"tensorboard --logdir {tmp_path}" in out
    assert os.path.getsize(tmp_path / "spectra.png") > 10_000
    assert glob.glob(str(tmp_path / "digits" / "events.out.tfevents.*"))  # Koopman summaries
    assert glob.glob(str(tmp_path / "digits" / "train" / "events.out.tfevents.*"))


def test_console_script_lists_its_commands_and_version(capsys):
    import keras_koopman

    assert demo.cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: keras-koopman") and "demo" in out and "--version" in out
    assert "train a digits MLP with the Koopman callbacks" in out
    assert demo.cli([]) == 0 and "commands:" in capsys.readouterr().out
    assert demo.cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"keras-koopman {keras_koopman.__version__}"
    assert demo.cli(["train"]) == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_demo_help_shows_every_default_and_answers_before_tensorflow_loads():
    code = ("import sys, time\n"
            "start = time.perf_counter()\n"
            "from keras_koopman import demo\n"
            "try:\n"
            "    demo.main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('SECONDS', time.perf_counter() - start, 'tensorflow' in sys.modules,\n"
            "      'keras' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    help_text, last = done.stdout.rsplit("SECONDS", 1)
    seconds, tensorflow, keras = last.split()
    assert tensorflow == "False" and keras == "False"
    assert float(seconds) < 2.0
    for option, default in (("--logdir", "logs"), ("--epochs", "150"), ("--window", "12"),
                            ("--seed", "0")):
        assert option in help_text and f"(default: {default})" in help_text
    assert "seed of the weights" in help_text


def test_the_stderr_filter_drops_only_native_log_lines():
    code = ("import os, sys, warnings\n"
            "from keras_koopman.demo import without_native_logs\n"
            "with without_native_logs():\n"
            "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called"
            " are written to STDERR\\n')\n"
            "    os.write(2, b'I0000 00:00:1796210491.010950   27389 port.cc:153] oneDNN on\\n')\n"
            "    os.write(2, b'E0000 00:00:1796210494.994152   27389 cuda_platform.cc:52] cuInit\\n')\n"
            "    warnings.warn('a Python warning stays')\n"
            "    os.write(2, b'I0000 is not a native line\\n')\n"
            "print('after', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "a Python warning stays" in lines[0] and lines[-2:] == [
        "I0000 is not a native line", "after"]
    assert len(lines) == 3  # the warning, the plain line, the line after


def test_still_means_the_weights_did_not_move_whatever_their_size():
    import numpy as np

    import keras_koopman as kk
    from keras_koopman.records import SpectrumRecord

    stop = kk.callbacks.KoopmanEarlyStopping(kk.callbacks.KoopmanMonitor(window=5))

    def record(motion, eigenvalues):
        eigenvalues = np.asarray(eigenvalues, np.complex128)
        return SpectrumRecord(
            epoch=4, step=5, group="dense", eigenvalues=eigenvalues,
            amplitudes=np.ones_like(eigenvalues), residuals=np.zeros(len(eigenvalues)),
            rank=len(eigenvalues), snapshots=5,
            metrics={"spectral_radius": 1.0, "near_one_fraction": 1.0, "unstable_count": 0,
                     "max_residual": 0.0, "motion": motion})

    # Non-zero weights that stay put: before, only all-zero weights were "still".
    assert demo._verdict(record(0.0, [1.0]), stop) == "still"
    assert demo._verdict(record(1e-9, [1.0, 0.5]), stop) == "still"
    assert demo._verdict(record(0.05, [1.0, 0.5]), stop) == "moving"
    assert demo._verdict(record(0.05, [1.3, 0.5]), stop) == "growing"
