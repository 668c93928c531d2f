"""autoPET III/IV case metrics (Dice, false-positive volume, false-negative volume), made fast.

Definitions (equivalent to the official autoPET III/IV evaluation script for binary masks):

* inputs are binarized: every label value > 0 is lesion (the official script multiplies the raw
  arrays, so a 0/255 mask breaks it; here 0/255 and 0/1 give identical results);
* Dice = 2 |G ∩ P| / (|G| + |P|); NaN when the ground truth G is empty (also when both are empty);
* false-positive volume (FPV): summed volume of the 18-connected components of the prediction P
  that share no voxel with G; 0 when P is empty;
* false-negative volume (FNV): summed volume of the 18-connected components of G that share no
  voxel with P; NaN when G is empty;
* volumes in ml from the voxel spacing (of the ground truth): ``prod(spacing_mm) / 1000`` per voxel.

The official code loops over components and builds one full-volume mask per component. Here each
mask is labelled once with ``cc3d`` (connectivity 18: voxels sharing a face or an edge are one
component, voxels touching only by a corner are two) on the bounding box of ``G ∪ P``, and the
overlap of every component with the other mask is read off a ``bincount``/``unique`` over the
foreground voxels only, so the cost is two labelling passes and does not grow with the lesion count.

Arrays are numpy in (z, y, x) order; ``spacing_mm`` is in the same (z, y, x) order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

logger = logging.getLogger(__name__)

CONNECTIVITY = 18


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in ml (= cm^3) from a (z, y, x) spacing in mm."""
    sp = _check_spacing(spacing_mm)
    return float(sp[0] * sp[1] * sp[2] / 1000.0)


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing_mm)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_mm must be three positive finite numbers (z, y, x), got {spacing_mm!r}")
    return sp  # type: ignore[return-value]


def binarize(mask: np.ndarray) -> np.ndarray:
    """Boolean lesion mask: ``mask > 0`` (any positive label value is lesion, e.g. 1 or 255)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask > 0


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """18-connected components of ``mask > 0``: (label array 0..N of the mask's shape, N)."""
    b = binarize(mask)
    if b.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) mask, got shape {b.shape}")
    labels, n = cc3d.connected_components(b, connectivity=CONNECTIVITY, return_N=True)
    return labels, int(n)


@dataclass(frozen=True)
class _Side:
    """Foreground voxels of one mask and their component ids (only the lesion voxels are stored)."""

    n: int  # number of components
    ids: np.ndarray  # (V,) component id (1..n) of each foreground voxel
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]  # (z, y, x) full-volume indices, C order
    sizes: np.ndarray  # (n + 1,) voxel count per component (index 0 unused, 0)

    @property
    def n_voxels(self) -> int:
        return int(self.ids.size)


@dataclass(frozen=True)
class LabelledPair:
    """Both masks of a case labelled once, plus the overlapping (gt, pred) component pairs.

    ``pair_gt[i]``, ``pair_pred[i]``, ``pair_voxels[i]``: a GT component id, a predicted component id
    and the number of voxels they share (only pairs that share at least one voxel are listed).
    """

    shape: tuple[int, int, int]
    gt: _Side
    pred: _Side
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_voxels: np.ndarray

    @property
    def n_intersection(self) -> int:
        return int(self.pair_voxels.sum())


def component_centroids(side: _Side) -> np.ndarray:
    """(n + 1, 3) mean voxel index (z, y, x) of each component of a labelled side (row 0 unused, NaN)."""
    out = np.full((side.n + 1, 3), np.nan)
    if side.n:
        sizes = np.maximum(side.sizes, 1)
        for a in range(3):
            out[:, a] = np.bincount(side.ids, weights=side.coords[a], minlength=side.n + 1) / sizes
    return out


def _empty_side() -> _Side:
    e = np.zeros(0, dtype=np.int64)
    return _Side(0, e, (e, e, e), np.zeros(1, dtype=np.int64))


def _bbox_of_union(gt_b: np.ndarray, pred_b: np.ndarray) -> tuple[slice, slice, slice] | None:
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(gt_b, axis=other) | np.any(pred_b, axis=other))
        if hit.size == 0:
            return None
        slices.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(slices)  # type: ignore[return-value]


def _side_from_labels(
    mask: np.ndarray, labels: np.ndarray, n: int, offset: Sequence[int]
) -> tuple[_Side, np.ndarray]:
    flat = np.flatnonzero(mask)  # on the contiguous bool crop: ~10x faster than on the uint32 labels
    ids = labels.ravel()[flat].astype(np.int64)
    zyx = np.unravel_index(flat, labels.shape)
    coords = tuple((c + o).astype(np.int64) for c, o in zip(zyx, offset))
    sizes = np.bincount(ids, minlength=n + 1).astype(np.int64)
    return _Side(n, ids, coords, sizes), flat  # type: ignore[arg-type]


def label_pair(gt: np.ndarray, pred: np.ndarray) -> LabelledPair:
    """Label ground truth and prediction (18-connectivity, labels > 0 are lesion) and find overlaps.

    Both arrays must be 3D (z, y, x) with the same shape. Empty masks are allowed.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 3 or pred.ndim != 3:
        raise ValueError(f"expected 3D (z, y, x) masks, got shapes {gt.shape} and {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction shapes differ: {gt.shape} vs {pred.shape}")
    shape = tuple(int(s) for s in gt.shape)
    gt_b = binarize(gt)
    pred_b = binarize(pred)
    box = _bbox_of_union(gt_b, pred_b)
    e = np.zeros(0, dtype=np.int64)
    if box is None:
        return LabelledPair(shape, _empty_side(), _empty_side(), e, e, e)  # type: ignore[arg-type]
    offset = [s.start for s in box]
    gt_c = np.ascontiguousarray(gt_b[box])
    pred_c = np.ascontiguousarray(pred_b[box])
    gt_lab, n_gt = cc3d.connected_components(gt_c, connectivity=CONNECTIVITY, return_N=True)
    pred_lab, n_pred = cc3d.connected_components(pred_c, connectivity=CONNECTIVITY, return_N=True)
    gt_side, gt_flat = _side_from_labels(gt_c, gt_lab, int(n_gt), offset)
    pred_side, _ = _side_from_labels(pred_c, pred_lab, int(n_pred), offset)
    # predicted component id under every GT voxel (0 = background): the overlapping pairs
    pred_under_gt = pred_lab.ravel()[gt_flat].astype(np.int64)
    hit = pred_under_gt > 0
    if np.any(hit):
        code = gt_side.ids[hit] * (int(n_pred) + 1) + pred_under_gt[hit]
        codes, counts = np.unique(code, return_counts=True)
        pair_gt, pair_pred = np.divmod(codes, int(n_pred) + 1)
        pair_voxels = counts.astype(np.int64)
    else:
        pair_gt = pair_pred = pair_voxels = e
    return LabelledPair(shape, gt_side, pred_side, pair_gt, pair_pred, pair_voxels)  # type: ignore[arg-type]


def metrics_from_pair(pair: LabelledPair, spacing_mm: Sequence[float]) -> dict[str, float]:
    """autoPET Dice / FPV / FNV (see module docstring) from an already labelled pair."""
    vox_ml = voxel_volume_ml(spacing_mm)
    n_g, n_p = pair.gt.n_voxels, pair.pred.n_voxels
    gt_touched = np.zeros(pair.gt.n + 1, dtype=bool)
    gt_touched[pair.pair_gt] = True
    pred_touched = np.zeros(pair.pred.n + 1, dtype=bool)
    pred_touched[pair.pair_pred] = True
    fp_voxels = int(pair.pred.sizes[~pred_touched].sum())  # index 0 has size 0
    fn_voxels = int(pair.gt.sizes[~gt_touched].sum())
    if n_g == 0:
        dice = math.nan
        fnv = math.nan
    else:
        dice = 2.0 * pair.n_intersection / (n_g + n_p)
        fnv = fn_voxels * vox_ml
    return {"dice": float(dice), "fpv_ml": float(fp_voxels * vox_ml), "fnv_ml": float(fnv)}


def autopet_case_metrics(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """autoPET III/IV metrics of one case: ``{"dice", "fpv_ml", "fnv_ml"}``.

    Args:
        gt: ground-truth mask (z, y, x); any value > 0 is lesion.
        pred: predicted mask, same shape; any value > 0 is lesion.
        spacing_mm: voxel spacing (z, y, x) in mm (that of the ground truth).

    Returns:
        ``dice``: NaN when ``gt`` is empty (whatever ``pred`` is), 0 when ``pred`` is empty and
        ``gt`` is not; ``fpv_ml``: volume (ml) of predicted 18-connected components sharing no voxel
        with ``gt`` (0 when ``pred`` is empty; all of ``pred`` when ``gt`` is empty);
        ``fnv_ml``: volume (ml) of ground-truth components sharing no voxel with ``pred``
        (NaN when ``gt`` is empty).
    """
    return metrics_from_pair(label_pair(gt, pred), spacing_mm)
