"""Body-weight SUV from DICOM PET headers, following the QIBA vendor-neutral pseudo-code.

Pure library module (numpy, pydicom and the standard library; DICOM DA/TM/DT values are parsed by
pydicom's ``valuerep``).

What the factor means
---------------------
``suv_bw_factor(series)`` returns the number ``f`` such that::

    SUVbw = f * (stored_pixel * RescaleSlope + RescaleIntercept)

i.e. it multiplies the *rescaled* pixel values, with each slice's own RescaleSlope/Intercept applied
first (slopes differ from slice to slice on most scanners; ``suv_volume_from_slices`` does both).

Rules (SPEC section 4, QIBA "SUV vendor-neutral pseudo-code")
-------------------------------------------------------------
* CorrectedImage (0028,0051) must contain ATTN and DECY; DecayCorrection (0054,1102) must be START
  (decay-corrected to the scan start: decay from injection to the scan reference time is applied)
  or ADMIN (already decay-corrected to the administration time: no decay term).
* Units BQML: ``f = weight_g / (dose_Bq * 2 ** (-(scan - injection) / half_life_s))``.
* Units CNTS (Philips): the private SUV scale factor (7053,1000) is used directly; if it is absent or
  zero, the private activity-concentration scale factor (7053,1009) converts rescaled counts to Bq/ml
  and ``f = ACSF * (BQML factor)``. Both Philips factors multiply the *rescaled* value
  (stored * RescaleSlope + RescaleIntercept; "(7053,1009) x RescaleSlope" in the QIBA text is the
  same thing for the usual zero intercept). The real Philips header sets in the test data confirm
  that the two factors share that base: in PHILIPS_CNTS_AND_BQML_SUV, SUVScaleFactor 0.000551 equals
  ACSF 1.602563 x 54000 g / decayed dose (scan reference = SeriesTime) to 0.1 %.
  For Units BQML the Philips private factors are ignored (the pixels already are Bq/ml).
* Units GML: the pixels already are SUVbw, ``f = 1``.
* Scan reference time: SeriesDate/SeriesTime, unless that is *after* the earliest
  AcquisitionDate/AcquisitionTime of the series (post-processed series whose series time was reset);
  then the GE private post-injection date/time (0009,100D) when present, else the earliest
  acquisition date/time. (QIBA additionally describes a Siemens back-computation from
  FrameReferenceTime; like cornerstone's calculate-suv we do not use it.) For a dynamic series whose
  later frames have AcquisitionTime well after SeriesTime this keeps SeriesTime (the autoPET/TCIA
  NIfTI conversion used AcquisitionTime and is off by the decay in between).
* Injection time: RadiopharmaceuticalStartDateTime; else SeriesDate + RadiopharmaceuticalStartTime,
  moved one day back if that would be after the scan reference time (injection before midnight,
  scan after midnight).
* Missing or zero PatientWeight, RadionuclideTotalDose or RadionuclideHalfLife (where the rule needs
  them), missing Units/CorrectedImage/DecayCorrection, unsupported values, a negative uptake time:
  ``SUVError`` (a ``ValueError``) whose message names the offending tag.

Input headers
-------------
``series`` is a sequence of per-instance headers of ONE PET series, either pydicom Datasets or
mappings keyed by DICOM keywords (as in ``testdata/suv_headers/*.json``): radiopharmaceutical keywords
may sit at the top level or inside ``RadiopharmaceuticalInformationSequence`` (first item); Philips
private values as ``PhilipsPETPrivateGroup = {"SUVScaleFactor", "ActivityConcentrationScaleFactor"}``
and the GE private value as ``GEPrivatePostInjectionDateTime``. For Datasets the private tags are
read by tag number: (7053,1000), (7053,1009), (0009,100D).

Date/time values are compared as naive local times; a UTC offset suffix on a DT value is dropped
(SeriesTime and AcquisitionTime carry none).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM, validate_value

logger = logging.getLogger(__name__)

F18_HALF_LIFE_S = 6586.2  # 109.77 min, the value scanners write for 18F
_DOSE_MIN_PLAUSIBLE_BQ = 1.0e5  # smaller doses are almost surely MBq or mCi written into a Bq field
_WEIGHT_MAX_PLAUSIBLE_KG = 500.0  # larger weights are almost surely grams or pounds
#: PatientWeight (kg) outside this range is used, with a warning: SUVbw scales with the weight, and such a
#: value is more often a typing or unit error than a patient.
WEIGHT_USUAL_RANGE_KG = (20.0, 250.0)


def weight_warning(weight_kg: float | None) -> str | None:
    """A warning for a PatientWeight outside :data:`WEIGHT_USUAL_RANGE_KG`, or None (also for None: a missing
    weight is an error of its own, raised where the SUV factor needs it).

    Example: 500 kg -> "PatientWeight 500 kg is outside the usual 20-250 kg: every SUV scales with it ...".
    """
    if weight_kg is None:
        return None
    lo, hi = WEIGHT_USUAL_RANGE_KG
    if lo <= weight_kg <= hi:
        return None
    return (f"PatientWeight {weight_kg:g} kg is outside the usual {lo:g}-{hi:g} kg: every SUV scales with it "
            f"(SUVbw = activity x weight / dose); check the header if this is not the patient's weight")

PHILIPS_SUV_SCALE_FACTOR_TAG = 0x70531000
PHILIPS_ACTIVITY_CONCENTRATION_SCALE_FACTOR_TAG = 0x70531009
GE_POST_INJECTION_DATETIME_TAG = 0x0009100D

_RADIOPHARM_KEYWORDS = (
    "RadiopharmaceuticalStartTime",
    "RadiopharmaceuticalStartDateTime",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "Radiopharmaceutical",
    "RadionuclidePositronFraction",
)


class SUVError(ValueError):
    """The SUVbw factor cannot be computed from these headers; the message names the tag."""


# --------------------------------------------------------------------------------------------
# small pure helpers
# --------------------------------------------------------------------------------------------


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Fraction of activity left after ``elapsed_s`` seconds: ``2 ** (-elapsed_s / half_life_s)``.

    Raises:
        ValueError: ``half_life_s`` not > 0.
    """
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
    return float(2.0 ** (-float(elapsed_s) / float(half_life_s)))


def _clean_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="ignore")
    return str(value).replace("\x00", "").strip()


def _parse_with(vr_class: type, value: Any, text: str) -> Any:
    """``vr_class(text)`` (pydicom's DA/TM/DT parser); an empty value is a ValueError, not None."""
    parsed = vr_class(text) if text else None
    if parsed is None:
        raise ValueError(f"not a DICOM {vr_class.__name__} value: {value!r}")
    return parsed


def parse_dicom_date(value: Any) -> date:
    """A DICOM DA value ``YYYYMMDD`` (also the old ``YYYY.MM.DD`` form), parsed by pydicom's ``DA``.

    Raises:
        ValueError: empty or malformed value.
    """
    d = _parse_with(DA, value, _clean_str(value))
    return date(d.year, d.month, d.day)


def parse_dicom_time(value: Any) -> time:
    """A DICOM TM value ``HH[MM[SS[.F{1,6}]]]`` (also the old ``HH:MM:SS.frac`` form), parsed by
    pydicom's ``TM``: missing minutes/seconds are 0, a leap second 60 becomes 59.

    Raises:
        ValueError: empty or malformed value.
    """
    t = _parse_with(TM, value, _clean_str(value).replace(":", ""))
    return time(t.hour, t.minute, t.second, t.microsecond)


def parse_dicom_datetime(value: Any) -> datetime:
    """A DICOM DT value ``YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]`` as a naive datetime, parsed by
    pydicom's ``DT`` after pydicom's DT format check (``DT`` alone accepts e.g. ``2020121``).

    A UTC offset suffix (``+0100``/``-0500``) is dropped: the result is the local time as written
    (DICOM TM values have no offset, and times are only ever compared with each other).

    Raises:
        ValueError: empty or malformed value.
    """
    text = _clean_str(value)
    validate_value("DT", text, pydicom_config.RAISE)
    dt = _parse_with(DT, value, text)
    return datetime.combine(dt.date(), dt.time())


def combine_date_time(date_value: Any, time_value: Any) -> datetime:
    """DA + TM -> naive datetime (raises ValueError if either is malformed)."""
    return datetime.combine(parse_dicom_date(date_value), parse_dicom_time(time_value))


# --------------------------------------------------------------------------------------------
# header access (pydicom Dataset or keyword mapping)
# --------------------------------------------------------------------------------------------


def _seq_first_item(header: Any, keyword: str) -> Any:
    seq = header.get(keyword) if header is not None else None
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) > 0 else None
    except (TypeError, KeyError, IndexError):
        return None


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return _clean_str(value) == ""
    try:
        return len(value) == 0  # empty sequence / multi-value
    except TypeError:
        return False


def get_value(header: Any, keyword: str) -> Any:
    """Value of ``keyword`` in one instance header, or None if absent/empty.

    Radiopharmaceutical keywords are looked up in the first item of
    RadiopharmaceuticalInformationSequence first, then at the top level (flattened JSON headers).
    """
    if keyword in _RADIOPHARM_KEYWORDS:
        item = _seq_first_item(header, "RadiopharmaceuticalInformationSequence")
        if item is not None:
            v = item.get(keyword)
            if not _empty(v):
                return v
    v = header.get(keyword)
    return None if _empty(v) else v


def _private_value(header: Any, tag: int, group_key: str | None, key: str) -> Any:
    """Private value by tag number (Dataset) or by the nested names used in the JSON headers."""
    if isinstance(header, Dataset):
        if tag in header:
            v = header[tag].value
            return None if _empty(v) else v
        return None
    if group_key is None:
        v = header.get(key)
    else:
        group = header.get(group_key) or {}
        v = group.get(key) if isinstance(group, Mapping) else None
    return None if _empty(v) else v


def _to_float(value: Any, keyword: str) -> float:
    """Number from an int/float/DS/str/bytes (ASCII or 8-byte little-endian double) value."""
    if isinstance(value, bytes):
        text = _clean_str(value)
        try:
            return float(text.split("\\")[0])
        except ValueError:
            if len(value) == 8:
                return float(struct.unpack("<d", value)[0])
            if len(value) == 4:
                return float(struct.unpack("<f", value)[0])
            raise SUVError(f"{keyword}: cannot read a number from {value!r}") from None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            raise SUVError(f"{keyword} is empty")
        value = value[0]
    try:
        out = float(_clean_str(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SUVError(f"{keyword}: cannot read a number from {value!r}") from None
    if not math.isfinite(out):
        raise SUVError(f"{keyword} is not finite: {value!r}")
    return out


def _required_positive(header: Any, keyword: str) -> float:
    v = get_value(header, keyword)
    if v is None:
        raise SUVError(f"{keyword} is missing; it is required for body-weight SUV")
    x = _to_float(v, keyword)
    if not x > 0:
        raise SUVError(f"{keyword} is {x:g}; it must be > 0 for body-weight SUV")
    return x


def _code_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        s = _clean_str(value)
        return [p.strip().upper() for p in s.split("\\") if p.strip()]
    return [_clean_str(v).upper() for v in value if _clean_str(v)]


# --------------------------------------------------------------------------------------------
# the QIBA computation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SUVComputation:
    """Everything that went into the SUVbw factor of one series (JSON-friendly via ``to_dict``).

    ``factors`` holds one factor per input instance (Philips private factors may in principle vary
    per instance); ``factor`` is their common value.
    """

    factor: float
    factors: tuple[float, ...]
    units: str
    method: str
    decay_correction: str
    scan_datetime: datetime | None = None
    scan_time_source: str | None = None
    injection_datetime: datetime | None = None
    injection_time_source: str | None = None
    uptake_time_s: float | None = None
    decay: float | None = None
    weight_kg: float | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON-friendly dict; ``factors`` is kept only when it varies between instances
        (``n_instances`` says how many there were)."""
        d = asdict(self)
        for k in ("scan_datetime", "injection_datetime"):
            if d[k] is not None:
                d[k] = d[k].isoformat()
        d["n_instances"] = len(self.factors)
        if all(math.isclose(f, self.factor, rel_tol=1e-12) for f in self.factors):
            del d["factors"]
        else:
            d["factors"] = list(d["factors"])
        d["notes"] = list(d["notes"])
        return d


def _check_single_series(series: Sequence[Any]) -> None:
    """Series-level values must agree between instances (else they are not one series)."""
    keys = ("Units", "PatientWeight", "RadionuclideTotalDose", "RadionuclideHalfLife", "DecayCorrection",
            "SeriesDate", "SeriesTime", "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime")
    first = series[0]
    for kw in keys:
        ref = get_value(first, kw)
        for i, h in enumerate(series[1:], start=1):
            v = get_value(h, kw)
            if ref is None and v is None:
                continue
            same = _clean_str(ref) == _clean_str(v)
            if not same and ref is not None and v is not None:
                try:
                    a, b = float(_clean_str(ref)), float(_clean_str(v))
                    same = math.isclose(a, b, rel_tol=1e-6)
                except ValueError:
                    same = False
            if not same:
                raise SUVError(
                    f"{kw} differs between instance 0 ({ref!r}) and instance {i} ({v!r}): "
                    "the headers do not come from one PET series"
                )


def scan_reference_datetime(series: Sequence[Any]) -> tuple[datetime, str]:
    """QIBA scan reference time of a series and where it came from.

    SeriesDate/Time unless it is later than the earliest AcquisitionDate/Time; then the GE private
    post-injection date/time (0009,100D) if present, else the earliest acquisition date/time.
    AcquisitionDate missing on an instance: SeriesDate is used with its AcquisitionTime;
    AcquisitionDateTime (0008,002A) is used where AcquisitionTime is missing.

    Raises:
        SUVError: neither a usable SeriesDate/SeriesTime nor any acquisition time.
    """
    first = series[0]
    series_dt: datetime | None = None
    sdate, stime = get_value(first, "SeriesDate"), get_value(first, "SeriesTime")
    if sdate is not None and stime is not None:
        try:
            series_dt = combine_date_time(sdate, stime)
        except ValueError as exc:
            raise SUVError(f"SeriesDate/SeriesTime unusable: {exc}") from None
    acq: list[datetime] = []
    for h in series:
        adate = get_value(h, "AcquisitionDate") or sdate
        atime = get_value(h, "AcquisitionTime")
        try:
            if atime is not None and adate is not None:
                acq.append(combine_date_time(adate, atime))
            elif get_value(h, "AcquisitionDateTime") is not None:
                acq.append(parse_dicom_datetime(get_value(h, "AcquisitionDateTime")))
        except ValueError as exc:
            raise SUVError(f"AcquisitionDate/AcquisitionTime unusable: {exc}") from None
    earliest = min(acq) if acq else None
    if series_dt is None:
        if earliest is None:
            raise SUVError("SeriesDate/SeriesTime are missing and no AcquisitionDate/AcquisitionTime either")
        return earliest, "earliest AcquisitionDateTime (SeriesDate/SeriesTime missing)"
    if earliest is None or series_dt <= earliest:
        return series_dt, "SeriesDateTime"
    ge = _private_value(first, GE_POST_INJECTION_DATETIME_TAG, None, "GEPrivatePostInjectionDateTime")
    if ge is not None:
        try:
            return parse_dicom_datetime(ge), "GE private (0009,100D) post-injection date-time"
        except ValueError:
            logger.warning("GE private (0009,100D) value %r unusable; using earliest acquisition", ge)
    return earliest, "earliest AcquisitionDateTime (SeriesDateTime is later)"


def injection_datetime(header: Any, scan_datetime: datetime) -> tuple[datetime, str]:
    """Injection (radiopharmaceutical start) date/time and where it came from.

    RadiopharmaceuticalStartDateTime if present and parseable; else SeriesDate (or the scan date if
    SeriesDate is missing) + RadiopharmaceuticalStartTime, one day earlier if that would lie after
    ``scan_datetime`` (injection before midnight, scan after).

    Raises:
        SUVError: RadiopharmaceuticalStartTime missing (and no usable StartDateTime) or malformed.
    """
    dt_value = get_value(header, "RadiopharmaceuticalStartDateTime")
    if dt_value is not None:
        try:
            return parse_dicom_datetime(dt_value), "RadiopharmaceuticalStartDateTime"
        except ValueError:
            logger.warning("RadiopharmaceuticalStartDateTime %r unusable; trying StartTime", dt_value)
    t_value = get_value(header, "RadiopharmaceuticalStartTime")
    if t_value is None:
        raise SUVError("RadiopharmaceuticalStartTime (and RadiopharmaceuticalStartDateTime) missing")
    try:
        t = parse_dicom_time(t_value)
    except ValueError as exc:
        raise SUVError(f"RadiopharmaceuticalStartTime unusable: {exc}") from None
    sdate = get_value(header, "SeriesDate")
    try:
        d = parse_dicom_date(sdate) if sdate is not None else scan_datetime.date()
    except ValueError as exc:
        raise SUVError(f"SeriesDate unusable: {exc}") from None
    inj = datetime.combine(d, t)
    source = "SeriesDate + RadiopharmaceuticalStartTime"
    if inj > scan_datetime:
        inj -= timedelta(days=1)
        source += " (previous day: injection before midnight)"
    return inj, source


def _bqml_factor(series: Sequence[Any], notes: list[str]) -> dict:
    """Common part of BQML and Philips-ACSF paths: weight / decayed dose."""
    first = series[0]
    weight_kg = _required_positive(first, "PatientWeight")
    if weight_kg > _WEIGHT_MAX_PLAUSIBLE_KG:
        raise SUVError(f"PatientWeight is {weight_kg:g} kg; DICOM wants kg (grams or pounds written?)")
    dose_bq = _required_positive(first, "RadionuclideTotalDose")
    if dose_bq < _DOSE_MIN_PLAUSIBLE_BQ:
        raise SUVError(
            f"RadionuclideTotalDose is {dose_bq:g}; DICOM wants Bq (MBq or mCi written into a Bq field?)"
        )
    decay_corr = _clean_str(get_value(first, "DecayCorrection")).upper()
    out: dict = {"weight_kg": weight_kg, "injected_dose_bq": dose_bq}
    if decay_corr == "ADMIN":
        # pixels are decay-corrected to the administration time: the dose needs no decay
        half = get_value(first, "RadionuclideHalfLife")
        out.update(half_life_s=_to_float(half, "RadionuclideHalfLife") if half is not None else None,
                   uptake_time_s=None, decay=1.0, bqml_factor=weight_kg * 1000.0 / dose_bq)
        notes.append("DecayCorrection ADMIN: no decay of the injected dose")
        return out
    half_life_s = _required_positive(first, "RadionuclideHalfLife")
    scan_dt, scan_src = scan_reference_datetime(series)
    inj_dt, inj_src = injection_datetime(first, scan_dt)
    uptake_s = (scan_dt - inj_dt).total_seconds()
    if uptake_s < 0:
        raise SUVError(
            f"{inj_src.split(' ')[0]} ({inj_dt.isoformat()}) is after the scan reference time "
            f"({scan_dt.isoformat()}, {scan_src})"
        )
    if uptake_s > 24 * 3600:
        notes.append(f"uptake time {uptake_s / 3600:.1f} h is unusually long")
        logger.warning("uptake time %.1f h is unusually long", uptake_s / 3600)
    dec = decay_factor(uptake_s, half_life_s)
    out.update(
        half_life_s=half_life_s, scan_datetime=scan_dt, scan_time_source=scan_src,
        injection_datetime=inj_dt, injection_time_source=inj_src, uptake_time_s=uptake_s, decay=dec,
        bqml_factor=weight_kg * 1000.0 / (dose_bq * dec),
    )
    return out


def compute_suv_bw(series: Sequence[Any]) -> SUVComputation:
    """Full QIBA body-weight SUV computation for one PET series (see module docstring).

    Args:
        series: per-instance headers of one PET series (pydicom Datasets or keyword mappings), any
            order. All instances must agree on the series-level values.

    Returns:
        An ``SUVComputation`` (factor, per-instance factors, times used and their sources).

    Raises:
        SUVError: empty input, inconsistent instances, or a missing/unusable tag (named).
    """
    series = list(series)
    if not series:
        raise SUVError("no instance headers given")
    _check_single_series(series)
    first = series[0]
    notes: list[str] = []

    corrected = _code_strings(get_value(first, "CorrectedImage"))
    if not corrected:
        raise SUVError("CorrectedImage is missing; it must include ATTN and DECY")
    for needed in ("ATTN", "DECY"):
        if needed not in corrected:
            raise SUVError(f"CorrectedImage {corrected} lacks {needed}; SUV needs ATTN and DECY corrections")
    decay_corr = _clean_str(get_value(first, "DecayCorrection")).upper()
    if not decay_corr:
        raise SUVError("DecayCorrection is missing; START or ADMIN is required")
    if decay_corr not in ("START", "ADMIN"):
        raise SUVError(f"DecayCorrection is {decay_corr!r}; only START or ADMIN are supported")
    units = _clean_str(get_value(first, "Units")).upper()
    if not units:
        raise SUVError("Units (0054,1001) is missing; BQML, CNTS or GML is required")

    n = len(series)
    if units == "BQML":
        parts = _bqml_factor(series, notes)
        factors = [parts.pop("bqml_factor")] * n
        method = "BQML: weight_g / decayed dose"
    elif units == "CNTS":
        suvsf = [_private_value(h, PHILIPS_SUV_SCALE_FACTOR_TAG, "PhilipsPETPrivateGroup", "SUVScaleFactor")
                 for h in series]
        suvsf_f = [_to_float(v, "Philips SUVScaleFactor (7053,1000)") if v is not None else 0.0
                   for v in suvsf]
        if all(v > 0 for v in suvsf_f):
            parts = {}
            factors = suvsf_f
            method = "CNTS: Philips SUVScaleFactor (7053,1000)"
        else:
            acsf = [_private_value(h, PHILIPS_ACTIVITY_CONCENTRATION_SCALE_FACTOR_TAG,
                                   "PhilipsPETPrivateGroup", "ActivityConcentrationScaleFactor")
                    for h in series]
            acsf_f = [_to_float(v, "Philips ActivityConcentrationScaleFactor (7053,1009)")
                      if v is not None else 0.0 for v in acsf]
            if not all(v > 0 for v in acsf_f):
                raise SUVError(
                    "Units CNTS but neither Philips SUVScaleFactor (7053,1000) nor "
                    "ActivityConcentrationScaleFactor (7053,1009) is present and non-zero on every instance"
                )
            parts = _bqml_factor(series, notes)
            bq = parts.pop("bqml_factor")
            factors = [a * bq for a in acsf_f]
            method = "CNTS: Philips ActivityConcentrationScaleFactor (7053,1009) x BQML factor"
    elif units == "GML":
        parts = {}
        factors = [1.0] * n
        method = "GML: pixels already SUVbw"
    else:
        raise SUVError(f"Units is {units!r}; only BQML, CNTS (Philips) and GML are supported")

    f0 = factors[0]
    if not all(math.isclose(f, f0, rel_tol=1e-6) for f in factors):
        notes.append("SUV factor varies between instances")
    return SUVComputation(
        factor=float(np.median(factors)) if len(set(factors)) > 1 else float(f0),
        factors=tuple(float(f) for f in factors), units=units, method=method,
        decay_correction=decay_corr, notes=tuple(notes), **parts,
    )


def suv_bw_factors(series: Sequence[Any]) -> list[float]:
    """One SUVbw factor per instance (same order as ``series``); see ``compute_suv_bw``."""
    return list(compute_suv_bw(series).factors)


def suv_bw_factor(series: Sequence[Any]) -> float:
    """The factor that turns rescaled pixel values (slope/intercept applied) into SUVbw.

    Raises:
        SUVError: as ``compute_suv_bw``; also when the factor differs between instances (only
            possible with per-instance Philips private factors; use ``suv_bw_factors`` then).
    """
    comp = compute_suv_bw(series)
    f0 = comp.factors[0]
    if not all(math.isclose(f, f0, rel_tol=1e-6) for f in comp.factors):
        raise SUVError("the SUV factor differs between instances; use suv_bw_factors()")
    return float(f0)


def rescale_slope_intercept(header: Any) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of one instance; (1, 0) where absent. A zero slope is an error
    (SUVError naming RescaleSlope)."""
    s = get_value(header, "RescaleSlope")
    i = get_value(header, "RescaleIntercept")
    slope = _to_float(s, "RescaleSlope") if s is not None else 1.0
    intercept = _to_float(i, "RescaleIntercept") if i is not None else 0.0
    if slope == 0:
        raise SUVError("RescaleSlope is 0")
    return slope, intercept


def suv_volume_from_slices(series: Sequence[Any], pixel_arrays: Sequence[np.ndarray] | None = None,
                           factors: Sequence[float] | None = None) -> np.ndarray:
    """SUVbw stack from per-slice stored pixels: ``(stored * slope_i + intercept_i) * factor_i``.

    Args:
        series: the instance headers, in the order wanted along z.
        pixel_arrays: stored pixel arrays (rows, cols), same order; None reads ``h.pixel_array``
            (pydicom Datasets with pixel data).
        factors: ``compute_suv_bw(series).factors`` when the caller already has them (computed
            here when None).

    Returns:
        float32 array (n_slices, rows, cols).

    Raises:
        SUVError: as ``compute_suv_bw``; ValueError if the counts or slice shapes disagree.
    """
    series = list(series)
    if pixel_arrays is None:
        pixel_arrays = [h.pixel_array for h in series]
    if len(pixel_arrays) != len(series):
        raise ValueError(f"{len(series)} headers but {len(pixel_arrays)} pixel arrays")
    factors = compute_suv_bw(series).factors if factors is None else factors
    if len(factors) != len(series):
        raise ValueError(f"{len(series)} headers but {len(factors)} SUV factors")
    out = None
    for k, (h, px, f) in enumerate(zip(series, pixel_arrays, factors)):
        slope, intercept = rescale_slope_intercept(h)
        sl = (np.asarray(px, dtype=np.float64) * slope + intercept) * f
        if out is None:
            out = np.empty((len(series),) + sl.shape, dtype=np.float32)
        elif sl.shape != out.shape[1:]:
            raise ValueError(f"slice {k} has shape {sl.shape}, slice 0 has {out.shape[1:]}")
        out[k] = sl
    if out is None:
        raise ValueError("no slices given")
    return out
