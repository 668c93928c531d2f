"""autoPET Dice / FPV / FNV: hand-derived cases, real autoPET III masks against a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nnunetv2_petct.evaluation import autopet_case_metrics, label_components, voxel_volume_ml

# 18-connectivity: neighbours sharing a face or an edge (squared distance <= 2), not a corner
STRUCT18 = ndimage.generate_binary_structure(3, 2)


def reference_metrics(gt: np.ndarray, pred: np.ndarray, spacing_mm) -> dict:
    """Straightforward re-implementation of the official autoPET III code (binarized, with NaN rules):
    scipy labelling and one full-volume mask per component (slow, obviously right)."""
    g, p = gt > 0, pred > 0
    vox_ml = float(np.prod(spacing_mm)) / 1000.0
    gl, ng = ndimage.label(g, STRUCT18)
    pl, npr = ndimage.label(p, STRUCT18)
    fn_vox = 0
    for i in range(1, ng + 1):
        comp = gl == i
        if not np.any(comp & p):
            fn_vox += int(comp.sum())
    fp_vox = 0
    for j in range(1, npr + 1):
        comp = pl == j
        if not np.any(comp & g):
            fp_vox += int(comp.sum())
    if g.sum() == 0:
        return {"dice": math.nan, "fpv_ml": fp_vox * vox_ml, "fnv_ml": math.nan}
    dice = 2.0 * np.sum(g & p) / (g.sum() + p.sum())
    return {"dice": float(dice), "fpv_ml": fp_vox * vox_ml, "fnv_ml": fn_vox * vox_ml}


def union_crop(*arrays):
    """Crop all arrays to the bounding box of their union (components never leave it)."""
    u = np.zeros(arrays[0].shape, bool)
    for a in arrays:
        u |= a > 0
    idx = np.argwhere(u)
    lo, hi = idx.min(0), idx.max(0) + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return [a[sl] for a in arrays]


def assert_metrics(got: dict, expected: dict) -> None:
    assert set(got) == {"dice", "fpv_ml", "fnv_ml"}
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(got[k]), (k, got[k])
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (k, got[k], v)


def test_voxel_volume_ml():
    # 3 mm x 2 mm x 1.5 mm = 9 mm^3 = 0.009 ml
    assert voxel_volume_ml((3.0, 2.0, 1.5)) == pytest.approx(0.009)
    with pytest.raises(ValueError):
        voxel_volume_ml((1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        voxel_volume_ml((1.0, 1.0))


def test_empty_gt_and_empty_pred():
    z = np.zeros((4, 5, 6), np.uint8)
    # nothing to find, nothing found: Dice and FNV undefined (NaN), no false positive volume
    assert_metrics(autopet_case_metrics(z, z, (1, 1, 1)), {"dice": math.nan, "fpv_ml": 0.0, "fnv_ml": math.nan})


def test_empty_gt_with_prediction():
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(gt)
    pred[1, 1, 1] = 1
    pred[4, 4, 4] = 1  # two separate components, both false positive
    # 2 voxels x 8 mm^3 = 0.016 ml; Dice and FNV NaN because the ground truth is empty
    assert_metrics(autopet_case_metrics(gt, pred, (2, 2, 2)), {"dice": math.nan, "fpv_ml": 0.016, "fnv_ml": math.nan})


def test_empty_prediction():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[2, 2, 1:4] = 1  # 3 voxels in one lesion
    pred = np.zeros_like(gt)
    # Dice 0, FPV 0 (nothing predicted), FNV = 3 voxels x 1 mm^3 = 0.003 ml
    assert_metrics(autopet_case_metrics(gt, pred, (1, 1, 1)), {"dice": 0.0, "fpv_ml": 0.0, "fnv_ml": 0.003})


def test_one_voxel_overlap_and_separate_components():
    gt = np.zeros((12, 12, 12), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:4, 2:4, 2:4] = 1  # 8 voxels
    pred[3:5, 3:5, 3:5] = 1  # 8 voxels, shares only voxel (3, 3, 3) with the GT block
    gt[9, 9, 9] = 1  # missed lesion: 1 voxel
    pred[9, 1, 1] = 1  # false positive: 1 voxel
    # |G| = 9, |P| = 9, |G∩P| = 1 -> Dice = 2/18 = 1/9; FPV = FNV = 1 voxel of 1 mm^3
    assert_metrics(autopet_case_metrics(gt, pred, (1, 1, 1)), {"dice": 1 / 9, "fpv_ml": 0.001, "fnv_ml": 0.001})


@pytest.mark.parametrize(
    "second, one_component",
    [
        ((2, 2, 3), True),  # shares a face with (2, 2, 2)
        ((2, 3, 3), True),  # shares an edge: 18-connected, one lesion
        ((3, 3, 2), True),  # edge in another plane
        ((3, 3, 3), False),  # touches by a corner only: two lesions under 18-connectivity
    ],
)
def test_edge_versus_corner_touching(second, one_component):
    a = np.zeros((6, 6, 6), np.uint8)
    a[2, 2, 2] = 1
    a[second] = 1
    hit = np.zeros_like(a)
    hit[2, 2, 2] = 1
    n = label_components(a)[1]
    assert n == (1 if one_component else 2)
    # GT = both voxels, prediction = the first only: the second voxel is missed only if it is its own lesion
    fnv = 0.0 if one_component else 0.001
    assert_metrics(autopet_case_metrics(a, hit, (1, 1, 1)), {"dice": 2 / 3, "fpv_ml": 0.0, "fnv_ml": fnv})
    # and the mirror case for false positives: prediction = both, GT = the first only
    fpv = 0.0 if one_component else 0.001
    assert_metrics(autopet_case_metrics(hit, a, (1, 1, 1)), {"dice": 2 / 3, "fpv_ml": fpv, "fnv_ml": 0.0})


def test_anisotropic_spacing():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:2, 0:2, 0:2] = 1  # missed: 8 voxels
    gt[6:8, 6:8, 6:8] = 1  # found exactly: 8 voxels
    pred[6:8, 6:8, 6:8] = 1
    pred[0, 7:9, 0:3] = 1  # false positive: 1 x 2 x 3 = 6 voxels
    # voxel = 3 x 2 x 1.5 mm = 9 mm^3: FNV = 8 * 9 = 72 mm^3, FPV = 6 * 9 = 54 mm^3; Dice = 16 / (16 + 14)
    got = autopet_case_metrics(gt, pred, (3.0, 2.0, 1.5))
    assert_metrics(got, {"dice": 16 / 30, "fpv_ml": 0.054, "fnv_ml": 0.072})


def test_non_binary_label_values():
    gt = np.zeros((8, 8, 8), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1:3] = 255  # 8 voxels, 0/255 mask
    gt[6, 6, 6] = 2  # another label value, still lesion
    pred[1:3, 1:3, 1] = 255  # 4 voxels inside the first lesion
    pred[5, 0, 0] = 1
    # |G| = 9, |P| = 5, |G∩P| = 4 -> Dice = 8/14; FNV = 1 voxel (6,6,6); FPV = 1 voxel (5,0,0)
    expected = {"dice": 8 / 14, "fpv_ml": 0.001, "fnv_ml": 0.001}
    assert_metrics(autopet_case_metrics(gt, pred, (1, 1, 1)), expected)
    # float prediction with values in (0, 1] is binarized the same way
    assert_metrics(autopet_case_metrics(gt, pred.astype(np.float32) / 300.0, (1, 1, 1)), expected)


def test_input_checks():
    with pytest.raises(ValueError, match="shape"):
        autopet_case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        autopet_case_metrics(np.zeros((2, 2)), np.zeros((2, 2)), (1, 1, 1))


@pytest.mark.parametrize("seed", range(6))
def test_random_volumes_match_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 17, 19)
    density_g, density_p = rng.uniform(0.02, 0.12, 2)
    gt = (rng.random(shape) < density_g).astype(np.uint8)
    pred = (rng.random(shape) < density_p).astype(np.uint8) * 255
    if seed == 0:
        gt[:] = 0  # one case with empty ground truth
    spacing = tuple(rng.uniform(0.5, 4.0, 3))
    assert_metrics(autopet_case_metrics(gt, pred, spacing), reference_metrics(gt, pred, spacing))


@pytest.mark.parametrize("pred_key", ["pred_datacentric", "pred_nnunet"])
def test_real_autopet3_masks_match_reference(autopet3_masks, pred_key):
    gt, pred, sp = autopet3_masks["gt"], autopet3_masks[pred_key], autopet3_masks["spacing_mm"]
    expected = reference_metrics(*union_crop(gt, pred), sp)
    got = autopet_case_metrics(gt, pred, sp)
    assert_metrics(got, expected)
    # sanity of the expectation itself: a real model has partial overlap, some misses and some FPs
    assert 0.3 < expected["dice"] < 0.95
    assert expected["fpv_ml"] > 0 and expected["fnv_ml"] > 0
    # a 0/255 copy of the same masks gives the same numbers
    assert_metrics(autopet_case_metrics(gt * 255, pred * 255, sp), expected)
    # a prediction equal to the ground truth is perfect
    assert_metrics(autopet_case_metrics(gt, gt, sp), {"dice": 1.0, "fpv_ml": 0.0, "fnv_ml": 0.0})
