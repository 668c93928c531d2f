"""Lesion-wise detection: true/false positive lesions, lesion sensitivity, false positives per case.

A lesion is an 18-connected component of a binarized mask (labels > 0), as in the autoPET metrics.
Overlap rules (``overlap`` argument):

* ``"any"`` (default): a ground-truth lesion is detected (true positive) when at least one
  predicted voxel lies in it; a predicted lesion is a true positive when it shares at least one
  voxel with the ground truth, otherwise a false positive. This is the rule behind the autoPET
  FPV/FNV (an FN lesion is exactly a component counted in FNV, an FP lesion one counted in FPV).
  Several predicted lesions may hit one ground-truth lesion and vice versa (no one-to-one match).
* ``"iou0.1"``, ``"iou0.5"`` (or any ``"iou<t>"`` with 0 < t <= 1): one-to-one matching of
  components. The IoU of a (ground-truth, predicted) component pair is |g ∩ p| / |g ∪ p| (component
  against component, not against the whole other mask). Pairs with IoU >= t are matched greedily
  by decreasing IoU (ties: lower ground-truth id, then lower predicted id), each lesion at most
  once. Matched ground-truth lesions are detected; matched predicted lesions are true positives;
  unmatched predicted lesions are false positives. For t > 0.5 the matching is unique anyway.

Lesion ids are the cc3d component numbers (1..N, in the scan order of the union bounding box).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .metrics import LabelledPair, component_centroids, label_pair, voxel_volume_ml

logger = logging.getLogger(__name__)

OVERLAP_RULES = ("any", "iou0.1", "iou0.5")


def parse_overlap_rule(overlap: str) -> float | None:
    """``"any"`` -> None; ``"iou<t>"`` -> t (0 < t <= 1). Raises ValueError otherwise."""
    rule = str(overlap).strip().lower()
    if rule == "any":
        return None
    if rule.startswith("iou"):
        try:
            t = float(rule[3:])
        except ValueError:
            t = math.nan
        if 0.0 < t <= 1.0:
            return t
    raise ValueError(f"unknown overlap rule {overlap!r}; use 'any', 'iou0.1' or 'iou0.5'")


def detection_from_pair(pair: LabelledPair, spacing_mm: Sequence[float], overlap: str = "any") -> dict:
    """Lesion-wise detection from an already labelled pair. See :func:`lesion_detection`."""
    threshold = parse_overlap_rule(overlap)
    vox_ml = voxel_volume_ml(spacing_mm)
    n_gt, n_pred = pair.gt.n, pair.pred.n
    pg, pp, inter = pair.pair_gt, pair.pair_pred, pair.pair_voxels
    union = pair.gt.sizes[pg] + pair.pred.sizes[pp] - inter
    iou = inter / np.maximum(union, 1)

    gt_best_iou = np.zeros(n_gt + 1)
    pred_best_iou = np.zeros(n_pred + 1)
    np.maximum.at(gt_best_iou, pg, iou)
    np.maximum.at(pred_best_iou, pp, iou)
    gt_partner = np.zeros(n_gt + 1, dtype=np.int64)
    pred_partner = np.zeros(n_pred + 1, dtype=np.int64)
    gt_matched = np.zeros(n_gt + 1, dtype=bool)
    pred_matched = np.zeros(n_pred + 1, dtype=bool)
    if threshold is None:
        gt_matched[pg] = True
        pred_matched[pp] = True
        # partner = the component of the other mask sharing most voxels (ties: lower id)
        for ids, others, partner in ((pg, pp, gt_partner), (pp, pg, pred_partner)):
            order = np.lexsort((others, -inter, ids))  # by id, then most voxels, then lower other id
            first = np.ones(order.size, dtype=bool)
            first[1:] = ids[order][1:] != ids[order][:-1]
            partner[ids[order][first]] = others[order][first]
    else:
        order = np.lexsort((pp, pg, -iou))
        for k in order:
            if iou[k] < threshold:
                break
            g, p = pg[k], pp[k]
            if not gt_matched[g] and not pred_matched[p]:
                gt_matched[g] = pred_matched[p] = True
                gt_partner[g], pred_partner[p] = p, g

    def lesions(side, matched, best_iou, partner) -> list[dict]:
        cent = component_centroids(side)
        return [
            {
                "lesion_id": i,
                "n_voxels": int(side.sizes[i]),
                "mtv_ml": float(side.sizes[i] * vox_ml),
                "centroid_z": float(cent[i, 0]),
                "centroid_y": float(cent[i, 1]),
                "centroid_x": float(cent[i, 2]),
                "matched": bool(matched[i]),
                "best_iou": float(best_iou[i]),
                "partner_id": int(partner[i]),
            }
            for i in range(1, side.n + 1)
        ]

    n_detected = int(gt_matched[1:].sum())
    n_tp_pred = int(pred_matched[1:].sum())
    return {
        "overlap": str(overlap).strip().lower(),
        "n_gt_lesions": n_gt,
        "n_gt_detected": n_detected,
        "n_fn_lesions": n_gt - n_detected,
        "n_pred_lesions": n_pred,
        "n_pred_tp": n_tp_pred,
        "n_fp_lesions": n_pred - n_tp_pred,
        "lesion_sensitivity": n_detected / n_gt if n_gt else math.nan,
        "lesion_precision": n_tp_pred / n_pred if n_pred else math.nan,
        "gt_lesions": lesions(pair.gt, gt_matched, gt_best_iou, gt_partner),
        "pred_lesions": lesions(pair.pred, pred_matched, pred_best_iou, pred_partner),
    }


def lesion_detection(
    gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], overlap: str = "any"
) -> dict:
    """Lesion-wise detection of one case at a stated overlap rule (see module docstring).

    Args:
        gt, pred: masks (z, y, x) of the same shape; values > 0 are lesion.
        spacing_mm: (z, y, x) spacing in mm (for lesion volumes).
        overlap: ``"any"``, ``"iou0.1"`` or ``"iou0.5"``.

    Returns:
        dict with ``overlap``, ``n_gt_lesions``, ``n_gt_detected`` (TP ground-truth lesions),
        ``n_fn_lesions``, ``n_pred_lesions``, ``n_pred_tp``, ``n_fp_lesions`` (false positives of
        this case), ``lesion_sensitivity`` (NaN when the ground truth has no lesion),
        ``lesion_precision`` (NaN when nothing is predicted), and ``gt_lesions`` / ``pred_lesions``:
        one dict per lesion with ``lesion_id``, ``n_voxels``, ``mtv_ml``, ``centroid_z/y/x``
        (voxel indices), ``matched`` (GT: detected; prediction: true positive), ``best_iou``
        (largest IoU with any component of the other mask, 0 if none) and ``partner_id``
        (matched component for IoU rules; for ``"any"`` the one sharing most voxels; 0 if none).
    """
    return detection_from_pair(label_pair(gt, pred), spacing_mm, overlap)
