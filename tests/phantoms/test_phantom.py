"""Tests for the synthetic PET/CT phantoms (tiny size only; full size is checked by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_petct.phantoms import ORGAN_LABELS, make_cohort, make_phantom

LESION_SEEDS = (1, 4, 5, 11, 23)


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _voxel_centres_xyz(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x, y, z of every voxel centre as broadcastable (z, y, x) arrays (identity direction)."""
    sx, sy, sz = img.GetSpacing()
    ox, oy, oz = img.GetOrigin()
    nx, ny, nz = img.GetSize()
    x = (ox + sx * np.arange(nx))[None, None, :]
    y = (oy + sy * np.arange(ny))[None, :, None]
    z = (oz + sz * np.arange(nz))[:, None, None]
    return x, y, z


def _sphere_mask(img: sitk.Image, centre, radius) -> np.ndarray:
    x, y, z = _voxel_centres_xyz(img)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2


def _core(organs: np.ndarray, name: str, exclude: np.ndarray) -> np.ndarray:
    """Organ mask eroded by one voxel, minus ``exclude``; at least 5 voxels."""
    m = ndimage.binary_erosion(organs == ORGAN_LABELS[name], iterations=1) & ~exclude
    assert m.sum() >= 5, name
    return m


@pytest.fixture(scope="module")
def lesion_cases():
    return [make_phantom(s, lesion_free=False) for s in LESION_SEEDS]


def test_same_seed_identical_different_seed_different():
    a, b, c = make_phantom(7), make_phantom(7), make_phantom(8)
    for key in ("ct", "pet", "label"):
        np.testing.assert_array_equal(_arr(getattr(a, key)), _arr(getattr(b, key)))
    assert a.lesions == b.lesions
    assert a.pet.GetOrigin() == b.pet.GetOrigin()
    assert not np.array_equal(_arr(a.pet), _arr(c.pet))
    assert not np.array_equal(_arr(a.ct), _arr(c.ct))


def test_lesion_free_twin_shares_anatomy():
    with_les = make_phantom(5, lesion_free=False)
    without = make_phantom(5, lesion_free=True)
    np.testing.assert_array_equal(_arr(with_les.organs), _arr(without.organs))
    assert without.lesions == []
    assert _arr(without.label).sum() == 0
    assert _arr(with_les.label).sum() > 0
    # the lesions are the only difference in the CT: voxels far from every lesion are identical
    far = np.ones(_arr(with_les.ct).shape, bool)
    for les in with_les.lesions:
        far &= ~_sphere_mask(with_les.ct, les["center_mm"], les["radius_mm"] + 1.0)
    np.testing.assert_array_equal(_arr(with_les.ct)[far], _arr(without.ct)[far])


def test_pixel_types_and_geometry():
    case = make_phantom(3)
    assert case.ct.GetPixelID() == sitk.sitkInt16
    assert case.pet.GetPixelID() == sitk.sitkFloat32
    assert case.label.GetPixelID() == sitk.sitkUInt8
    # label and organ map share the PET grid
    for img in (case.label, case.organs):
        assert img.GetSize() == case.pet.GetSize()
        assert img.GetOrigin() == case.pet.GetOrigin()
        assert img.GetSpacing() == case.pet.GetSpacing()
    # CT finer in-plane than PET (x and y spacing), same or finer in z
    ct_sp, pet_sp = case.ct.GetSpacing(), case.pet.GetSpacing()
    assert ct_sp[0] < pet_sp[0] and ct_sp[1] < pet_sp[1] and ct_sp[2] <= pet_sp[2]
    # different origins on every axis, and different extents
    assert all(abs(a - b) > 1e-3 for a, b in zip(case.ct.GetOrigin(), case.pet.GetOrigin()))
    assert case.ct.GetSize() != case.pet.GetSize()
    # identity direction, realistic (non-zero, signed) origins
    assert case.ct.GetDirection() == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    assert case.pet.GetOrigin()[0] < 0 and case.pet.GetOrigin()[2] < 0

    # the two physical boxes overlap, and the CT covers the whole PET z range
    def box(img):
        lo = np.array(img.GetOrigin())
        hi = lo + (np.array(img.GetSize()) - 1) * np.array(img.GetSpacing())
        return lo, hi

    (clo, chi), (plo, phi) = box(case.ct), box(case.pet)
    assert np.all(np.minimum(chi, phi) > np.maximum(clo, plo))
    assert clo[2] <= plo[2] and chi[2] >= phi[2]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7])
def test_body_inside_ct_in_plane_field_of_view(seed):
    ct = _arr(make_phantom(seed).ct)
    body = ct > -500
    assert body.sum() > 0.1 * body.size
    # nothing of the body touches the in-plane border of the CT (truncation would corrupt HU)
    assert not (body[:, 0, :].any() or body[:, -1, :].any() or body[:, :, 0].any() or body[:, :, -1].any())


def test_tissue_values(lesion_cases):
    for case in lesion_cases:
        org = _arr(case.organs)
        pet = _arr(case.pet)
        ct_res = _arr(case.ct_on_pet_grid())
        # keep away from organ borders (blur, interpolation) and from lesions
        lesion_zone = ndimage.binary_dilation(_arr(case.label) > 0, iterations=2)

        lung, liver, brain = (_core(org, name, lesion_zone) for name in ("lung", "liver", "brain"))
        # lung parenchyma is drawn at -880..-820 HU (+10 HU noise): far below -700
        assert np.mean(ct_res[lung]) < -700
        assert np.median(ct_res[lung]) < -780
        # liver SUV drawn in 2.2..2.8: the mean over the liver core stays in the 2..3 band
        assert 2.0 <= np.mean(pet[liver]) <= 3.0
        # brain drawn in 7..9; lungs 0.25..0.4
        assert 6.0 <= np.mean(pet[brain]) <= 9.5
        assert np.mean(pet[lung]) < 0.6
        # soft tissue is between fat (-115..-85) and bone; bone is bright
        assert np.percentile(ct_res[org == ORGAN_LABELS["bone"]], 90) > 300
        assert pet.min() >= 0.0
        # air far from the body has no activity
        air = ndimage.binary_erosion(org == 0, iterations=3)
        assert pet[air].max() < 0.05


def test_brain_is_at_the_top_and_bladder_at_the_bottom():
    case = make_phantom(2)
    org = _arr(case.organs)
    nz = org.shape[0]
    zb = np.nonzero(org == ORGAN_LABELS["brain"])[0]
    zl = np.nonzero(org == ORGAN_LABELS["bladder"])[0]
    assert zb.min() > 0.75 * nz  # index z grows towards the head (+z superior, identity direction)
    assert zl.max() < 0.4 * nz


def test_lesions_match_label_and_pet(lesion_cases):
    for case in lesion_cases:
        label = _arr(case.label)
        pet = _arr(case.pet)
        assert set(np.unique(label).tolist()) == {0, 1}
        assert 1 <= len(case.lesions)
        # at least one lesion has >= 10 label voxels even at tiny size (radius >= 10 mm on
        # 8x6x6 mm voxels: 4/3*pi*1000 / 288 ~ 14.5 voxels expected)
        assert max(les["n_voxels"] for les in case.lesions) >= 10
        union = np.zeros(label.shape, bool)
        for les in case.lesions:
            assert les["region"] in ("lung", "liver", "lymph_node")
            assert 4.0 <= les["radius_mm"] <= 20.0
            sph = _sphere_mask(case.pet, les["center_mm"], les["radius_mm"])
            # every PET voxel centre inside the sphere is labelled
            assert np.all(label[sph] == 1)
            union |= sph
            if sph.sum() >= 3:
                # lesion uptake 3..20 SUV: the hottest voxel of each lesion is >= 3 SUV
                assert pet[sph].max() >= 3.0
                assert les["suv_max"] == pytest.approx(float(pet[sph].max()), rel=0, abs=1e-6)
            idx = les["center_index_zyx"]
            union[idx] = True
        # label = spheres + the voxel nearest each centre, nothing else
        np.testing.assert_array_equal(label > 0, union)
        # hot spots: lesion voxels are on average far hotter than the soft-tissue background
        body_bg = (_arr(case.organs) == ORGAN_LABELS["body"]) & (label == 0)
        assert pet[label > 0].mean() > 2.0 * pet[body_bg].mean()


def test_lesion_free_case_and_coin():
    free = make_phantom(9, lesion_free=True)
    assert free.lesions == [] and _arr(free.label).max() == 0
    # lesion_free=None draws a fair coin: over 40 seeds both outcomes occur, each 10..30 times
    n_free = sum(make_phantom(s).lesion_free for s in range(40))
    assert 10 <= n_free <= 30


def test_make_cohort_fraction_ids_and_determinism():
    cohort = make_cohort(10, seed=3, lesion_free_fraction=0.3, prefix="ph")
    assert [c.case_id for c in cohort] == [f"ph_{i:04d}" for i in range(10)]
    free = [c.lesion_free for c in cohort]
    assert sum(free) == 3  # round(10 * 0.3)
    for c in cohort:
        assert (_arr(c.label).sum() == 0) == c.lesion_free
    again = make_cohort(10, seed=3, lesion_free_fraction=0.3, prefix="ph")
    assert [c.lesion_free for c in again] == free
    np.testing.assert_array_equal(_arr(cohort[4].pet), _arr(again[4].pet))
    assert len({c.seed for c in cohort}) == 10
    assert sum(c.lesion_free for c in make_cohort(4, seed=1, lesion_free_fraction=0.0)) == 0
    assert sum(c.lesion_free for c in make_cohort(4, seed=1, lesion_free_fraction=1.0)) == 4
    assert make_cohort(0) == []


def test_make_cohort_repeated_patients():
    cohort = make_cohort(5, seed=0, n_patients=2, prefix="x")
    assert [c.patient_id for c in cohort] == ["x_P0000", "x_P0001", "x_P0000", "x_P0001", "x_P0000"]
    # third study of patient 0 is 2 * 90 days after 2020-01-01 -> 2020-06-29 (2020 is a leap year)
    assert [c.study_date for c in cohort] == ["20200101", "20200101", "20200331", "20200331", "20200629"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size="huge")
    with pytest.raises(ValueError):
        make_phantom(-1)
    with pytest.raises(ValueError):
        make_cohort(3, lesion_free_fraction=1.5)


def test_lesion_radius_option_changes_only_the_lesion_sizes():
    default = make_phantom(5, lesion_free=False)
    bigger = make_phantom(5, lesion_free=False, lesion_radius_mm=(12.0, 16.0))
    # same anatomy, same number and placement draws: only the radii move into the new range
    np.testing.assert_array_equal(_arr(default.organs), _arr(bigger.organs))
    assert len(bigger.lesions) == len(default.lesions)
    assert [les["region"] for les in bigger.lesions] == [les["region"] for les in default.lesions]
    # radii are capped to 0.9x the host organ's smallest semi-axis on compressed tiny phantoms, never above 16
    assert all(les["radius_mm"] <= 16.0 for les in bigger.lesions)
    assert any(les["radius_mm"] >= 12.0 for les in bigger.lesions)
    # the lesion-free twin is the default's lesion-free twin (the option only affects lesions)
    np.testing.assert_array_equal(_arr(make_phantom(5, lesion_free=True, lesion_radius_mm=(12.0, 16.0)).pet),
                                  _arr(make_phantom(5, lesion_free=True).pet))
    cohort = make_cohort(3, seed=2, lesion_free_fraction=0.0, lesion_radius_mm=(12.0, 16.0))
    assert all(les["radius_mm"] <= 16.0 for case in cohort for les in case.lesions)
    with pytest.raises(ValueError, match="lesion_radius_mm"):
        make_phantom(5, lesion_radius_mm=(10.0, 5.0))
