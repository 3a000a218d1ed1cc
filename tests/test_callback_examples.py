"""The callback examples under examples/ run and show what they promise."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_restart_example_recovers_a_dead_network():
    restart, accuracy = load("restart").main(epochs=10)
    assert restart.restarts and restart.restarts[0]["reason"].startswith("stagnation")
    assert accuracy[3] < 0.2 and accuracy[-1] > 0.9


def test_early_stopping_example_stops_both_ways():
    koopman_epochs, classic_epochs = load("early_stopping").main(epochs=1000)
    assert 10 <= koopman_epochs < 1000 and classic_epochs < 1000


def test_accelerate_example_reaches_plain_sgds_loss_in_fewer_epochs():
    reached, plain, fast, accelerator = load("accelerate").main(epochs=40)
    assert reached is not None and reached <= 30  # at least 4/3 fewer epochs
    assert fast[-1] < plain[-1]
    assert any(jump["accepted"] for jump in accelerator.jumps)


def test_prune_example_keeps_accuracy_at_90_percent_sparsity_and_shrinks_the_file():
    accuracy, sizes, update = load("prune").main(epochs=30, sparsity=0.9)
    assert accuracy["pruned"] > accuracy["dense"] - 0.05
    assert sizes["pruned"] < 0.4 * sizes["dense"]
    assert {record["criterion"] for record in update.updates} == {"koopman"}
    assert abs(update.updates[-1]["sparsity"] - 0.9) < 1e-9
