"""How deep a network should be, from the scales in the target, and which layers do work.

:func:`suggest_depth` follows the hierarchical-scales idea of Mohr et al. ("Predicting the
critical number of layers for hierarchical support vector regression", Entropy 2021): a target
made of ``k`` well-separated scales is learned by a hierarchy of ``k`` levels, each resolving one
scale. It finds the support of the target's spectrum above the noise, groups it into scales that
are well separated in frequency, and suggests one layer per scale.

:func:`layer_activity` reads a :class:`~keras_koopman.callbacks.KoopmanMonitor`: a layer whose
weights sit entirely in Koopman modes at 1 (or do not move) is doing no work.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_koopman._validation import check_number

__all__ = ["DepthSuggestion", "Scale", "suggest_depth"]


@dataclasses.dataclass(frozen=True)
class Scale:
    """One group of significant frequencies.

    Attributes:
      frequency: the power-weighted mean frequency of the group, in cycles per unit of ``x``.
      low, high: the lowest and highest significant frequency in the group.
      share: the group's share of the significant power.
    """

    frequency: float
    low: float
    high: float
    share: float


@dataclasses.dataclass(frozen=True)
class DepthSuggestion:
    """What :func:`suggest_depth` found, with the spectrum it used so you can check why.

    Attributes:
      n_layers: suggested number of layers (one per scale, at least 1).
      scales: the :class:`Scale` groups, coarsest first.
      frequencies: ``[m]`` frequencies of the spectrum used (cycles per unit of ``x``).
      power: ``[m]`` power at those frequencies.
      threshold: the power above which a frequency counted as signal.
      method: ``"fourier"`` or ``"dmd"``.
    """

    n_layers: int
    scales: list
    frequencies: np.ndarray
    power: np.ndarray
    threshold: float
    method: str


def _as_series(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"x and y must be 1-D (or [n, 1]) and of the same length; got {x.shape} and {y.shape}"
        )
    if len(x) < 8:
        raise ValueError(f"x and y need at least 8 points; got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    steps = np.diff(x)
    if np.any(steps <= 0):
        raise ValueError("x must not repeat a point")
    uniform = bool(np.allclose(steps, steps.mean(), rtol=1e-6, atol=0))
    return x, y, uniform


def _fourier_spectrum(x, y, uniform):
    """One-sided spectrum of the linearly detrended, Hann-tapered samples, on the frequency grid
    of ``n`` samples at the mean spacing: SciPy's periodogram on a uniform grid, its
    Lomb-Scargle periodogram (a least-squares fit of each sinusoid, no interpolation) off one.
    Both give white noise an exponential power distribution, which the noise floor relies on."""
    from scipy import signal

    n = len(x)
    spacing = (x[-1] - x[0]) / (n - 1)
    if uniform:
        frequencies, power = signal.periodogram(y, fs=1.0 / spacing, window="hann",
                                                detrend="linear", scaling="spectrum")
        return frequencies[1:], power[1:]
    t = x - x[0]
    detrended = y - np.polyval(np.polyfit(t, y, 1), t)
    tapered = detrended * (0.5 - 0.5 * np.cos(2 * np.pi * t / t[-1]))  # Hann at the samples
    frequencies = np.fft.rfftfreq(n, spacing)[1:]
    # SciPy evaluates an [n, frequencies] matrix: in blocks of about 2**22 entries (32 MB).
    block = max(1, 2 ** 22 // n)
    power = np.concatenate([
        signal.lombscargle(t, tapered, 2 * np.pi * frequencies[i:i + block])
        for i in range(0, len(frequencies), block)])
    return frequencies, power


def _dmd_spectrum(y, spacing, rank):
    """Frequencies and amplitudes^2 of the DMD of a Hankel embedding of the samples."""
    from keras_koopman import _engine

    dmd = _engine("dmd")  # TensorFlow's engine, or the portable one on JAX and PyTorch
    delays = min(len(y) // 2, 256)
    hankel = np.lib.stride_tricks.sliding_window_view(y - y.mean(), delays)
    # Modes have unit norm, so |amplitude| is each mode's size; no modes needed.
    result = dmd(hankel, rank=rank, solver="svd", modes=False)
    result = result.numpy()  # wherever the backend keeps it
    eigenvalues = np.asarray(result.eigenvalues)
    amplitudes = np.abs(np.asarray(result.amplitudes))
    frequencies = np.abs(np.angle(eigenvalues)) / (2 * np.pi * spacing)
    keep = frequencies > 0
    order = np.argsort(frequencies[keep])
    return frequencies[keep][order], (amplitudes[keep][order]) ** 2


def suggest_depth(x, y, method="auto", significance=1e-3, separation=2.0, min_share=0.01,
                  dynamic_range=1e-3, rank=None):
    """Suggests a number of layers from the multi-scale content of ``y(x)``.

    1. The spectrum, on the frequency grid of ``n`` samples at the mean spacing.
       ``"fourier"`` (and ``"auto"``): of the linearly detrended, Hann-tapered samples
       (detrending and the taper keep a non-periodic target from leaking into every
       frequency), :func:`scipy.signal.periodogram` on a uniform grid and
       :func:`scipy.signal.lombscargle` off one (a least-squares sinusoid per frequency, so
       random gaps do not smear fine scales as interpolating onto a grid would; it costs
       ``O(n^2)``: 16 s at 16,384 points on this 2-core machine beside other jobs, milliseconds
       for uniform samples).
       ``"dmd"``: the DMD of a Hankel embedding of up to 256 delays (samples off a grid are
       interpolated linearly onto one) gives frequencies ``|arg lambda| / (2 pi dx)`` with
       power ``|amplitude|^2``; it needs no periodicity, but it resolves only scales of fewer
       than about 256 samples a cycle, and in ``bench/depth.py`` it found one scale too few on
       non-uniform samples, so ``"auto"`` uses the periodogram.
    2. The support: frequencies whose power exceeds the noise floor. For the periodogram the
       floor is what white noise would reach with probability ``significance`` over all
       frequencies: the median power (a robust noise level, as most frequencies hold only
       noise) times ``ln(m / significance) / ln 2``; for DMD, ``min_share`` of the largest power.
       Power below ``dynamic_range`` times the largest never counts (the window's leakage
       around a strong tone, in clean data).
    3. The scales: the support, sorted, is cut wherever one frequency is more than
       ``separation`` times the previous; groups with less than ``min_share`` of the significant
       power are dropped. One layer per scale.

    Args:
      x: ``[n]`` (or ``[n, 1]``) sample positions.
      y: ``[n]`` (or ``[n, 1]``) target values, e.g. noisy.
      method: ``"auto"``, ``"fourier"`` or ``"dmd"``.
      significance: false-alarm probability of the periodogram's noise floor.
      separation: frequency ratio that separates two scales.
      min_share: smallest share of the significant power that makes a scale.
      dynamic_range: power below this fraction of the largest is never signal.
      rank: DMD rank rule (``None``: Gavish-Donoho), for ``method="dmd"``.

    Returns:
      :class:`DepthSuggestion`.

    Example:

    >>> import numpy as np
    >>> from keras_koopman.depth import suggest_depth
    >>> x = np.linspace(0, 1, 512, endpoint=False)
    >>> y = np.sin(2 * np.pi * 2 * x) + 0.5 * np.sin(2 * np.pi * 12 * x) + 0.3 * np.sin(2 * np.pi * 70 * x)
    >>> y = y + np.random.default_rng(0).normal(0, 0.3, x.shape)
    >>> result = suggest_depth(x, y)
    >>> result.n_layers, [round(s.frequency) for s in result.scales]
    (3, [2, 12, 70])
    """
    if method not in ("auto", "fourier", "dmd"):
        raise ValueError(f"method must be 'auto', 'fourier' or 'dmd'; got {method!r}")
    significance = check_number(significance, "significance", 0.0, 1.0)
    if significance == 0:
        raise ValueError("significance must be in (0, 1]; got 0")
    separation = check_number(separation, "separation", 1.0)
    min_share = check_number(min_share, "min_share", 0.0, 1.0)
    dynamic_range = check_number(dynamic_range, "dynamic_range", 0.0, 1.0)
    x, y, uniform = _as_series(x, y)
    if method == "auto":
        method = "fourier"
    if method == "fourier":
        frequencies, power = _fourier_spectrum(x, y, uniform)
        floor = float(np.median(power)) / math.log(2.0)  # mean of an exponential from its median
        threshold = floor * math.log(len(power) / significance)
    else:
        spacing = (x[-1] - x[0]) / (len(x) - 1)
        if not uniform:  # the Hankel embedding needs a uniform grid
            y = np.interp(x[0] + spacing * np.arange(len(x)), x, y)
        frequencies, power = _dmd_spectrum(y, spacing, rank)
        threshold = min_share * float(power.max()) if len(power) else 0.0
    if len(power):
        threshold = max(threshold, dynamic_range * float(power.max()))
    significant = power > threshold
    scales = []
    if np.any(significant):
        chosen_f, chosen_p = frequencies[significant], power[significant]
        cuts = np.nonzero(chosen_f[1:] > separation * chosen_f[:-1])[0] + 1
        total = float(chosen_p.sum())
        for f_group, p_group in zip(np.split(chosen_f, cuts), np.split(chosen_p, cuts)):
            share = float(p_group.sum()) / total
            if share < min_share:
                continue
            scales.append(Scale(frequency=float(np.average(f_group, weights=p_group)),
                                low=float(f_group[0]), high=float(f_group[-1]), share=share))
    return DepthSuggestion(
        n_layers=max(1, len(scales)), scales=scales, frequencies=frequencies, power=power,
        threshold=float(threshold), method=method,
    )


def __getattr__(name):
    # kk.depth.layer_activity moved to kk.callbacks.layer_activity (it reads a monitor); the old
    # name stays importable.
    if name == "layer_activity":
        from keras_koopman.callbacks.activity import layer_activity

        return layer_activity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
