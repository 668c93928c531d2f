"""Tests for nnunetv2_petct.conversion.geometry (hand-derived expectations)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.geometry import (
    array_zyx_to_image,
    axial_coverage,
    body_mask,
    crop_to_mask_bbox,
    geometry_record,
    overlap_fraction,
    overlap_fractions_xyz,
    resample_to_reference,
    same_geometry,
    spacing_mm_zyx,
)


def _ramp_image() -> sitk.Image:
    """4x4x4 (z,y,x) image at 2 mm, origin 0, value = 10*ix + 100*iy + 1000*iz (a linear function)."""
    iz, iy, ix = np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")
    arr = (10 * ix + 100 * iy + 1000 * iz).astype(np.float32)
    return array_zyx_to_image(arr, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def _grid(size_xyz, spacing_xyz, origin_xyz, pixel=sitk.sitkFloat32) -> sitk.Image:
    ref = sitk.Image([int(s) for s in size_xyz], pixel)
    ref.SetSpacing(spacing_xyz)
    ref.SetOrigin(origin_xyz)
    return ref


def test_resample_linear_2x_upsampling_reproduces_linear_ramp():
    src = _ramp_image()
    # 1 mm grid over 0..6 mm: index j sits at physical j mm = source index j/2.
    ref = _grid((7, 7, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    out = sitk.GetArrayFromImage(resample_to_reference(src, ref, "linear"))
    assert out.shape == (7, 7, 7)
    # Linear interpolation of a linear function is exact: value(p) = 10*px/2 + 100*py/2 + 1000*pz/2.
    # index (z=1, y=0, x=3): p = (x=3, y=0, z=1) mm -> 15 + 0 + 500 = 515
    assert out[1, 0, 3] == pytest.approx(515.0)
    # index (z=6, y=5, x=2): 10 + 250 + 3000 = 3260
    assert out[6, 5, 2] == pytest.approx(3260.0)
    # on a source voxel (z=4,y=2,x=0 -> source iz=2, iy=1, ix=0): 2000 + 100 = 2100
    assert out[4, 2, 0] == pytest.approx(2100.0)


def test_resample_checkerboard_nearest_and_linear_midpoints():
    iz, iy, ix = np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")
    board = (((ix + iy + iz) % 2) * 100).astype(np.int16)
    src = array_zyx_to_image(board, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ref = _grid((7, 7, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), sitk.sitkInt16)
    lin = resample_to_reference(src, ref, "linear")
    assert lin.GetPixelID() == sitk.sitkInt16  # output type = input type
    a = sitk.GetArrayFromImage(lin)
    # even indices hit source voxels: ref (z=2,y=4,x=6) = source (1,2,3): (1+2+3)%2=0 -> 0
    assert a[2, 4, 6] == 0
    # ref (z=0,y=0,x=2) = source (0,0,1) -> 100
    assert a[0, 0, 2] == 100
    # midway between two neighbours along x (x=1): (0 + 100) / 2 = 50; likewise the cube centre
    # (1,1,1) averages 4 zeros and 4 hundreds = 50
    assert a[0, 0, 1] == 50
    assert a[1, 1, 1] == 50
    near = sitk.GetArrayFromImage(resample_to_reference(src, ref, "nearest"))
    assert set(np.unique(near).tolist()) <= {0, 100}


def test_resample_respects_origin_direction_and_default_value():
    src = _ramp_image()
    # Reference shifted by -2 mm in x: its index 0 lies outside the source (x=-2) -> default value.
    ref = _grid((5, 1, 1), (2.0, 2.0, 2.0), (-2.0, 0.0, 0.0))
    out = sitk.GetArrayFromImage(resample_to_reference(src, ref, "linear", default_value=-1024))
    assert out[0, 0, 0] == pytest.approx(-1024.0)
    # index 3 at x=4 mm = source ix 2 -> 20
    assert out[0, 0, 3] == pytest.approx(20.0)

    # Source with x axis flipped: voxel i lies at x = 6 - 2i. Reference index j (x = 2j) must
    # read source ix = 3 - j, i.e. the ramp reversed: 30, 20, 10, 0.
    flipped = _ramp_image()
    flipped.SetOrigin((6.0, 0.0, 0.0))
    flipped.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    ref2 = _grid((4, 1, 1), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    out2 = sitk.GetArrayFromImage(resample_to_reference(flipped, ref2, "nearest"))
    np.testing.assert_allclose(out2[0, 0], [30.0, 20.0, 10.0, 0.0])


def test_resample_rejects_unknown_interpolator():
    with pytest.raises(ValueError, match="interpolator"):
        resample_to_reference(_ramp_image(), _ramp_image(), "cubic")


def test_same_geometry():
    a = _grid((3, 4, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    b = _grid((3, 4, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    assert same_geometry(a, b)
    b.SetOrigin((0.0, 0.0, 1e-6))
    assert same_geometry(a, b)  # within tol 1e-4
    b.SetOrigin((0.0, 0.0, 1e-3))
    assert not same_geometry(a, b)
    c = _grid((3, 4, 6), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    assert not same_geometry(a, c)
    d = _grid((3, 4, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    d.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert not same_geometry(a, d)
    e = _grid((3, 4, 5), (1.0, 2.0, 3.5), (0.0, 0.0, 0.0))
    assert not same_geometry(a, e)


def test_spacing_is_reported_zyx():
    img = _grid((3, 4, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    assert spacing_mm_zyx(img) == (3.0, 2.0, 1.0)
    assert sitk.GetArrayFromImage(img).shape == (5, 4, 3)


def _box(shape_zyx=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0)) -> sitk.Image:
    return array_zyx_to_image(np.zeros(shape_zyx, np.float32), spacing, origin_xyz)


def test_overlap_fractions_by_hand():
    ref = _box()  # voxel edges -0.5 .. 9.5 mm on every axis
    assert overlap_fractions_xyz(ref, ref) == pytest.approx((1.0, 1.0, 1.0))
    # shifted by 5 mm in z: edges 4.5 .. 14.5 -> overlap 4.5 .. 9.5 = 5 of 10 mm
    assert overlap_fractions_xyz(_box(origin_xyz=(0, 0, 5.0)), ref) == pytest.approx((1.0, 1.0, 0.5))
    assert overlap_fraction(_box(origin_xyz=(0, 0, 5.0)), ref) == pytest.approx(0.5)
    # 2 mm spacing, 5 voxels, origin 0: edges -1 .. 9 -> overlap -0.5 .. 9 = 9.5 of 10 mm in x
    small = _box((10, 10, 5), spacing=(1.0, 1.0, 2.0))
    assert overlap_fractions_xyz(small, ref)[0] == pytest.approx(0.95)
    assert overlap_fractions_xyz(_box(origin_xyz=(0, 0, 50.0)), ref)[2] == 0.0


def test_geometry_record_orders():
    img = _box((3, 4, 5), spacing=(3.0, 2.0, 1.0), origin_xyz=(-5.0, 7.0, 100.0))  # spacing z,y,x
    assert geometry_record(img) == {"spacing_mm": [3.0, 2.0, 1.0], "shape_zyx": [3, 4, 5],
                                    "origin_mm_xyz": [-5.0, 7.0, 100.0],
                                    "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}


def test_body_mask_keeps_largest_component_and_fills_holes():
    ct = np.full((6, 12, 12), -1000, dtype=np.int16)
    ct[1:5, 2:10, 2:10] = 40          # body: 4 x 8 x 8 = 256 voxels
    ct[1:5, 4:8, 4:8] = -850          # enclosed "lung" in every slice (open along z: hole per slice)
    ct[0, 0, 0:2] = 200               # 2-voxel "table" far from the body: a separate component
    mask = body_mask(ct)
    expected = np.zeros(ct.shape, dtype=bool)
    expected[1:5, 2:10, 2:10] = True  # lungs filled, table dropped
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_body_mask_connectivity_is_26():
    ct = np.full((4, 8, 8), -1000, dtype=np.int16)
    ct[0:2, 0:2, 0:2] = 40            # 8 voxels
    ct[2, 2, 2] = ct[3, 3, 3] = 40    # 2 voxels touching the block (and each other) by a corner only
    ct[0, 5:8, 5:8] = 40              # 9 voxels, apart: largest with 6- or 18-connectivity
    expected = np.zeros(ct.shape, dtype=bool)
    expected[0:2, 0:2, 0:2] = expected[2, 2, 2] = expected[3, 3, 3] = True  # 10 voxels with 26
    np.testing.assert_array_equal(body_mask(ct), expected)


def test_body_mask_threshold_and_empty_input():
    ct = np.full((3, 4, 4), -1000, dtype=np.int16)
    assert not body_mask(ct).any()
    ct[1, 1, 1] = -400  # above the default -500 HU
    assert body_mask(ct).sum() == 1
    assert body_mask(ct, threshold_hu=-300).sum() == 0
    assert body_mask(np.zeros((0, 4, 4))).shape == (0, 4, 4)


def test_crop_to_mask_bbox_updates_origin_and_keeps_values():
    arr = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    img = array_zyx_to_image(arr, (3.0, 2.0, 1.0), (-5.0, 7.0, 100.0))  # spacing z,y,x; origin x,y,z
    lab = array_zyx_to_image((arr % 2).astype(np.uint8), (3.0, 2.0, 1.0), (-5.0, 7.0, 100.0))
    mask = np.zeros(arr.shape, dtype=bool)
    mask[2:5, 3:6, 6:10] = True  # z 2..4, y 3..5, x 6..9
    (out_img, out_lab), box = crop_to_mask_bbox([img, lab], mask, margin_vox=1)
    assert box == (slice(1, 6), slice(2, 7), slice(5, 11))
    # margin 1 -> z 1..5 (5), y 2..6 (5), x 5..10 (6)
    assert out_img.GetSize() == (6, 5, 5)
    assert out_lab.GetSize() == (6, 5, 5)
    # new origin = old origin + first kept index * spacing: x -5+5*1, y 7+2*2, z 100+1*3
    np.testing.assert_allclose(out_img.GetOrigin(), (0.0, 11.0, 103.0))
    a = sitk.GetArrayFromImage(out_img)
    assert a[0, 0, 0] == arr[1, 2, 5]
    assert a[-1, -1, -1] == arr[5, 6, 10]
    # physical position of a voxel is unchanged
    p = out_img.TransformIndexToPhysicalPoint((2, 2, 2))
    assert img.TransformPhysicalPointToIndex(p) == (7, 4, 3)


def test_crop_margin_clipped_and_empty_mask():
    img = array_zyx_to_image(np.ones((4, 5, 6), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[0, 0, 0] = True
    (out,), _ = crop_to_mask_bbox([img], mask, margin_vox=3)
    # 0-3 clips to 0, 0+1+3 = 4 voxels (z clipped to 4), y 4, x 4
    assert out.GetSize() == (4, 4, 4)
    assert out.GetOrigin() == (0.0, 0.0, 0.0)
    res, box = crop_to_mask_bbox([img], np.zeros((4, 5, 6), bool))
    assert box is None and res[0] is img
    with pytest.raises(ValueError, match="size"):
        crop_to_mask_bbox([img], np.zeros((4, 5, 7), bool))


def test_axial_coverage_of_a_short_ct():
    # PET: 10 slices of 4 mm, centres z = 0..36 mm, edges -2..38 mm (40 mm). CT: 5 slices of 3 mm from z = 20,
    # edges 18.5..33.5 mm -> covers 15 / 40 = 0.375; no CT below 18.5 (20.5 mm = 0.5125, centres 0..16 = slices
    # 0-4) and above 33.5 (4.5 mm = 0.1125, centre 36 = slice 9).
    pet = _grid((4, 4, 10), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))
    ct = _grid((4, 4, 5), (2.0, 2.0, 3.0), (0.0, 0.0, 20.0))
    cov = axial_coverage(ct, pet)
    assert cov["fraction"] == pytest.approx(0.375)
    assert cov["reference_range_mm"] == pytest.approx([-2.0, 38.0])
    assert cov["covered_range_mm"] == pytest.approx([18.5, 33.5])
    low, high = cov["uncovered"]
    assert low == {"end": "inferior", "from_mm": pytest.approx(-2.0), "to_mm": pytest.approx(18.5),
                   "length_mm": pytest.approx(20.5), "fraction": pytest.approx(0.5125), "slices": [0, 4]}
    assert high == {"end": "superior", "from_mm": pytest.approx(33.5), "to_mm": pytest.approx(38.0),
                    "length_mm": pytest.approx(4.5), "fraction": pytest.approx(0.1125), "slices": [9, 9]}
    # full coverage: nothing uncovered; no overlap: the whole PET, fraction 0
    assert axial_coverage(_grid((4, 4, 20), (2.0, 2.0, 3.0), (0.0, 0.0, -10.0)), pet)["uncovered"] == []
    far = axial_coverage(_grid((4, 4, 5), (2.0, 2.0, 3.0), (0.0, 0.0, 500.0)), pet)
    assert far["fraction"] == 0.0 and far["covered_range_mm"] is None
    assert far["uncovered"][0]["end"] == "whole" and far["uncovered"][0]["slices"] == [0, 9]


def test_axial_coverage_names_the_ends_of_a_feet_first_grid():
    # slice normal -z: index 0 is the top (z = 0), the last slice z = -36; the CT covers z -10..+10 -> the
    # missing part is at the high-index end, which is inferior.
    pet = _grid((4, 4, 10), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))
    pet.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    ct = _grid((4, 4, 5), (2.0, 2.0, 4.0), (0.0, 0.0, -8.0))  # centres -8..8, edges -10..10
    cov = axial_coverage(ct, pet)
    # along the normal n = -z: PET edges n.p in -2..38; CT covers n.p -10..10 -> -2..10 covered (12 / 40)
    assert cov["fraction"] == pytest.approx(0.3)
    (gap,) = cov["uncovered"]
    assert gap["end"] == "inferior" and gap["from_mm"] == pytest.approx(10.0) and gap["to_mm"] == pytest.approx(38.0)
