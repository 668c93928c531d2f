"""Clinical lesion quantification from a PET image in SUV: SUVmax, SUVmean, SUVpeak, MTV, TLG.

Per lesion (18-connected component of a binarized mask, as in the autoPET metrics):

* ``suv_max``: highest SUV of the lesion voxels; ``peak_z/y/x`` is that voxel (ties: the first
  in C order of the image);
* ``suv_mean``: mean SUV of the lesion voxels;
* ``mtv_ml``: metabolic tumour volume = voxel count x voxel volume (ml);
* ``tlg``: total lesion glycolysis = ``suv_mean * mtv_ml`` (SUV x ml; equals the SUV sum x voxel ml);
* ``suv_peak``: mean SUV inside a 1 ml sphere (radius (3/(4 pi))^(1/3) cm ~= 6.20 mm) centred on the
  hottest lesion voxel. Choices, stated:

  - the sphere is **not** restricted to the lesion (PERCIST-style: surrounding voxels count);
  - it is centred on the hottest voxel (not searched for the position maximizing the mean);
  - a voxel belongs to the sphere when its centre lies within the radius, distances in mm from the
    spacing (no partial-volume weighting), so the discrete sphere's volume is only close to 1 ml
    (e.g. 123 voxels = 0.984 ml at 2 mm isotropic, 19 voxels = 1.216 ml at 4 mm isotropic);
  - voxels of the sphere outside the image are left out (mean over the voxels inside).

Per case (``totals``): ``lesion_count``, ``tmtv_ml`` (sum of MTV), ``total_tlg`` (sum of TLG),
``suv_max`` (highest lesion SUVmax) and ``suv_peak`` (highest lesion SUVpeak); the last two are
NaN when there is no lesion. Non-finite SUV values propagate into the results.

Arrays are (z, y, x); ``spacing_mm`` is (z, y, x). The PET must be on the grid of the masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .metrics import LabelledPair, _check_spacing, _Side, component_centroids, label_pair, voxel_volume_ml

logger = logging.getLogger(__name__)

PEAK_VOLUME_ML = 1.0


def sphere_radius_mm(volume_ml: float = PEAK_VOLUME_ML) -> float:
    """Radius (mm) of a sphere of ``volume_ml`` ml: (3 V / (4 pi))^(1/3); 1 ml -> 6.2035 mm."""
    if not volume_ml > 0:
        raise ValueError(f"volume_ml must be positive, got {volume_ml}")
    return float((3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0))


def peak_sphere_offsets(spacing_mm: Sequence[float], volume_ml: float = PEAK_VOLUME_ML) -> np.ndarray:
    """Integer (dz, dy, dx) offsets of the voxels whose centres lie within the peak sphere.

    Returns an (M, 3) int64 array including (0, 0, 0). Distances are in mm from ``spacing_mm``.
    """
    sp = np.asarray(_check_spacing(spacing_mm))
    r = sphere_radius_mm(volume_ml)
    half = np.floor(r / sp + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    off = np.stack([g.ravel() for g in grids], axis=1)
    d2 = ((off * sp) ** 2).sum(axis=1)
    return off[d2 <= r * r * (1 + 1e-9)].astype(np.int64)


def _quantify_side(side: _Side, suv: np.ndarray, spacing_mm: Sequence[float], offsets: np.ndarray) -> dict:
    vox_ml = voxel_volume_ml(spacing_mm)
    n = side.n
    lesions: list[dict] = []
    if n == 0:
        totals = {"lesion_count": 0, "tmtv_ml": 0.0, "total_tlg": 0.0, "suv_max": math.nan, "suv_peak": math.nan}
        return {"lesions": lesions, "totals": totals}
    z, y, x = side.coords
    vals = suv[z, y, x].astype(np.float64)
    sizes = side.sizes
    sums = np.bincount(side.ids, weights=vals, minlength=n + 1)
    means = sums / np.maximum(sizes, 1)
    flat = np.ravel_multi_index((z, y, x), suv.shape)
    # sort by lesion id, then SUV ascending, then C-order index descending: the last voxel of each
    # lesion's run is its hottest voxel, the first in C order among equal maxima
    order = np.lexsort((-flat, vals, side.ids))
    last = np.cumsum(sizes[1:]) - 1
    hot = order[last]
    centres = np.stack([z[hot], y[hot], x[hot]], axis=1)  # (n, 3)
    pts = centres[:, None, :] + offsets[None, :, :]  # (n, M, 3)
    shape = np.asarray(suv.shape)
    inside = np.all((pts >= 0) & (pts < shape), axis=2)
    ptc = np.clip(pts, 0, shape - 1)
    sphere_vals = suv[ptc[..., 0], ptc[..., 1], ptc[..., 2]].astype(np.float64)
    peaks = np.where(inside, sphere_vals, 0.0).sum(axis=1) / inside.sum(axis=1)
    cent = component_centroids(side)
    for i in range(1, n + 1):
        k = i - 1
        mtv = float(sizes[i] * vox_ml)
        lesions.append(
            {
                "lesion_id": i,
                "n_voxels": int(sizes[i]),
                "mtv_ml": mtv,
                "suv_max": float(vals[hot[k]]),
                "suv_mean": float(means[i]),
                "suv_peak": float(peaks[k]),
                "tlg": float(means[i] * mtv),
                "peak_z": int(centres[k, 0]),
                "peak_y": int(centres[k, 1]),
                "peak_x": int(centres[k, 2]),
                "centroid_z": float(cent[i, 0]),
                "centroid_y": float(cent[i, 1]),
                "centroid_x": float(cent[i, 2]),
            }
        )
    totals = {
        "lesion_count": n,
        "tmtv_ml": float(sizes.sum() * vox_ml),
        "total_tlg": float(sum(d["tlg"] for d in lesions)),
        "suv_max": float(max(d["suv_max"] for d in lesions)),
        "suv_peak": float(max(d["suv_peak"] for d in lesions)),
    }
    return {"lesions": lesions, "totals": totals}


def _check_suv(suv: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    suv = np.asarray(suv)
    if tuple(suv.shape) != tuple(shape):
        raise ValueError(f"PET (SUV) shape {suv.shape} differs from the mask shape {tuple(shape)}")
    return suv


def quantification_from_pair(
    pair: LabelledPair, suv: np.ndarray, spacing_mm: Sequence[float], peak_volume_ml: float = PEAK_VOLUME_ML
) -> dict:
    """``{"gt": ..., "pred": ...}`` quantification (see :func:`case_quantification`) of a labelled pair."""
    suv = _check_suv(suv, pair.shape)
    offsets = peak_sphere_offsets(spacing_mm, peak_volume_ml)
    return {
        "gt": _quantify_side(pair.gt, suv, spacing_mm, offsets),
        "pred": _quantify_side(pair.pred, suv, spacing_mm, offsets),
    }


def quantify_lesions(
    mask: np.ndarray, suv: np.ndarray, spacing_mm: Sequence[float], peak_volume_ml: float = PEAK_VOLUME_ML
) -> dict:
    """Per-lesion and per-case quantification of one mask (see module docstring).

    Args:
        mask: lesion mask (z, y, x); values > 0 are lesion; lesions are its 18-connected components.
        suv: PET image in SUV on the same grid.
        spacing_mm: (z, y, x) spacing in mm.
        peak_volume_ml: volume of the SUVpeak sphere (1 ml by default).

    Returns:
        ``{"lesions": [...], "totals": {...}}``; each lesion dict has ``lesion_id``, ``n_voxels``,
        ``mtv_ml``, ``suv_max``, ``suv_mean``, ``suv_peak``, ``tlg``, ``peak_z/y/x`` (hottest voxel) and
        ``centroid_z/y/x`` (mean voxel index, unweighted, as in the lesion detection); totals have
        ``lesion_count``, ``tmtv_ml``, ``total_tlg``, ``suv_max``, ``suv_peak`` (NaN / 0 when empty).
    """
    mask = np.asarray(mask)
    pair = label_pair(mask, np.zeros(mask.shape, dtype=bool))
    return quantification_from_pair(pair, suv, spacing_mm, peak_volume_ml)["gt"]


def case_quantification(
    gt: np.ndarray,
    pred: np.ndarray,
    suv: np.ndarray,
    spacing_mm: Sequence[float],
    peak_volume_ml: float = PEAK_VOLUME_ML,
) -> dict:
    """Quantification of ground truth and prediction side by side: ``{"gt": q, "pred": q}``.

    Each ``q`` is what :func:`quantify_lesions` returns for that mask; lesion ids are the same
    component ids as in :func:`nnunetv2_petct.evaluation.lesion_detection`.
    """
    return quantification_from_pair(label_pair(gt, pred), suv, spacing_mm, peak_volume_ml)
