"""Lesion-wise detection at the 'any', 'iou0.1' and 'iou0.5' overlap rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nnunetv2_petct.evaluation import autopet_case_metrics, lesion_detection, parse_overlap_rule

STRUCT18 = ndimage.generate_binary_structure(3, 2)


def small_case():
    """GT lesions A, B, C, D, E and predictions P1..P5 with hand-computed overlaps:

    A (27 vox) = P1 exactly          -> IoU 1
    B (1 vox)  not predicted         -> missed
    C (8 vox) ∩ P2 (8 vox) = 1 vox   -> IoU 1/15 ~= 0.067
    D (4 vox) ⊃ P4 (2 vox)           -> IoU 2/4 = 0.5 (exactly at the 0.5 threshold)
    E (4 vox) ⊃ P5 (1 vox)           -> IoU 1/4 = 0.25
    P3 (1 vox) touches nothing       -> false positive under every rule
    """
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4, 1:4] = 1  # A
    pred[1:4, 1:4, 1:4] = 1  # P1
    gt[10, 1, 1] = 1  # B
    gt[1:3, 10:12, 10:12] = 1  # C
    pred[2:4, 11:13, 11:13] = 1  # P2
    pred[18, 18, 18] = 1  # P3
    gt[10, 10, 10:14] = 1  # D
    pred[10, 10, 10:12] = 1  # P4
    gt[15, 5, 5:9] = 1  # E
    pred[15, 5, 6] = 1  # P5
    return gt, pred


@pytest.mark.parametrize(
    "rule, detected, fp",
    [
        ("any", 4, 1),  # A, C, D, E detected (B missed); P3 is the only FP
        ("iou0.1", 3, 2),  # A, D, E (C's IoU 0.067 < 0.1); P2 and P3 FP
        ("iou0.5", 2, 3),  # A, D (IoU exactly 0.5 counts); P2, P3, P5 FP
    ],
)
def test_overlap_rules_on_hand_built_case(rule, detected, fp):
    gt, pred = small_case()
    det = lesion_detection(gt, pred, (1, 1, 1), overlap=rule)
    assert det["overlap"] == rule
    assert det["n_gt_lesions"] == 5 and det["n_pred_lesions"] == 5
    assert det["n_gt_detected"] == detected
    assert det["n_fn_lesions"] == 5 - detected
    assert det["n_fp_lesions"] == fp
    assert det["n_pred_tp"] == 5 - fp
    assert det["lesion_sensitivity"] == pytest.approx(detected / 5)
    assert det["lesion_precision"] == pytest.approx((5 - fp) / 5)
    by_size = {d["n_voxels"]: d for d in det["gt_lesions"] if d["n_voxels"] in (27, 8)}
    assert by_size[27]["best_iou"] == pytest.approx(1.0)
    assert by_size[8]["best_iou"] == pytest.approx(1 / 15)
    assert by_size[8]["mtv_ml"] == pytest.approx(0.008)


def test_split_prediction_is_matched_one_to_one():
    gt = np.zeros((5, 5, 12), np.uint8)
    pred = np.zeros_like(gt)
    gt[2, 2, 0:6] = 1  # one lesion of 6 voxels
    pred[2, 2, 0:3] = 1  # part 1: 3 voxels, IoU 3/6 = 0.5
    pred[2, 2, 4:6] = 1  # part 2: 2 voxels (gap at x=3), IoU 2/6 = 0.33
    any_ = lesion_detection(gt, pred, (1, 1, 1), "any")
    # any overlap: the lesion is found and both parts touch it -> no FP
    assert (any_["n_gt_detected"], any_["n_pred_tp"], any_["n_fp_lesions"]) == (1, 2, 0)
    for rule in ("iou0.1", "iou0.5"):
        det = lesion_detection(gt, pred, (1, 1, 1), rule)
        # one-to-one: the larger part (IoU 0.5) takes the lesion, the other part is a false positive
        assert (det["n_gt_detected"], det["n_pred_tp"], det["n_fp_lesions"]) == (1, 1, 1)
        matched = [d for d in det["pred_lesions"] if d["matched"]]
        assert len(matched) == 1 and matched[0]["n_voxels"] == 3
        assert det["gt_lesions"][0]["partner_id"] == matched[0]["lesion_id"]


def test_empty_cases():
    z = np.zeros((4, 4, 4), np.uint8)
    det = lesion_detection(z, z, (1, 1, 1))
    assert det["n_gt_lesions"] == det["n_pred_lesions"] == det["n_fp_lesions"] == 0
    assert math.isnan(det["lesion_sensitivity"]) and math.isnan(det["lesion_precision"])
    p = z.copy()
    p[1, 1, 1] = 1
    det = lesion_detection(z, p, (1, 1, 1), "iou0.5")
    assert det["n_fp_lesions"] == 1 and math.isnan(det["lesion_sensitivity"])
    det = lesion_detection(p, z, (1, 1, 1))
    assert det["n_fn_lesions"] == 1 and det["lesion_sensitivity"] == 0.0 and det["n_fp_lesions"] == 0


def test_parse_overlap_rule():
    assert parse_overlap_rule("any") is None
    assert parse_overlap_rule("iou0.1") == pytest.approx(0.1)
    assert parse_overlap_rule("IoU0.5") == pytest.approx(0.5)
    for bad in ("iou", "iou0", "iou1.5", "dice0.5", ""):
        with pytest.raises(ValueError):
            parse_overlap_rule(bad)


def reference_detection(gt, pred, threshold):
    """Slow reference: scipy labels, per-pair IoU from full masks, greedy one-to-one by IoU."""
    gl, ng = ndimage.label(gt > 0, STRUCT18)
    pl, npr = ndimage.label(pred > 0, STRUCT18)
    pairs = []
    for i in range(1, ng + 1):
        gi = gl == i
        for j in np.unique(pl[gi]):
            if j == 0:
                continue
            pj = pl == j
            inter = np.sum(gi & pj)
            pairs.append((inter / np.sum(gi | pj), i, int(j)))
    if threshold is None:
        det_g = {i for _, i, _ in pairs}
        tp_p = {j for _, _, j in pairs}
    else:
        det_g, tp_p = set(), set()
        for iou, i, j in sorted(pairs, key=lambda t: -t[0]):
            if iou >= threshold and i not in det_g and j not in tp_p:
                det_g.add(i)
                tp_p.add(j)
    sizes_g = np.bincount(gl.ravel())
    return ng, npr, len(det_g), len(tp_p), sorted(int(sizes_g[i]) for i in det_g)


@pytest.mark.parametrize("rule, threshold", [("any", None), ("iou0.1", 0.1), ("iou0.5", 0.5)])
def test_real_autopet3_masks_match_reference(autopet3_masks, rule, threshold):
    gt, pred, sp = autopet3_masks["gt"], autopet3_masks["pred_nnunet"], autopet3_masks["spacing_mm"]
    # crop to the union bounding box for the slow reference (components never leave it)
    idx = np.argwhere((gt > 0) | (pred > 0))
    sl = tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))
    ng, npr, n_det, n_tp, det_sizes = reference_detection(gt[sl], pred[sl], threshold)
    det = lesion_detection(gt, pred, sp, rule)
    assert (det["n_gt_lesions"], det["n_pred_lesions"]) == (ng, npr)
    assert det["n_gt_detected"] == n_det
    assert det["n_pred_tp"] == n_tp
    assert sorted(d["n_voxels"] for d in det["gt_lesions"] if d["matched"]) == det_sizes
    if rule == "any":
        # missed lesions are exactly the FNV components, FP lesions the FPV components
        m = autopet_case_metrics(gt, pred, sp)
        assert sum(d["mtv_ml"] for d in det["gt_lesions"] if not d["matched"]) == pytest.approx(m["fnv_ml"])
        assert sum(d["mtv_ml"] for d in det["pred_lesions"] if not d["matched"]) == pytest.approx(m["fpv_ml"])
