"""SUVmax / SUVmean / SUVpeak / MTV / TLG on hand-built spheres and cubes with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunetv2_petct.evaluation import (
    case_quantification,
    peak_sphere_offsets,
    quantify_lesions,
    sphere_radius_mm,
)


def test_sphere_radius_of_one_ml():
    # V = 4/3 pi r^3 = 1000 mm^3 -> r = (3000 / (4 pi))^(1/3) = 238.73^(1/3) = 6.2035 mm
    assert sphere_radius_mm(1.0) == pytest.approx(6.2035, abs=1e-4)


@pytest.mark.parametrize(
    "spacing, count",
    [
        # 2 mm isotropic: offsets with i^2+j^2+k^2 <= (6.2035/2)^2 = 9.62 -> lattice points of r^2 <= 9:
        # shells r^2 = 0,1,2,3,4,5,6,8,9 hold 1+6+12+8+6+24+24+12+30 = 123
        ((2.0, 2.0, 2.0), 123),
        # 4 mm isotropic: i^2+j^2+k^2 <= 2.405 -> 1 + 6 + 12 = 19
        ((4.0, 4.0, 4.0), 19),
        # (z, y, x) = (2, 4, 4) mm: a^2 + 4(b^2 + c^2) <= 9.62 -> 7 (b=c=0) + 4*5 (b^2+c^2=1) + 4*3 (=2) = 39
        ((2.0, 4.0, 4.0), 39),
    ],
)
def test_peak_sphere_voxel_counts(spacing, count):
    off = peak_sphere_offsets(spacing)
    assert off.shape == (count, 3)
    assert (off == 0).all(axis=1).sum() == 1  # the centre is in


def test_single_voxel_lesion_suvpeak_is_not_restricted_to_the_lesion():
    suv = np.ones((9, 9, 9), np.float32)
    suv[4, 4, 4] = 20.0
    mask = np.zeros(suv.shape, np.uint8)
    mask[4, 4, 4] = 1
    q = quantify_lesions(mask, suv, (4.0, 4.0, 4.0))
    (les,) = q["lesions"]
    # 19-voxel sphere at 4 mm: (20 + 18 * 1) / 19 = 2.0 (a lesion-restricted peak would be 20)
    assert les["suv_peak"] == pytest.approx(2.0)
    assert les["suv_max"] == pytest.approx(20.0) and les["suv_mean"] == pytest.approx(20.0)
    # 1 voxel of 64 mm^3 = 0.064 ml; TLG = 20 * 0.064 = 1.28
    assert les["mtv_ml"] == pytest.approx(0.064) and les["tlg"] == pytest.approx(1.28)
    assert (les["peak_z"], les["peak_y"], les["peak_x"]) == (4, 4, 4)


def test_suvpeak_sphere_follows_anisotropic_spacing_in_zyx_order():
    suv = np.zeros((12, 12, 12), np.float32)
    c = (6, 6, 6)
    suv[c] = 40.0
    suv[9, 6, 6] = 39.0  # 3 voxels along z = 6 mm at 2 mm: inside the 6.20 mm sphere
    suv[6, 6, 9] = 1000.0  # 3 voxels along x = 12 mm at 4 mm: outside
    mask = np.zeros(suv.shape, np.uint8)
    mask[c] = 1
    (les,) = quantify_lesions(mask, suv, (2.0, 4.0, 4.0))["lesions"]
    # 39-voxel sphere (see the count test): (40 + 39) / 39; with x and z swapped it would hold 1000 instead
    assert les["suv_peak"] == pytest.approx(79 / 39)


def test_suvpeak_at_the_image_corner_uses_voxels_inside_the_image():
    suv = np.zeros((5, 5, 5), np.float32)
    suv[0, 0, 0] = 14.0
    mask = np.zeros(suv.shape, np.uint8)
    mask[0, 0, 0] = 1
    (les,) = quantify_lesions(mask, suv, (4.0, 4.0, 4.0))["lesions"]
    # the 19-voxel sphere keeps the octant i, j, k >= 0 with i^2+j^2+k^2 <= 2: 1 + 3 + 3 = 7 voxels
    assert les["suv_peak"] == pytest.approx(14.0 / 7)


def ball_case():
    """Ball of radius 3 voxels (i^2+j^2+k^2 <= 9, 123 voxels) at 2 mm, SUV 8 with a hot centre of 20."""
    shape = (15, 15, 15)
    zz, yy, xx = np.indices(shape)
    ball = (zz - 7) ** 2 + (yy - 7) ** 2 + (xx - 7) ** 2 <= 9
    suv = np.ones(shape, np.float32)
    suv[ball] = 8.0
    suv[7, 7, 7] = 20.0
    return ball.astype(np.uint8), suv


def test_ball_lesion_equal_to_the_peak_sphere():
    mask, suv = ball_case()
    assert mask.sum() == 123
    (les,) = quantify_lesions(mask, suv, (2.0, 2.0, 2.0))["lesions"]
    mean = (20 + 122 * 8) / 123  # = 996 / 123
    assert les["n_voxels"] == 123
    assert les["mtv_ml"] == pytest.approx(123 * 0.008)  # 0.984 ml
    assert les["suv_max"] == pytest.approx(20.0)
    assert les["suv_mean"] == pytest.approx(mean)
    # the peak sphere around the centre is exactly the ball: SUVpeak = SUVmean
    assert les["suv_peak"] == pytest.approx(mean)
    assert les["tlg"] == pytest.approx(996 * 0.008)  # SUV sum x voxel ml = 7.968


def cube_case():
    """5x5x5 cube at (z, y, x) = (2, 4, 4) mm: 125 voxels x 32 mm^3 = 4.0 ml; SUV 5, one voxel 10."""
    mask = np.zeros((20, 12, 12), np.uint8)
    suv = np.full(mask.shape, 0.5, np.float32)
    mask[2:7, 2:7, 2:7] = 1
    suv[2:7, 2:7, 2:7] = 5.0
    suv[3, 4, 5] = 10.0
    return mask, suv


def test_cube_lesion_mtv_tlg():
    mask, suv = cube_case()
    (les,) = quantify_lesions(mask, suv, (2.0, 4.0, 4.0))["lesions"]
    # sum = 124 * 5 + 10 = 630 -> mean 5.04; MTV 4.0 ml; TLG = 5.04 * 4.0 = 20.16
    assert les["mtv_ml"] == pytest.approx(4.0)
    assert les["suv_mean"] == pytest.approx(5.04)
    assert les["tlg"] == pytest.approx(20.16)
    assert les["suv_max"] == pytest.approx(10.0)
    assert (les["peak_z"], les["peak_y"], les["peak_x"]) == (3, 4, 5)
    # centroid: the mean voxel index, the cube's centre (4, 4, 4), whatever the SUV values
    assert (les["centroid_z"], les["centroid_y"], les["centroid_x"]) == pytest.approx((4.0, 4.0, 4.0))


def test_centroid_of_an_l_shaped_lesion():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1:4] = 1  # (1, 1, 1), (1, 1, 2), (1, 1, 3)
    mask[1, 2, 1] = 1  # + (1, 2, 1): mean z 1, y (1+1+1+2)/4 = 1.25, x (1+2+3+1)/4 = 1.75
    (les,) = quantify_lesions(mask, np.ones(mask.shape, np.float32), (1.0, 1.0, 1.0))["lesions"]
    assert (les["centroid_z"], les["centroid_y"], les["centroid_x"]) == pytest.approx((1.0, 1.25, 1.75))


def test_case_totals_of_two_lesions():
    mask, suv = cube_case()
    mask[15, 8, 8] = 1  # second lesion: one voxel of SUV 3, far from the cube
    suv[15, 8, 8] = 3.0
    q = quantify_lesions(mask, suv, (2.0, 4.0, 4.0))
    t = q["totals"]
    assert t["lesion_count"] == 2
    # TMTV = 4.0 + 0.032 ml; total TLG = 20.16 + 3 * 0.032 = 20.256; SUVmax = 10
    assert t["tmtv_ml"] == pytest.approx(4.032)
    assert t["total_tlg"] == pytest.approx(20.256)
    assert t["suv_max"] == pytest.approx(10.0)


def test_ties_take_the_first_hottest_voxel_in_c_order():
    mask = np.zeros((6, 6, 10), np.uint8)
    suv = np.zeros(mask.shape, np.float32)
    mask[2, 2, 2:6] = 1
    suv[2, 2, 2:6] = 3.0
    suv[2, 2, 3] = suv[2, 2, 5] = 7.0  # two equal maxima
    (les,) = quantify_lesions(mask, suv, (1.0, 1.0, 1.0))["lesions"]
    assert (les["peak_z"], les["peak_y"], les["peak_x"]) == (2, 2, 3)


def test_ground_truth_and_prediction_side_by_side():
    mask, suv = cube_case()
    pred = np.zeros_like(mask)
    pred[2:7, 2:7, 2:4] = 1  # 5x5x2 = 50 voxels of the cube, all SUV 5 (the hot voxel is at x=5)
    q = case_quantification(mask, pred, suv, (2.0, 4.0, 4.0))
    assert q["gt"]["totals"]["tmtv_ml"] == pytest.approx(4.0)
    # prediction: 50 x 0.032 = 1.6 ml, mean 5, TLG 8, SUVmax 5
    assert q["pred"]["totals"]["tmtv_ml"] == pytest.approx(1.6)
    assert q["pred"]["totals"]["total_tlg"] == pytest.approx(8.0)
    assert q["pred"]["totals"]["suv_max"] == pytest.approx(5.0)
    empty = case_quantification(mask, np.zeros_like(mask), suv, (2.0, 4.0, 4.0))["pred"]
    assert empty["lesions"] == []
    assert empty["totals"]["lesion_count"] == 0 and empty["totals"]["tmtv_ml"] == 0.0
    assert math.isnan(empty["totals"]["suv_max"]) and math.isnan(empty["totals"]["suv_peak"])


def test_pet_shape_must_match():
    mask, suv = cube_case()
    with pytest.raises(ValueError, match="shape"):
        quantify_lesions(mask, suv[:-1], (2.0, 4.0, 4.0))


@pytest.mark.parametrize("seed", range(3))
def test_random_lesions_match_brute_force(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (16, 18, 20)
    spacing = (3.0, 2.0, 1.5)
    mask = (rng.random(shape) < 0.1).astype(np.uint8)
    suv = rng.gamma(2.0, 1.5, shape).astype(np.float32)
    got = quantify_lesions(mask, suv, spacing)
    labels, n = ndimage.label(mask, ndimage.generate_binary_structure(3, 2))
    assert n >= 3 and got["totals"]["lesion_count"] == n
    r2 = ((3000 / (4 * np.pi)) ** (1 / 3)) ** 2
    grid = np.indices(shape).astype(float)
    expected = []
    for i in range(1, n + 1):
        les = labels == i
        vals = np.where(les, suv, -np.inf)
        hot = np.unravel_index(np.argmax(vals), shape)  # first maximum in C order
        d2 = sum(((grid[a] - hot[a]) * spacing[a]) ** 2 for a in range(3))
        expected.append((int(les.sum()), float(suv[les].max()), float(suv[les].mean()), float(suv[d2 <= r2].mean())))
    got_t = [(d["n_voxels"], d["suv_max"], d["suv_mean"], d["suv_peak"]) for d in got["lesions"]]
    for g, e in zip(sorted(got_t), sorted(expected)):
        assert g[0] == e[0]
        assert g[1:] == pytest.approx(e[1:], rel=1e-6)
