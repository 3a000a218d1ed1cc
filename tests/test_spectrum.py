"""kk.spectrum metrics against direct NumPy computations."""

import numpy as np
import pytest
import tensorflow as tf

import keras_koopman as kk


@pytest.fixture
def eigenvalues(rng):
    values = rng.uniform(0.0, 1.3, 40) * np.exp(1j * rng.uniform(-np.pi, np.pi, 40))
    values[:5] = [1.0, 1.004, 0.996 + 0.003j, 1.02, 0.98]
    return values


def test_spectral_radius(eigenvalues):
    assert float(kk.spectrum.spectral_radius(eigenvalues)) == pytest.approx(
        np.abs(eigenvalues).max(), rel=1e-15
    )
    assert float(kk.spectrum.spectral_radius(np.array([], np.complex128))) == 0.0


@pytest.mark.parametrize("tolerance", [0.005, 0.01, 0.1])
def test_near_one_fraction_counts_and_weights(eigenvalues, rng, tolerance):
    near = np.abs(eigenvalues - 1) <= tolerance
    assert float(kk.spectrum.near_one_fraction(eigenvalues, tolerance)) == pytest.approx(
        near.mean()
    )
    amplitudes = rng.standard_normal(40) + 1j * rng.standard_normal(40)
    weighted = np.abs(amplitudes)[near].sum() / np.abs(amplitudes).sum()
    assert float(
        kk.spectrum.near_one_fraction(eigenvalues, tolerance, amplitudes=amplitudes)
    ) == pytest.approx(weighted)


def test_unstable_count(eigenvalues):
    expected = int(np.sum(np.abs(eigenvalues) > 1 + 0.01))
    assert int(kk.spectrum.unstable_count(eigenvalues)) == expected
    assert int(kk.spectrum.unstable_count([1.0005, 1.2, 0.3], tolerance=0.0)) == 2


@pytest.mark.parametrize("tolerance", [0.005, 0.01, 0.1])
def test_one_tolerance_puts_each_eigenvalue_in_exactly_one_region(eigenvalues, tolerance):
    regions = kk.spectrum.regions(eigenvalues, tolerance)
    at_one = np.abs(eigenvalues - 1) <= tolerance
    outside = np.abs(eigenvalues) > 1 + tolerance
    assert not np.any(at_one & outside)  # what the old 1e-3 margin allowed (1.004 was both)
    np.testing.assert_array_equal(regions == "at 1", at_one)
    np.testing.assert_array_equal(regions == "outside", outside)
    np.testing.assert_array_equal(regions == "inside", ~at_one & ~outside)
    # The metrics count the same regions.
    assert int(kk.spectrum.unstable_count(eigenvalues, tolerance)) == int(np.sum(outside))
    assert float(kk.spectrum.near_one_fraction(eigenvalues, tolerance)) == pytest.approx(
        at_one.mean())
    summary = kk.spectrum.summary(
        type("R", (), {"eigenvalues": eigenvalues, "amplitudes": np.ones(40),
                       "residuals": np.zeros(40)})(), tolerance)
    assert int(summary["unstable_count"]) == int(np.sum(outside))


def test_max_residual_ignores_nan_and_is_nan_when_unknown():
    assert float(kk.spectrum.max_residual([0.1, np.nan, 0.3])) == pytest.approx(0.3)
    assert np.isnan(float(kk.spectrum.max_residual([np.nan, np.nan])))
    assert np.isnan(float(kk.spectrum.max_residual([])))


def test_metrics_accept_real_arrays_and_tensors():
    assert float(kk.spectrum.spectral_radius(tf.constant([0.5, -2.0]))) == 2.0
    assert float(kk.spectrum.near_one_fraction(np.array([1.0, 0.0]), 0.1)) == 0.5


def test_summary_of_a_dmd_result_with_a_converged_and_a_decaying_mode():
    # x_k = [1, 1] + 0.5**k [1, -1]: eigenvalue 1 (the fixed point) and 0.5.
    x = np.stack([np.array([1.0, 1.0]) + 0.5**k * np.array([1.0, -1.0]) for k in range(8)])
    result = kk.dmd(x, rank=2)
    metrics = {key: float(value) for key, value in kk.spectrum.summary(result).items()}
    assert metrics["spectral_radius"] == pytest.approx(1.0, abs=1e-10)
    assert metrics["unstable_count"] == 0
    # Both modes start with equal weight |b| * |mode| = sqrt(2): half the amplitude sits at 1.
    assert metrics["near_one_fraction"] == pytest.approx(0.5, abs=1e-10)
    unweighted = kk.spectrum.summary(result, weighted=False)["near_one_fraction"]
    assert float(unweighted) == pytest.approx(0.5)
    assert metrics["max_residual"] == pytest.approx(
        np.nanmax(result.residuals.numpy()), rel=1e-12
    )


@pytest.mark.parametrize("tolerance,error", [(-0.1, ValueError), ("0.1", TypeError),
                                             (True, TypeError)])
def test_bad_tolerance_raises(tolerance, error):
    with pytest.raises(error, match="tolerance"):
        kk.spectrum.near_one_fraction([1.0], tolerance)


def test_amplitudes_of_the_wrong_length_raise():
    with pytest.raises(ValueError, match="amplitudes"):
        kk.spectrum.near_one_fraction([1.0, 0.5], 0.1, amplitudes=[1.0])
