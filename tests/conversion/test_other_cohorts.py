"""DEEP-PSMA, SPADE and ViMed-PET converters end to end on phantom replicas of their layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.core import BadInputError, LayoutError, read_manifest
from nnunetv2_petct.conversion.registry import convert_cohort
from nnunetv2_petct.conversion.spade import KNOWN_BAD_SCANS
from nnunetv2_petct.phantoms.layouts import (
    spade_ids,
    write_deep_psma_layout,
    write_spade_layout,
    write_vimed_layout,
)


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _pet_spacing_zyx(case):
    return [float(s) for s in reversed(case.pet.GetSpacing())]


# ------------------------------------------------------------------------------------------ DEEP-PSMA


def test_deep_psma_fdg_only_label_from_ttb(phantom_cases, tmp_path, fingerprint):
    root = write_deep_psma_layout(phantom_cases, tmp_path / "DEEP-PSMA", suv_threshold=3.0)
    before = fingerprint(root)
    report = convert_cohort("deep-psma", root, 223, tmp_path / "raw", quiet=True)
    assert fingerprint(root) == before
    assert report.ok and report.num_training == 4  # the 4 PSMA/ folders are not cases
    assert any("PSMA/" in n for n in report.notes)
    ds = tmp_path / "raw" / "Dataset223_DEEPPSMA_FDG"
    records = {r["case_id"]: r for r in read_manifest(ds)}
    assert sorted(records) == ["train_0001", "train_0002", "train_0003", "train_0004"]
    for i, case in enumerate(phantom_cases):
        rec = records[f"train_{i + 1:04d}"]
        assert rec["source_path"].endswith("FDG") and rec["extra"]["threshold"] == {"suv_threshold": 3.0}
        assert rec["label"]["source"] == "TTB.nii.gz" and rec["cropped"] is False
        np.testing.assert_array_equal(_arr(ds / "labelsTr" / f"train_{i + 1:04d}.nii.gz"),
                                      sitk.GetArrayFromImage(case.label))
        np.testing.assert_array_equal(_arr(ds / "imagesTr" / f"train_{i + 1:04d}_0001.nii.gz"),
                                      sitk.GetArrayFromImage(case.pet))


# ------------------------------------------------------------------------------------------ SPADE


@pytest.fixture()
def spade_tree(phantom_cases, tmp_path):
    root = write_spade_layout(phantom_cases, tmp_path / "SPADE", include_known_bad=True)
    # a scan with NaNs in the PET and one whose CT and PET arrays differ in shape
    (root / "Pnan" / "Snan").mkdir(parents=True)
    pet = sitk.GetArrayFromImage(phantom_cases[0].pet)
    pet[3, 3, 3] = np.nan
    np.save(root / "Pnan" / "Snan" / "pet.npy", pet)
    np.save(root / "Pnan" / "Snan" / "ct.npy", sitk.GetArrayFromImage(phantom_cases[0].ct_on_pet_grid()))
    (root / "Pshape" / "Sshape").mkdir(parents=True)
    np.save(root / "Pshape" / "Sshape" / "pet.npy", np.ones((8, 8, 8), np.float32))
    np.save(root / "Pshape" / "Sshape" / "ct.npy", np.zeros((8, 8, 9), np.int16))
    return root


def test_spade_excludes_known_bad_and_listed_scans(phantom_cases, spade_tree, tmp_path, fingerprint):
    assert "/".join(("LDca4f40", "LDca5687")) in KNOWN_BAD_SCANS
    excl = tmp_path / "exclude.txt"
    p, s = spade_ids(phantom_cases[2])
    excl.write_text(f"# QC rejects\n{p}/{s}\n")
    spacing = _pet_spacing_zyx(phantom_cases[0])
    before = fingerprint(spade_tree)
    report = convert_cohort("spade", spade_tree, 224, tmp_path / "raw", quiet=True, spacing=spacing,
                            exclude=excl)
    assert fingerprint(spade_tree) == before
    reasons = sorted(e["reason"] for e in report.excluded)
    assert len(reasons) == 2 and "known-bad" in reasons[0] and "exclude.txt" in reasons[1]
    failed = {f["case_id"]: f["reason"] for f in report.failed}
    assert "non-finite" in failed["Pnan_Snan"] and "differ in shape" in failed["Pshape_Sshape"]
    assert report.num_training == 3  # 4 phantoms - 1 user-excluded; known-bad copy and 2 bad scans out

    ds = tmp_path / "raw" / "Dataset224_SPADE"
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "body": 1} and dj["petct_channels"]["1"]["units"] == "unknown"
    for case in (phantom_cases[0], phantom_cases[1], phantom_cases[3]):
        p, s = spade_ids(case)
        rec = next(r for r in read_manifest(ds) if r["case_id"] == f"{p}_{s}")
        assert rec["cropped"] is True and rec["label"]["kind"] == "body_mask"
        assert rec["spacing_mm"] == pytest.approx(spacing)
        assert any("given by the user" in a for a in rec["assumptions"])
        (z0, z1), (y0, y1), (x0, x1) = rec["crop_box_zyx"]
        pet = _arr(ds / "imagesTr" / f"{p}_{s}_0001.nii.gz")
        np.testing.assert_array_equal(pet, sitk.GetArrayFromImage(case.pet)[z0:z1, y0:y1, x0:x1])


def test_spade_default_spacing_is_the_authors_assumption(phantom_cases, tmp_path):
    root = write_spade_layout(phantom_cases[:1], tmp_path / "SPADE", include_known_bad=False)
    report = convert_cohort("spade", root, 224, tmp_path / "raw", quiet=True, crop=False)
    assert report.ok
    rec = read_manifest(tmp_path / "raw" / "Dataset224_SPADE")[0]
    assert rec["spacing_mm"] == [3.0, 3.5, 3.5] and rec["cropped"] is False
    assert any("authors' assumption" in a for a in rec["assumptions"])
    img = sitk.ReadImage(str(tmp_path / "raw" / "Dataset224_SPADE" / "imagesTr" / f"{rec['case_id']}_0000.nii.gz"))
    assert img.GetSpacing() == pytest.approx((3.5, 3.5, 3.0))  # SimpleITK order is (x, y, z)


# ------------------------------------------------------------------------------------------ ViMed-PET


def test_vimed_arrays_with_offset_ct(phantom_cases, tmp_path):
    root = write_vimed_layout(phantom_cases[:2], tmp_path / "vimed", ct_offset=1024, counts_per_suv=1000.0)
    spacing = _pet_spacing_zyx(phantom_cases[0])
    report = convert_cohort("vimed-pet", root, 225, tmp_path / "raw", quiet=True, spacing=spacing,
                            ct_offset=-1024, pet_units="counts")
    assert report.ok and report.num_training == 2
    ds = tmp_path / "raw" / "Dataset225_ViMedPET"
    for case in phantom_cases[:2]:
        rec = next(r for r in read_manifest(ds) if r["case_id"] == case.case_id)
        assert rec["channels"]["1"]["units"] == "counts" and rec["extra"]["ct_raw_to_hu"]["offset"] == -1024
        assert rec["extra"]["sidecar_json"]["meta.json"]["study_id"] == case.case_id
        (z0, z1), (y0, y1), (x0, x1) = rec["crop_box_zyx"]
        ct = _arr(ds / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        # stored as uint16 HU+1024, clipped at 0 (= -1024 HU): back to the phantom's HU exactly
        ref = np.maximum(sitk.GetArrayFromImage(case.ct_on_pet_grid()).astype(int), -1024)[z0:z1, y0:y1, x0:x1]
        np.testing.assert_array_equal(ct.astype(int), ref)
        pet = _arr(ds / "imagesTr" / f"{case.case_id}_0001.nii.gz")
        np.testing.assert_allclose(pet, 1000.0 * sitk.GetArrayFromImage(case.pet)[z0:z1, y0:y1, x0:x1], rtol=1e-6)


def test_vimed_without_ct_offset_fails_every_case_with_a_hint(phantom_cases, tmp_path):
    root = write_vimed_layout(phantom_cases[:2], tmp_path / "vimed", ct_offset=1024)
    report = convert_cohort("vimed-pet", root, 225, tmp_path / "raw", quiet=True,
                            spacing=_pet_spacing_zyx(phantom_cases[0]))
    assert len(report.failed) == 2 and report.num_training == 0
    assert all("not in HU" in f["reason"] for f in report.failed)


def test_vimed_needs_spacing_for_arrays(phantom_cases, tmp_path):
    root = write_vimed_layout(phantom_cases[:1], tmp_path / "vimed")
    with pytest.raises(BadInputError, match="--spacing"):
        convert_cohort("vimed-pet", root, 225, tmp_path / "raw", ct_offset=-1024)


def test_vimed_volumes_use_header_geometry_and_globs(phantom_cases, tmp_path):
    case = phantom_cases[0]
    d = tmp_path / "vimed" / "part1" / "study_A"
    d.mkdir(parents=True)
    sitk.WriteImage(case.pet, str(d / "PT_volume.mha"))
    sitk.WriteImage(case.ct, str(d / "CT_volume.nrrd"))
    report = convert_cohort("vimed-pet", tmp_path / "vimed", 225, tmp_path / "raw", quiet=True,
                            pet_glob="PT_*", ct_glob="CT_*", crop=False)
    assert report.ok
    rec = read_manifest(tmp_path / "raw" / "Dataset225_ViMedPET")[0]
    assert rec["case_id"] == "part1_study_A" and rec["extra"]["geometry_source"] == "image headers"
    assert rec["ct_resampled"] is True  # CT on its own grid, resampled onto the PET from the headers
    out = sitk.ReadImage(str(tmp_path / "raw" / "Dataset225_ViMedPET" / "imagesTr" / "part1_study_A_0000.nii.gz"))
    np.testing.assert_allclose(out.GetOrigin(), case.pet.GetOrigin(), atol=1e-3)


def test_vimed_layout_mismatch_and_ambiguous_study(phantom_cases, tmp_path):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "x" / "report.txt").write_text("findings")
    with pytest.raises(LayoutError, match=r"report\.txt"):
        convert_cohort("vimed-pet", tmp_path / "empty", 225, tmp_path / "raw")
    root = write_vimed_layout(phantom_cases[:1], tmp_path / "vimed")
    study = next(p for p in root.iterdir() if p.is_dir())
    np.save(study / "pet_recon2.npy", np.ones((2, 2, 2), np.float32))
    report = convert_cohort("vimed-pet", root, 226, tmp_path / "raw", quiet=True, spacing=(3, 3, 3),
                            ct_offset=-1024)
    assert len(report.failed) == 1
    assert "pet.npy" in report.failed[0]["reason"] and "pet_recon2.npy" in report.failed[0]["reason"]


def test_option_not_valid_for_cohort(tmp_path):
    with pytest.raises(BadInputError, match="--spacing"):
        convert_cohort("autopet", tmp_path, 221, tmp_path / "raw", spacing=(1, 1, 1))
