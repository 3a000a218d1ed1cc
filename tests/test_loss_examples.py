"""examples/sobolev_denoise.py runs and shows what it promises."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sobolev_example_beats_mse_under_heavy_noise():
    path = os.path.join(ROOT, "examples", "sobolev_denoise.py")
    spec = importlib.util.spec_from_file_location("sobolev_denoise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    errors = module.main(steps=1500)
    # MSE reproduces the noise (3x the signal); H^-2 stays far below it.
    assert errors["MSE"] > 2.5
    assert errors["H^-2"] < 0.5 * errors["MSE"]
