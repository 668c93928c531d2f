"""Figures: Dice against labelled-data fraction, and a coronal PET MIP with lesion contours.

matplotlib is imported inside the functions; figures are drawn on the Agg canvas without pyplot,
so no global backend is changed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

METHOD_ORDER = ("pretrained", "scratch", "nnunet_default", "probe", "late_fusion_probe", "scratch_lr1e3")
_METHOD_STYLE = {"pretrained": ("tab:red", "o"), "scratch": ("tab:blue", "s"), "probe": ("tab:green", "^"),
                 "nnunet_default": ("tab:purple", "v"), "late_fusion_probe": ("tab:olive", "P"),
                 "scratch_lr1e3": ("tab:cyan", "x")}


def _new_figure(figsize: tuple[float, float], dpi: int):
    """A matplotlib Figure drawn by the Agg canvas, without pyplot (no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def dice_curves(table_rows: Iterable[Mapping]) -> dict[str, dict[str, np.ndarray]]:
    """Group rows into one curve per method: ``{method: {"fraction", "dice", "dice_std"}}``.

    Rows need ``fraction``, ``method`` and ``dice`` (``dice_std`` optional). Several rows of one
    (method, fraction), e.g. folds or seeds, are averaged and their standard deviation (ddof=0) is the
    error bar; a single row keeps its own ``dice_std`` (NaN if absent). Curves are sorted by fraction;
    methods come in :data:`METHOD_ORDER`, then the others alphabetically.

    Raises:
        ValueError: a row lacks a required key, or there is no row.
    """
    groups: dict[str, dict[float, list[tuple[float, float]]]] = {}
    for i, row in enumerate(table_rows):
        missing = [k for k in ("fraction", "method", "dice") if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: {dict(row)!r}")
        std = row.get("dice_std", math.nan)
        std = math.nan if std is None or std == "" else float(std)
        groups.setdefault(str(row["method"]), {}).setdefault(float(row["fraction"]), []).append(
            (float(row["dice"]), std)
        )
    if not groups:
        raise ValueError("no rows to plot")
    known = [m for m in METHOD_ORDER if m in groups]
    others = sorted(m for m in groups if m not in METHOD_ORDER)
    curves = {}
    for m in known + others:
        fr = sorted(groups[m])
        dice, std = [], []
        for f in fr:
            vals = groups[m][f]
            d = np.array([v for v, _ in vals])
            dice.append(float(d.mean()))
            std.append(vals[0][1] if len(vals) == 1 else float(d.std()))
        curves[m] = {"fraction": np.array(fr), "dice": np.array(dice), "dice_std": np.array(std)}
    return curves


def plot_dice_vs_fraction(table_rows: Iterable[Mapping], out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Line plot of Dice against the fraction of labelled training data, one curve per method.

    ``table_rows``: dicts with ``fraction`` (0-1), ``method`` (``pretrained``, ``scratch``, optional
    ``probe``, others allowed) and ``dice`` [, ``dice_std`` drawn as error bars]. See
    :func:`dice_curves` for the grouping. ``title``: e.g. what the error bars are. Returns the written path.
    """
    curves = dice_curves(table_rows)
    fig, ax = _new_figure((5.5, 4.0), 120)
    all_fr = sorted({float(f) for c in curves.values() for f in c["fraction"]})
    for m, c in curves.items():
        color, marker = _METHOD_STYLE.get(m, (None, "D"))
        yerr = c["dice_std"] if np.any(np.isfinite(c["dice_std"])) else None
        if yerr is not None:
            yerr = np.nan_to_num(yerr, nan=0.0)
        ax.errorbar(c["fraction"] * 100, c["dice"], yerr=yerr, label=m, color=color, marker=marker,
                    capsize=3, linewidth=1.5)
    if all_fr and min(all_fr) > 0 and max(all_fr) / min(all_fr) >= 5:
        ax.set_xscale("log")
    ax.set_xticks([f * 100 for f in all_fr])
    ax.set_xticklabels([f"{f * 100:g}%" for f in all_fr])
    ax.minorticks_off()
    ax.set_xlabel("labelled training data (fraction of cases)")
    ax.set_ylabel("Dice")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def coronal_mip(volume_zyx: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Coronal maximum-intensity projection (max over y) and its extent in mm.

    Returns ``(mip, extent)``: ``mip`` is (z, x); ``extent`` = (0, nx * dx, 0, nz * dz) in mm for
    ``imshow(origin="lower", extent=extent)``, so that the display aspect follows the spacing and
    increasing z (superior in nnU-Net/NIfTI arrays from RAS/LPS scans) points up.
    """
    v = np.asarray(volume_zyx)
    if v.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {v.shape}")
    dz, _, dx = (float(s) for s in spacing_mm)
    return v.max(axis=1), (0.0, v.shape[2] * dx, 0.0, v.shape[0] * dz)


def plot_pet_mip_with_contours(
    pet_zyx: np.ndarray,
    gt_zyx: np.ndarray | None,
    pred_zyx: np.ndarray | None,
    spacing_mm: Sequence[float],
    out_png: str | os.PathLike,
    title: str | None = None,
    vmax_suv: float | None = None,
) -> Path:
    """Coronal PET MIP (inverted grey: 0 white, hot dark) with ground-truth and prediction contours.

    Contours outline the coronal projections (any over y) of the masks (values > 0): ground truth in
    green, prediction in red (dashed). Either mask may be None. The aspect follows ``spacing_mm``
    (z, y, x). ``vmax_suv`` defaults to the 99.5th percentile of the MIP (at least 1). Returns the path.
    """
    pet = np.asarray(pet_zyx, dtype=np.float32)
    mip, extent = coronal_mip(pet, spacing_mm)
    for name, m in (("gt_zyx", gt_zyx), ("pred_zyx", pred_zyx)):
        if m is not None and np.shape(m) != pet.shape:
            raise ValueError(f"{name} shape {np.shape(m)} differs from the PET shape {pet.shape}")
    if vmax_suv is None:
        finite = mip[np.isfinite(mip)]
        vmax_suv = max(float(np.percentile(finite, 99.5)) if finite.size else 1.0, 1.0)
    nz, nx = mip.shape
    height_mm, width_mm = extent[3], extent[1]
    fig_h = 7.0
    fig_w = min(max(fig_h * width_mm / max(height_mm, 1e-6) + 0.6, 2.5), 14.0)
    fig, ax = _new_figure((fig_w, fig_h), 100)
    ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=vmax_suv, origin="lower", extent=extent,
              aspect="equal", interpolation="nearest")
    xc = (np.arange(nx) + 0.5) * (extent[1] / nx)
    zc = (np.arange(nz) + 0.5) * (extent[3] / nz)
    handles = []
    from matplotlib.lines import Line2D

    for m, color, style, label in ((gt_zyx, "limegreen", "solid", "ground truth"),
                                   (pred_zyx, "red", "dashed", "prediction")):
        if m is None:
            continue
        proj = np.any(np.asarray(m) > 0, axis=1).astype(np.float32)
        if proj.any():
            ax.contour(xc, zc, proj, levels=[0.5], colors=[color], linewidths=1.2, linestyles=style)
        handles.append(Line2D([], [], color=color, linestyle=style, label=label))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("z (mm)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
