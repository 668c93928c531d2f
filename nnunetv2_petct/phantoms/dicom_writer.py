"""Write a phantom as a realistic DICOM PET/CT study (CT series, PT series, optional DICOM-SEG).

Pure library module (pydicom, numpy, SimpleITK; no nnunetv2 import). It exists so that the DICOM
discovery, the QIBA SUV code and the SEG reader can be tested end to end without real patient data:
``load_dicom_study(find_dicom_studies(dir)[0])`` must give back the phantom's HU and SUV (within the
int16/uint16 quantization of the stored pixels) on the phantom's own grids.

What is written
---------------
* CT: one single-frame CT Image Storage instance per slice of ``case.ct``, geometry from the image
  (ImagePositionPatient = origin + k * spacing_z * slice direction, ImageOrientationPatient from the
  direction matrix, PixelSpacing = (y, x) spacing), HU stored with RescaleIntercept (vendor style:
  unsigned + intercept for SIEMENS/PHILIPS, signed for GE).
* PT: one PET Image Storage instance per slice of ``case.pet``, with PatientWeight,
  RadiopharmaceuticalInformationSequence (FDG, 18F codes, dose, half-life 6586.2 s, start time about
  60 min before SeriesTime), DecayCorrection START, CorrectedImage ATTN/DECY, bed-wise
  AcquisitionTime (the first bed at SeriesTime), InstanceNumber running head to feet, and a per-slice
  RescaleSlope so that the stored pixels hold the activity:

  - ``SIEMENS`` / ``GE``: Units BQML, rescaled value = SUV * decayed dose / weight_g (Bq/ml). GE also
    gets RadiopharmaceuticalStartDateTime and its private scan date-time (0009,100D); SIEMENS only
    RadiopharmaceuticalStartTime (so the SeriesDate + StartTime path is exercised).
  - ``PHILIPS_CNTS``: Units CNTS, rescaled value = Bq/ml / ACSF, with the Philips private
    SUVScaleFactor (7053,1000) = ACSF * weight_g / decayed dose and
    ActivityConcentrationScaleFactor (7053,1009) = ACSF, unsigned 16-bit pixels, AcquisitionTime a
    minute after SeriesTime (as on real Philips series).
* SEG (``with_seg``): a BINARY DICOM-SEG on the PET grid, one frame per PET slice that has label
  voxels; when the label has several connected components they are split over two segments (so a
  reader must merge segments).

Real-world switches (each off by default; the issue-17 study features)
-------------------------------------------------------------------------
* ``ct_image_type``: the CT's ImageType, e.g. ``("DERIVED", "SECONDARY", "AXIAL")`` as several scanners
  label a merged or attenuation-correction CT.
* ``ct_z_fraction``: the CT keeps only the slices at the head end so that it covers about this fraction
  of the PET's axial extent (e.g. 0.387 for a head-and-neck CT); ``WrittenStudy.ct_z_fraction`` is the
  fraction actually written (whole CT slices).
* ``bed_slices``: PET slices per bed position; AcquisitionTime steps by the bed duration from bed to bed
  (head first), so a series has several acquisition times.
* ``series_time_after_acquisition``: SeriesTime written ``series_time_delay_s`` after the last
  AcquisitionTime (a series saved/reconstructed later): QIBA then takes the earliest AcquisitionTime as
  the scan reference (GE: its private (0009,100D)); the pixels are written for that reference.
* ``n_rescale_slopes``: the PET slices share this many distinct RescaleSlopes (consecutive slices
  grouped, each group scaled to its maximum); default one slope per slice.
* ``rt_study_dir``: RTDOSE and RTPLAN objects of the same patient in another study, in that folder.
* ``other_objects``: non-image objects (``RTDOSE``, ``RTPLAN``, ``RTSTRUCT``, ``SR``, ``KO``, ``PR``) in the
  same study folder, beside the images.
* ``nac_pet``: a second PET series without attenuation correction (CorrectedImage lacks ATTN, activity
  different from the AC series, same geometry).
* ``ct_localizer``: a CT localizer series (an AP and a lateral scout image, ImageType LOCALIZER).
* ``ct_reformat``: a coronal or sagittal reformat of the CT (DERIVED/SECONDARY/REFORMATTED).
* ``extra_ct_series``: more axial CT series (:class:`ExtraCTSeries`: coverage, slice step, ImageType,
  frame of reference), to exercise the choice between several qualifying CTs.
* Philips CNTS with both private factors (7053,1000) and (7053,1009): ``vendor="PHILIPS_CNTS"``.

All UIDs come from :func:`pydicom.uid.generate_uid` with entropy from (case_id, vendor, seed, ...), so
a study is reproducible; file names are opaque random hex strings without extension, and CT, PT and
SEG files share one flat folder: a reader has to use the headers.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

VENDORS = ("SIEMENS", "GE", "PHILIPS_CNTS")
F18_HALF_LIFE_S = 6586.2
_BED_SLICES = 11  # slices per PET bed position (acquisition times step per bed)
_BED_DURATION_S = 120
_MANUFACTURER = {"SIEMENS": "SIEMENS", "GE": "GE MEDICAL SYSTEMS", "PHILIPS_CNTS": "Philips Medical Systems"}
_MODEL = {"SIEMENS": "Biograph64", "GE": "Discovery MI", "PHILIPS_CNTS": "Vereos PET/CT"}

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# SOP classes of the non-image objects the writer can put beside the images
OTHER_OBJECT_SOP_CLASSES = {
    "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
    "RTPLAN": "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan Storage
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "KO": "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document Storage
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
}


@dataclass(frozen=True)
class ExtraCTSeries:
    """One more axial CT series of the study (see :func:`write_dicom_study`).

    Attributes:
        description: SeriesDescription.
        image_type: ImageType values.
        z_fraction: fraction of the PET's axial extent covered (head end), as ``ct_z_fraction``.
        slice_step: keep every ``slice_step``-th CT slice (coarser slice spacing).
        same_frame_of_reference: share the PET's FrameOfReferenceUID (else a new one).
    """

    description: str = "CT extra"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    z_fraction: float = 1.0
    slice_step: int = 1
    same_frame_of_reference: bool = True


@dataclass
class WrittenStudy:
    """What :func:`write_dicom_study` wrote, with the acquisition facts it chose.

    ``suv_factor`` is the factor a QIBA reader must find (rescaled pixel -> SUVbw): weight_g /
    decayed dose for BQML, the SUVScaleFactor as written for PHILIPS_CNTS. ``scan_reference_datetime``
    is the QIBA scan reference time the pixels were written for (SeriesTime, or the earliest
    AcquisitionTime with ``series_time_after_acquisition``); ``ct_z_fraction`` the fraction of the PET's
    axial extent the main CT covers; the other fields list what the switches added.
    """

    out_dir: Path
    vendor: str
    study_uid: str
    ct_series_uid: str
    pt_series_uid: str
    frame_of_reference_uid: str
    ct_files: list[Path] = field(default_factory=list)
    pt_files: list[Path] = field(default_factory=list)
    seg_path: Path | None = None
    weight_kg: float = 0.0
    injected_dose_bq: float = 0.0
    half_life_s: float = F18_HALF_LIFE_S
    uptake_time_s: float = 0.0
    series_datetime: datetime | None = None
    injection_datetime: datetime | None = None
    suv_factor: float = 0.0
    activity_concentration_scale_factor: float | None = None
    scan_reference_datetime: datetime | None = None
    ct_z_fraction: float = 1.0
    extra_ct_series_uids: list[str] = field(default_factory=list)
    extra_ct_files: list[list[Path]] = field(default_factory=list)
    nac_pt_series_uid: str | None = None
    nac_pt_files: list[Path] = field(default_factory=list)
    localizer_series_uid: str | None = None
    localizer_files: list[Path] = field(default_factory=list)
    reformat_series_uid: str | None = None
    reformat_files: list[Path] = field(default_factory=list)
    other_object_files: dict[str, Path] = field(default_factory=dict)
    rt_study_uid: str | None = None
    rt_files: dict[str, Path] = field(default_factory=dict)


def _ds_str(x: float) -> str:
    """A DS value (at most 16 characters) for ``x``."""
    for digits in (10, 9, 8, 7, 6):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot format {x!r} as DS")


def _tm(dt: datetime) -> str:
    return dt.strftime("%H%M%S") + f".{dt.microsecond:06d}"


def _da(dt: datetime) -> str:
    return dt.strftime("%Y%m%d")


def _dt(dt: datetime) -> str:
    return _da(dt) + _tm(dt)


class _Uids:
    def __init__(self, *entropy: Any) -> None:
        self._base = "|".join(str(e) for e in entropy)

    def __call__(self, *parts: Any) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=[self._base, *(str(p) for p in parts)]))


def _file_meta(sop_class: str, sop_instance: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_instance
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return fm


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def _geometry(img) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(origin, spacing (x, y, z), direction 3x3 with axis directions as columns, size (x, y, z))."""
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return origin, spacing, direction, tuple(int(s) for s in img.GetSize())


def _common(ds, case, vendor: str, study_uid: str, study_dt: datetime, for_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"Phantom^{case.patient_id}"
    ds.PatientID = str(case.patient_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _da(study_dt)
    ds.StudyTime = _tm(study_dt)
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET-CT WHOLE BODY (phantom)"
    ds.Manufacturer = _MANUFACTURER[vendor]
    ds.ManufacturerModelName = _MODEL[vendor]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"


def _slice_geometry_tags(ds, origin, spacing, direction, k: int) -> None:
    ipp = origin + k * spacing[2] * direction[:, 2]
    ds.ImagePositionPatient = [_ds_str(float(v)) for v in ipp]
    ds.ImageOrientationPatient = [_ds_str(float(v)) for v in list(direction[:, 0]) + list(direction[:, 1])]
    ds.PixelSpacing = [_ds_str(float(spacing[1])), _ds_str(float(spacing[0]))]
    ds.SliceThickness = _ds_str(float(spacing[2]))
    ds.SliceLocation = _ds_str(float(ipp @ np.cross(direction[:, 0], direction[:, 1])))


def _pixel_module(ds, arr: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(arr.astype("<i2" if signed else "<u2")).tobytes()


def _save(ds, sop_class: str, path: Path) -> None:
    ds.file_meta = _file_meta(sop_class, ds.SOPInstanceUID)
    ds.save_as(path, enforce_file_format=True)


def _ct_slice_indices(ct_origin, ct_spacing, ct_direction, ct_size, pet_z_range: tuple[float, float],
                      z_fraction: float, slice_step: int) -> list[int]:
    """CT slice indices (every ``slice_step``-th) whose centres lie in the head-end ``z_fraction`` of
    the PET's axial extent (all of them, also beyond the PET, when ``z_fraction`` >= 1)."""
    ks = list(range(0, ct_size[2], max(1, int(slice_step))))
    if z_fraction >= 1.0:
        return ks
    if not 0.0 < z_fraction:
        raise ValueError(f"z_fraction must be in (0, 1], got {z_fraction}")
    lo, hi = pet_z_range
    threshold = hi - z_fraction * (hi - lo)
    keep = [k for k in ks if float((ct_origin + k * ct_spacing[2] * ct_direction[:, 2])[2]) >= threshold]
    if len(keep) < 3:
        raise ValueError(f"z_fraction {z_fraction} leaves {len(keep)} CT slice(s); need at least 3")
    return keep


def _z_range_of(origin, spacing, direction, size, ks: Sequence[int] | None = None) -> tuple[float, float]:
    """(lowest, highest) patient z of the voxel edges of slices ``ks`` (default all) of an axial stack."""
    ks = list(range(size[2])) if ks is None else list(ks)
    zs = []
    for k in (min(ks), max(ks)):
        for dk in (-0.5, 0.5):
            for cx in (-0.5, size[0] - 0.5):
                for cy in (-0.5, size[1] - 0.5):
                    p = origin + direction @ (np.array([cx, cy, k + dk]) * spacing)
                    zs.append(float(p[2]))
    return min(zs), max(zs)


def write_dicom_study(case: Any, out_dir: Path, vendor: str = "SIEMENS", seed: int = 0,
                      with_seg: bool = False, radiopharmaceutical: str = "Fluorodeoxyglucose", *,
                      ct_image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                      ct_z_fraction: float = 1.0,
                      bed_slices: int = _BED_SLICES,
                      series_time_after_acquisition: bool = False,
                      series_time_delay_s: float = 1800.0,
                      n_rescale_slopes: int | None = None,
                      rt_study_dir: Path | None = None,
                      other_objects: Sequence[str] = (),
                      nac_pet: bool = False,
                      ct_localizer: bool = False,
                      ct_reformat: str | None = None,
                      extra_ct_series: Sequence[ExtraCTSeries] = (),
                      ) -> WrittenStudy:
    """Write ``case`` (a :class:`~nnunetv2_petct.phantoms.PhantomCase`) as a DICOM PET/CT study.

    Args:
        case: needs ``case_id``, ``patient_id``, ``ct`` (HU), ``pet`` (SUVbw, >= 0), ``label`` (on the
            PET grid) and optionally ``study_date`` (YYYYMMDD).
        out_dir: folder (created) that receives every file, flat, with opaque names.
        vendor: ``"SIEMENS"``, ``"GE"`` or ``"PHILIPS_CNTS"`` (see module docstring).
        seed: draws weight (50-110 kg), dose (180-400 MBq), series time and uptake time (55-70 min).
        with_seg: also write a DICOM-SEG of ``case.label`` (skipped with a warning when it is empty).
        radiopharmaceutical: text of Radiopharmaceutical (0018,0031); the FDG code sequence is only
            written for the FDG default (use another name to make a non-FDG study).
        ct_image_type, ct_z_fraction, bed_slices, series_time_after_acquisition, series_time_delay_s,
        n_rescale_slopes, rt_study_dir, other_objects, nac_pet, ct_localizer, ct_reformat,
        extra_ct_series: the real-world switches of the module docstring. ``ct_localizer``,
            ``ct_reformat`` and ``ct_z_fraction`` need a CT with identity direction.

    Returns:
        A :class:`WrittenStudy` with UIDs, file lists and the acquisition facts.

    Raises:
        ValueError: unknown vendor or object kind, negative PET values (activity cannot be negative),
            a switch value out of range, or a reoriented CT with a switch that needs identity direction.
    """
    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileDataset

    vendor = vendor.upper()
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; use one of {VENDORS}")
    unknown = sorted(set(k.upper() for k in other_objects) - set(OTHER_OBJECT_SOP_CLASSES))
    if unknown:
        raise ValueError(f"unknown object kind(s) {unknown}; use {sorted(OTHER_OBJECT_SOP_CLASSES)}")
    if ct_reformat not in (None, "coronal", "sagittal"):
        raise ValueError(f"ct_reformat must be None, 'coronal' or 'sagittal', got {ct_reformat!r}")
    if bed_slices < 1 or (n_rescale_slopes is not None and n_rescale_slopes < 1):
        raise ValueError("bed_slices and n_rescale_slopes must be >= 1")
    identity = np.allclose(np.asarray(case.ct.GetDirection()), np.eye(3).ravel(), atol=1e-6)
    if (ct_localizer or ct_reformat or ct_z_fraction < 1.0) and not identity:
        raise ValueError("ct_localizer, ct_reformat and ct_z_fraction need a CT with identity direction")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{case.case_id}|{vendor}".encode())])
    uid = _Uids("nnunetv2_petct-phantom", case.case_id, vendor, seed)

    def fname(folder: Path = out_dir) -> Path:
        while True:
            p = folder / rng.bytes(10).hex()
            if not p.exists():
                return p

    def new_ds() -> Dataset:
        return FileDataset(None, {}, preamble=b"\0" * 128)

    study_date = str(getattr(case, "study_date", None) or "20200101")
    series_dt = datetime.strptime(study_date, "%Y%m%d") + timedelta(
        hours=8, minutes=int(rng.integers(0, 8 * 60)), seconds=int(rng.integers(0, 60)))
    weight_kg = round(float(rng.uniform(50.0, 110.0)), 1)
    dose_bq = round(float(rng.uniform(180.0, 400.0)), 2) * 1e6
    uptake_s = float(rng.integers(55 * 60, 70 * 60))
    inj_dt = series_dt - timedelta(seconds=uptake_s)
    philips = vendor == "PHILIPS_CNTS"
    first_acq_dt = series_dt + timedelta(seconds=60 if philips else 0)
    # QIBA scan reference: SeriesTime unless it is after the earliest AcquisitionTime
    ref_dt = first_acq_dt if series_time_after_acquisition else series_dt
    ref_uptake_s = (ref_dt - inj_dt).total_seconds()
    decayed_dose = dose_bq * 2.0 ** (-ref_uptake_s / F18_HALF_LIFE_S)
    bq_per_suv = decayed_dose / (weight_kg * 1000.0)  # Bq/ml per SUV unit
    study_dt = series_dt - timedelta(minutes=25)
    ct_dt = series_dt - timedelta(minutes=3)
    study_uid, for_uid = uid("study"), uid("for")
    ct_series_uid, pt_series_uid = uid("ct-series"), uid("pt-series")
    written = WrittenStudy(out_dir=out_dir, vendor=vendor, study_uid=study_uid, ct_series_uid=ct_series_uid,
                           pt_series_uid=pt_series_uid, frame_of_reference_uid=for_uid, weight_kg=weight_kg,
                           injected_dose_bq=dose_bq, uptake_time_s=ref_uptake_s, series_datetime=series_dt,
                           injection_datetime=inj_dt, scan_reference_datetime=ref_dt)

    # ------------------------------------------------------------------ CT
    ct_hu = sitk.GetArrayFromImage(case.ct).astype(np.float64)
    ct_geom = _geometry(case.ct)
    pet_geom = _geometry(case.pet)
    pet_z_range = _z_range_of(*pet_geom)
    ct_signed = vendor == "GE"
    hu_min = float(ct_hu.min())
    intercept = -1024.0 if hu_min >= -1024 else float(np.floor(hu_min))
    if ct_signed:
        intercept = -1024.0

    def ct_stored(hu: np.ndarray) -> np.ndarray:
        stored = np.rint(hu - intercept)
        return np.clip(stored, -32768, 32767) if ct_signed else np.clip(stored, 0, 65535)

    def ct_dataset(series_uid: str, number: int, description: str, image_type: Sequence[str], instance: int,
                   sop_uid: str, frame_of_reference: str) -> Dataset:
        ds = new_ds()
        _common(ds, case, vendor, study_uid, study_dt, frame_of_reference)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.ImageType = list(image_type)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(ct_dt)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(ct_dt)
        ds.InstanceNumber = instance
        ds.KVP = "120"
        ds.RescaleType = "HU"
        ds.RescaleIntercept = _ds_str(intercept)
        ds.RescaleSlope = "1"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        return ds

    def write_axial_ct(series_uid: str, number: int, description: str, image_type: Sequence[str],
                       ks: Sequence[int], tag: str, frame_of_reference: str) -> list[Path]:
        origin, spacing, direction, _ = ct_geom
        files = []
        for n, k in enumerate(ks):
            ds = ct_dataset(series_uid, number, description, image_type, n + 1,
                            uid("ct", k) if tag == "" else uid("ct", tag, k), frame_of_reference)
            _slice_geometry_tags(ds, origin, spacing, direction, k)
            if len(ks) > 1 and ks[1] - ks[0] > 1:  # a thinned series: its own slice spacing
                ds.SpacingBetweenSlices = _ds_str(float(spacing[2]) * abs(ks[1] - ks[0]))
            _pixel_module(ds, ct_stored(ct_hu[k]), signed=ct_signed)
            path = fname()
            _save(ds, CT_IMAGE_STORAGE, path)
            files.append(path)
        return files

    main_ks = _ct_slice_indices(*ct_geom[:3], ct_geom[3], pet_z_range, ct_z_fraction, 1)
    written.ct_files = write_axial_ct(ct_series_uid, 2, "CT WB 5.0 B30f" if vendor == "SIEMENS" else "CTAC WB",
                                      ct_image_type, main_ks, "", for_uid)
    c_lo, c_hi = _z_range_of(*ct_geom, ks=main_ks)
    p_lo, p_hi = pet_z_range
    written.ct_z_fraction = max(0.0, min(p_hi, c_hi) - max(p_lo, c_lo)) / (p_hi - p_lo)

    # ------------------------------------------------------------------ PT
    suv = sitk.GetArrayFromImage(case.pet).astype(np.float64)
    if suv.min() < 0:
        raise ValueError(f"case {case.case_id}: PET has negative SUV values ({suv.min():g})")
    origin, spacing, direction, size = pet_geom
    if philips:
        acsf = round(float(rng.uniform(1.5, 5.0)), 6)
        suv_sf_str = _ds_str(acsf / bq_per_suv)
        written.activity_concentration_scale_factor = acsf
        written.suv_factor = float(suv_sf_str)
        # rescaled value = counts with counts * ACSF = Bq/ml; computed from the SUVScaleFactor as
        # written (ACSF / bq_per_suv up to the 10 digits of its DS string)
        rescaled_target = suv / float(suv_sf_str)
        max_stored = 65535.0
    else:
        written.suv_factor = 1.0 / bq_per_suv
        rescaled_target = suv * bq_per_suv
        max_stored = 32767.0
    n_beds = int(np.ceil(size[2] / bed_slices))
    last_acq_dt = first_acq_dt + timedelta(seconds=(n_beds - 1) * _BED_DURATION_S)
    series_time_written = (last_acq_dt + timedelta(seconds=series_time_delay_s) if series_time_after_acquisition
                           else series_dt)
    written.series_datetime = series_time_written

    def slopes_for(target: np.ndarray) -> list[str]:
        needed = target.reshape(target.shape[0], -1).max(axis=1) / max_stored
        if n_rescale_slopes is not None:
            groups = np.array_split(np.arange(target.shape[0]), min(n_rescale_slopes, target.shape[0]))
            for g in groups:
                needed[g] = needed[g].max()
        return [_ds_str(float(v)) if v > 0 else "1" for v in needed]

    def write_pt(series_uid: str, number: int, description: str, corrected: Sequence[str],
                 target: np.ndarray, tag: str) -> list[Path]:
        files = []
        slopes = slopes_for(target)
        for k in range(size[2]):
            ds = new_ds()
            _common(ds, case, vendor, study_uid, study_dt, for_uid)
            ds.SOPClassUID = PET_IMAGE_STORAGE
            ds.SOPInstanceUID = uid("pt", k) if tag == "" else uid("pt", tag, k)
            ds.Modality = "PT"
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            # beds are acquired from the head (last slices) to the feet
            bed = (size[2] - 1 - k) // bed_slices
            acq_dt = first_acq_dt + timedelta(seconds=bed * _BED_DURATION_S)
            ds.SeriesDate = _da(series_time_written)
            ds.SeriesTime = _tm(series_time_written)
            ds.AcquisitionDate = _da(acq_dt)
            ds.AcquisitionTime = _tm(acq_dt)
            ds.ContentDate, ds.ContentTime = _da(series_dt), _tm(series_dt + timedelta(minutes=20))
            ds.InstanceNumber = size[2] - k  # head first: numbering does not follow z
            ds.ImageIndex = size[2] - k
            ds.PatientWeight = _ds_str(weight_kg)
            ds.PatientSize = "1.75"
            ds.Units = "CNTS" if philips else "BQML"
            ds.CountsSource = "EMISSION"
            ds.SeriesType = ["WHOLE BODY", "IMAGE"]
            ds.CorrectedImage = list(corrected)
            ds.DecayCorrection = "START"
            if "ATTN" in corrected:
                ds.AttenuationCorrectionMethod = "CTAC"
            ds.ReconstructionMethod = "OSEM 3i21s"
            ds.NumberOfSlices = size[2]
            ds.FrameReferenceTime = _ds_str(1000.0 * (bed * _BED_DURATION_S + _BED_DURATION_S / 2))
            ds.ActualFrameDuration = _BED_DURATION_S * 1000
            ds.DecayFactor = _ds_str(2.0 ** ((acq_dt - ref_dt).total_seconds() / F18_HALF_LIFE_S))
            rp = Dataset()
            rp.Radiopharmaceutical = radiopharmaceutical
            rp.RadiopharmaceuticalStartTime = _tm(inj_dt)
            if vendor == "GE":
                rp.RadiopharmaceuticalStartDateTime = _dt(inj_dt)
            rp.RadionuclideTotalDose = _ds_str(dose_bq)
            rp.RadionuclideHalfLife = _ds_str(F18_HALF_LIFE_S)
            rp.RadionuclidePositronFraction = "0.9673"
            rp.RadionuclideCodeSequence = [_code("C-111A1", "SRT", "^18^Fluorine")]
            if radiopharmaceutical == "Fluorodeoxyglucose":
                rp.RadiopharmaceuticalCodeSequence = [_code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")]
            ds.RadiopharmaceuticalInformationSequence = [rp]
            if vendor == "GE":
                block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
                block.add_new(0x0D, "DT", _dt(first_acq_dt))
            _slice_geometry_tags(ds, origin, spacing, direction, k)
            slope = float(slopes[k])
            stored = np.clip(np.rint(target[k] / slope), 0, max_stored)
            ds.RescaleSlope = slopes[k]
            ds.RescaleIntercept = "0"
            ds.RescaleType = "CNTS" if philips else "BQML"
            if philips:
                block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
                block.add_new(0x00, "DS", suv_sf_str)
                block.add_new(0x09, "DS", _ds_str(acsf))
            _pixel_module(ds, stored, signed=not philips)
            path = fname()
            _save(ds, PET_IMAGE_STORAGE, path)
            files.append(path)
        return files

    written.pt_files = write_pt(pt_series_uid, 3, "PET WB AC", ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"],
                                rescaled_target, "")
    logger.debug("wrote %s: %d CT + %d PT files (%d beds) to %s", case.case_id, len(written.ct_files),
                 len(written.pt_files), n_beds, out_dir)

    # ------------------------------------------------------------------ SEG
    if with_seg:
        label = sitk.GetArrayFromImage(case.label) > 0
        if not label.any():
            logger.warning("case %s: empty label, no DICOM-SEG written", case.case_id)
        else:
            written.seg_path = fname()
            _write_seg(written.seg_path, case, vendor, label, origin, spacing, direction, uid,
                       study_uid, study_dt, for_uid, pt_series_uid, series_dt)

    # ------------------------------------------------------------------ the real-world switches
    if nac_pet:
        # without attenuation correction the body centre reads low: a different activity everywhere
        written.nac_pt_series_uid = uid("pt-nac-series")
        written.nac_pt_files = write_pt(written.nac_pt_series_uid, 4, "PET WB NAC",
                                        ["NORM", "DTIM", "SCAT", "DECY", "RAN"], 0.55 * rescaled_target, "nac")
    for i, extra in enumerate(extra_ct_series):
        ks = _ct_slice_indices(*ct_geom[:3], ct_geom[3], pet_z_range, extra.z_fraction, extra.slice_step)
        series_uid = uid("ct-extra-series", i)
        written.extra_ct_series_uids.append(series_uid)
        written.extra_ct_files.append(write_axial_ct(
            series_uid, 10 + i, extra.description, extra.image_type, ks, f"extra{i}",
            for_uid if extra.same_frame_of_reference else uid("for-extra", i)))
    if ct_localizer:
        written.localizer_series_uid = uid("ct-localizer-series")
        written.localizer_files = _write_localizer(ct_hu, ct_geom, ct_dataset, ct_stored, written.localizer_series_uid,
                                                   uid, fname, for_uid, ct_signed)
    if ct_reformat:
        written.reformat_series_uid = uid("ct-reformat-series", ct_reformat)
        written.reformat_files = _write_reformat(ct_hu, ct_geom, ct_dataset, ct_stored, ct_reformat,
                                                 written.reformat_series_uid, uid, fname, for_uid, ct_signed)
    for n, kind in enumerate(k.upper() for k in other_objects):
        path = fname()
        _write_other_object(kind, path, case, vendor, study_uid, study_dt, for_uid, uid("other", kind, n),
                            uid("other-series", kind, n), pet_geom)
        written.other_object_files[kind] = path
    if rt_study_dir is not None:
        rt_dir = Path(rt_study_dir)
        rt_dir.mkdir(parents=True, exist_ok=True)
        written.rt_study_uid = uid("rt-study")
        rt_dt = study_dt + timedelta(days=9)
        rt_for = uid("rt-for")
        for kind in ("RTDOSE", "RTPLAN"):
            path = fname(rt_dir)
            _write_other_object(kind, path, case, vendor, written.rt_study_uid, rt_dt, rt_for, uid("rt", kind),
                                uid("rt-series", kind), pet_geom)
            written.rt_files[kind] = path
    return written


def _write_localizer(ct_hu, ct_geom, ct_dataset, ct_stored, series_uid, uid, fname, for_uid, signed) -> list[Path]:
    """An AP and a lateral scout (mean HU projections, rows from the head down), one series."""
    origin, spacing, direction, size = ct_geom
    top = origin + (size[2] - 1) * spacing[2] * direction[:, 2]
    views = (  # (name, projection (z, in-plane), row direction, pixel spacing along it, centre offset)
        ("AP", ct_hu.mean(axis=1), direction[:, 0], spacing[0], (size[1] - 1) / 2 * spacing[1] * direction[:, 1]),
        ("LAT", ct_hu.mean(axis=2), direction[:, 1], spacing[1], (size[0] - 1) / 2 * spacing[0] * direction[:, 0]),
    )
    files = []
    for n, (name, proj, row_dir, row_sp, centre) in enumerate(views):
        ds = ct_dataset(series_uid, 1, "Topogram 0.6 T20f", ("ORIGINAL", "PRIMARY", "LOCALIZER"), n + 1,
                        uid("ct-localizer", name), for_uid)
        ipp = top + centre
        col_dir = -direction[:, 2]
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in ipp]
        ds.ImageOrientationPatient = [_ds_str(float(v)) for v in list(row_dir) + list(col_dir)]
        ds.PixelSpacing = [_ds_str(float(spacing[2])), _ds_str(float(row_sp))]
        ds.SliceThickness = "1"
        _pixel_module(ds, ct_stored(proj[::-1]), signed=signed)
        path = fname()
        _save(ds, CT_IMAGE_STORAGE, path)
        files.append(path)
    return files


def _write_reformat(ct_hu, ct_geom, ct_dataset, ct_stored, plane, series_uid, uid, fname, for_uid, signed
                    ) -> list[Path]:
    """Coronal (one slice per CT row) or sagittal (per CT column) reformat; rows run from the head down."""
    origin, spacing, direction, size = ct_geom
    top = origin + (size[2] - 1) * spacing[2] * direction[:, 2]
    if plane == "coronal":
        n_slices, step_dir, step, row_dir, row_sp = size[1], direction[:, 1], spacing[1], direction[:, 0], spacing[0]
    else:
        n_slices, step_dir, step, row_dir, row_sp = size[0], direction[:, 0], spacing[0], direction[:, 1], spacing[1]
    files = []
    for j in range(n_slices):
        img = ct_hu[::-1, j, :] if plane == "coronal" else ct_hu[::-1, :, j]
        ds = ct_dataset(series_uid, 20, f"CT {plane} MPR", ("DERIVED", "SECONDARY", "REFORMATTED"), j + 1,
                        uid("ct-reformat", plane, j), for_uid)
        ipp = top + j * step * step_dir
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in ipp]
        ds.ImageOrientationPatient = [_ds_str(float(v)) for v in list(row_dir) + list(-direction[:, 2])]
        ds.PixelSpacing = [_ds_str(float(spacing[2])), _ds_str(float(row_sp))]
        ds.SliceThickness = _ds_str(float(step))
        _pixel_module(ds, ct_stored(img), signed=signed)
        path = fname()
        _save(ds, CT_IMAGE_STORAGE, path)
        files.append(path)
    return files


def _write_other_object(kind: str, path: Path, case: Any, vendor: str, study_uid: str, study_dt: datetime,
                        for_uid: str, sop_uid: str, series_uid: str, pet_geom) -> None:
    """A small but well-formed non-image object of ``kind`` (RTDOSE with a 3-frame dose grid, RTPLAN,
    RTSTRUCT, SR, KO, PR): enough header for a reader to tell what it is."""
    from pydicom.dataset import Dataset, FileDataset

    sop_class = OTHER_OBJECT_SOP_CLASSES[kind]
    ds = FileDataset(None, {}, preamble=b"\0" * 128)
    _common(ds, case, vendor, study_uid, study_dt, for_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = kind
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 900 + sorted(OTHER_OBJECT_SOP_CLASSES).index(kind)
    ds.SeriesDescription = f"{kind} (phantom)"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = _da(study_dt), _tm(study_dt)
    if kind == "RTDOSE":
        origin, spacing, direction, _ = pet_geom
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in origin]
        ds.ImageOrientationPatient = [_ds_str(float(v)) for v in list(direction[:, 0]) + list(direction[:, 1])]
        ds.PixelSpacing = [_ds_str(float(spacing[1])), _ds_str(float(spacing[0]))]
        ds.NumberOfFrames = 3
        ds.FrameIncrementPointer = 0x3004000C
        ds.GridFrameOffsetVector = [_ds_str(float(k * spacing[2])) for k in range(3)]
        ds.DoseGridScaling = "0.0001"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = ds.BitsStored = 32
        ds.HighBit = 31
        ds.PixelRepresentation = 0
        ds.PixelData = np.arange(3 * 4 * 4, dtype="<u4").tobytes()
    elif kind == "RTPLAN":
        ds.RTPlanLabel = "H&N VMAT"
        ds.RTPlanGeometry = "PATIENT"
        ds.ApprovalStatus = "APPROVED"
    elif kind == "RTSTRUCT":
        ds.StructureSetLabel = "contours"
        roi = Dataset()
        roi.ROINumber = 1
        roi.ROIName = "GTV"
        roi.ReferencedFrameOfReferenceUID = for_uid
        ds.StructureSetROISequence = [roi]
    elif kind in ("SR", "KO"):
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.ConceptNameCodeSequence = [_code("113000", "DCM", "Of Interest") if kind == "KO"
                                      else _code("18748-4", "LN", "Diagnostic Imaging Report")]
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    else:  # PR
        ds.ContentLabel = "PHANTOM"
        ds.PresentationCreationDate, ds.PresentationCreationTime = _da(study_dt), _tm(study_dt)
    _save(ds, sop_class, path)


def _write_seg(path: Path, case: Any, vendor: str, label: np.ndarray, origin, spacing, direction, uid,
               study_uid: str, study_dt: datetime, for_uid: str, pt_series_uid: str,
               series_dt: datetime) -> None:
    """BINARY DICOM-SEG of a (z, y, x) label on the PET grid: one frame per labelled slice and
    segment; connected components alternate between segments 1 and 2."""
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.pixels import pack_bits
    from scipy import ndimage

    comps, n_comp = ndimage.label(label)
    seg_of_voxel = np.zeros(label.shape, dtype=np.uint8)
    for c in range(1, n_comp + 1):
        seg_of_voxel[comps == c] = 1 + (c - 1) % 2
    n_segments = 2 if n_comp >= 2 else 1
    ds = FileDataset(None, {}, preamble=b"\0" * 128)
    _common(ds, case, vendor, study_uid, study_dt, for_uid)
    ds.SOPClassUID = SEG_STORAGE
    ds.SOPInstanceUID = uid("seg")
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = uid("seg-series")
    ds.SeriesNumber = 300
    ds.SeriesDescription = "Lesion segmentation"
    ds.SeriesDate = ds.ContentDate = _da(series_dt)
    ds.SeriesTime = ds.ContentTime = _tm(series_dt + timedelta(hours=2))
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "LESIONS"
    ds.ContentDescription = "phantom lesion mask"
    ds.ContentCreatorName = "nnunetv2_petct"
    ds.SegmentationType = "BINARY"
    ds.LossyImageCompression = "00"
    segs = []
    for s in range(1, n_segments + 1):
        item = Dataset()
        item.SegmentNumber = s
        item.SegmentLabel = f"Lesion group {s}"
        item.SegmentAlgorithmType = "MANUAL"
        item.SegmentedPropertyCategoryCodeSequence = [_code("49755003", "SCT", "Morphologically Altered Structure")]
        item.SegmentedPropertyTypeCodeSequence = [_code("4147007", "SCT", "Mass")]
        segs.append(item)
    ds.SegmentSequence = segs
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = pt_series_uid
    ref_series.ReferencedInstanceSequence = []
    ds.ReferencedSeriesSequence = [ref_series]
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [_ds_str(float(spacing[1])), _ds_str(float(spacing[0]))]
    pm.SliceThickness = _ds_str(float(spacing[2]))
    pm.SpacingBetweenSlices = _ds_str(float(spacing[2]))
    shared.PixelMeasuresSequence = [pm]
    po = Dataset()
    po.ImageOrientationPatient = [_ds_str(float(v)) for v in list(direction[:, 0]) + list(direction[:, 1])]
    shared.PlaneOrientationSequence = [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, per_frame = [], []
    for s in range(1, n_segments + 1):
        for k in range(label.shape[0]):
            m = seg_of_voxel[k] == s
            if not m.any():
                continue
            frames.append(m)
            fg = Dataset()
            fc = Dataset()
            fc.DimensionIndexValues = [s, k + 1]
            fg.FrameContentSequence = [fc]
            pp = Dataset()
            pp.ImagePositionPatient = [_ds_str(float(v)) for v in origin + k * spacing[2] * direction[:, 2]]
            fg.PlanePositionSequence = [pp]
            si = Dataset()
            si.ReferencedSegmentNumber = s
            fg.SegmentIdentificationSequence = [si]
            src = Dataset()
            src.ReferencedSOPClassUID = PET_IMAGE_STORAGE
            src.ReferencedSOPInstanceUID = uid("pt", k)
            der = Dataset()
            der.SourceImageSequence = [src]
            fg.DerivationImageSequence = [der]
            per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(label.shape[1]), int(label.shape[2])
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(np.stack(frames).astype(np.uint8).ravel())
    _save(ds, SEG_STORAGE, path)
