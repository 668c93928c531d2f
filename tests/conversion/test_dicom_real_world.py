"""Issue 17 end to end: DICOM PET/CT studies with the features of a real Philips head-and-neck study
(and a Siemens BQML variant) through the real ``nnUNetv2_petct_convert dicom`` console script.

Every expected number is derived here from the DICOM headers the phantom writer wrote (read back with
pydicom), never from the package: SUV by the QIBA formula, coverage from ImagePositionPatient, and
every manifest statistic from the written NIfTI files.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pytest

from nnunetv2_petct.conversion.core import BadInputError, read_manifest
from nnunetv2_petct.conversion.registry import convert_cohort
from nnunetv2_petct.phantoms import make_phantom
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
from tests.conftest import cli, run

PHILIPS_SUV_SCALE_FACTOR = (0x7053, 0x1000)
PHILIPS_ACSF = (0x7053, 0x1009)


@pytest.fixture(scope="module")
def case():
    return make_phantom(1, "tiny")


@pytest.fixture()
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    e.update(nnUNet_raw=str(tmp_path / "raw"), PYTHONUNBUFFERED="1")
    return e


# ------------------------------------------------------------------------------------ by hand


def _sorted_datasets(files) -> list:
    """Full datasets of one series, sorted by ImagePositionPatient z (the order of the written volume
    for these axial, identity-direction phantoms)."""
    return sorted((pydicom.dcmread(p) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))


def _dt(date: str, time: str) -> datetime:
    whole, _, frac = str(time).partition(".")
    return datetime.strptime(str(date) + whole[:6], "%Y%m%d%H%M%S") + timedelta(seconds=float("0." + (frac or "0")))


def _rescaled(d) -> np.ndarray:
    return d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)


def _suv_philips_by_hand(datasets) -> np.ndarray:
    """Units CNTS: SUV = (stored * RescaleSlope + RescaleIntercept) * Philips SUVScaleFactor (7053,1000)."""
    return np.stack([_rescaled(d) * float(d[PHILIPS_SUV_SCALE_FACTOR].value) for d in datasets])


def _bqml_factor_by_hand(datasets, scan: datetime) -> float:
    d0 = datasets[0]
    rp = d0.RadiopharmaceuticalInformationSequence[0]
    injection = _dt(d0.SeriesDate, rp.RadiopharmaceuticalStartTime)
    decayed = float(rp.RadionuclideTotalDose) * 2.0 ** (-(scan - injection).total_seconds()
                                                        / float(rp.RadionuclideHalfLife))
    return float(d0.PatientWeight) * 1000.0 / decayed


def _z_range(datasets) -> tuple[float, float]:
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    dz = z[1] - z[0]
    return z[0] - dz / 2, z[-1] + dz / 2


def _expected_on_written_grid(expected: np.ndarray, record: dict) -> np.ndarray:
    box = record["crop_box_zyx"]
    if box is None:
        return expected
    (z0, z1), (y0, y1), (x0, x1) = box
    return expected[z0:z1, y0:y1, x0:x1]


def _check_written_origin(record: dict, pet_datasets) -> None:
    """The written PET's origin is the source voxel at the crop box corner (physical consistency)."""
    z0, y0, x0 = [b[0] for b in record["crop_box_zyx"]] if record["crop_box_zyx"] else (0, 0, 0)
    d = pet_datasets[z0]
    row_mm, col_mm = float(d.PixelSpacing[1]), float(d.PixelSpacing[0])
    expect = [float(d.ImagePositionPatient[0]) + x0 * row_mm, float(d.ImagePositionPatient[1]) + y0 * col_mm,
              float(d.ImagePositionPatient[2])]
    np.testing.assert_allclose(record["origin_mm_xyz"], expect, atol=1e-3)


def _convert(src, env, *extra, expect: int):
    proc = run([cli("nnUNetv2_petct_convert"), "dicom", str(src), "-d", "601", "-q", *extra], env, check=False)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ the Philips study


def test_philips_head_and_neck_study(case, tmp_path, env, manifest_check):
    """The refused real study, rebuilt: Units CNTS with both Philips factors, 11 bed positions, SeriesTime
    after every AcquisitionTime, 17 RescaleSlopes, a DERIVED\\SECONDARY\\AXIAL CT covering ~39 % of the
    PET (head and neck), RTDOSE + RTPLAN in another study folder of the same patient."""
    src = tmp_path / "src"
    w = write_dicom_study(case, src / "petct", vendor="PHILIPS_CNTS", seed=17,
                          ct_image_type=("DERIVED", "SECONDARY", "AXIAL"), ct_z_fraction=0.387, bed_slices=3,
                          series_time_after_acquisition=True, n_rescale_slopes=17, rt_study_dir=src / "rt")
    pts = _sorted_datasets(w.pt_files)
    cts = _sorted_datasets(w.ct_files)
    # the study has the features it claims (so this test exercises them)
    assert {d.Units for d in pts} == {"CNTS"}
    assert all(PHILIPS_SUV_SCALE_FACTOR in d and PHILIPS_ACSF in d for d in pts)
    acq = [_dt(d.AcquisitionDate, d.AcquisitionTime) for d in pts]
    assert len(set(acq)) == 11 and _dt(pts[0].SeriesDate, pts[0].SeriesTime) > max(acq)
    assert len({d.RescaleSlope for d in pts}) == 17
    assert {tuple(d.ImageType) for d in cts} == {("DERIVED", "SECONDARY", "AXIAL")}
    p_lo, p_hi = _z_range(pts)
    c_lo, c_hi = _z_range(cts)
    coverage = (min(p_hi, c_hi) - max(p_lo, c_lo)) / (p_hi - p_lo)
    assert 0.3 < coverage < 0.5

    # default threshold 0.5: the case fails, the message names --min-overlap and the value that passes
    out = _convert(src, env, expect=1)
    assert f"CT covers only {100 * coverage:.1f} % of the PET's axial (z) extent" in out
    assert f"pass --min-overlap {math.floor(100 * coverage) / 100:.2f}" in out
    assert "ignored 2 DICOM object(s) that are not CT/PET images: 1 RTDOSE, 1 RTPLAN" in out
    ds_dir = tmp_path / "raw" / "Dataset601_PETCT"
    assert list((ds_dir / "imagesTr").iterdir()) == []  # nothing half-written

    out = _convert(src, env, "--min-overlap", "0.3", expect=0)
    assert "1 converted" in out and "1 RTDOSE, 1 RTPLAN" in out
    (rec,) = read_manifest(ds_dir)
    report = json.loads((ds_dir / "conversion_report.json").read_text())
    assert any("1 RTDOSE, 1 RTPLAN" in n for n in report["notes"])

    # the chosen series and why
    dicom = rec["extra"]["dicom"]
    sel = dicom["series_selection"]
    assert sel["CT"]["chosen"] == w.ct_series_uid and sel["PT"]["chosen"] == w.pt_series_uid
    assert sel["CT"]["how"] == "the only qualifying series"
    assert sel["CT"]["series"][0]["image_type"] == "DERIVED\\SECONDARY\\AXIAL"
    assert "CT Image Storage" in sel["rules"]["CT"] and "ATTN" in sel["rules"]["PT"]
    # the coverage facts (what the prediction path reports): the feet side of the PET has no CT
    assert dicom["coverage"]["ct_fraction_of_pet_z"] == pytest.approx(coverage, abs=1e-4)
    (gap,) = dicom["coverage"]["pet_without_ct"]
    assert gap["side"] == "inferior" and gap["length_mm"] == pytest.approx(c_lo - p_lo, abs=0.01)
    assert rec["ct_pet_z_overlap_fraction"] == pytest.approx(coverage, abs=1e-4)
    assert any(f"CT covers {100 * coverage:.1f} %" in x for x in rec["warnings"])

    # SUV by hand (Philips SUVScaleFactor, per-slice slopes) on the written (cropped) grid
    files = manifest_check(ds_dir, rec)
    expected = _suv_philips_by_hand(pts)
    assert rec["cropped"] and rec["crop_box_zyx"] is not None
    np.testing.assert_allclose(files["pet"], _expected_on_written_grid(expected, rec), rtol=1e-6, atol=1e-7)
    _check_written_origin(rec, pts)
    # the manifest describes the written (cropped) PET; the source's maximum is kept apart
    assert rec["source_values"]["pet"]["max"] == pytest.approx(float(expected.max()), rel=1e-6)
    assert rec["source_values"]["pet"]["shape_zyx"] == list(expected.shape)
    assert rec["pet_max"] < rec["source_values"]["pet"]["max"]  # the crop left the hottest voxel out
    assert rec["source_values"]["ct"]["shape_zyx"][0] == len(cts)


# ------------------------------------------------------------------------------------ a Siemens BQML study


def test_siemens_bqml_study_with_every_distractor(case, tmp_path, env, manifest_check):
    """Units BQML with SeriesTime after every AcquisitionTime (QIBA: earliest AcquisitionTime is the
    scan reference), 11 beds, 17 slopes, DERIVED CT, plus a localizer, a non-AC PET, RTSTRUCT/SR/KO/PR
    beside the images and a second AC reconstruction chosen with --pet-series."""
    src = tmp_path / "src"
    w = write_dicom_study(case, src, vendor="SIEMENS", seed=18, ct_image_type=("DERIVED", "SECONDARY", "AXIAL"),
                          bed_slices=3, series_time_after_acquisition=True, n_rescale_slopes=17,
                          ct_localizer=True, nac_pet=True, other_objects=("RTSTRUCT", "SR", "KO", "PR"))
    # a second attenuation-corrected reconstruction: same acquisition, 1.25 x the activity
    psf_uid = pydicom.uid.generate_uid()
    for p in w.pt_files:
        d = pydicom.dcmread(p)
        d.SeriesInstanceUID, d.SOPInstanceUID = psf_uid, pydicom.uid.generate_uid()
        d.SeriesDescription = "PET WB AC PSF"
        d.RescaleSlope = f"{float(d.RescaleSlope) * 1.25:.10g}"
        d.save_as(p.parent / f"psf_{p.name}")
    psf_files = sorted(p for p in src.iterdir() if p.name.startswith("psf_"))

    out = _convert(src, env, "--no-crop", "--pet-series", "pet wb ac psf", expect=0)
    assert "ignored 4 DICOM object(s) that are not CT/PET images: 1 KO, 1 PR, 1 RTSTRUCT, 1 SR" in out
    assert "CT/PET series set aside" in out
    ds_dir = tmp_path / "raw" / "Dataset601_PETCT"
    (rec,) = read_manifest(ds_dir)
    sel = rec["extra"]["dicom"]["series_selection"]
    assert sel["PT"]["chosen"] == psf_uid and sel["PT"]["requested"] == "pet wb ac psf"
    pt_rec = {s["series_uid"]: s for s in sel["PT"]["series"]}
    assert "lacks ATTN" in pt_rec[w.nac_pt_series_uid]["reason"]
    assert pt_rec[w.pt_series_uid]["reason"] == "does not match --pet-series 'pet wb ac psf'"
    ct_rec = {s["series_uid"]: s for s in sel["CT"]["series"]}
    assert sel["CT"]["chosen"] == w.ct_series_uid and "localizer" in ct_rec[w.localizer_series_uid]["reason"]
    assert rec["extra"]["dicom"]["other_objects"] == {"KO": 1, "PR": 1, "RTSTRUCT": 1, "SR": 1}

    # SUV by hand: BQML, scan reference = earliest AcquisitionTime because SeriesTime is later
    pts = _sorted_datasets(psf_files)
    acq = [_dt(d.AcquisitionDate, d.AcquisitionTime) for d in pts]
    series_time = _dt(pts[0].SeriesDate, pts[0].SeriesTime)
    assert series_time > max(acq) and len(set(acq)) == 11 and len({d.RescaleSlope for d in pts}) == 17
    factor = _bqml_factor_by_hand(pts, min(acq))
    # (taking SeriesTime instead would be off by the decay over >= 30 min: the test can tell)
    assert abs(_bqml_factor_by_hand(pts, series_time) / factor - 1) > 0.15
    expected = np.stack([_rescaled(d) for d in pts]) * factor
    files = manifest_check(ds_dir, rec)
    assert rec["cropped"] is False and rec["crop_box_zyx"] is None
    np.testing.assert_allclose(files["pet"], expected, rtol=1e-6, atol=1e-7)
    assert rec["extra"]["dicom"]["suv"]["factor"] == pytest.approx(factor, rel=1e-9)
    assert rec["extra"]["dicom"]["suv"]["scan_time_source"].startswith("earliest AcquisitionDateTime")
    # the PSF reconstruction really is the one converted (1.25 x the phantom's SUV)
    import SimpleITK as sitk

    ref = sitk.GetArrayFromImage(case.pet).astype(np.float64)
    assert files["pet"].max() == pytest.approx(1.25 * ref.max(), rel=2e-3)
    assert rec["source_values"]["pet"]["max"] == rec["pet_max"]  # no crop: source and written agree


# ------------------------------------------------------------------------------------ library paths


def test_autopet_dicom_takes_the_series_options_and_keeps_seg(case, tmp_path, manifest_check):
    import dataclasses

    from nnunetv2_petct.phantoms.layouts import autopet_ids

    c = dataclasses.replace(case, patient_id=autopet_ids(case)["patient_id"])
    w = write_dicom_study(c, tmp_path / "src", vendor="GE", seed=19, with_seg=True, nac_pet=True,
                          ct_image_type=("DERIVED", "SECONDARY", "AXIAL"), other_objects=("RTSTRUCT",))
    report = convert_cohort("autopet-dicom", tmp_path / "src", 602, tmp_path / "raw", quiet=True,
                            pet_series=w.pt_series_uid, ct_series="CTAC*")
    assert report.ok and report.num_training == 1
    # the SEG is the label here, so only the RTSTRUCT counts as ignored
    assert report.notes[0] == "ignored 1 DICOM object(s) that are not CT/PET images: 1 RTSTRUCT"
    (rec,) = read_manifest(tmp_path / "raw" / "Dataset602_AutoPET")
    assert rec["label"]["source"] == "DICOM-SEG"
    assert rec["extra"]["dicom"]["series_selection"]["CT"]["how"] == "matches --ct-series 'CTAC*'"
    files = manifest_check(tmp_path / "raw" / "Dataset602_AutoPET", rec)
    import SimpleITK as sitk

    np.testing.assert_array_equal(files["label"], sitk.GetArrayFromImage(c.label))
    with pytest.raises(BadInputError, match="--ct-series"):
        convert_cohort("autopet", tmp_path / "src", 603, tmp_path / "raw", ct_series="x")


def test_cropped_nifti_cohort_manifest_describes_the_written_files(tmp_path, manifest_check):
    # The manifest rule holds for every cohort, not only DICOM: a cropped AutoPET NIfTI conversion.
    import SimpleITK as sitk

    from nnunetv2_petct.phantoms import make_cohort
    from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout

    cases = make_cohort(2, seed=21, size="tiny", lesion_free_fraction=0.0, prefix="m")
    src = write_autopet_layout(cases, tmp_path / "autopet")
    report = convert_cohort("autopet", src, 604, tmp_path / "raw", quiet=True, crop=True)
    assert report.ok
    ds_dir = tmp_path / "raw" / "Dataset604_AutoPET"
    records = {r["case_id"]: r for r in read_manifest(ds_dir)}
    assert len(records) == 2
    for c in cases:
        rec = records[autopet_ids(c)["case_id"]]
        files = manifest_check(ds_dir, rec)
        suv = sitk.GetArrayFromImage(c.pet)
        assert rec["cropped"] and list(files["pet"].shape) != list(suv.shape)
        np.testing.assert_array_equal(files["pet"], _expected_on_written_grid(suv, rec))
        assert rec["source_values"]["pet"]["max"] == float(suv.max())
        assert rec["source_values"]["pet"]["shape_zyx"] == list(suv.shape)
