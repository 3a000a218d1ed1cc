"""Pictures of Koopman spectra (needs matplotlib: ``pip install keras-koopman[plot]``)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_spectra"]


def plot_spectra(spectra, path, title=None):
    """Draws each spectrum on the complex plane with the unit circle, one panel per group.

    Args:
      spectra: ``{name: record_or_result}``; each value has ``eigenvalues``, ``amplitudes`` and
        ``residuals`` (a :class:`~keras_koopman.callbacks.SpectrumRecord` or a ``DMDResult``).
      path: where to save the PNG.
      title: optional figure title.

    Point size grows with |amplitude|, colour shows the residual (dark: small).

    Returns:
      ``path``.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: ``spectra`` is empty.
    """
    if not spectra:
        raise ValueError("spectra must name at least one group")
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "plot_spectra needs matplotlib: pip install 'keras-koopman[plot]'"
        ) from error
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    count = len(spectra)
    fig, axes = plt.subplots(1, count, figsize=(3.8 * count, 3.8), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
    for axis, (name, item) in zip(axes[0], spectra.items()):
        eigenvalues = np.asarray(item.eigenvalues)
        amplitudes = np.abs(np.asarray(item.amplitudes))
        residuals = np.asarray(item.residuals, dtype=float)
        axis.plot(circle.real, circle.imag, color="0.6", lw=1)
        axis.axhline(0, color="0.85", lw=0.8)
        axis.axvline(0, color="0.85", lw=0.8)
        if len(eigenvalues):
            size = 15 + 185 * amplitudes / max(amplitudes.max(), 1e-300)
            points = axis.scatter(eigenvalues.real, eigenvalues.imag, s=size, c=residuals,
                                  cmap="viridis", edgecolors="black", linewidths=0.4)
            fig.colorbar(points, ax=axis, label="residual", shrink=0.8)
        reach = max(1.1, float(np.abs(eigenvalues).max(initial=0)) * 1.1)
        axis.set_xlim(-reach, reach)
        axis.set_ylim(-reach, reach)
        axis.set_aspect("equal")
        axis.set_title(f"{name}: {len(eigenvalues)} eigenvalues")
        axis.set_xlabel("Re λ")
        axis.set_ylabel("Im λ")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
