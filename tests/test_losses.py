"""kk.losses: the negative-Sobolev loss against NumPy's full complex FFT and analytic tones."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_koopman as kk
from helpers import sobolev_reference as reference
from keras_koopman.losses import NegativeSobolev, negative_sobolev


@pytest.mark.parametrize("shape,axis", [((4, 33), -1), ((64, 3), 0), ((2, 10, 5), 1)])
def test_s_zero_is_the_mean_squared_error(rng, shape, axis):
    y_true, y_pred = rng.normal(size=shape), rng.normal(size=shape)
    got = negative_sobolev(y_true.astype("float32"), y_pred.astype("float32"), s=0.0, axis=axis)
    expected = np.mean((y_pred - y_true) ** 2, axis=axis)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    if axis == -1:
        mse = keras.losses.MeanSquaredError(reduction=None)(y_true, y_pred)
        np.testing.assert_allclose(got.numpy(), mse.numpy(), rtol=1e-6)


@pytest.mark.parametrize("n", [64, 63])
@pytest.mark.parametrize("k", [0, 1, 3, 10])
@pytest.mark.parametrize("s,length", [(1.0, 1.0), (2.0, 1.0), (0.5, 3.0), (-1.0, 2.0)])
def test_a_pure_tone_is_weighted_exactly(n, k, s, length):
    x = np.arange(n) / n
    tone = np.cos(2 * np.pi * k * x + 0.3)[None]
    value = negative_sobolev(np.zeros_like(tone), tone, s=s, length=length).numpy()[0]
    mse = np.mean(tone ** 2)
    weight = (1 + (2 * np.pi * k / length) ** 2) ** (-s)
    assert value == pytest.approx(weight * mse, rel=1e-10)


def test_the_nyquist_tone_of_an_even_grid_is_weighted_exactly():
    n = 32
    tone = np.cos(np.pi * np.arange(n))[None]  # k = n / 2: its own conjugate
    value = negative_sobolev(np.zeros_like(tone), tone, s=1.0).numpy()[0]
    assert value == pytest.approx((1 + (2 * np.pi * n / 2) ** 2) ** -1.0, rel=1e-10)


@pytest.mark.parametrize("window", [None, "even", "hann"])
@pytest.mark.parametrize("shape,axis,length", [
    ((3, 50), -1, 1.0), ((40, 2), 0, 2.5), ((2, 12, 9, 3), (1, 2), (1.0, 2.0)),
    ((2, 8, 7, 1), (2, 1), (3.0, 1.0)),
])
def test_matches_the_full_fft_reference(rng, window, shape, axis, length):
    y_true, y_pred = rng.normal(size=shape), rng.normal(size=shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    lengths = length if isinstance(length, tuple) else (length,)
    got = negative_sobolev(y_true, y_pred, s=1.5, axis=axis, length=length, window=window)
    expected = reference(y_pred - y_true, 1.5, axes, lengths, window)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


def test_even_extension_keeps_s_zero_equal_to_the_mse(rng):
    y_true, y_pred = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    mse = np.mean((y_pred - y_true) ** 2, axis=-1)
    even = negative_sobolev(y_true, y_pred, s=0.0, window="even").numpy()
    np.testing.assert_allclose(even, mse, rtol=1e-10)


@pytest.mark.parametrize("n", [40, 41])
def test_hann_at_s_zero_is_the_hann_weighted_mean_square(rng, n):
    from scipy.signal import windows

    y_true, y_pred = rng.normal(size=(3, n)), rng.normal(size=(3, n))
    residual = y_pred - y_true
    hann = windows.hann(n, sym=False)  # SciPy's periodic Hann window, scaled to mean square 1
    hann /= np.sqrt(np.mean(hann**2))
    got = negative_sobolev(y_true, y_pred, s=0.0, window="hann").numpy()
    np.testing.assert_allclose(got, np.mean((hann * residual) ** 2, axis=-1), rtol=1e-10)
    # Not the MSE for an uneven error; the MSE again for an error spread evenly.
    assert not np.allclose(got, np.mean(residual**2, axis=-1), rtol=1e-3)
    even_error = np.full((1, n), 0.7)
    np.testing.assert_allclose(
        negative_sobolev(np.zeros((1, n)), even_error, s=0.0, window="hann").numpy(), [0.49],
        rtol=1e-10)


def test_gradient_agrees_with_finite_differences(rng):
    y_true = rng.normal(size=(2, 16))
    y_pred = tf.Variable(rng.normal(size=(2, 16)))
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(negative_sobolev(y_true, y_pred, s=1.0))
    gradient = tape.gradient(value, y_pred).numpy()
    eps = 1e-6
    numeric = np.zeros_like(gradient)
    base = y_pred.numpy()
    for index in np.ndindex(base.shape):
        for sign in (1, -1):
            shifted = base.copy()
            shifted[index] += sign * eps
            numeric[index] += sign * float(tf.reduce_sum(negative_sobolev(y_true, shifted, s=1.0)))
    numeric /= 2 * eps
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-9)


def full_batch_model(loss, jit_compile, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), loss=loss, jit_compile=jit_compile)
    return model


def grid_data(n=128):
    x = np.linspace(0, 1, n, endpoint=False)[:, None].astype("float32")
    y = (np.sin(2 * np.pi * x) + 0.3 * np.sin(2 * np.pi * 5 * x)).astype("float32")
    return x, y


@pytest.mark.parametrize("jit_compile", [False, True])
def test_axis_zero_full_batch_fit_matches_the_function_and_trains(jit_compile):
    x, y = grid_data()
    loss = NegativeSobolev(s=1.0, axis=0)
    model = full_batch_model(loss, jit_compile)
    before = float(model.evaluate(x, y, batch_size=len(x), verbose=0))
    expected = float(np.mean(reference(model.predict(x, verbose=0) - y, 1.0, (0,), (1.0,))))
    assert before == pytest.approx(expected, rel=1e-5)
    history = model.fit(x, y, batch_size=len(x), shuffle=False, epochs=60, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def grid_warnings(record):
    return [w for w in record if "transforms the batch axis" in str(w.message)]


def test_keras_default_batches_warn_once_and_the_whole_grid_does_not():
    x, y = grid_data(100)  # a short last batch: the size is unknown when traced, checked per step
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0), jit_compile=False)
        model.fit(x, y, epochs=3, verbose=0)  # Keras's defaults: batches of 32, shuffled
    found = grid_warnings(record)
    assert len(found) == 1  # once, over 12 steps
    assert "Keras's default batch_size" in str(found[0].message)
    assert "batch_size=len(x), shuffle=False" in str(found[0].message)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0), jit_compile=False)
        model.fit(x, y, batch_size=len(x), shuffle=False, epochs=3, verbose=0)
        model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert grid_warnings(record) == []


def test_grid_size_names_the_grid():
    x, y = grid_data(128)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0, grid_size=128), False)
        model.fit(x, y, batch_size=64, shuffle=False, epochs=2, verbose=0)
    found = grid_warnings(record)
    assert len(found) == 1 and "a batch of 64 points, not grid_size=128" in str(found[0].message)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0, grid_size=32), False)
        model.fit(x[:32], y[:32], shuffle=False, epochs=2, verbose=0)  # a grid of 32 points
    assert grid_warnings(record) == []
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        NegativeSobolev(axis=0, grid_size=1)
    with pytest.raises(TypeError, match="grid_size must be an int"):
        NegativeSobolev(axis=0, grid_size=12.5)
    loss = NegativeSobolev.from_config(NegativeSobolev(axis=0, grid_size=64).get_config())
    assert loss.grid_size == 64


def test_under_xla_static_batches_are_checked_and_unknown_ones_train_quietly():
    x, y = grid_data(256)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=True)
    for data, kwargs in ((batches, {}), (x, {"shuffle": True})):  # 256 = 8 x 32: static too
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            model = full_batch_model(NegativeSobolev(s=1.0, axis=0), jit_compile=True)
            model.fit(data, y if data is x else None, epochs=2, verbose=0, **kwargs)
        assert len(grid_warnings(record)) == 1
    # 100 points: a short last batch, so Keras traces an unknown batch size, and XLA cannot
    # call back to Python. The fit must still compile and train (no check rather than a
    # broken step).
    x, y = grid_data(100)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0), jit_compile=True)
        history = model.fit(x, y, epochs=2, verbose=0)
    assert grid_warnings(record) == []
    assert np.all(np.isfinite(history.history["loss"]))


def test_mixed_precision_inputs_are_computed_in_float32(rng):
    y_true = rng.normal(size=(2, 64)).astype("float16")
    y_pred = rng.normal(size=(2, 64)).astype("float16")
    got = negative_sobolev(y_true, y_pred, s=1.0)
    assert got.dtype == tf.float32
    expected = reference(y_pred.astype(np.float64) - y_true.astype(np.float64), 1.0, (-1,), (1.0,))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    bf16 = negative_sobolev(tf.constant(y_true, tf.bfloat16), tf.constant(y_pred, tf.bfloat16))
    assert bf16.dtype == tf.float32 and np.all(np.isfinite(bf16.numpy()))


def test_a_mixed_float16_model_trains_with_the_loss():
    x, y = grid_data(64)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = full_batch_model(NegativeSobolev(s=1.0, axis=0), jit_compile=False)
        history = model.fit(x, y, batch_size=len(x), shuffle=False, epochs=5, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(history.history["loss"]))


def test_config_round_trip_and_model_save_load(tmp_path):
    loss = NegativeSobolev(s=2.0, axis=(1, 2), length=(2.0, 3.0), window="hann", name="hs")
    clone = NegativeSobolev.from_config(loss.get_config())
    assert (clone.s, clone.axis, clone.length, clone.window, clone.name) == (
        2.0, (1, 2), (2.0, 3.0), "hann", "hs")
    x, y = grid_data(32)
    model = full_batch_model(NegativeSobolev(s=1.5, axis=0, length=2.0, window="even",
                                             grid_size=32), False)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, NegativeSobolev)
    assert (loaded.loss.s, loaded.loss.axis, loaded.loss.length, loaded.loss.window,
            loaded.loss.grid_size) == (1.5, (0,), (2.0,), "even", 32)
    assert float(loaded.evaluate(x, y, batch_size=len(x), verbose=0)) == pytest.approx(
        float(model.evaluate(x, y, batch_size=len(x), verbose=0)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"s": float("nan")}, ValueError, "s must be a finite number"),
        ({"s": float("inf")}, ValueError, "s must be a finite number"),
        ({"s": "1"}, TypeError, "s must be a number; got '1'"),
        ({"axis": (0, 1, 2)}, ValueError, "axis must be an int or a tuple of one or two ints"),
        ({"axis": 1.0}, TypeError, "axis must be an int"),
        ({"length": 0.0}, ValueError, "length must be > 0.0"),
        ({"length": (1.0, 2.0)}, ValueError, "one per axis"),
        ({"window": "hamming"}, ValueError, r"window must be one of \(None, 'hann', 'even'\)"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words):
        NegativeSobolev(**kwargs)
    with pytest.raises(error, match=words):
        negative_sobolev(np.zeros((2, 8)), np.ones((2, 8)), **kwargs)


def test_bad_shapes_raise_at_call_time():
    with pytest.raises(ValueError, match="axis 2 is out of range for inputs of rank 2"):
        negative_sobolev(np.zeros((2, 8)), np.ones((2, 8)), axis=2)
    with pytest.raises(ValueError, match="length 1; it needs at least 2 points"):
        negative_sobolev(np.zeros((5, 1)), np.ones((5, 1)), axis=-1)
    with pytest.raises(ValueError, match="must not repeat"):
        negative_sobolev(np.zeros((2, 8, 8)), np.ones((2, 8, 8)), axis=(1, -2))


def test_exported_from_the_package():
    assert kk.losses.NegativeSobolev is NegativeSobolev
    assert keras.saving.get_registered_object("keras_koopman>NegativeSobolev") is NegativeSobolev
