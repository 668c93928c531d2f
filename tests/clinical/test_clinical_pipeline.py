"""predict_studies with a predictor that returns known masks: numbers by hand, bad studies, re-runs, coverage."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunetv2_petct.clinical.pipeline import BadRunInput, predict_studies
from nnunetv2_petct.conversion.dicom_seg import read_lesion_seg
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
from tests.clinical.conftest import (
    BODY_SUV,
    HOT_SUV,
    SPHERE_RADIUS_MM,
    SPHERE_SUV,
    MaskPredictor,
    painted_case,
    sphere_mask,
    tree_fingerprint,
)

OUTPUT_FILES = {"lesions.nii.gz", "lesions_seg.dcm", "lesions.csv", "report.json", "report.html"}


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {r["study"]: r for r in csv.DictReader(f)}


def _named(case, pid: str):
    c = copy.copy(case)
    c.case_id, c.patient_id = f"case_{pid}", pid
    return c


def _threshold_predictor(level: float = 3.0) -> MaskPredictor:
    return MaskPredictor(lambda pet: sitk.GetArrayFromImage(pet) > level)


def test_painted_sphere_gives_the_hand_computed_numbers(tmp_path):
    case, centre, sph = painted_case()
    body = sitk.GetArrayFromImage(case.organs) > 0
    assert body[sph].all()  # the sphere lies inside the body
    w = write_dicom_study(case, tmp_path / "in", vendor="SIEMENS", seed=2)
    predictor = MaskPredictor(lambda pet: sphere_mask(pet, centre, SPHERE_RADIUS_MM))
    rep = predict_studies(tmp_path / "in", tmp_path / "out", predictor, quiet=True)
    assert rep.ok and [r.status for r in rep.results] == ["done"]
    folder = tmp_path / "out" / "PAINT_20200101"
    assert {p.name for p in folder.iterdir()} == OUTPUT_FILES
    report = json.loads((folder / "report.json").read_text())
    (les,) = report["lesions"]
    n = int(sph.sum())
    vox_ml = 8.0 * 6.0 * 6.0 / 1000.0  # tiny PET grid: (z, y, x) = (8, 6, 6) mm
    # DICOM stores each slice with slope = slice max / 32767: SUV is exact to max / 65534 per slice
    tol = HOT_SUV / 65534 + 1e-6
    assert les["n_voxels"] == n and les["volume_ml"] == pytest.approx(n * vox_ml)
    assert les["suv_max"] == pytest.approx(HOT_SUV, abs=tol)
    assert les["suv_mean"] == pytest.approx((SPHERE_SUV * (n - 1) + HOT_SUV) / n, abs=tol)
    # 1 ml sphere at (8, 6, 6) mm: (8a)^2 + (6b)^2 + (6c)^2 <= 6.2035^2 -> the centre and its 4 in-plane
    # neighbours, all inside the painted sphere: (4 * 6 + 10) / 5
    assert les["suv_peak"] == pytest.approx((4 * SPHERE_SUV + HOT_SUV) / 5, abs=tol)
    assert les["tlg"] == pytest.approx((SPHERE_SUV * (n - 1) + HOT_SUV) / n * n * vox_ml, rel=1e-4)
    assert les["centroid_mm"] == pytest.approx(list(centre), abs=1e-3)  # the voxel ball is symmetric
    assert les["suv_max_position_mm"] == pytest.approx(list(centre), abs=1e-3)
    assert report["totals"]["tmtv_ml"] == pytest.approx(n * vox_ml)
    assert report["totals"]["lesion_count"] == 1
    # SUV from the headers, with its QIBA derivation; the numbers are on the original PET grid
    assert report["suv"]["factor"] == pytest.approx(w.suv_factor, rel=1e-6)
    assert report["suv"]["qiba"]["scan_time_source"] and report["suv"]["weight_kg"] == pytest.approx(w.weight_kg)
    assert report["pet_grid"]["shape_zyx"] == [32, 40, 40] and report["pet_grid"]["spacing_mm"] == [8.0, 6.0, 6.0]
    assert BODY_SUV < les["suv_mean"] < HOT_SUV
    # mask == SEG (read back by highdicom) == the forced sphere
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lesions.nii.gz")))
    np.testing.assert_array_equal(mask, sph.astype(np.uint8))
    np.testing.assert_array_equal(read_lesion_seg(folder / "lesions_seg.dcm", w.pt_files), mask)
    with open(folder / "lesions.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["suv_max"]) == pytest.approx(HOT_SUV, abs=1e-3) and int(row["n_voxels"]) == n
    s = _summary(tmp_path / "out")["PAINT_20200101"]
    assert s["status"] == "done" and s["lesion_count"] == "1" and s["seg"] == "yes"
    assert float(s["tmtv_ml"]) == pytest.approx(n * vox_ml)
    assert s["patient_id"] == "PAINT"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_bad_studies_fail_with_their_reason_and_the_others_finish(lesion_case, tmp_path):
    src = tmp_path / "in"
    good = write_dicom_study(_named(lesion_case, "GOOD"), src / "good", vendor="SIEMENS", seed=1)
    nopet = write_dicom_study(_named(lesion_case, "NOPET"), src / "nopet", vendor="GE", seed=2)
    for p in nopet.pt_files:
        p.unlink()
    noweight = write_dicom_study(_named(lesion_case, "NOWEIGHT"), src / "noweight", vendor="SIEMENS", seed=3)
    for p in noweight.pt_files:
        ds = pydicom.dcmread(p)
        del ds.PatientWeight
        ds.save_as(p)
    corrupt = write_dicom_study(_named(lesion_case, "CORRUPT"), src / "corrupt", vendor="PHILIPS_CNTS", seed=4)
    bad_file = corrupt.pt_files[10]
    with open(bad_file, "r+b") as f:
        f.truncate(int(bad_file.stat().st_size * 0.8))
    far = write_dicom_study(_named(lesion_case, "FAR"), src / "far", vendor="SIEMENS", seed=5)
    for p in far.ct_files:
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                   float(ds.ImagePositionPatient[2]) + 5000.0]
        ds.save_as(p)
    before = tree_fingerprint(src)
    predictor = _threshold_predictor()
    seen = []
    rep = predict_studies(src, tmp_path / "out", predictor, quiet=True, on_study=seen.append)
    assert not rep.ok
    status = {r.name: r for r in rep.results}
    assert set(status) == {"GOOD_20200101", "NOPET_20200101", "NOWEIGHT_20200101", "CORRUPT_20200101",
                           "FAR_20200101"}
    assert status["GOOD_20200101"].status == "done"
    reasons = {k: v.reason for k, v in status.items() if v.status == "failed"}
    assert len(reasons) == 4
    assert "no usable PET (PT) series" in reasons["NOPET_20200101"]
    assert "PatientWeight" in reasons["NOWEIGHT_20200101"]
    assert bad_file.name in reasons["CORRUPT_20200101"] and "pixel data" in reasons["CORRUPT_20200101"]
    assert "do not overlap" in reasons["FAR_20200101"]
    assert all("\n" not in r for r in reasons.values())
    assert sorted(r.name for r in seen) == sorted(status)  # progress for every study
    assert predictor.calls == [["GOOD_20200101"]]  # failed studies never reach the model
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["GOOD_20200101", "summary.csv"]  # nothing half-written
    assert {p.name for p in (out / "GOOD_20200101").iterdir()} == OUTPUT_FILES
    summary = _summary(out)
    assert {k: v["status"] for k, v in summary.items()} == {k: v.status for k, v in status.items()}
    assert summary["NOWEIGHT_20200101"]["reason"] == reasons["NOWEIGHT_20200101"]
    assert tree_fingerprint(src) == before  # the input folder is never modified
    assert good.study_uid


def test_a_prediction_failure_fails_only_that_study(lesion_case, tmp_path):
    for pid, seed in (("A", 1), ("B", 2)):
        write_dicom_study(_named(lesion_case, pid), tmp_path / "in" / pid, vendor="SIEMENS", seed=seed)
    predictor = MaskPredictor(lambda pet: sitk.GetArrayFromImage(pet) > 3.0, fail_for=("B_20200101",))
    rep = predict_studies(tmp_path / "in", tmp_path / "out", predictor, quiet=True)
    res = {r.name: r for r in rep.results}
    assert res["A_20200101"].status == "done" and res["B_20200101"].status == "failed"
    assert res["B_20200101"].reason == "prediction failed: RuntimeError: cannot predict B_20200101"
    # one batch call, then each study alone
    assert predictor.calls == [["A_20200101", "B_20200101"], ["A_20200101"], ["B_20200101"]]


def test_rerun_keeps_or_overwrites_and_anonymize_leaves_identifiers_out(lesion_case, tmp_path):
    write_dicom_study(_named(lesion_case, "P7"), tmp_path / "in", vendor="GE", seed=7)
    out = tmp_path / "out"
    predict_studies(tmp_path / "in", out, _threshold_predictor(), quiet=True)
    folder = out / "P7_20200101"
    seg_uid = pydicom.dcmread(folder / "lesions_seg.dcm").SeriesInstanceUID
    mtime = (folder / "report.json").stat().st_mtime_ns
    rep = predict_studies(tmp_path / "in", out, _threshold_predictor(), quiet=True)
    assert [r.status for r in rep.results] == ["exists"] and rep.ok
    assert (folder / "report.json").stat().st_mtime_ns == mtime
    row = _summary(out)["P7_20200101"]
    assert row["status"] == "exists" and row["lesion_count"] != ""  # numbers of the existing result
    rep = predict_studies(tmp_path / "in", out, _threshold_predictor(), quiet=True, overwrite=True)
    assert [r.status for r in rep.results] == ["done"]
    assert pydicom.dcmread(folder / "lesions_seg.dcm").SeriesInstanceUID != seg_uid

    anon = tmp_path / "anon"
    rep = predict_studies(tmp_path / "in", anon, _threshold_predictor(), quiet=True, anonymize=True)
    (name,) = [r.name for r in rep.results]
    assert name.startswith("study_") and "P7" not in name
    report_text = (anon / name / "report.json").read_text()
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (anon / name / "report.html").read_text())
    summary = (anon / "summary.csv").read_text()
    for text in (report_text, html, summary):
        assert "P7" not in text and "Phantom^" not in text and "20200101" not in text
    assert "omitted (--anonymize)" in html
    # the SEG still belongs to the patient's study (it must attach to it in a PACS)
    assert pydicom.dcmread(anon / name / "lesions_seg.dcm").PatientID == "P7"


def test_partial_ct_coverage_is_filled_with_air_and_reported(lesion_case, tmp_path):
    case = copy.copy(lesion_case)
    case.ct = lesion_case.ct[:, :, 17:]  # CT from its slice 17 up: the feet end has no CT
    pet = lesion_case.pet
    write_dicom_study(case, tmp_path / "in", vendor="SIEMENS", seed=8)
    seen_ct = {}

    def capture(pet_img):
        return sitk.GetArrayFromImage(pet_img) > 3.0

    predictor = MaskPredictor(capture)
    original_predict = predictor.predict

    def predict(cases, output_dir):
        for name, (ct_file, _) in cases.items():
            seen_ct[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_file)))
        original_predict(cases, output_dir)

    predictor.predict = predict
    rep = predict_studies(tmp_path / "in", tmp_path / "out", predictor, quiet=True)
    assert rep.ok
    report = json.loads((tmp_path / "out" / "P1_20200101" / "report.json").read_text())
    axial = report["ct_coverage"]["axial"]
    # by hand: PET edges z0 - dz/2 .. z0 + (nz - 1/2) dz; the CT starts at its slice 17 minus half a CT slice
    z0, dz, nz = pet.GetOrigin()[2], pet.GetSpacing()[2], pet.GetSize()[2]
    ct_start = lesion_case.ct.GetOrigin()[2] + (17 - 0.5) * lesion_case.ct.GetSpacing()[2]
    pet_lo, pet_hi = z0 - dz / 2, z0 + (nz - 0.5) * dz
    assert axial["fraction"] == pytest.approx((pet_hi - ct_start) / (pet_hi - pet_lo), abs=1e-4)
    (gap,) = axial["uncovered"]
    assert gap["end"] == "inferior"
    assert gap["from_mm"] == pytest.approx(pet_lo, abs=1e-3) and gap["to_mm"] == pytest.approx(ct_start, abs=1e-3)
    last_uncovered = math.floor((ct_start - z0) / dz - 1e-9)
    assert gap["slices"] == [0, last_uncovered]
    # the network saw air there
    ct = seen_ct["P1_20200101"]
    assert (ct[: last_uncovered + 1] == -1024).all() and (ct[last_uncovered + 1:] > -1024).any()
    html = (tmp_path / "out" / "P1_20200101" / "report.html").read_text()
    assert "No CT at the inferior (feet) end" in html


def test_nifti_pairs_are_predicted_without_a_seg(lesion_case, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(lesion_case.ct, str(src / "caseA_0000.nii.gz"))  # CT on its own grid
    sitk.WriteImage(lesion_case.pet, str(src / "caseA_0001.nii.gz"))
    sitk.WriteImage(lesion_case.ct, str(src / "lonely_0000.nii.gz"))  # no _0001
    rep = predict_studies(src, tmp_path / "out", _threshold_predictor(), quiet=True)
    res = {r.name: r for r in rep.results}
    assert res["caseA"].status == "done" and res["lonely"].status == "failed"
    assert "no PET file lonely_0001.nii.gz" in res["lonely"].reason
    folder = tmp_path / "out" / "caseA"
    assert {p.name for p in folder.iterdir()} == OUTPUT_FILES - {"lesions_seg.dcm"}
    report = json.loads((folder / "report.json").read_text())
    assert report["outputs"]["seg"] is None and report["study"]["source_format"] == "NIfTI"
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lesions.nii.gz")))
    pet = sitk.GetArrayFromImage(lesion_case.pet)
    np.testing.assert_array_equal(mask, (pet > 3.0).astype(np.uint8) * (mask > 0))  # specks removed only
    assert report["totals"]["suv_max"] == pytest.approx(float(pet[mask > 0].max()))


def test_leftovers_of_a_killed_run_are_removed(lesion_case, tmp_path):
    import subprocess
    import sys

    from nnunetv2_petct.io import STAGING_MARKER

    write_dicom_study(_named(lesion_case, "K1"), tmp_path / "in", vendor="SIEMENS", seed=11)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    marked = {f".work_{dead_pid}_abcd1234": dead_pid, f".tmp_{dead_pid}_abcd1234_K1_20200101": dead_pid,
              "any_name_at_all": dead_pid, f".tmp_{os.getppid()}_abcd1234_live": os.getppid()}
    for name, pid in marked.items():
        (out / name).mkdir(parents=True)
        (out / name / "x.nii.gz").write_bytes(b"partial")
        (out / name / STAGING_MARKER).write_text(f"{pid}\n")
    # result folders whose names look like staging folders (a PatientID can be anything): no marker, kept
    for name in (f".tmp_{dead_pid}_abcd1234_P_20200101", f".work_{dead_pid}_x"):
        (out / name).mkdir()
        (out / name / "report.json").write_text("{}")
    rep = predict_studies(tmp_path / "in", out, _threshold_predictor(), quiet=True)
    assert rep.ok
    left = sorted(p.name for p in out.iterdir() if p.name not in ("K1_20200101", "summary.csv"))
    assert left == sorted([f".tmp_{os.getppid()}_abcd1234_live", f".tmp_{dead_pid}_abcd1234_P_20200101",
                           f".work_{dead_pid}_x"])  # a live process's folder and unmarked folders stay
    assert not (out / "K1_20200101" / STAGING_MARKER).exists()  # the marker never reaches a result folder


def test_run_level_errors(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("nothing here")
    with pytest.raises(BadRunInput, match="no DICOM PET/CT study"):
        predict_studies(tmp_path / "in", tmp_path / "out", _threshold_predictor(), quiet=True)
    with pytest.raises(BadRunInput, match="must not be inside the input"):
        predict_studies(tmp_path / "in", tmp_path / "in" / "out", _threshold_predictor(), quiet=True)
    with pytest.raises(BadRunInput, match="does not exist"):
        predict_studies(tmp_path / "missing", tmp_path / "out", _threshold_predictor(), quiet=True)


def test_series_choice_options_reach_the_dicom_reader(lesion_case, tmp_path):
    """--pet-series / --ct-series: a description that matches no series fails that study with the reader's
    named error; a matching one (the AC PET by its UID, with a non-AC series beside it) is used."""
    w = write_dicom_study(_named(lesion_case, "S1"), tmp_path / "in", vendor="SIEMENS", seed=3, nac_pet=True)
    rep = predict_studies(tmp_path / "in", tmp_path / "out_bad", _threshold_predictor(), quiet=True,
                          pet_series="no such series")
    (res,) = rep.results
    assert res.status == "failed" and "no such series" in res.reason
    rep = predict_studies(tmp_path / "in", tmp_path / "out", _threshold_predictor(), quiet=True,
                          pet_series=w.pt_series_uid)
    assert [r.status for r in rep.results] == ["done"]
    report = json.loads((tmp_path / "out" / "S1_20200101" / "report.json").read_text())
    assert w.pt_series_uid in json.dumps(report)
