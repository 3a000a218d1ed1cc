"""The README's main job: the digits example trains, analyses every layer and writes logs."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digits_example_prints_each_layers_spectrum_and_writes_tensorboard_logs(tmp_path):
    logdir = tmp_path / "logs"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "digits_spectrum.py"),
            "--epochs", "8", "--window", "6", "--logdir", str(logdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 3]}
    assert set(rows) == {"hidden", "output"}
    assert rows["hidden"][1] == str(64 * 32 + 32) and rows["output"][1] == str(32 * 10 + 10)
    for row in rows.values():
        assert 1 <= int(row[2]) <= 5  # rank, at most window - 1
        assert 0.0 < float(row[3]) < 2.0  # spectral radius

    events = glob.glob(str(logdir / "koopman" / "events.out.tfevents.*"))
    assert events, "no Koopman summaries written"
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(logdir / "koopman"), size_guidance={"tensors": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    assert "koopman/hidden/spectral_radius" in tags
    steps = [event.step for event in accumulator.Tensors("koopman/hidden/spectral_radius")]
    assert steps == list(range(2, 9))  # initial weights + 2 epochs = 3 snapshots, then each epoch
    assert glob.glob(str(logdir / "train" / "events.out.tfevents.*")), "Keras logs missing"
