"""The 'autopet-dicom' and 'dicom' cohorts end to end on phantoms written as DICOM studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.core import read_manifest
from nnunetv2_petct.conversion.registry import convert_cohort
from nnunetv2_petct.phantoms import dicom_writer
from nnunetv2_petct.phantoms.layouts import autopet_ids


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def dicom_tree(phantom_cases, tmp_path_factory):
    """Two lesion-bearing phantoms as TCIA-style studies (PatientID PETCT_<hash>, with DICOM-SEG),
    one from a SIEMENS and one from a GE scanner, plus a non-FDG study."""
    root = tmp_path_factory.mktemp("dicom")
    lesion_cases = [c for c in phantom_cases if not c.lesion_free][:2]
    tcia = [dataclasses.replace(c, patient_id=autopet_ids(c)["patient_id"]) for c in lesion_cases]
    for i, (c, vendor) in enumerate(zip(tcia, ("SIEMENS", "GE"))):
        dicom_writer.write_dicom_study(c, root / f"study{i}", vendor=vendor, seed=i, with_seg=True)
    other = dataclasses.replace(phantom_cases[3], patient_id="PETCT_cccccccccc", case_id="psma_study")
    dicom_writer.write_dicom_study(other, root / "study_psma", with_seg=True, radiopharmaceutical="PSMA-11")
    return root, lesion_cases


def test_autopet_dicom_release(dicom_tree, tmp_path, fingerprint):
    root, cases = dicom_tree
    before = fingerprint(root)
    report = convert_cohort("autopet-dicom", root, 226, tmp_path / "raw", quiet=True)
    assert fingerprint(root) == before
    assert report.num_training == 2 and len(report.failed) == 1
    assert "not FDG" in report.failed[0]["reason"] and "PSMA-11" in report.failed[0]["reason"]
    ds = tmp_path / "raw" / "Dataset226_AutoPET"
    records = {r["case_id"]: r for r in read_manifest(ds)}
    for case in cases:
        ids = autopet_ids(case)  # same ids as the NIfTI releases: PatientID hash + StudyDate
        rec = records[ids["case_id"]]
        assert rec["patient_id"] == ids["patient_id"] and rec["label"]["source"] == "DICOM-SEG"
        np.testing.assert_array_equal(_arr(ds / "labelsTr" / f"{ids['case_id']}.nii.gz"),
                                      sitk.GetArrayFromImage(case.label))
        pet = _arr(ds / "imagesTr" / f"{ids['case_id']}_0001.nii.gz")
        ref = sitk.GetArrayFromImage(case.pet)
        # SUV from the DICOM headers (QIBA) equals the phantom's SUV up to 16-bit pixel quantization
        assert np.abs(pet - ref).max() <= 1e-3 * ref.max() + 1e-4


def test_generic_dicom_cohort_is_unlabeled_and_cropped(dicom_tree, tmp_path):
    root, cases = dicom_tree
    report = convert_cohort("dicom", root, 227, tmp_path / "raw", quiet=True, allow_non_fdg=True)
    assert report.ok and report.num_training == 3
    records = read_manifest(tmp_path / "raw" / "Dataset227_PETCT")
    assert all(r["label"]["kind"] == "body_mask" and r["cropped"] for r in records)
    tracers = sorted(r["tracer"] for r in records)
    assert tracers == ["FDG", "FDG", "PSMA-11"]
