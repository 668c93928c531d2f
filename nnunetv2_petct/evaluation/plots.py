"""Figures: Dice against labelled-data fraction, and coronal / sagittal PET MIPs with lesion contours.

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


def _save_figure(fig, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically and verified (:func:`nnunetv2_petct.io.atomic_write`)."""
    from nnunetv2_petct.io import atomic_write

    out = Path(out_png)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


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
    return _save_figure(fig, out_png)


MIP_VIEWS = ("coronal", "sagittal")
# (projection axis of the (z, y, x) array, horizontal array axis, horizontal axis label, (left, right) side
# names for an LPS-ordered array: x grows to the patient's left, y to posterior)
_VIEW_AXES = {"coronal": (1, 2, "x (mm)", ("R", "L")), "sagittal": (2, 1, "y (mm)", ("A", "P"))}


def mip(volume_zyx: np.ndarray, spacing_mm: Sequence[float], view: str = "coronal",
        origin_mm_zyx: Sequence[float] | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Maximum-intensity projection of a (z, y, x) volume and its extent in mm.

    ``view`` ``"coronal"`` projects over y and gives a (z, x) image; ``"sagittal"`` projects over x and
    gives (z, y). ``extent`` = (0, width_mm, 0, nz * dz) for ``imshow(origin="lower", extent=extent)``, so
    the display aspect follows the spacing and increasing z (superior in LPS/RAS-ordered arrays) points up.
    With ``origin_mm_zyx`` (the physical position of voxel (0, 0, 0), axis-aligned images) the extent is in
    those coordinates instead: voxel edges at origin - spacing / 2.

    Raises:
        ValueError: not 3D, or an unknown view.
    """
    v = np.asarray(volume_zyx)
    if v.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {v.shape}")
    if view not in _VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; use one of {MIP_VIEWS}")
    axis, horizontal, _, _ = _VIEW_AXES[view]
    sp = [float(s) for s in spacing_mm]
    h0, z0 = 0.0, 0.0
    if origin_mm_zyx is not None:
        h0 = float(origin_mm_zyx[horizontal]) - sp[horizontal] / 2
        z0 = float(origin_mm_zyx[0]) - sp[0] / 2
    return v.max(axis=axis), (h0, h0 + v.shape[horizontal] * sp[horizontal], z0, z0 + v.shape[0] * sp[0])


def coronal_mip(volume_zyx: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Coronal maximum-intensity projection (max over y) and its extent in mm.

    Returns ``(mip, extent)``: ``mip`` is (z, x); ``extent`` = (0, nx * dx, 0, nz * dz) in mm for
    ``imshow(origin="lower", extent=extent)``, so that the display aspect follows the spacing and
    increasing z (superior in nnU-Net/NIfTI arrays from RAS/LPS scans) points up.
    """
    return mip(volume_zyx, spacing_mm, "coronal")


def _draw_mip(pet_zyx, masks, spacing_mm, view: str, title: str | None, vmax_suv: float | None,
              labels: Sequence[tuple[Sequence[float], str]] = (), side_names: bool = False, fig_h: float = 7.0,
              origin_mm_zyx: Sequence[float] | None = None, legend: bool = True,
              z_bands_mm: Sequence[tuple[float, float, str]] = ()):
    """A Figure with one MIP panel: inverted grey PET (0 white, hot dark), mask projections as contours.

    ``masks``: (array or None, colour, linestyle, legend label) tuples; ``labels``: ((z, y, x) voxel
    index, text) drawn at the projected position.
    """
    pet = np.asarray(pet_zyx, dtype=np.float32)
    image, extent = mip(pet, spacing_mm, view, origin_mm_zyx)
    for i, (m, *_rest) in enumerate(masks):
        if m is not None and np.shape(m) != pet.shape:
            raise ValueError(f"mask {i} shape {np.shape(m)} differs from the PET shape {pet.shape}")
    if vmax_suv is None:
        finite = image[np.isfinite(image)]
        vmax_suv = max(float(np.percentile(finite, 99.5)) if finite.size else 1.0, 1.0)
    axis, horizontal, xlabel, names = _VIEW_AXES[view]
    nz, nh = image.shape
    height_mm, width_mm = extent[3] - extent[2], extent[1] - extent[0]
    fig_w = min(max(fig_h * width_mm / max(height_mm, 1e-6) + 0.6, 2.5), 14.0)
    fig, ax = _new_figure((fig_w, fig_h), 100)
    ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=vmax_suv, origin="lower", extent=extent,
              aspect="equal", interpolation="nearest")
    hc = extent[0] + (np.arange(nh) + 0.5) * (width_mm / nh)
    zc = extent[2] + (np.arange(nz) + 0.5) * (height_mm / nz)
    handles = []
    from matplotlib.lines import Line2D

    for m, color, style, label in masks:
        if m is None:
            continue
        proj = np.any(np.asarray(m) > 0, axis=axis).astype(np.float32)
        if proj.any():
            ax.contour(hc, zc, proj, levels=[0.5], colors=[color], linewidths=1.2, linestyles=style)
        handles.append(Line2D([], [], color=color, linestyle=style, label=label))
    sp = [float(s) for s in spacing_mm]
    for index_zyx, text in labels:
        h_mm = extent[0] + (float(index_zyx[horizontal]) + 0.5) * sp[horizontal]
        z_mm = extent[2] + (float(index_zyx[0]) + 0.5) * sp[0]
        # offset towards the middle of the picture, so labels near an edge stay inside the axes
        right = h_mm < (extent[0] + extent[1]) / 2
        up = z_mm < (extent[2] + extent[3]) / 2
        t = ax.annotate(text, (h_mm, z_mm), xytext=(7 if right else -7, 7 if up else -7), textcoords="offset points",
                        ha="left" if right else "right", va="bottom" if up else "top", color="darkred", fontsize=10,
                        fontweight="bold", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "red", "alpha": 0.85})
        t.set_clip_on(True)
    for lo, hi, text in z_bands_mm:
        ax.axhspan(lo, hi, facecolor="tab:orange", alpha=0.18, hatch="//", edgecolor="tab:orange", linewidth=0)
        ax.text(0.5, (max(min(lo, hi), extent[2]) + min(max(lo, hi), extent[3])) / 2, text, color="tab:orange",
                fontsize=10, fontweight="bold", ha="center", va="center", transform=ax.get_yaxis_transform())
    if handles and legend:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    if side_names:
        for x, name, ha in ((0.01, names[0], "left"), (0.99, names[1], "right")):
            ax.text(x, 0.01, name, transform=ax.transAxes, ha=ha, va="bottom", fontsize=10, color="tab:blue",
                    fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("z (mm)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


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
    fig = _draw_mip(pet_zyx, [(gt_zyx, "limegreen", "solid", "ground truth"),
                              (pred_zyx, "red", "dashed", "prediction")], spacing_mm, "coronal", title, vmax_suv)
    return _save_figure(fig, out_png)


def pet_mip_png(
    pet_zyx: np.ndarray,
    mask_zyx: np.ndarray | None,
    spacing_mm: Sequence[float],
    view: str = "coronal",
    title: str | None = None,
    vmax_suv: float | None = None,
    labels: Sequence[tuple[Sequence[float], str]] = (),
    height_in: float = 7.0,
    origin_mm_zyx: Sequence[float] | None = None,
    z_bands_mm: Sequence[tuple[float, float, str]] = (),
) -> bytes:
    """A PET MIP with the outline of a lesion mask, as PNG bytes (for reports that embed their images).

    The array must be ordered LPS (x to the patient's left, y posterior, z superior; e.g. after
    ``SimpleITK.DICOMOrient(image, "LPS")``) for the side letters to be right: the coronal view has the
    patient's right (R) on the left of the picture (radiological convention), the sagittal view anterior
    (A) on the left. The mask outline (projection of ``mask > 0``) is red; ``labels`` are
    ((z, y, x) voxel index, text) pairs written next to their projected positions (e.g. lesion numbers).
    Grey scale: SUV 0 white to ``vmax_suv`` black (default: 99.5th percentile of the MIP, at least 1).
    ``origin_mm_zyx``: axes in patient coordinates (see :func:`mip`), else in mm from the first voxel edge.
    ``z_bands_mm``: (z low, z high, text) ranges shaded across the picture (e.g. where there was no CT), in the
    coordinates of the vertical axis.

    Raises:
        ValueError: unknown view, or a mask of another shape than the PET.
    """
    import io

    fig = _draw_mip(pet_zyx, [(mask_zyx, "red", "solid", "lesions")] if mask_zyx is not None else [],
                    spacing_mm, view, title, vmax_suv, labels=labels, side_names=True, fig_h=height_in,
                    origin_mm_zyx=origin_mm_zyx, legend=False, z_bands_mm=z_bands_mm)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
