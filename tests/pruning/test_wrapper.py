"""KoopmanPruning, prune_koopman, strip_pruning, UpdateKoopmanPruning: behaviour a user sees."""

import keras
import numpy as np
import pytest

import keras_koopman as kk


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (np.tanh(x[:, :2]) @ np.array([[1.0], [-1.0]], "float32")).astype("float32")
    return x, y


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu",
                                                                   name="hidden"),
                             keras.layers.Dense(1, name="out")])


def masks_and_kernels(model):
    return [(weight.numpy(), mask.numpy()) for wrapper in kk.pruning.pruning_wrappers(model)
            for weight, mask in wrapper.masked]


def test_masked_weights_stay_exactly_zero_through_many_adam_steps():
    x, y = data()
    schedule = kk.pruning.ConstantSparsity(0.8, begin_step=1, frequency=100, unit="epoch")
    pruned = kk.pruning.prune_koopman(mlp(), 0.8, schedule=schedule, criterion="magnitude")
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    # Epoch 1 prunes; 12 more epochs of 8 Adam steps each, with momentum built up before.
    pruned.fit(x, y, epochs=14, batch_size=32, verbose=0, callbacks=[update])
    assert [u["step"] for u in update.updates] == [1]
    for weight, mask in masks_and_kernels(pruned):
        assert np.all(weight[mask == 0] == 0.0)  # exact zeros, not just small
        assert np.any(weight[mask == 1] != 0.0)
    total = sum(m.size for _, m in masks_and_kernels(pruned))
    zeros = sum(int((m == 0).sum()) for _, m in masks_and_kernels(pruned))
    assert zeros == int(np.floor(0.8 * total))


def test_global_magnitude_pruning_removes_the_smallest_weights_over_all_layers():
    x, y = data()
    pruned = kk.pruning.prune_koopman(mlp(), 0.5, schedule=kk.pruning.ConstantSparsity(
        0.5, begin_step=0, frequency=1000, unit="epoch"), criterion="magnitude")
    pruned.compile(keras.optimizers.SGD(0.0), "mse")  # weights do not move: exact reference
    before = [np.abs(w.numpy()).ravel() for wrapper in kk.pruning.pruning_wrappers(pruned)
              for w, _ in wrapper.masked]
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    flat = np.concatenate(before)
    threshold = np.sort(flat)[int(0.5 * flat.size) - 1]
    masks = np.concatenate([m.ravel() for _, m in masks_and_kernels(pruned)])
    np.testing.assert_array_equal(masks == 0, flat <= threshold)


def test_layer_scope_prunes_each_weight_to_the_sparsity():
    x, y = data()
    pruned = kk.pruning.prune_koopman(mlp(), 0.75, criterion="magnitude", scope="layer",
                                      schedule=kk.pruning.ConstantSparsity(
                                          0.75, begin_step=0, frequency=1000, unit="epoch"))
    pruned.compile("sgd", "mse")
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    for _, mask in masks_and_kernels(pruned):
        assert int((mask == 0).sum()) == int(np.floor(0.75 * mask.size))


def test_koopman_scores_pick_the_weights_that_the_mode_at_one_carries():
    # A hand-built trajectory: w_k = w_inf + 0.6^k d. Weights 0-3 head to large values (big
    # components in the mode at 1) while starting small; weights 4-7 start large and decay to
    # ~0. Koopman scores keep 0-3; magnitude at the last snapshot would keep some of 4-7.
    w_inf = np.array([2.0, -1.5, 1.8, -2.2, 0.01, -0.02, 0.015, 0.0])
    d = np.array([-1.9, 1.4, -1.7, 2.1, 3.0, -3.5, 2.8, 3.2])
    snapshots = np.stack([w_inf + 0.6**k * d for k in range(6)])
    result = kk.dmd(snapshots, rank=2)
    scores = kk.pruning.koopman_scores(result, newest=5)
    np.testing.assert_allclose(scores, np.abs(w_inf), atol=1e-6)
    keep = np.argsort(scores)[4:]
    assert set(keep) == {0, 1, 2, 3}
    assert set(np.argsort(np.abs(snapshots[2]))[4:]) != {0, 1, 2, 3}  # magnitude differs


def test_koopman_pruning_in_fit_uses_the_dmd_of_each_weights_window():
    x, y = data()
    # Updates a window apart: the second one's window holds no mask change (closer updates
    # use magnitude: tests/pruning/test_masks.py).
    schedule = kk.pruning.PolynomialDecay(0.3, 0.8, begin_step=3, end_step=7, frequency=4,
                                          unit="epoch")
    pruned = kk.pruning.prune_koopman(mlp(), 0.8, schedule=schedule)
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=4)
    seen = {}

    class Capture(keras.callbacks.Callback):  # after the update: sees the window it used
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {name: buffer.snapshots().numpy().astype(np.float64)
                           for name, buffer in update.monitor.buffers.items()}
            seen[epoch, "masks"] = [m.ravel().copy()
                                    for _, m in masks_and_kernels(self.model)]

    pruned.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[update, Capture()])
    assert [(u["step"], u["criterion"]) for u in update.updates] == [(3, "koopman"),
                                                                      (7, "koopman")]
    for epoch, before in ((3, None), (7, seen[3, "masks"])):
        scores = []
        for k, snapshots in enumerate(seen[epoch].values()):
            kept = (np.arange(snapshots.shape[1]) if before is None
                    else np.flatnonzero(before[k]))  # the DMD sees the unpruned entries only
            score = np.full(snapshots.shape[1], -1.0)
            raw = kk.pruning.koopman_scores(kk.dmd(snapshots[:, kept]), 3)
            # Each tensor's scores on the scale of its weights (root mean square of the kept).
            newest = snapshots[-1, kept]
            score[kept] = raw * np.sqrt(np.mean(newest**2) / np.mean(raw**2))
            scores.append(score)
        scores = np.concatenate(scores)
        masks = np.concatenate(seen[epoch, "masks"])
        count = int((masks == 0).sum())
        assert count == int(np.floor(schedule(epoch)[1] * masks.size))
        koopman_misses = int((masks[np.argsort(scores)[:count]] != 0).sum())
        assert koopman_misses <= 0.02 * count  # ties and float32 rounding at the cut aside
        # Magnitude (of the newest snapshot, pruned entries first) explains the masks worse.
        magnitude = np.abs(np.concatenate([s[-1] for s in seen[epoch].values()]))
        magnitude[scores < 0] = -1.0
        magnitude_misses = int((masks[np.argsort(magnitude)[:count]] != 0).sum())
        assert magnitude_misses > koopman_misses, (magnitude_misses, koopman_misses)


def test_training_without_the_callback_raises_an_error_naming_it():
    x, y = data()
    pruned = kk.pruning.prune_koopman(mlp(), 0.5)
    pruned.compile("sgd", "mse")
    with pytest.raises(Exception, match="UpdateKoopmanPruning"):
        pruned.fit(x, y, epochs=1, verbose=0)
    # With it, then again without it (the traced train step must still check).
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    with pytest.raises(Exception, match="UpdateKoopmanPruning"):
        pruned.fit(x, y, epochs=1, verbose=0)
    pruned.predict(x, verbose=0)  # inference needs no callback


def test_save_load_round_trip_and_strip_give_identical_predictions(tmp_path):
    x, y = data()
    pruned = kk.pruning.prune_koopman(mlp(), 0.9, schedule=kk.pruning.PolynomialDecay(
        0.0, 0.9, begin_step=1, end_step=5, frequency=2, unit="epoch"))
    pruned.compile("adam", "mse")
    pruned.fit(x, y, epochs=8, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])
    expected = pruned.predict(x, verbose=0)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), expected)
    wrapper = kk.pruning.pruning_wrappers(again)[0]
    assert isinstance(wrapper.schedule, kk.pruning.PolynomialDecay)
    assert wrapper.sparsity() > 0.85

    small = kk.pruning.strip_pruning(pruned)
    assert not kk.pruning.pruning_wrappers(small)
    assert [type(layer).__name__ for layer in small.layers] == ["Dense", "Dense"]
    np.testing.assert_allclose(small.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)


def test_strip_shrinks_the_compressed_keras_file_with_the_sparsity(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(64)])  # 33k weights: metadata is negligible
    x = np.random.default_rng(0).normal(size=(32, 64)).astype("float32")
    sizes = {}
    for sparsity in (0.0, 0.5, 0.9):
        pruned = kk.pruning.prune_koopman(model, sparsity, criterion="magnitude", schedule=(
            kk.pruning.ConstantSparsity(sparsity, 0, frequency=100, unit="epoch")))
        pruned.compile(keras.optimizers.SGD(0.0), "mse")
        pruned.fit(x, x, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
        sizes[sparsity] = kk.pruning.compressed_size(kk.pruning.strip_pruning(pruned))
    # float32 weights barely compress; zeros do: the size falls roughly with the sparsity.
    assert sizes[0.5] < 0.7 * sizes[0.0] and sizes[0.9] < 0.3 * sizes[0.0]


def test_functional_model_with_a_shared_layer_stays_shared():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    shared = keras.layers.Dense(8, activation="tanh", name="shared")
    h = shared(shared(inputs))
    outputs = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, outputs)
    x, y = data()
    pruned = kk.pruning.prune_koopman(model, 0.5, layers=["shared"], criterion="magnitude",
                                      schedule=kk.pruning.ConstantSparsity(
                                          0.5, 0, frequency=100, unit="epoch"))
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    wrappers = kk.pruning.pruning_wrappers(pruned)
    assert [w.name for w in wrappers] == ["prune_shared"]
    assert len(pruned.trainable_weights) == len(model.trainable_weights)  # still one copy
    pruned.compile("adam", "mse")
    pruned.fit(x, y, epochs=3, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    ((kernel, mask),) = masks_and_kernels(pruned)
    assert (mask == 0).sum() == 32 and np.all(kernel[mask == 0] == 0)
    small = kk.pruning.strip_pruning(pruned)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_a_single_layer_can_be_wrapped():
    layer = kk.pruning.prune_koopman(keras.layers.Conv2D(4, 3, name="conv"), 0.5)
    assert isinstance(layer, kk.pruning.KoopmanPruning)
    model = keras.Sequential([keras.Input((6, 6, 2)), layer, keras.layers.Flatten()])
    assert [w.name for w, _ in layer.masked] == ["kernel"]
    assert model.output_shape == (None, 64)


@pytest.mark.parametrize("call,error,words", [
    (lambda m: kk.pruning.prune_koopman(m, 1.0), ValueError, "target_sparsity"),
    (lambda m: kk.pruning.prune_koopman(m, -0.2), ValueError, "target_sparsity"),
    (lambda m: kk.pruning.prune_koopman(m, 0.5, criterion="random"), ValueError, "criterion"),
    (lambda m: kk.pruning.prune_koopman(m, 0.5, scope="net"), ValueError, "scope"),
    (lambda m: kk.pruning.prune_koopman(m, 0.5, layers=["nope"]), ValueError, "nope"),
    (lambda m: kk.pruning.prune_koopman(m, 0.5, layers=["drop"]), ValueError, "no prunable"),
    (lambda m: kk.pruning.prune_koopman(m, 0.5, schedule=0.5), TypeError, "schedule"),
    (lambda m: kk.pruning.prune_koopman("model", 0.5), TypeError, "model_or_layer"),
])
def test_bad_arguments_raise_clear_errors(call, error, words):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d"),
                              keras.layers.Dropout(0.1, name="drop"), keras.layers.Dense(1)])
    with pytest.raises(error, match=words):
        call(model)


def test_update_callback_on_a_model_without_wrappers_raises():
    x, y = data()
    model = mlp()
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="prune_koopman"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])


def test_sparsity_and_score_histograms_are_written_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    x, y = data()
    pruned = kk.pruning.prune_koopman(mlp(), 0.8, schedule=kk.pruning.PolynomialDecay(
        0.2, 0.8, begin_step=3, end_step=5, frequency=1, unit="epoch"))
    pruned.compile("adam", "mse")
    pruned.fit(x, y, epochs=6, verbose=0,
               callbacks=[kk.pruning.UpdateKoopmanPruning(window=3, log_dir=str(tmp_path))])
    events = event_accumulator.EventAccumulator(str(tmp_path / "pruning"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert "pruning/prune_hidden/sparsity" in tags and "pruning/scores" in tags
    steps = [e.step for e in events.Tensors("pruning/prune_hidden/sparsity")]
    assert steps == [3, 4, 5]
