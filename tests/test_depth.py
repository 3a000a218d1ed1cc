"""kk.depth: scales found in targets of known content; which layers do work."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_koopman as kk
from keras_koopman.depth import suggest_depth


def tones(x, spec):
    return sum(a * np.sin(2 * np.pi * f * x + p) for a, f, p in spec)


@pytest.mark.parametrize("spec", [
    [(1.0, 3.0, 0.0)],
    [(1.0, 3.0, 0.0), (0.5, 25.0, 1.0)],
    [(1.0, 2.0, 0.0), (0.6, 11.0, 1.0), (0.4, 13.0, 2.0), (0.3, 90.0, 0.5)],
])
def test_one_layer_per_well_separated_scale_under_noise(rng, spec):
    x = np.arange(2048) / 2048
    y = tones(x, spec) + rng.normal(0, 0.3, x.shape)
    result = suggest_depth(x, y)
    groups = []  # tones closer than 2x in frequency form one scale
    for _, f, _ in sorted(spec, key=lambda t: t[1]):
        if groups and f <= 2 * groups[-1][-1]:
            groups[-1].append(f)
        else:
            groups.append([f])
    assert result.n_layers == len(groups)
    for scale, group in zip(result.scales, groups):
        assert min(group) * 0.9 <= scale.frequency <= max(group) * 1.1
    assert sum(s.share for s in result.scales) == pytest.approx(1.0, abs=0.02)
    assert result.method == "fourier" and result.frequencies.shape == result.power.shape


def test_pure_noise_has_no_scale_and_one_layer(rng):
    x = np.arange(1024) / 1024
    result = suggest_depth(x, rng.normal(size=x.shape))
    assert result.scales == [] and result.n_layers == 1


def test_non_uniform_unsorted_column_inputs(rng):
    x = rng.uniform(0, 2, 4096)
    y = tones(x, [(1.0, 1.5, 0.0), (0.5, 20.0, 1.0)])  # frequencies per unit of x
    result = suggest_depth(x[:, None], y[:, None])
    assert result.n_layers == 2
    assert result.scales[0].frequency == pytest.approx(1.5, rel=0.2)
    assert result.scales[1].frequency == pytest.approx(20.0, rel=0.05)


def test_the_spectra_are_the_periodogram_and_a_least_squares_sinusoid_fit(rng):
    # Uniform: the linearly detrended periodogram under a (periodic) Hann window, by hand.
    x = np.arange(512) / 512
    y = tones(x, [(1.0, 7.0, 0.3)]) + 0.4 * x + rng.normal(0, 0.2, x.shape)
    result = suggest_depth(x, y)
    t = np.arange(len(x))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * t / len(x))
    by_hand = np.abs(np.fft.rfft((y - np.polyval(np.polyfit(t, y, 1), t)) * hann))
    np.testing.assert_allclose(result.frequencies, np.fft.rfftfreq(len(x), 1 / 512)[1:])
    ratio = result.power / by_hand[1:] ** 2
    # The same up to SciPy's scaling; the Nyquist bin has no negative twin to fold in.
    np.testing.assert_allclose(ratio[:-1], ratio[0], rtol=1e-9)
    assert ratio[-1] == pytest.approx(ratio[0] / 2)
    # Non-uniform: at each frequency, the least-squares fit of a cos and a sin to the
    # detrended, Hann-tapered samples; Lomb-Scargle's power is proportional to the fit's
    # explained sum of squares.
    x = np.sort(rng.uniform(0, 1, 400))
    y = tones(x, [(1.0, 9.0, 0.3)]) + rng.normal(0, 0.3, x.shape)
    result = suggest_depth(x, y)
    s = x - x[0]
    tapered = (y - np.polyval(np.polyfit(s, y, 1), s)) * (0.5 - 0.5 * np.cos(2 * np.pi * s / s[-1]))
    explained = []
    for f in result.frequencies[:40]:
        basis = np.stack([np.cos(2 * np.pi * f * s), np.sin(2 * np.pi * f * s)], axis=1)
        fit = basis @ np.linalg.lstsq(basis, tapered, rcond=None)[0]
        explained.append(fit @ fit)
    np.testing.assert_allclose(result.power[:40] / np.array(explained),
                               result.power[0] / explained[0], rtol=1e-6)
    assert result.frequencies[np.argmax(result.power)] == pytest.approx(9.0, rel=0.1)


def test_non_uniform_samples_resolve_a_scale_near_the_mean_spacings_nyquist(rng):
    # Random positions leave gaps wider than half the fine tone's period: interpolating onto a
    # grid (the old method) smears the tone (it found it in 0 of 10 draws like this one), a
    # least-squares fit per frequency does not (10 of 10).
    x = np.sort(rng.uniform(0, 1, 2048))
    y = tones(x, [(1.0, 4.0, 0.0), (0.3, 950.0, 1.0)]) + rng.normal(0, 0.3, x.shape)
    result = suggest_depth(x, y)
    assert result.n_layers == 2
    assert result.scales[1].frequency == pytest.approx(950.0, rel=0.01)


def test_dmd_spectrum_finds_the_tone_frequencies():
    x = np.arange(2048) / 2048
    y = tones(x, [(1.0, 20.0, 0.0), (0.5, 70.0, 1.0)])
    result = suggest_depth(x, y, method="dmd")
    assert result.method == "dmd" and result.n_layers == 2
    np.testing.assert_allclose([s.frequency for s in result.scales], [20.0, 70.0], rtol=1e-3)


@pytest.mark.parametrize("kwargs,words", [
    ({"x": np.arange(10), "y": np.arange(9)}, "same length"),
    ({"x": np.arange(5), "y": np.arange(5)}, "at least 8 points"),
    ({"x": np.arange(10.0), "y": np.r_[np.arange(9.0), np.nan]}, "finite"),
    ({"x": np.r_[0, 0, np.arange(8)], "y": np.arange(10)}, "must not repeat"),
    ({"method": "wavelet"}, "method must be"),
    ({"significance": 0.0}, "significance"),
    ({"separation": 0.5}, "separation"),
])
def test_bad_arguments(kwargs, words):
    arguments = {"x": np.arange(64) / 64, "y": np.sin(np.arange(64))}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=words):
        suggest_depth(**arguments)


def test_layer_activity_flags_a_group_that_does_not_move():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    still = tf.Variable(tf.ones([5]))  # watched, never trained

    def groups(m):
        return {"hidden": m.get_layer("hidden").trainable_variables, "still": [still]}

    monitor = kk.callbacks.KoopmanMonitor(window=6, observables=groups)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    model.fit(x, x @ np.ones((3, 1), "float32"), epochs=8, verbose=0, callbacks=[monitor])
    activity = kk.callbacks.layer_activity(monitor)
    assert kk.depth.layer_activity is kk.callbacks.layer_activity  # the old name still works
    assert set(activity) == {"hidden", "still"}
    assert activity["still"]["idle"] and activity["still"]["motion"] == 0
    assert not activity["hidden"]["idle"]
    assert 0 < activity["hidden"]["non_unit_share"] <= 1
    # The share is the non-unit part of the newest snapshot's mode weights, by hand:
    record = monitor.latest("hidden")
    weights = record.current_weights()
    moving = np.abs(record.eigenvalues - 1) > monitor.tolerance
    assert activity["hidden"]["non_unit_share"] == pytest.approx(weights[moving].sum() / weights.sum())


def test_layer_activity_needs_a_monitor():
    with pytest.raises(TypeError, match="monitor"):
        kk.depth.layer_activity(object())
