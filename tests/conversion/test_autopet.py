"""AutoPET converters end to end on phantom replicas of the per-study NIfTI and nnU-Net releases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.core import LayoutError, read_manifest
from nnunetv2_petct.conversion.registry import convert_cohort
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout, write_autopet_nnunet_layout


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture()
def autopet_tree(phantom_cases, tmp_path):
    """The 4 phantoms in the NIfTI release layout + a study with a truncated SUV.nii.gz (an interrupted
    download: ITK itself would read it without error) and one whose CT lies elsewhere in space."""
    from nnunetv2_petct.phantoms import make_phantom

    root = write_autopet_layout(phantom_cases, tmp_path / "FDG-PET-CT-Lesions")
    corrupt = make_phantom(101, case_id="corrupt", patient_id="aaaaaaaaaa", study_date="20210102")
    apart = make_phantom(102, case_id="apart", patient_id="bbbbbbbbbb", study_date="20210103")
    apart.ct.SetOrigin([o + 3000.0 for o in apart.ct.GetOrigin()])  # 3 m away: no overlap with the PET
    write_autopet_layout([corrupt, apart], root)
    ids_c, ids_a = autopet_ids(corrupt), autopet_ids(apart)
    suv = root / ids_c["patient_folder"] / ids_c["study_folder"] / "SUV.nii.gz"
    suv.write_bytes(suv.read_bytes()[: suv.stat().st_size // 2])
    return root, {"corrupt": ids_c["case_id"], "apart": ids_a["case_id"]}


def test_autopet_nifti_release_end_to_end(phantom_cases, autopet_tree, tmp_path, fingerprint):
    root, bad = autopet_tree
    before = fingerprint(root)
    report = convert_cohort("autopet", root, 221, tmp_path / "raw", quiet=True)
    assert fingerprint(root) == before  # the source is never modified

    assert sorted(f["case_id"] for f in report.failed) == sorted(bad.values())
    reasons = {f["case_id"]: f["reason"] for f in report.failed}
    assert "cannot read" in reasons[bad["corrupt"]] and "SUV.nii.gz" in reasons[bad["corrupt"]]
    assert "truncated" in reasons[bad["corrupt"]]
    assert "do not overlap" in reasons[bad["apart"]]

    ds = tmp_path / "raw" / "Dataset221_AutoPET"
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["numTraining"] == 4 == len(list((ds / "imagesTr").glob("*_0000.nii.gz")))
    assert dj["channel_names"] == {"0": "CT", "1": "PET"} and dj["labels"] == {"background": 0, "lesion": 1}
    assert not list((ds / "imagesTr").glob(bad["corrupt"] + "*"))

    records = {r["case_id"]: r for r in read_manifest(ds)}
    for case in phantom_cases:
        ids = autopet_ids(case)
        rec = records[ids["case_id"]]
        assert rec["patient_id"] == ids["patient_id"] and rec["cohort"] == "autopet"
        assert rec["channels"]["1"]["units"] == "SUVbw" and rec["cropped"] is False
        assert rec["source_files"]["ct"] == "CT.nii.gz"
        np.testing.assert_array_equal(_arr(ds / "imagesTr" / f"{ids['case_id']}_0001.nii.gz"),
                                      sitk.GetArrayFromImage(case.pet))
        np.testing.assert_array_equal(_arr(ds / "labelsTr" / f"{ids['case_id']}.nii.gz"),
                                      sitk.GetArrayFromImage(case.label))
        ct = _arr(ds / "imagesTr" / f"{ids['case_id']}_0000.nii.gz").astype(int)
        assert np.abs(ct - sitk.GetArrayFromImage(case.ct_on_pet_grid()).astype(int)).max() <= 1
        out = sitk.ReadImage(str(ds / "imagesTr" / f"{ids['case_id']}_0000.nii.gz"))
        np.testing.assert_allclose(out.GetOrigin(), case.pet.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(out.GetSpacing(), case.pet.GetSpacing(), atol=1e-5)
    # patient 0 has two studies (90 days apart): same patient id, two case ids
    p0 = [r for r in records.values() if r["patient_id"] == autopet_ids(phantom_cases[0])["patient_id"]]
    assert len(p0) == 2


def test_autopet_uses_ctres_when_ct_missing(phantom_cases, tmp_path):
    root = write_autopet_layout(phantom_cases[:1], tmp_path / "src")
    ids = autopet_ids(phantom_cases[0])
    (root / ids["patient_folder"] / ids["study_folder"] / "CT.nii.gz").unlink()
    report = convert_cohort("autopet", root, 221, tmp_path / "raw", quiet=True)
    assert report.ok
    rec = read_manifest(tmp_path / "raw" / "Dataset221_AutoPET")[0]
    assert rec["source_files"]["ct"] == "CTres.nii.gz" and rec["ct_resampled"] is False
    assert any("CTres" in a for a in rec["assumptions"])
    ct = _arr(tmp_path / "raw" / "Dataset221_AutoPET" / "imagesTr" / f"{ids['case_id']}_0000.nii.gz")
    np.testing.assert_array_equal(ct, sitk.GetArrayFromImage(phantom_cases[0].ct_on_pet_grid()))


def test_autopet_missing_seg_fails_that_case(phantom_cases, tmp_path):
    root = write_autopet_layout(phantom_cases[:2], tmp_path / "src")
    ids = autopet_ids(phantom_cases[1])
    (root / ids["patient_folder"] / ids["study_folder"] / "SEG.nii.gz").unlink()
    report = convert_cohort("autopet", root, 221, tmp_path / "raw", quiet=True)
    assert [f["case_id"] for f in report.failed] == [ids["case_id"]]
    assert "SEG.nii.gz missing" in report.failed[0]["reason"] and report.num_training == 1


def test_autopet_layout_mismatch_lists_what_was_found(tmp_path):
    (tmp_path / "src" / "something").mkdir(parents=True)
    (tmp_path / "src" / "something" / "scan.nrrd").write_text("x")
    with pytest.raises(LayoutError, match=r"scan\.nrrd"):
        convert_cohort("autopet", tmp_path / "src", 221, tmp_path / "raw")


def test_nnunet_release_fdg_only_by_default_and_same_ids(phantom_cases, tmp_path):
    psma = phantom_cases[3].case_id
    root = write_autopet_nnunet_layout(phantom_cases, tmp_path / "Dataset221_AutoPETIII", psma_case_ids=[psma])
    report = convert_cohort("autopet-nnunet", root, 222, tmp_path / "raw", quiet=True)
    assert report.ok and report.num_training == 3
    assert [e["reason"] for e in report.excluded] == ["PSMA case (use --include-psma)"]
    ds = tmp_path / "raw" / "Dataset222_AutoPET"
    records = {r["case_id"]: r for r in read_manifest(ds)}
    # same case and patient ids as the per-study NIfTI release -> the paper's split lists map onto both
    assert set(records) == {autopet_ids(c)["case_id"] for c in phantom_cases[:3]}
    for c in phantom_cases[:3]:
        r = records[autopet_ids(c)["case_id"]]
        assert r["patient_id"] == autopet_ids(c)["patient_id"] and r["ct_resampled"] is False
        np.testing.assert_array_equal(_arr(ds / "imagesTr" / f"{r['case_id']}_0000.nii.gz"),
                                      sitk.GetArrayFromImage(c.ct_on_pet_grid()))

    shutil.rmtree(ds)
    report = convert_cohort("autopet-nnunet", root, 222, tmp_path / "raw", quiet=True, include_psma=True)
    psma_rec = [r for r in read_manifest(ds) if r["case_id"].startswith("psma_")]
    assert report.num_training == 4 and len(psma_rec) == 1
    assert psma_rec[0]["tracer"] == "PSMA" and psma_rec[0]["patient_id"].startswith("PSMA_")
