"""keras_koopman.host_dmd: the small eigenproblems in NumPy, against the TensorFlow engine and
PyDMD-independent analytic answers."""

import importlib
import types

import numpy as np
import pytest

import keras_koopman as kk
from keras_koopman import host_dmd

engine = importlib.import_module("keras_koopman.dmd")


def trajectory(seed, m=9, n=12, noise=0.01):
    """Snapshots of a noisy stable linear system, time-major ``[m, n]``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) / np.sqrt(n) * 0.95
    x = [rng.normal(size=n)]
    for _ in range(m - 1):
        x.append(a @ x[-1] + noise * rng.normal(size=n))
    return np.array(x)


def test_an_exact_geometric_sequence_has_its_ratio_as_eigenvalue():
    x = np.outer(0.8 ** np.arange(7), [1.0, -2.0, 0.5])
    eigenvalues, combination, residuals, amplitudes, singular, rank = host_dmd.gram_solve(
        x @ x.T, 3, host_dmd.RANK_OPTIMAL, 0.0, 1e-7, "exact")
    assert rank == 1
    np.testing.assert_allclose(eigenvalues, [0.8], atol=1e-12)
    combination, amplitudes = host_dmd.unit_modes(combination, amplitudes, x @ x.T)
    mode = x.T @ combination[:, 0]  # unit mode times amplitude is the first snapshot
    np.testing.assert_allclose((mode * amplitudes[0]).real, x[0], atol=1e-10)


@pytest.mark.parametrize("method", ["exact", "rrr"])
@pytest.mark.parametrize("rank", [None, 3, 0.99])
def test_gram_solve_matches_the_tensorflow_engine(method, rank):
    code, value = engine.parse_rank(rank)
    for seed in range(6):
        x = trajectory(seed)
        gram = x @ x.T
        want = engine.gram_solve(gram, x.shape[1], code, value, 1e-7, method)
        got = host_dmd.gram_solve(gram, x.shape[1], code, value, 1e-7, method)
        assert got[5] == int(want[5])
        np.testing.assert_allclose(np.sort_complex(got[0]), np.sort_complex(np.asarray(want[0])),
                                   atol=1e-10)
        np.testing.assert_allclose(np.sort(got[2]), np.sort(np.asarray(want[2])),
                                   rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got[4], np.asarray(want[4]), rtol=1e-10)
        # The same reconstruction of the first snapshot from modes and amplitudes.
        k_tf, b_tf = engine.unit_modes(want[1], want[3], gram)
        k_np, b_np = host_dmd.unit_modes(got[1], got[3], gram)
        np.testing.assert_allclose((x.T @ k_np) @ b_np, (x.T @ np.asarray(k_tf)) @ np.asarray(b_tf),
                                   atol=1e-8)


def test_gram_solve_eigenvalues_equal_kk_dmd():
    x = trajectory(7, m=10, n=30)
    want = kk.dmd(x, rank=4)
    code, value = engine.parse_rank(4)
    got = host_dmd.gram_solve(x @ x.T, 30, code, value, 1e-7, "exact")
    np.testing.assert_allclose(np.sort_complex(got[0]),
                               np.sort_complex(want.eigenvalues.numpy()), atol=1e-8)


def test_batch_gram_solve_matches_kk_dmd_batch():
    x = np.stack([trajectory(seed, m=8, n=6) for seed in range(5)])
    want = kk.dmd_batch(x)
    gram = x @ np.swapaxes(x, 1, 2)
    eigenvalues, _, amplitudes, residuals, _, rank = host_dmd.batch_gram_solve(
        gram, 6, host_dmd.RANK_OPTIMAL, 0.0, engine.floor_epsilon(engine.tf.float64, "gram"))
    np.testing.assert_array_equal(rank, want.rank.numpy())
    np.testing.assert_allclose(eigenvalues, want.eigenvalues.numpy(), atol=1e-9)
    np.testing.assert_allclose(residuals, want.residuals.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rank", [None, 2, 0.9, 50])
def test_the_rank_rule_is_the_engines(rank):
    code, value = engine.parse_rank(rank)
    singular = np.sort(np.abs(np.random.default_rng(3).normal(size=(7, 9))), axis=1)[:, ::-1]
    singular[2, 5:] = 0.0  # a numerically short spectrum
    want = engine.select_rank_batch(singular, 40, code, value, 1e-7).numpy()
    np.testing.assert_array_equal(host_dmd.select_rank_batch(singular, 40, code, value, 1e-7),
                                  want)


def test_metrics_and_motion_are_the_spectrum_modules():
    eigenvalues = np.array([1.0, 0.999 + 0.01j, 0.5, 1.2, 0.0])
    amplitudes = np.array([3.0, 1.0, 2.0, 0.5, 0.0])
    residuals = np.array([0.1, np.nan, 0.3, 0.2, np.nan])
    got = host_dmd.summary(eigenvalues, amplitudes, residuals, 0.02)
    result = types.SimpleNamespace(eigenvalues=eigenvalues, amplitudes=amplitudes,
                                   residuals=residuals)
    want = {key: float(value) for key, value in kk.spectrum.summary(result, 0.02).items()}
    assert got == pytest.approx(want)
    batch = host_dmd.summary_batch(eigenvalues[np.newaxis], amplitudes[np.newaxis],
                                   residuals[np.newaxis], np.array([3]), 0.02)
    head = host_dmd.summary(eigenvalues[:3], amplitudes[:3], residuals[:3], 0.02)
    assert {key: value[0].item() for key, value in batch.items()} == pytest.approx(head)
    x = trajectory(2)
    want = np.linalg.norm(x[-1] - x[0]) / np.linalg.norm(x[-1])  # rows are snapshots
    np.testing.assert_allclose(host_dmd.window_motion(x @ x.T), want, rtol=1e-10)
    assert host_dmd.window_motion(np.zeros((3, 3))) == 0.0
