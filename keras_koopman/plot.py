"""Pictures of Koopman spectra (needs matplotlib: ``pip install keras-koopman[plot]``)."""

from __future__ import annotations

import numpy as np

from keras_koopman.portable.device import to_host

__all__ = ["plot_spectra"]


def plot_spectra(spectra, path, title=None, tolerance=0.01):
    """Draws each spectrum on the complex plane with the unit circle, one panel per group.

    Args:
      spectra: ``{name: record_or_result}``; each value has ``eigenvalues``, ``amplitudes`` and
        ``residuals`` (a :class:`~keras_koopman.callbacks.SpectrumRecord` or a ``DMDResult``).
      path: where to save the PNG.
      title: optional figure title.
      tolerance: the radius of the "at 1" disc drawn around 1 (the monitor's ``tolerance``;
        see :mod:`keras_koopman.spectrum`).

    Point size grows with |amplitude| (a legend gives three sizes), colour shows the residual
    (dark: small). Eigenvalues of a converging run crowd around 1: when several lie within
    ``10 * tolerance`` of it, an inset magnifies that neighbourhood, with the "at 1" disc.

    Returns:
      ``path``.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: ``spectra`` is empty.

    Example:

    >>> import numpy as np, os, tempfile, keras_koopman as kk
    >>> from keras_koopman.plot import plot_spectra
    >>> x = np.stack([np.array([1.0, 1.0]) + 0.5 ** k * np.array([1.0, -1.0]) for k in range(8)])
    >>> path = plot_spectra({"toy": kk.dmd(x, rank=2)}, os.path.join(tempfile.mkdtemp(), "s.png"))
    >>> os.path.getsize(path) > 0
    True
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
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 4.2), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
    for axis, (name, item) in zip(axes[0], spectra.items()):
        eigenvalues = to_host(item.eigenvalues).reshape(-1)  # from any backend's device
        amplitudes = np.abs(to_host(item.amplitudes)).reshape(-1)
        residuals = to_host(item.residuals).astype(float).reshape(-1)
        reach = max(1.1, float(np.abs(eigenvalues).max(initial=0)) * 1.1)
        panels = [(axis, (-reach, reach), (-reach, reach))]
        near = np.abs(eigenvalues - 1.0) <= 10 * tolerance
        if np.count_nonzero(near) > 1:
            zoom = 1.3 * max(float(np.abs(eigenvalues[near] - 1.0).max()), 2 * tolerance)
            inset = axis.inset_axes([0.03, 0.03, 0.4, 0.4])
            panels.append((inset, (1 - zoom, 1 + zoom), (-zoom, zoom)))
        largest = max(amplitudes.max(initial=0.0), 1e-300)
        finite = residuals[np.isfinite(residuals)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        for panel, xlim, ylim in panels:
            panel.plot(circle.real, circle.imag, color="0.6", lw=1)
            panel.axhline(0, color="0.85", lw=0.8)
            panel.axvline(0, color="0.85", lw=0.8)
            panel.add_patch(plt.Circle((1.0, 0.0), tolerance, color="tab:green", alpha=0.15,
                                       lw=0))
            if len(eigenvalues):
                points = panel.scatter(eigenvalues.real, eigenvalues.imag,
                                       s=15 + 185 * amplitudes / largest, c=residuals,
                                       cmap="viridis", edgecolors="black", linewidths=0.4,
                                       vmin=0.0, vmax=top)
            panel.set_xlim(*xlim)
            panel.set_ylim(*ylim)
            panel.set_aspect("equal")
        if len(panels) > 1:
            panels[1][0].set_xticks([])
            panels[1][0].set_yticks([])
            panels[1][0].set_title(f"around 1 (disc: |λ-1| <= {tolerance:g})", fontsize=7)
            axis.indicate_inset_zoom(panels[1][0], edgecolor="0.4")
        if len(eigenvalues):
            fig.colorbar(points, ax=axis, label="residual", shrink=0.8)
            handles = [axis.scatter([], [], s=15 + 185 * f, color="0.7", edgecolors="black",
                                    linewidths=0.4) for f in (1.0, 0.5, 0.1)]
            axis.legend(handles, [f"{f * largest:.2g}" for f in (1.0, 0.5, 0.1)],
                        title="|amplitude|", fontsize=7, title_fontsize=7, ncol=3,
                        loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        axis.set_title(f"{name}: {len(eigenvalues)} eigenvalues")
        axis.set_xlabel("Re λ")
        axis.set_ylabel("Im λ")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
