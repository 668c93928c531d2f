"""PNG previews of masked-autoencoder reconstructions (pure: numpy + matplotlib's Agg canvas).

One row per channel: original | masked input | reconstruction | absolute error, a coronal slice (a slice
through the middle of axis 1, i.e. y in (z, y, x) order) of one patch. For a PET channel an extra row
shows coronal maximum-intensity projections (MIP over axis 1) of the original, the masked input and the
reconstruction. Each row shares one grey-scale window (1st-99th percentile of the original; MIPs: 0 to
the 99.5th percentile), so reconstruction and original are directly comparable. Axis 0 (z) runs
bottom to top (``origin="lower"``): with the usual superior-increasing z the head is up.

No pyplot and no global backend change: figures are drawn on ``matplotlib.backends.backend_agg``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.io import atomic_write

logger = logging.getLogger(__name__)


def _window(a: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [lo_pct, hi_pct])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _is_pet(name: str) -> bool:
    from nnunetv2_petct.conversion.channels import channel_kind

    return channel_kind(name) == "PET"


def render_reconstruction_preview(original: np.ndarray, masked: np.ndarray, reconstruction: np.ndarray,
                                  path: str | os.PathLike, channel_names: Sequence[str] = ("CT", "PET"),
                                  spacing_mm: Sequence[float] | None = None, title: str = "",
                                  dpi: int = 80) -> Path:
    """Write the preview PNG of one patch to ``path`` (atomically) and return the path.

    ``original``, ``masked``, ``reconstruction``: arrays ``(C, Z, Y, X)`` (or ``(Z, Y, X)`` for one channel)
    in the network's normalized intensities; ``channel_names`` has C names (a name that
    ``nnunetv2_petct.conversion.channels.channel_kind`` calls PET also gets the MIP row); ``spacing_mm`` (z, y, x)
    sets the display aspect (isotropic when None). 2D patches ``(C, Y, X)`` are not supported.
    Raises ValueError for mismatched shapes or names.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arrays = [np.asarray(a, dtype=np.float32) for a in (original, masked, reconstruction)]
    arrays = [a[None] if a.ndim == 3 else a for a in arrays]
    if any(a.ndim != 4 for a in arrays) or len({a.shape for a in arrays}) != 1:
        raise ValueError(f"expected three arrays of one shape (C, Z, Y, X), got {[a.shape for a in arrays]}")
    orig, mskd, rec = arrays
    n_ch = orig.shape[0]
    names = list(channel_names)
    if len(names) != n_ch:
        raise ValueError(f"{n_ch} channel(s) but {len(names)} channel name(s): {names}")
    aspect = 1.0
    if spacing_mm is not None:
        sz, _, sx = (float(s) for s in spacing_mm)
        aspect = sz / sx if sx > 0 else 1.0
    y_mid = orig.shape[2] // 2
    pet_channels = [c for c in range(n_ch) if _is_pet(names[c])]
    n_rows = n_ch + len(pet_channels)
    fig = Figure(figsize=(4 * 3.2, n_rows * 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 4, squeeze=False)
    row = 0
    for c in range(n_ch):
        sl = [a[c, :, y_mid, :] for a in (orig, mskd, rec)]
        vmin, vmax = _window(sl[0], 1, 99)
        err = np.abs(sl[2] - sl[0])
        panels = (*sl, err)
        labels = ("original", "masked input", "reconstruction", "|error|")
        for j, (img, lab) in enumerate(zip(panels, labels)):
            ax = axes[row, j]
            if j < 3:
                ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest",
                          origin="lower")
            else:
                ax.imshow(img, cmap="magma", vmin=0, vmax=max(vmax - vmin, 1e-6), aspect=aspect,
                          interpolation="nearest", origin="lower")
            ax.set_title(f"{names[c]}: {lab}", fontsize=9)
            ax.axis("off")
        row += 1
    for c in pet_channels:
        mips = [a[c].max(axis=1) for a in (orig, mskd, rec)]
        vmax = _window(mips[0], 0, 99.5)[1]
        vmin = float(np.min(mips[0]))
        for j, (img, lab) in enumerate(zip(mips, ("MIP original", "MIP masked input", "MIP reconstruction"))):
            ax = axes[row, j]
            ax.imshow(img, cmap="gray_r", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest",
                      origin="lower")
            ax.set_title(f"{names[c]}: {lab}", fontsize=9)
            ax.axis("off")
        axes[row, 3].axis("off")
        row += 1
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
