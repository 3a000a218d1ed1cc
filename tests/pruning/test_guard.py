"""The guard of KoopmanPruning: a pruned model trains only with UpdateKoopmanPruning, with and
without XLA, in a first fit and in later fits that reuse a traced train function."""

import re

import keras
import numpy as np
import pytest

import keras_koopman as kk

NAMED = re.escape("kk.pruning.UpdateKoopmanPruning")
SPARSITY = 0.5


def tiny_pruned(jit_compile, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh",
                                                                    name="hidden"),
                              keras.layers.Dense(1, name="out")])
    pruned = kk.pruning.prune_koopman(
        model, SPARSITY, criterion="magnitude",
        schedule=kk.pruning.ConstantSparsity(SPARSITY, begin_step=0, frequency=100,
                                             unit="epoch"))
    pruned.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=jit_compile)
    assert pruned.jit_compile is jit_compile
    return pruned


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(64, 4)).astype("float32"),
            rng.normal(size=(64, 1)).astype("float32"))


def kernels(model):
    return [wrapper.layer.kernel.numpy() for wrapper in kk.pruning.pruning_wrappers(model)]


def assert_pruned_to_target(model):
    """Zeros counted in the kernels themselves, and the masks are exactly those zeros."""
    found = kernels(model)
    total = sum(k.size for k in found)
    assert sum(int((k == 0).sum()) for k in found) == int(np.floor(SPARSITY * total))
    for wrapper in kk.pruning.pruning_wrappers(model):
        for weight, mask in wrapper.masked:
            weight, mask = weight.numpy(), mask.numpy()
            assert np.all(weight[mask == 0] == 0.0)  # exact zeros, not just small
            assert np.all(weight[mask == 1] != 0.0)


def assert_refused(pruned, x, y):
    """A fit without the callback raises, naming it, and trains nothing."""
    before = kernels(pruned)
    with pytest.raises(Exception, match=NAMED):
        pruned.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for old, new in zip(before, kernels(pruned)):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_guard_holds_in_first_and_later_fits(jit_compile):
    x, y = tiny_data()
    pruned = tiny_pruned(jit_compile)
    before = kernels(pruned)

    # (1) A first fit without the callback raises, naming it, and trains nothing.
    assert_refused(pruned, x, y)

    # (2) With it: the target sparsity is reached and the pruned entries are exact zeros.
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    pruned.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[update])
    assert [u["step"] for u in update.updates] == [0]
    assert_pruned_to_target(pruned)
    trained = kernels(pruned)
    assert any(np.any(old != new) for old, new in zip(before, trained))

    # (3) A second fit of the same compiled model without it raises, and trains nothing.
    assert_refused(pruned, x, y)

    # (4) A third fit with it works again; the pruned entries stay pruned.
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    pruned.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[update])
    assert update.updates
    assert_pruned_to_target(pruned)
    assert any(np.any(old != new) for old, new in zip(trained, kernels(pruned)))

    # Inference never needs the callback.
    pruned.predict(x, verbose=0)
    pruned.evaluate(x, y, verbose=0)
    pruned(x)
    pruned(x, training=False)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_train_on_batch_after_a_fit_with_the_callback_raises(jit_compile):
    x, y = tiny_data()
    pruned = tiny_pruned(jit_compile)
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0,
               callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])
    with pytest.raises(Exception, match=NAMED):
        pruned.train_on_batch(x[:16], y[:16])


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_checkpoint_saved_during_fit_still_needs_the_callback(tmp_path, jit_compile):
    # The saved flag weight reads 1 in a checkpoint written inside fit: loading it must not
    # let the model train without the callback.
    x, y = tiny_data()
    pruned = tiny_pruned(jit_compile)
    path = str(tmp_path / "mid_fit.keras")
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0,
               callbacks=[kk.pruning.UpdateKoopmanPruning(window=3),
                          keras.callbacks.ModelCheckpoint(path)])
    again = keras.saving.load_model(path)
    assert again.jit_compile is jit_compile
    np.testing.assert_array_equal(again.predict(x, verbose=0), pruned.predict(x, verbose=0))
    with pytest.raises(Exception, match=NAMED):
        again.fit(x, y, epochs=1, batch_size=16, verbose=0)
    again.fit(x, y, epochs=1, batch_size=16, verbose=0,
              callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])
    assert_pruned_to_target(again)
