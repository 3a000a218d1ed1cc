"""The README's main job: python -m keras_koopman.demo trains, reports and writes logs."""

import glob
import os
import subprocess
import sys

from keras_koopman import demo


def test_demo_trains_reports_each_layer_and_writes_logs_and_a_picture(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "keras_koopman.demo", "--logdir", str(tmp_path), "--epochs", "8",
         "--window", "5"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    progress = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 7  # from the third snapshot (start + 2 epochs) on: epochs 2..8
    assert "hidden_1 r=" in progress[-1] and "output r=" in progress[-1]
    table = out[out.index("layer "):].splitlines()[1:4]
    assert [row.split()[0] for row in table] == ["hidden_1", "hidden_2", "output"]
    assert table[0].split()[1] == f"{64 * 64 + 64:,}"
    assert f"tensorboard --logdir {tmp_path}" in out
    assert os.path.getsize(tmp_path / "spectra.png") > 10_000
    assert glob.glob(str(tmp_path / "digits" / "events.out.tfevents.*"))  # Koopman summaries
    assert glob.glob(str(tmp_path / "digits" / "train" / "events.out.tfevents.*"))


def test_console_script_entry_point(capsys):
    assert demo.cli(["--help"]) == 0
    assert "keras-koopman demo" in capsys.readouterr().out
    assert demo.cli(["train"]) == 2
    assert "unknown command" in capsys.readouterr().err
