"""QIBA body-weight SUV factor against real vendor headers and real PET slices.

Every expected factor below is derived by hand from the header values (read from the files when the
test was written) with the QIBA rules:

    factor = weight_kg * 1000 / (dose_Bq * 2 ** (-(scan - injection)_s / half_life_s))

and, where it helps, cross-checked against a rounded value worked out separately.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_petct.conversion.suv import (
    SUVError,
    compute_suv_bw,
    decay_factor,
    parse_dicom_date,
    parse_dicom_datetime,
    parse_dicom_time,
    suv_bw_factor,
    suv_bw_factors,
    suv_volume_from_slices,
)

TESTDATA = Path(__file__).resolve().parents[1] / "data"  # tests/data: real files with licence notes
HEADERS = TESTDATA / "suv_headers"
PET_DICOM = TESTDATA / "pet_dicom"


def _bw(weight_kg: float, dose_bq: float, elapsed_s: float, half_life_s: float) -> float:
    """The QIBA BQML formula written out (independent of the implementation)."""
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-elapsed_s / half_life_s))


def _load(name: str) -> list[dict]:
    return json.loads((HEADERS / name).read_text())  # a missing file is an error, not a skip


# (file, expected factor derived by hand, rounded cross-check, scan time source substring)
CASES = [
    # SIEMENS: SeriesTime 10:48:29 <= AcquisitionTime 10:48:30.35 -> scan = series time.
    # Injection RadiopharmaceuticalStartDateTime 2020-12-17 08:30:45 -> 2 h 17 min 44 s = 8264 s.
    # 67 kg, 374e6 Bq, T1/2 6586.2 s.
    ("SIEMENS-instances.json", _bw(67, 374e6, 8264, 6586.2), 4.275e-4, "SeriesDateTime"),
    # Siemens with AcquisitionTime 12:35:14.999995 5 us BEFORE SeriesTime 12:35:15 -> scan = earliest
    # acquisition time (no GE private). Injection SeriesDate + 11:41:00 -> 3254.999995 s.
    ("BQML_AC_DT_lessThan_S_DT_SIEMENS-instances.json",
     _bw(65, 225e6, 3254.999995, 6586.2), 4.069e-4, "earliest Acquisition"),
    # SeriesTime 13:49:18 is 45 min after AcquisitionTime 13:03:48.234 (series time reset by
    # post-processing) -> scan = acquisition 13:03:48.234; injection 12:00:37 -> 3791.234 s.
    ("CPS_AND_BQML_AC_DT_-_S_DT-instances.json",
     _bw(69, 388e6, 3791.234, 6586.2), 2.650e-4, "earliest Acquisition"),
    # GE: series = acquisition 09:56:21; StartDateTime "20201217084500.00 " (trailing space) -> 4281 s.
    ("GE_MEDICAL_AND_BQML-instances.json",
     _bw(52, 152022720, 4281, 6586.2001953125), 5.367e-4, "SeriesDateTime"),
    # Philips BQML (private factors present but ignored for BQML): series 11:01:55 < acq 11:01:56;
    # StartDateTime 10:00:58 -> 3657 s; 64 kg, 126e6 Bq, T1/2 6586.199707 s.
    ("PHILIPS_BQML-instances.json", _bw(64, 126e6, 3657, 6586.199707), 7.464e-4, "SeriesDateTime"),
    # Philips CNTS with SUVScaleFactor "0.000551" -> used directly.
    ("PHILIPS_CNTS_AND_BQML_SUV-instances.json", 0.000551, 5.51e-4, None),
    # Philips CNTS with only SUVScaleFactor "0.000728" -> used directly.
    ("PHILIPS_CNTS_AND_SUV-instances.json", 0.000728, 7.28e-4, None),
    # No RadiopharmaceuticalStartDateTime: SeriesDate 20201217 + StartTime 12:50:00; series
    # 13:54:31.843 < acquisition 14:15:55.687 -> scan = series; 3871.843 s; 102 kg, 412e6 Bq.
    ("RADIOPHARM_DATETIME_UNDEFINED-instances.json",
     _bw(102, 412e6, 3871.843, 6586.2), 3.721e-4, "SeriesDateTime"),
]


@pytest.mark.parametrize("name,expected,rounded,scan_source", CASES, ids=[c[0] for c in CASES])
def test_vendor_headers(name, expected, rounded, scan_source):
    series = _load(name)
    comp = compute_suv_bw(series)
    assert comp.factor == pytest.approx(expected, rel=1e-9)
    assert comp.factor == pytest.approx(rounded, rel=1e-3)
    assert suv_bw_factor(series) == pytest.approx(expected, rel=1e-9)
    assert len(suv_bw_factors(series)) == len(series)
    if scan_source is not None:
        assert scan_source in comp.scan_time_source


def test_philips_bqml_private_factor_is_consistent_with_bqml_factor():
    # For the Philips BQML set, SUVScaleFactor / ACSF must equal weight / decayed dose: this is the
    # evidence that both private factors multiply the same (rescaled) value.
    h = _load("PHILIPS_BQML-instances.json")[0]
    suv_sf = float(h["PhilipsPETPrivateGroup"]["SUVScaleFactor"])
    acsf = float(h["PhilipsPETPrivateGroup"]["ActivityConcentrationScaleFactor"])
    assert suv_sf / acsf == pytest.approx(_bw(64, 126e6, 3657, 6586.199707), rel=2e-3)


def test_philips_cnts_activity_concentration_fallback():
    # Delete the SUV scale factor: ACSF 1.602563 x (54 kg, 238e6 Bq, SeriesTime 09:35:56 before
    # AcquisitionTime 09:54:39 -> scan = series; injection 08:30:00 -> 3956 s; T1/2 6588 s).
    series = copy.deepcopy(_load("PHILIPS_CNTS_AND_BQML_SUV-instances.json"))
    for h in series:
        del h["PhilipsPETPrivateGroup"]["SUVScaleFactor"]
    expected = 1.602563 * _bw(54, 238e6, 3956, 6588)
    comp = compute_suv_bw(series)
    assert comp.factor == pytest.approx(expected, rel=1e-9)
    assert "7053,1009" in comp.method
    # ... and it reproduces the scanner's own SUV factor (0.000551) to 0.1 %.
    assert comp.factor == pytest.approx(0.000551, rel=1e-3)


def test_philips_cnts_without_private_factors_is_refused():
    series = copy.deepcopy(_load("PHILIPS_CNTS_AND_SUV-instances.json"))
    for h in series:
        h["PhilipsPETPrivateGroup"] = {}
    with pytest.raises(SUVError, match="7053,1000"):
        suv_bw_factor(series)


def test_philips_suv_scale_factor_zero_falls_back():
    series = copy.deepcopy(_load("PHILIPS_CNTS_AND_BQML_SUV-instances.json"))
    for h in series:
        h["PhilipsPETPrivateGroup"]["SUVScaleFactor"] = "0"
    assert suv_bw_factor(series) == pytest.approx(1.602563 * _bw(54, 238e6, 3956, 6588), rel=1e-9)


@pytest.mark.parametrize("key", ["PatientWeight", "RadionuclideTotalDose", "RadionuclideHalfLife",
                                 "CorrectedImage", "DecayCorrection", "Units"])
def test_missing_tag_is_named(key):
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        del h[key]
    with pytest.raises(SUVError, match=key):
        suv_bw_factor(series)


@pytest.mark.parametrize("key", ["PatientWeight", "RadionuclideTotalDose", "RadionuclideHalfLife"])
def test_zero_value_is_refused(key):
    series = copy.deepcopy(_load("GE_MEDICAL_AND_BQML-instances.json"))
    for h in series:
        h[key] = 0
    with pytest.raises(SUVError, match=key):
        suv_bw_factor(series)


def test_missing_injection_time_is_named():
    series = copy.deepcopy(_load("RADIOPHARM_DATETIME_UNDEFINED-instances.json"))
    for h in series:
        del h["RadiopharmaceuticalStartTime"]
    with pytest.raises(SUVError, match="RadiopharmaceuticalStartTime"):
        suv_bw_factor(series)


@pytest.mark.parametrize("corrected,missing", [(["NORM", "DECY"], "ATTN"), (["ATTN", "SCAT"], "DECY")])
def test_corrected_image_must_have_attn_and_decy(corrected, missing):
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        h["CorrectedImage"] = corrected
    with pytest.raises(SUVError, match=missing):
        suv_bw_factor(series)


def test_unsupported_values_are_refused():
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        h["DecayCorrection"] = "NONE"
    with pytest.raises(SUVError, match="DecayCorrection"):
        suv_bw_factor(series)
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        h["Units"] = "CPS"
    with pytest.raises(SUVError, match="Units"):
        suv_bw_factor(series)


def test_dose_in_mbq_is_refused():
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        h["RadionuclideTotalDose"] = 374  # MBq written into a Bq field
    with pytest.raises(SUVError, match="RadionuclideTotalDose"):
        suv_bw_factor(series)


def test_instances_from_different_series_are_refused():
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    series[1]["PatientWeight"] = 80
    with pytest.raises(SUVError, match="PatientWeight"):
        suv_bw_factor(series)


def test_injection_after_scan_is_refused():
    series = copy.deepcopy(_load("SIEMENS-instances.json"))
    for h in series:
        h["RadiopharmaceuticalStartDateTime"] = "20201217120000"  # after the 10:48:29 scan
    with pytest.raises(SUVError, match="RadiopharmaceuticalStartDateTime"):
        suv_bw_factor(series)


def _synthetic(**over) -> dict:
    h = {
        "SeriesDate": "20210101", "SeriesTime": "000500", "AcquisitionDate": "20210101",
        "AcquisitionTime": "000500", "Units": "BQML", "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"], "PatientWeight": 70, "RadionuclideTotalDose": 300e6,
        "RadionuclideHalfLife": 6586.2, "RadiopharmaceuticalStartTime": "233000",
    }
    h.update(over)
    return h


def test_midnight_crossing():
    # Injected 23:30 on 31 Dec, scanned 00:05 on 1 Jan: SeriesDate + StartTime would be 1 Jan 23:30,
    # after the scan, so the previous day is used: uptake 35 min = 2100 s.
    comp = compute_suv_bw([_synthetic()])
    assert comp.uptake_time_s == pytest.approx(2100.0)
    assert comp.factor == pytest.approx(_bw(70, 300e6, 2100, 6586.2), rel=1e-12)
    assert comp.factor == pytest.approx(2.910e-4, rel=1e-3)
    assert "previous day" in comp.injection_time_source


def test_ge_private_post_injection_time_used_when_series_time_is_late():
    # Series time 10:30 is after the acquisition 10:00 -> GE private date-time 10:02:00 is used;
    # injection 09:00:00 -> 3720 s.
    h = _synthetic(SeriesTime="103000", AcquisitionTime="100000", RadiopharmaceuticalStartTime="090000",
                   SeriesDate="20210105", AcquisitionDate="20210105",
                   GEPrivatePostInjectionDateTime="20210105100200")
    comp = compute_suv_bw([h])
    assert "0009,100D" in comp.scan_time_source
    assert comp.factor == pytest.approx(_bw(70, 300e6, 3720, 6586.2), rel=1e-12)
    # without it: earliest acquisition 10:00 -> 3600 s
    del h["GEPrivatePostInjectionDateTime"]
    assert suv_bw_factor([h]) == pytest.approx(_bw(70, 300e6, 3600, 6586.2), rel=1e-12)


def test_earliest_acquisition_over_instances():
    # Series time 10:30 after all acquisitions (10:20, 10:10, 10:40 -> earliest 10:10);
    # injection 09:10 -> 3600 s.
    hs = [_synthetic(SeriesTime="103000", AcquisitionTime=t, RadiopharmaceuticalStartTime="091000")
          for t in ("102000", "101000", "104000")]
    assert suv_bw_factor(hs) == pytest.approx(_bw(70, 300e6, 3600, 6586.2), rel=1e-12)


def test_admin_decay_correction_has_no_decay():
    h = _synthetic(DecayCorrection="ADMIN")
    assert suv_bw_factor([h]) == pytest.approx(70_000 / 300e6, rel=1e-12)


def test_gml_is_factor_one():
    h = _synthetic(Units="GML")
    del h["PatientWeight"]  # not needed for GML
    assert suv_bw_factor([h]) == 1.0


def test_radiopharm_values_inside_sequence():
    h = _synthetic()
    seq_item = {k: h.pop(k) for k in ("RadionuclideTotalDose", "RadionuclideHalfLife",
                                      "RadiopharmaceuticalStartTime")}
    h["RadiopharmaceuticalInformationSequence"] = [seq_item]
    assert suv_bw_factor([h]) == pytest.approx(_bw(70, 300e6, 2100, 6586.2), rel=1e-12)


# ---------------------------------------------------------------------- real DICOM slices


def _dcm(name: str):
    import pydicom

    return pydicom.dcmread(PET_DICOM / name)  # a missing file is an error, not a skip


def test_real_wholebody_slice():
    ds = _dcm("acrin_flt_breast_wholebody.dcm")
    # Header: PatientWeight 69.7344 kg, RadionuclideTotalDose 178340011.59668 Bq, T1/2 6586.2 s,
    # SeriesTime = AcquisitionTime = 15:23:16.921, RadiopharmaceuticalStartTime 14:17:00 (no
    # StartDateTime) -> uptake 3976.921 s.
    expected = _bw(69.7344, 178340011.59668, 3976.921, 6586.2)
    assert suv_bw_factor([ds]) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(5.942e-4, rel=1e-3)
    # Per-slice rescale: RescaleSlope 9.12329, intercept 0; brightest stored pixel 1327.
    suv = suv_volume_from_slices([ds])
    assert suv.shape == (1, 168, 168) and suv.dtype == np.float32
    assert float(suv.max()) == pytest.approx(1327 * 9.12329 * expected, rel=1e-5)  # ~7.19 g/ml
    assert 0.0 <= float(suv.min()) and 1.0 < float(suv.max()) < 20.0


def test_real_dynamic_slice_uses_series_time():
    ds = _dcm("acrin_flt_breast_dynamic.dcm")
    # SeriesTime 11:19:59.109 is BEFORE this frame's AcquisitionTime 11:35:59.108962, so QIBA keeps
    # SeriesTime. Injection 11:19:59.000 -> uptake 0.109 s. 82.174 kg, 173529998.7793 Bq.
    expected = _bw(82.174, 173529998.7793, 0.109, 6586.2)
    comp = compute_suv_bw([ds])
    assert comp.scan_time_source == "SeriesDateTime"
    assert comp.factor == pytest.approx(expected, rel=1e-9)
    # The AcquisitionTime convention (autoPET/TCIA) would decay 960.109 s more: ~10.6 % higher.
    acq_based = _bw(82.174, 173529998.7793, 960.108962, 6586.2)
    assert acq_based / comp.factor == pytest.approx(2 ** (960.0 / 6586.2), rel=1e-4)
    assert acq_based / comp.factor > 1.10


def test_dataset_private_tags_by_number():
    ds = _dcm("acrin_flt_breast_wholebody.dcm")
    ds.Units = "CNTS"
    ds.add_new(0x70530010, "LO", "Philips PET Private Group")
    ds.add_new(0x70531009, "DS", "2.5")
    # only ACSF: 2.5 x BQML factor of this slice
    assert suv_bw_factor([ds]) == pytest.approx(2.5 * _bw(69.7344, 178340011.59668, 3976.921, 6586.2),
                                                rel=1e-9)
    ds.add_new(0x70531000, "DS", "0.00123")
    assert suv_bw_factor([ds]) == pytest.approx(0.00123, rel=1e-12)


def test_dataset_ge_private_by_number():
    ds = _dcm("acrin_flt_breast_wholebody.dcm")
    ds.SeriesTime = "160000"  # later than AcquisitionTime 15:23:16.921
    ds.add_new(0x00090010, "LO", "GEMS_PETD_01")
    ds.add_new(0x0009100D, "DT", "19600614151700")  # 15:17:00 -> 1 h after 14:17:00 injection
    assert suv_bw_factor([ds]) == pytest.approx(_bw(69.7344, 178340011.59668, 3600, 6586.2), rel=1e-9)


def test_per_slice_rescale():
    hs = [_synthetic(Units="GML", RescaleSlope=2.0, RescaleIntercept=1.0),
          _synthetic(Units="GML", RescaleSlope=3.0, RescaleIntercept=0.0)]
    px = [np.full((2, 2), 10, np.int16), np.full((2, 2), 10, np.int16)]
    vol = suv_volume_from_slices(hs, px)
    assert vol[0, 0, 0] == pytest.approx(21.0)  # 10 * 2 + 1
    assert vol[1, 0, 0] == pytest.approx(30.0)  # 10 * 3
    # factors already computed by the caller (load_pet_series) are used as given
    vol = suv_volume_from_slices(hs, px, factors=[0.5, 2.0])
    assert (vol[0, 0, 0], vol[1, 0, 0]) == pytest.approx((10.5, 60.0))
    with pytest.raises(ValueError, match="factors"):
        suv_volume_from_slices(hs, px, factors=[1.0])


# ---------------------------------------------------------------------- helpers


def test_decay_factor():
    assert decay_factor(6586.2, 6586.2) == pytest.approx(0.5)
    assert decay_factor(0.0, 6586.2) == 1.0
    assert decay_factor(2 * 6586.2, 6586.2) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        decay_factor(10.0, 0.0)


def test_parsers():
    from datetime import date, datetime, time

    assert parse_dicom_time("084500.00") == time(8, 45, 0)
    assert parse_dicom_time("123514.999995") == time(12, 35, 14, 999995)
    assert parse_dicom_time("0845") == time(8, 45)
    assert parse_dicom_time("08:45:30.5") == time(8, 45, 30, 500000)
    assert parse_dicom_date("20201217") == date(2020, 12, 17)
    assert parse_dicom_datetime("20201217084500.00 ") == datetime(2020, 12, 17, 8, 45)
    assert parse_dicom_datetime("20201217084500+0100") == datetime(2020, 12, 17, 8, 45)
    assert parse_dicom_datetime("2020") == datetime(2020, 1, 1)
    for parser, bad in ((parse_dicom_time, ""), (parse_dicom_time, "8:45"), (parse_dicom_date, "12"),
                        (parse_dicom_datetime, "2020121"), (parse_dicom_datetime, "")):
        with pytest.raises(ValueError):
            parser(bad)
