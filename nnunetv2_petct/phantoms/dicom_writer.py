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

All UIDs come from :func:`pydicom.uid.generate_uid` with entropy from (case_id, vendor, seed, ...), so
a study is reproducible; file names are opaque random hex strings without extension, and CT, PT and
SEG files share one flat folder: a reader has to use the headers.
"""

from __future__ import annotations

import logging
import zlib
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


@dataclass
class WrittenStudy:
    """What :func:`write_dicom_study` wrote, with the acquisition facts it chose.

    ``suv_factor`` is the factor a QIBA reader must find (rescaled pixel -> SUVbw): weight_g /
    decayed dose for BQML, the SUVScaleFactor as written for PHILIPS_CNTS.
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


def write_dicom_study(case: Any, out_dir: Path, vendor: str = "SIEMENS", seed: int = 0,
                      with_seg: bool = False, radiopharmaceutical: str = "Fluorodeoxyglucose"
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

    Returns:
        A :class:`WrittenStudy` with UIDs, file lists and the acquisition facts.

    Raises:
        ValueError: unknown vendor, or negative PET values (activity cannot be negative).
    """
    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileDataset

    vendor = vendor.upper()
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; use one of {VENDORS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{case.case_id}|{vendor}".encode())])
    uid = _Uids("nnunetv2_petct-phantom", case.case_id, vendor, seed)

    def fname() -> Path:
        while True:
            p = out_dir / rng.bytes(10).hex()
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
    decayed_dose = dose_bq * 2.0 ** (-uptake_s / F18_HALF_LIFE_S)
    bq_per_suv = decayed_dose / (weight_kg * 1000.0)  # Bq/ml per SUV unit
    study_dt = series_dt - timedelta(minutes=25)
    ct_dt = series_dt - timedelta(minutes=3)
    study_uid, for_uid = uid("study"), uid("for")
    ct_series_uid, pt_series_uid = uid("ct-series"), uid("pt-series")
    written = WrittenStudy(out_dir=out_dir, vendor=vendor, study_uid=study_uid, ct_series_uid=ct_series_uid,
                           pt_series_uid=pt_series_uid, frame_of_reference_uid=for_uid, weight_kg=weight_kg,
                           injected_dose_bq=dose_bq, uptake_time_s=uptake_s, series_datetime=series_dt,
                           injection_datetime=inj_dt)

    # ------------------------------------------------------------------ CT
    ct_hu = sitk.GetArrayFromImage(case.ct).astype(np.float64)
    origin, spacing, direction, size = _geometry(case.ct)
    ct_signed = vendor == "GE"
    hu_min = float(ct_hu.min())
    intercept = -1024.0 if hu_min >= -1024 else float(np.floor(hu_min))
    if ct_signed:
        intercept = -1024.0
    for k in range(size[2]):
        ds = new_ds()
        _common(ds, case, vendor, study_uid, study_dt, for_uid)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = uid("ct", k)
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesInstanceUID = ct_series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT WB 5.0 B30f" if vendor == "SIEMENS" else "CTAC WB"
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(ct_dt)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(ct_dt)
        ds.InstanceNumber = k + 1
        ds.KVP = "120"
        ds.RescaleType = "HU"
        _slice_geometry_tags(ds, origin, spacing, direction, k)
        stored = np.rint(ct_hu[k] - intercept)
        stored = np.clip(stored, -32768, 32767) if ct_signed else np.clip(stored, 0, 65535)
        ds.RescaleIntercept = _ds_str(intercept)
        ds.RescaleSlope = "1"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        _pixel_module(ds, stored, signed=ct_signed)
        path = fname()
        _save(ds, CT_IMAGE_STORAGE, path)
        written.ct_files.append(path)

    # ------------------------------------------------------------------ PT
    suv = sitk.GetArrayFromImage(case.pet).astype(np.float64)
    if suv.min() < 0:
        raise ValueError(f"case {case.case_id}: PET has negative SUV values ({suv.min():g})")
    origin, spacing, direction, size = _geometry(case.pet)
    philips = vendor == "PHILIPS_CNTS"
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
    n_beds = int(np.ceil(size[2] / _BED_SLICES))
    for k in range(size[2]):
        ds = new_ds()
        _common(ds, case, vendor, study_uid, study_dt, for_uid)
        ds.SOPClassUID = PET_IMAGE_STORAGE
        ds.SOPInstanceUID = uid("pt", k)
        ds.Modality = "PT"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesInstanceUID = pt_series_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = "PET WB AC"
        # beds are acquired from the head (last slices) to the feet
        bed = (size[2] - 1 - k) // _BED_SLICES
        acq_dt = series_dt + timedelta(seconds=bed * _BED_DURATION_S + (60 if philips else 0))
        ds.SeriesDate = _da(series_dt)
        ds.SeriesTime = _tm(series_dt)
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
        ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
        ds.DecayCorrection = "START"
        ds.AttenuationCorrectionMethod = "CTAC"
        ds.ReconstructionMethod = "OSEM 3i21s"
        ds.NumberOfSlices = size[2]
        ds.FrameReferenceTime = _ds_str(1000.0 * (bed * _BED_DURATION_S + _BED_DURATION_S / 2))
        ds.ActualFrameDuration = _BED_DURATION_S * 1000
        ds.DecayFactor = _ds_str(2.0 ** ((acq_dt - series_dt).total_seconds() / F18_HALF_LIFE_S))
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
            block.add_new(0x0D, "DT", _dt(series_dt))
        _slice_geometry_tags(ds, origin, spacing, direction, k)
        vmax = float(rescaled_target[k].max())
        slope_str = _ds_str(vmax / max_stored) if vmax > 0 else "1"
        slope = float(slope_str)
        stored = np.clip(np.rint(rescaled_target[k] / slope), 0, max_stored)
        ds.RescaleSlope = slope_str
        ds.RescaleIntercept = "0"
        ds.RescaleType = "CNTS" if philips else "BQML"
        if philips:
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            block.add_new(0x00, "DS", suv_sf_str)
            block.add_new(0x09, "DS", _ds_str(acsf))
        _pixel_module(ds, stored, signed=not philips)
        path = fname()
        _save(ds, PET_IMAGE_STORAGE, path)
        written.pt_files.append(path)
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
    return written


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
