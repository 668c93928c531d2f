"""The real-world switches of the DICOM phantom writer write what they say (headers read back with
pydicom), and refuse values they cannot honour. The reader side is tested in tests/conversion."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pydicom
import pytest

from nnunetv2_petct.phantoms import make_phantom
from nnunetv2_petct.phantoms.dicom_writer import OTHER_OBJECT_SOP_CLASSES, ExtraCTSeries, write_dicom_study


@pytest.fixture(scope="module")
def case():
    return make_phantom(4, "tiny")


def _hdr(p):
    return pydicom.dcmread(p, stop_before_pixels=True)


def _dt(date, time) -> datetime:
    return datetime.strptime(str(date) + str(time)[:6], "%Y%m%d%H%M%S")


def test_defaults_are_the_plain_study(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=1)
    assert len(list(tmp_path.iterdir())) == len(w.ct_files) + len(w.pt_files)
    assert w.ct_z_fraction == pytest.approx(1.0)
    pts = [_hdr(p) for p in w.pt_files]
    assert {tuple(d.ImageType) for d in pts} == {("ORIGINAL", "PRIMARY")}
    acq = {_dt(d.AcquisitionDate, d.AcquisitionTime) for d in pts}
    assert len(acq) == 3  # 32 slices, 11 per bed
    assert _dt(pts[0].SeriesDate, pts[0].SeriesTime) == min(acq) == w.scan_reference_datetime.replace(microsecond=0)
    assert len({d.RescaleSlope for d in pts}) > 17  # one slope per slice by default


def test_switches_write_what_they_say(case, tmp_path):
    w = write_dicom_study(case, tmp_path / "study", vendor="PHILIPS_CNTS", seed=2,
                          ct_image_type=("DERIVED", "SECONDARY", "AXIAL"), ct_z_fraction=0.387, bed_slices=3,
                          series_time_after_acquisition=True, series_time_delay_s=600, n_rescale_slopes=17,
                          nac_pet=True, ct_localizer=True, ct_reformat="sagittal",
                          other_objects=tuple(OTHER_OBJECT_SOP_CLASSES), rt_study_dir=tmp_path / "rt",
                          extra_ct_series=[ExtraCTSeries("thin out", slice_step=3)])
    cts = sorted((_hdr(p) for p in w.ct_files), key=lambda d: float(d.ImagePositionPatient[2]))
    assert {tuple(d.ImageType) for d in cts} == {("DERIVED", "SECONDARY", "AXIAL")}
    # head end of the PET: the CT's top slice is the PET's top, its extent ~38.7 % of the PET's
    pts = sorted((_hdr(p) for p in w.pt_files), key=lambda d: float(d.ImagePositionPatient[2]))
    pet_extent = float(pts[-1].ImagePositionPatient[2]) - float(pts[0].ImagePositionPatient[2]) + 8.0
    ct_bottom = float(cts[0].ImagePositionPatient[2]) - 4.0
    assert (float(pts[-1].ImagePositionPatient[2]) + 4.0 - ct_bottom) / pet_extent == pytest.approx(
        w.ct_z_fraction, abs=1e-6)
    assert abs(w.ct_z_fraction - 0.387) <= 8.0 / pet_extent  # whole CT slices of 8 mm
    acq = [_dt(d.AcquisitionDate, d.AcquisitionTime) for d in pts]
    series = _dt(pts[0].SeriesDate, pts[0].SeriesTime)
    assert len(set(acq)) == 11 and (series - max(acq)).total_seconds() == 600
    assert w.scan_reference_datetime.replace(microsecond=0) == min(acq)
    assert len({d.RescaleSlope for d in pts}) == 17
    assert all((0x7053, 0x1000) in d and (0x7053, 0x1009) in d for d in pts)
    assert float(pts[0][0x7053, 0x1000].value) == w.suv_factor
    nac = [_hdr(p) for p in w.nac_pt_files]
    assert len(nac) == len(pts) and all("ATTN" not in d.CorrectedImage for d in nac)
    assert {d.SeriesInstanceUID for d in nac} == {w.nac_pt_series_uid}
    loc = [_hdr(p) for p in w.localizer_files]
    assert [tuple(d.ImageType)[2] for d in loc] == ["LOCALIZER", "LOCALIZER"]
    ref = [_hdr(p) for p in w.reformat_files]
    normal = np.cross(np.asarray(ref[0].ImageOrientationPatient[:3], float),
                      np.asarray(ref[0].ImageOrientationPatient[3:], float))
    assert len(ref) == 80 and abs(normal[0]) == pytest.approx(1.0)  # sagittal: normal along patient x
    (thin,) = w.extra_ct_files
    assert len(thin) == 12  # slices 0, 3, ..., 33 of the 34-slice CT
    for kind, path in w.other_object_files.items():
        d = pydicom.dcmread(path)
        assert d.Modality == kind and d.SOPClassUID == OTHER_OBJECT_SOP_CLASSES[kind]
        assert d.StudyInstanceUID == w.study_uid and d.PatientID == str(case.patient_id)
    assert pydicom.dcmread(w.other_object_files["RTDOSE"]).pixel_array.shape == (3, 4, 4)
    rt = {k: pydicom.dcmread(p) for k, p in w.rt_files.items()}
    assert set(rt) == {"RTDOSE", "RTPLAN"} and all(p.parent == tmp_path / "rt" for p in w.rt_files.values())
    assert {d.StudyInstanceUID for d in rt.values()} == {w.rt_study_uid} != {w.study_uid}
    assert {d.PatientID for d in rt.values()} == {str(case.patient_id)}


def test_bad_switch_values_are_refused(case, tmp_path):
    with pytest.raises(ValueError, match="object kind"):
        write_dicom_study(case, tmp_path / "a", other_objects=("MR",))
    with pytest.raises(ValueError, match="ct_reformat"):
        write_dicom_study(case, tmp_path / "b", ct_reformat="oblique")
    with pytest.raises(ValueError, match="CT slice"):
        write_dicom_study(case, tmp_path / "c", ct_z_fraction=0.01)
    with pytest.raises(ValueError, match=">= 1"):
        write_dicom_study(case, tmp_path / "d", n_rescale_slopes=0)
