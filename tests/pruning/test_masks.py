"""The compiled mask update: its scores, its selection and its masks against NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_koopman as kk
from helpers import reference_scores
from keras_koopman.pruning.masks import kth_smallest, select_smallest


def test_forecast_scores_of_a_decaying_weight_fall_to_its_limit():
    # x_k = w_inf + 0.5**k d: the forecast h steps past the newest is w_inf + 0.5**(k+h) d, so
    # an entry that is large now but heading to 0 scores low, unlike its magnitude.
    limit = np.array([1.0, 0.5, 0.0, 0.2])
    drift = np.array([0.0, 0.0, 30.0, 0.0])
    x = np.stack([limit + 0.5**k * drift for k in range(6)])
    result = kk.dmd(x, rank=2)
    for horizon, expected in ((0, limit + 0.5**5 * drift), (20, limit + 0.5**25 * drift)):
        np.testing.assert_allclose(kk.pruning.koopman_scores(result, 5, horizon),
                                   np.abs(expected), atol=1e-8)
    assert np.argmin(kk.pruning.koopman_scores(result, 5, 20)) == 2  # the big one, fading
    assert np.argmin(np.abs(x[-1])) != 2
    # The same with the weights given: the DMD reconstructs them exactly here.
    np.testing.assert_allclose(kk.pruning.koopman_scores(result, 5, 20, weights=x[-1]),
                               np.abs(limit + 0.5**25 * drift), atol=1e-8)


def test_forecast_scores_are_the_weights_plus_predicted_motion_and_magnitude_at_rest():
    # A rank-1 DMD of a noisy window does not reconstruct the weights; the scores still start
    # from them: at horizon 0, and for a window at rest, exactly magnitude pruning.
    rng = np.random.default_rng(4)
    weights = rng.normal(size=50)
    moving = np.stack([weights + 0.5**k * rng.normal(size=50) for k in range(5, -1, -1)])
    result = kk.dmd(moving, rank=1)
    reconstructed = np.real(np.asarray(result.modes) @ (np.asarray(result.amplitudes)
                                                        * np.asarray(result.eigenvalues) ** 5))
    assert np.max(np.abs(reconstructed - moving[-1])) > 0.1  # the rank-1 fit is not the weights
    np.testing.assert_allclose(kk.pruning.koopman_scores(result, 5, 0, weights=moving[-1]),
                               np.abs(moving[-1]), atol=1e-12)
    at_rest = np.stack([weights] * 6) + 1e-9 * rng.normal(size=(6, 50))
    np.testing.assert_allclose(kk.pruning.koopman_scores(kk.dmd(at_rest), 5, 10,
                                                         weights=at_rest[-1]),
                               np.abs(at_rest[-1]), rtol=1e-6, atol=1e-6)


def test_kth_smallest_finds_numpy_sorts_value():
    rng = np.random.default_rng(3)
    values = np.concatenate([np.abs(rng.standard_normal(3000)) * 10.0 ** rng.integers(
        -300, 300, 3000), [0.0, 5e-324, 1e308, 1.0, 1.0, 1.0]])
    candidates = rng.random(values.size) > 0.2
    kept = np.sort(values[candidates])
    for k in (1, 2, 17, kept.size // 2, kept.size - 1, kept.size):
        got = kth_smallest(tf.constant(values), tf.constant(candidates),
                           tf.constant(k, tf.int64)).numpy()
        assert got == kept[k - 1]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("pruned", [0, 50])
def test_select_smallest_takes_exactly_count_entries_ties_by_position(ties, pruned):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(np.float64) if ties else rng.random(200)
    scores[rng.choice(200, pruned, replace=False)] = -1.0  # pruned entries sort first
    for count in (0, 1, 37, 120, 200):
        chosen = select_smallest(tf.constant(scores), tf.constant(count, tf.int64)).numpy()
        assert chosen.sum() == count
        expected = np.zeros(200, bool)
        expected[np.argsort(scores, kind="stable")[:count]] = True  # ties by position
        np.testing.assert_array_equal(chosen, expected)


@pytest.mark.parametrize("horizon", [None, 10])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_koopman_update_matches_the_numpy_reference_and_keeps_pruned_entries(jit_compile,
                                                                              horizon):
    """Two updates (30%, then 60%, a window apart) of a 2-layer model trained by SGD: each time
    the masks equal the ones the NumPy reference (scores over the window the update saw, global
    threshold, pruned entries first) picks, up to entries whose scores tie within float32
    rounding."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = np.tanh(x[:, :2]).sum(1, keepdims=True).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(24, activation="tanh"),
                              keras.layers.Dense(1)])
    schedule = kk.pruning.PolynomialDecay(0.3, 0.6, begin_step=4, end_step=8, frequency=4,
                                          unit="epoch")
    pruned = kk.pruning.prune_koopman(model, 0.6, schedule=schedule)
    pruned.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit_compile)
    update = kk.pruning.UpdateKoopmanPruning(window=4, rank=4, horizon=horizon)
    seen = {}

    decide = update.decide

    def recording(epoch, logs):  # the window and masks the update sees, then the update
        seen[epoch] = [(update.monitor.buffers[name].snapshots().numpy(), m.numpy().ravel(),
                        w.numpy().ravel()) for name, (_, w, m) in update._groups.items()]
        decide(epoch, logs)
        seen[epoch, "masks"] = np.concatenate([m.numpy().ravel() for _, (_, _, m)
                                               in update._groups.items()])

    update.decide = recording
    pruned.fit(x, y, epochs=9, batch_size=32, verbose=0, callbacks=[update])
    assert [(u["step"], u["criterion"]) for u in update.updates] == [(4, "koopman"),
                                                                      (8, "koopman")]
    previous = None
    for epoch in (4, 8):
        scores = np.concatenate([reference_scores(s, m, w, s.shape[0] - 1, horizon)
                                 for s, m, w in seen[epoch]])
        masks = seen[epoch, "masks"]
        count = int(np.floor(schedule(epoch)[1] * masks.size))
        assert int((masks == 0).sum()) == count
        if previous is not None:
            assert np.all(masks[previous == 0] == 0)  # pruned entries stay pruned
        order = np.argsort(scores, kind="stable")
        expected = np.ones(masks.size)
        expected[order[:count]] = 0
        differ = np.flatnonzero(expected != masks)
        # Any disagreement sits at the threshold, where the two computations round apart.
        cut = np.sort(scores)[count - 1]
        assert np.all(np.abs(scores[differ] - cut) <= 1e-4 * abs(cut) + 1e-7), differ
        assert differ.size <= 2
        previous = masks
    for weight, mask in [(w.numpy(), m.numpy()) for _, (_, w, m) in update._groups.items()]:
        assert np.all(weight[mask == 0] == 0.0)
    layers = update.updates[-1]["layers"]
    for wrapper in kk.pruning.pruning_wrappers(pruned):
        assert layers[wrapper.name] == pytest.approx(wrapper.sparsity())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_windows_that_hold_a_mask_change_use_magnitude_until_they_are_clean(jit_compile):
    """Pruning every epoch: the first update scores a clean window by Koopman; every later one
    has the network's answer to the previous change in its window and uses magnitude (and
    records it). (Updates a window apart stay Koopman: the test above.)"""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = np.tanh(x[:, :2]).sum(1, keepdims=True).astype("float32")
    masks = {}
    for criterion in ("koopman",):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(24, activation="tanh"),
                                  keras.layers.Dense(1)])
        schedule = kk.pruning.PolynomialDecay(0.1, 0.7, begin_step=4, end_step=12, frequency=1,
                                              unit="epoch")
        pruned = kk.pruning.prune_koopman(model, 0.7, schedule=schedule, criterion=criterion)
        pruned.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit_compile)
        update = kk.pruning.UpdateKoopmanPruning(window=4)
        seen = []
        decide = update.decide

        def recording(epoch, logs, update=update, decide=decide, seen=seen):
            decide(epoch, logs)
            seen.append(np.concatenate([m.numpy().ravel() for _, (_, _, m)
                                        in update._groups.items()]))

        update.decide = recording
        pruned.fit(x, y, epochs=13, batch_size=32, shuffle=False, verbose=0,
                   callbacks=[update])
        masks[criterion] = (update.updates, seen)
    updates = masks["koopman"][0]
    assert [u["step"] for u in updates] == list(range(4, 13))
    assert [u["criterion"] for u in updates] == ["koopman"] + ["magnitude"] * 8
    sparsity = [float(np.mean(m == 0)) for m in masks["koopman"][1]]
    assert all(b >= a for a, b in zip(sparsity, sparsity[1:])) and sparsity[-1] > sparsity[1]


def small_pruned(data_seed, final, end_step):
    """Data and a 8-16-1 model pruned towards ``final`` every epoch from epoch 3 to
    ``end_step`` (not compiled yet)."""
    rng = np.random.default_rng(data_seed)
    x = rng.normal(size=(128, 8)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    schedule = kk.pruning.PolynomialDecay(0.2, final, begin_step=3, end_step=end_step,
                                          frequency=1, unit="epoch")
    return x, x[:, :1], kk.pruning.prune_koopman(model, final, schedule=schedule)


def test_one_trace_serves_every_update_of_a_fit():
    x, y, pruned = small_pruned(2, 0.8, 9)
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    pruned.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[update])
    assert len(update.updates) == 7
    functions = list(update._functions.values())
    assert len(functions) == 1 and functions[0].experimental_get_tracing_count() == 1


def test_a_tensor_pruned_to_nothing_does_not_stop_the_update():
    """A weight whose mask is all zeros has no DMD (no kept entry): it scores -1 everywhere
    and the others are scored as usual; the fit goes on."""
    x, y, pruned = small_pruned(4, 0.5, 5)
    second = kk.pruning.pruning_wrappers(pruned)[1]
    (weight, mask), = second.masked
    mask.assign(np.zeros(mask.shape, "float32"))
    weight.assign(np.zeros(weight.shape, "float32"))
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    pruned.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[update])
    assert [u["step"] for u in update.updates] == [3, 4, 5]
    assert update.updates[-1]["layers"][second.name] == 1.0
    assert np.all(mask.numpy() == 0)
    total = 8 * 16 + 16
    assert sum(int((m.numpy() == 0).sum()) for w in kk.pruning.pruning_wrappers(pruned)
               for _, m in w.masked) == int(np.floor(0.5 * total))
