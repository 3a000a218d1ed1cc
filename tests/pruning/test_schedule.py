"""Pruning schedules against their formulas (TF-MOT's definitions)."""

import numpy as np
import pytest

import keras_koopman as kk


def test_polynomial_decay_follows_the_cubic_formula_and_holds_after_the_end():
    schedule = kk.pruning.PolynomialDecay(0.1, 0.9, begin_step=10, end_step=50, power=3,
                                          frequency=10)
    for t in range(0, 80):
        update, sparsity = schedule(t)
        progress = np.clip((t - 10) / 40, 0, 1)
        assert sparsity == pytest.approx(0.9 + (0.1 - 0.9) * (1 - progress) ** 3)
        assert update == (10 <= t <= 50 and (t - 10) % 10 == 0)


def test_constant_sparsity_updates_every_frequency_from_begin_until_end():
    schedule = kk.pruning.ConstantSparsity(0.8, begin_step=3, end_step=12, frequency=4)
    updates = [t for t in range(20) if schedule(t)[0]]
    assert updates == [3, 7, 11, 12]  # the end step always updates
    assert {schedule(t)[1] for t in range(20)} == {0.8}


def test_schedules_round_trip_through_their_config():
    import keras

    for schedule in (kk.pruning.ConstantSparsity(0.5, 2, unit="epoch"),
                     kk.pruning.PolynomialDecay(0.0, 0.95, 0, 100, power=2, frequency=5)):
        again = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule))
        assert type(again) is type(schedule) and again.get_config() == schedule.get_config()


@pytest.mark.parametrize("build,words", [
    (lambda: kk.pruning.ConstantSparsity(1.0), "target_sparsity"),
    (lambda: kk.pruning.ConstantSparsity(-0.1), "target_sparsity"),
    (lambda: kk.pruning.ConstantSparsity(0.5, unit="batch"), "unit"),
    (lambda: kk.pruning.ConstantSparsity(0.5, begin_step=5, end_step=2), "end_step"),
    (lambda: kk.pruning.PolynomialDecay(0.0, 1.0, 0, 10), "final_sparsity"),
    (lambda: kk.pruning.PolynomialDecay(0.0, 0.5, 0, -1), "end_step"),
    (lambda: kk.pruning.ConstantSparsity(0.5, frequency=0), "frequency"),
])
def test_bad_schedule_arguments_name_the_argument(build, words):
    with pytest.raises(ValueError, match=words):
        build()
