"""Tests for write_nnunet_raw_dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.phantoms import ORGAN_LABELS, make_cohort, write_nnunet_raw_dataset


@pytest.fixture(scope="module")
def cohort():
    # 3 cases, round(3 * 1/3) = 1 lesion-free
    return make_cohort(3, seed=11, lesion_free_fraction=1 / 3, prefix="ph")


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def test_writes_readable_nnunet_dataset(tmp_path, cohort):
    out = write_nnunet_raw_dataset(cohort, tmp_path, 42, "Phantom")
    assert out == tmp_path / "Dataset042_Phantom"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT", "1": "PET"}
    assert dj["labels"] == {"background": 0, "lesion": 1}
    assert dj["numTraining"] == 3
    assert dj["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(
        f"ph_{i:04d}_{ch:04d}.nii.gz" for i in range(3) for ch in (0, 1))
    for case in cohort:
        ct = sitk.ReadImage(str(out / "imagesTr" / f"{case.case_id}_0000.nii.gz"))
        pet = sitk.ReadImage(str(out / "imagesTr" / f"{case.case_id}_0001.nii.gz"))
        lab = sitk.ReadImage(str(out / "labelsTr" / f"{case.case_id}.nii.gz"))
        # one grid for all channels and the label: the PET grid
        assert _same_grid(ct, pet) and _same_grid(lab, pet) and _same_grid(pet, case.pet)
        assert ct.GetPixelID() == sitk.sitkInt16
        assert pet.GetPixelID() == sitk.sitkFloat32
        assert lab.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(case.pet))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), sitk.GetArrayFromImage(case.label))
        ct_a = sitk.GetArrayFromImage(ct)
        assert ct_a.min() >= -1024 and ct_a.max() <= 3071
        # the resampled CT is anatomically aligned with the PET: lungs (organ map on the PET grid)
        # are dark, the brain is soft tissue
        org = sitk.GetArrayFromImage(case.organs)
        assert np.median(ct_a[org == ORGAN_LABELS["lung"]]) < -700
        assert 0 < np.median(ct_a[org == ORGAN_LABELS["brain"]]) < 80
    manifest = json.loads((out / "phantom_cases.json").read_text())
    assert [m["case_id"] for m in manifest] == [c.case_id for c in cohort]
    assert sum(len(m["lesions"]) == 0 for m in manifest) == 1


def test_unlabeled_mode_writes_body_mask(tmp_path, cohort):
    out = write_nnunet_raw_dataset(cohort[:2], tmp_path, 7, "PhantomSSL", labels=False,
                                   channel_names={"0": "CT", "1": "noNorm"})
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "body": 1}
    assert dj["channel_names"] == {"0": "CT", "1": "noNorm"}
    for case in cohort[:2]:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{case.case_id}.nii.gz")))
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"{case.case_id}_0000.nii.gz")))
        org = sitk.GetArrayFromImage(case.organs)
        assert set(np.unique(lab).tolist()) == {0, 1}
        # every voxel above -500 HU is body (the phantom body is one connected component) ...
        assert np.all(lab[ct > -500] == 1)
        # ... the lungs, below -500 HU but enclosed in every slice, are filled in ...
        assert np.all(lab[org == ORGAN_LABELS["lung"]] == 1)
        # ... and the air outside stays background
        assert np.all(lab[(org == 0) & (ct < -900)] == 0)


def test_refuses_existing_folder_unless_overwrite(tmp_path, cohort):
    out = write_nnunet_raw_dataset(cohort[:1], tmp_path, 5, "P")
    stray = out / "imagesTr" / "stale_0000.nii.gz"
    stray.write_text("x")
    with pytest.raises(FileExistsError):
        write_nnunet_raw_dataset(cohort[:1], tmp_path, 5, "P")
    assert stray.exists()
    write_nnunet_raw_dataset(cohort[:1], tmp_path, 5, "P", overwrite=True)
    assert not stray.exists()
    assert (out / "imagesTr" / f"{cohort[0].case_id}_0001.nii.gz").exists()


def test_rejects_bad_input(tmp_path, cohort):
    with pytest.raises(ValueError, match="duplicate"):
        write_nnunet_raw_dataset([cohort[0], cohort[0]], tmp_path, 1, "D")
    with pytest.raises(ValueError):
        write_nnunet_raw_dataset(cohort[:1], tmp_path, 1000, "D")
    with pytest.raises(ValueError):
        write_nnunet_raw_dataset([], tmp_path, 1, "D")
    with pytest.raises(ValueError, match="channel_names"):
        write_nnunet_raw_dataset(cohort[:1], tmp_path, 1, "D", channel_names={"0": "CT"})
