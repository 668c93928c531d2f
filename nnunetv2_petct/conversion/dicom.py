"""DICOM PET/CT studies: discovery by headers, loading CT (HU) and PET (SUVbw), minimal DICOM-SEG reader.

Pure library module (pydicom, numpy, SimpleITK; no nnunetv2 import).

* :func:`find_dicom_studies` walks a folder, reads headers only (``stop_before_pixels``), groups
  instances by StudyInstanceUID then SeriesInstanceUID and picks the CT (Modality CT) and PET
  (Modality PT) series from the headers alone; file and folder names are never used. Series that
  cannot be the volume we want are set aside with a reason (CT localizers, secondary captures and
  reformats, PET without attenuation correction, series of fewer than ``MIN_SLICES`` slices). A study
  with no usable CT/PT series, or more than one, gets a ``problems`` entry and no choice is made
  (:meth:`DicomStudy.select` lets a caller choose).
* :func:`load_dicom_study` builds SimpleITK images with the geometry of the headers
  (ImagePositionPatient, ImageOrientationPatient, PixelSpacing; slices sorted by their position along
  the slice normal): CT in HU (each slice's RescaleSlope/Intercept), PET in SUVbw
  (:func:`nnunetv2_petct.conversion.suv.compute_suv_bw`, QIBA, plus each slice's rescale). The CT is left on its
  own grid; the conversion framework resamples it onto the PET grid.
* :func:`load_dicom_seg` reads a (binary or fractional) DICOM-SEG and places its frames on a
  reference grid by their ImagePositionPatient; all segments are merged into label 1.

SimpleITK geometry: spacing/origin/size are (x, y, z); numpy arrays are (z, y, x). The direction
matrix has the row direction (ImageOrientationPatient[0:3]), the column direction ([3:6]) and the
slice normal (their cross product) as its columns; PixelSpacing is (row spacing = along y,
column spacing = along x).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MIN_SLICES = 3
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
F18_HALF_LIFE_S = 6586.2

# Codes that name FDG: SNOMED-RT "C-B1031" (DICOM CID 4021) and SNOMED CT 35321007.
_FDG_CODES = {"C-B1031", "35321007"}
_FDG_WORDS = ("FDG", "FLUORODEOXYGLUCOSE", "FLUDEOXYGLUCOSE", "DEOXYGLUCOSE", "DEOXY-GLUCOSE")
# 18F radionuclide codes: SNOMED-RT "C-111A1", SNOMED CT 77004003.
_F18_CODES = {"C-111A1", "77004003"}
_EXCLUDED_IMAGE_TYPES = ("LOCALIZER", "SECONDARY", "PROJECTION IMAGE", "MIP", "SCREEN SAVE")


class DicomStudyError(ValueError):
    """A DICOM study cannot be loaded as one CT + one PET volume; the message says why."""


class NonFDGTracerError(DicomStudyError):
    """The PET tracer is not (or not known to be) FDG and ``allow_non_fdg`` is False."""


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------


@dataclass
class DicomSeries:
    """One series of a study, from its headers (no pixel data is held).

    Attributes:
        series_uid: SeriesInstanceUID.
        modality: Modality (CT, PT, SEG, ...).
        files: instance files (image series: sorted along the slice normal when the geometry allows,
            else by InstanceNumber).
        description: SeriesDescription.
        manufacturer: Manufacturer of the first instance.
        sop_class_uid: SOPClassUID of the first instance.
        frame_of_reference_uid: FrameOfReferenceUID of the first instance ("" if absent).
        units: PET Units ("" for other modalities).
        excluded: reason why this series is not a CT/PT candidate, None if it is one.
        geometry_problem: why the slices do not form one regular volume, None if they do.
    """

    series_uid: str
    modality: str
    files: list[Path] = field(default_factory=list)
    description: str = ""
    manufacturer: str = ""
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    units: str = ""
    excluded: str | None = None
    geometry_problem: str | None = None

    def label(self) -> str:
        """Short human description used in messages."""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.modality} series {self.series_uid}{desc} ({len(self.files)} files)"


@dataclass
class DicomStudy:
    """One study found by :func:`find_dicom_studies`.

    Attributes:
        study_uid: StudyInstanceUID.
        patient_id: PatientID ("" if absent).
        study_date: StudyDate as written (``YYYYMMDD``; "" if absent).
        root: deepest folder holding all of the study's files.
        series: every series of the study.
        ct, pt: the chosen CT and PET series (None unless exactly one usable candidate each).
        seg: DICOM-SEG series of the study.
        problems: why the study cannot be converted as it is (empty when ``ct`` and ``pt`` are set and
            their geometry is usable).
        notes: series set aside and why (informative).
    """

    study_uid: str
    patient_id: str = ""
    study_date: str = ""
    root: Path | None = None
    series: list[DicomSeries] = field(default_factory=list)
    ct: DicomSeries | None = None
    pt: DicomSeries | None = None
    seg: list[DicomSeries] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def seg_paths(self) -> list[Path]:
        """All DICOM-SEG files of the study."""
        return [p for s in self.seg for p in s.files]

    @property
    def ok(self) -> bool:
        return not self.problems and self.ct is not None and self.pt is not None

    def candidates(self, modality: str) -> list[DicomSeries]:
        """Usable series of a modality ("CT" or "PT")."""
        return [s for s in self.series if s.modality == modality and s.excluded is None]

    def select(self, ct_series_uid: str | None = None, pt_series_uid: str | None = None) -> None:
        """Choose the CT and/or PET series by SeriesInstanceUID (resolves an ambiguous study) and
        recompute ``problems``.

        Raises:
            KeyError: no series of that modality with that UID in the study.
        """
        for uid, mod in ((ct_series_uid, "CT"), (pt_series_uid, "PT")):
            if uid is None:
                continue
            match = [s for s in self.series if s.series_uid == uid and s.modality == mod]
            if not match:
                raise KeyError(f"no {mod} series {uid} in study {self.study_uid}")
            setattr(self, "ct" if mod == "CT" else "pt", match[0])
        self._update_problems(auto_select=False)

    def _update_problems(self, auto_select: bool = True) -> None:
        self.problems = []
        for mod, attr, name in (("CT", "ct", "CT"), ("PT", "pt", "PET (PT)")):
            if auto_select:
                cands = self.candidates(mod)
                setattr(self, attr, cands[0] if len(cands) == 1 else None)
                if not cands:
                    set_aside = [s.label() + f": {s.excluded}" for s in self.series
                                 if s.modality == mod and s.excluded]
                    extra = f" (set aside: {'; '.join(set_aside)})" if set_aside else ""
                    self.problems.append(f"no usable {name} series{extra}")
                elif len(cands) > 1:
                    self.problems.append(
                        f"{len(cands)} usable {name} series, expected one: "
                        + "; ".join(s.label() for s in cands)
                        + " (choose with DicomStudy.select)"
                    )
            chosen = getattr(self, attr)
            if not auto_select and chosen is None:
                self.problems.append(f"no {name} series chosen (DicomStudy.select)")
            if chosen is not None and chosen.geometry_problem:
                self.problems.append(f"{chosen.label()}: {chosen.geometry_problem}")


# --------------------------------------------------------------------------------------------
# header helpers
# --------------------------------------------------------------------------------------------


def _str(ds: Any, keyword: str) -> str:
    v = ds.get(keyword) if ds is not None else None
    if v is None:
        return ""
    return str(v).strip()


def _floats(ds: Any, keyword: str) -> list[float] | None:
    v = ds.get(keyword)
    if v is None or (hasattr(v, "__len__") and len(v) == 0):
        return None
    try:
        return [float(x) for x in (v if hasattr(v, "__iter__") and not isinstance(v, str) else [v])]
    except (TypeError, ValueError):
        return None


def _read_header(path: Path):
    """Header of a DICOM file, or None if it is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt file must not stop the walk
        logger.debug("cannot read %s as DICOM: %s", path, exc)
        return None


@dataclass
class SliceGeometry:
    """Regular volume geometry of an image series (SimpleITK conventions, (x, y, z))."""

    order: list[int]
    origin_xyz: tuple[float, float, float]
    spacing_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    size_xyz: tuple[int, int, int]


def slice_geometry(headers: Sequence[Any]) -> SliceGeometry:
    """Geometry of a stack of single-frame slices from ImagePositionPatient / ImageOrientationPatient /
    PixelSpacing.

    Slices are ordered by their position along the normal (row direction x column direction); the
    origin is the position of the first slice in that order and the slice spacing the (uniform)
    distance between neighbours. A single slice gets SpacingBetweenSlices, else SliceThickness,
    else 1 mm.

    Raises:
        DicomStudyError: missing tags (named), different orientation/size/pixel spacing between
            slices, multi-frame instances, repeated positions (dynamic or gated series), non-uniform
            spacing (missing slices) or slices not stacked along the normal (gantry tilt).
    """
    if not headers:
        raise DicomStudyError("no slices")
    iops, ipps = [], []
    for k, h in enumerate(headers):
        n_frames = h.get("NumberOfFrames")
        if n_frames is not None and int(n_frames) > 1:
            raise DicomStudyError(f"instance {k} is multi-frame ({int(n_frames)} frames); only single-frame "
                                  "slices are supported")
        iop, ipp = _floats(h, "ImageOrientationPatient"), _floats(h, "ImagePositionPatient")
        if iop is None or len(iop) != 6:
            raise DicomStudyError(f"instance {k}: ImageOrientationPatient missing or malformed")
        if ipp is None or len(ipp) != 3:
            raise DicomStudyError(f"instance {k}: ImagePositionPatient missing or malformed")
        iops.append(iop)
        ipps.append(ipp)
    iop0 = np.asarray(iops[0])
    if not all(np.allclose(np.asarray(v), iop0, atol=1e-4) for v in iops):
        raise DicomStudyError("ImageOrientationPatient differs between slices")
    sizes = {(int(h.get("Rows") or 0), int(h.get("Columns") or 0)) for h in headers}
    if len(sizes) != 1 or 0 in next(iter(sizes)):
        raise DicomStudyError(f"Rows/Columns missing or different between slices: {sorted(sizes)}")
    rows, cols = next(iter(sizes))
    ps = _floats(headers[0], "PixelSpacing")
    if ps is None or len(ps) != 2 or min(ps) <= 0:
        raise DicomStudyError("PixelSpacing missing or malformed")
    for h in headers[1:]:
        other = _floats(h, "PixelSpacing")
        if other is None or not np.allclose(other, ps, rtol=1e-4, atol=1e-5):
            raise DicomStudyError("PixelSpacing differs between slices")
    row_dir = iop0[:3] / np.linalg.norm(iop0[:3])
    col_dir = iop0[3:] / np.linalg.norm(iop0[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    pos = np.asarray(ipps, dtype=np.float64)
    dist = pos @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    d_sorted = dist[order]
    if len(headers) > 1:
        gaps = np.diff(d_sorted)
        if np.any(gaps < 1e-3):
            n_pos = len(np.unique(np.round(d_sorted, 3)))
            raise DicomStudyError(
                f"{len(headers)} slices at only {n_pos} distinct positions: a dynamic/gated series or "
                "duplicate instances (not supported)"
            )
        dz = float(np.median(gaps))
        if np.max(np.abs(gaps - dz)) > max(0.01 * dz, 0.01):
            raise DicomStudyError(
                f"non-uniform slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm): missing slices?"
            )
        lateral = pos[order] - pos[order[0]] - np.outer(d_sorted - d_sorted[0], normal)
        if np.max(np.linalg.norm(lateral, axis=1)) > 0.05 * min(ps):
            raise DicomStudyError("slices are not stacked along the slice normal (gantry tilt?): not supported")
    else:
        sbs = _floats(headers[0], "SpacingBetweenSlices") or _floats(headers[0], "SliceThickness")
        dz = float(sbs[0]) if sbs and sbs[0] > 0 else 1.0
    direction = np.column_stack([row_dir, col_dir, normal])
    return SliceGeometry(
        order=order,
        origin_xyz=tuple(float(x) for x in pos[order[0]]),
        spacing_xyz=(float(ps[1]), float(ps[0]), dz),
        direction=tuple(float(x) for x in direction.ravel()),
        size_xyz=(cols, rows, len(headers)),
    )


def _multi_str(ds: Any, keyword: str) -> list[str]:
    v = ds.get(keyword)
    if v is None:
        return []
    if isinstance(v, str):
        return [p.strip().upper() for p in v.split("\\") if p.strip()]
    return [str(p).strip().upper() for p in v]


def _exclusion_reason(modality: str, first: Any, n_files: int) -> str | None:
    """Why a CT/PT series cannot be the study's CT/PET volume (None if it can)."""
    image_type = _multi_str(first, "ImageType")
    bad = [t for t in _EXCLUDED_IMAGE_TYPES if t in image_type]
    if bad:
        return f"ImageType {'/'.join(image_type)} marks a {bad[0].lower()} image"
    sop = _str(first, "SOPClassUID")
    expected = CT_IMAGE_STORAGE if modality == "CT" else PET_IMAGE_STORAGE
    if sop and sop != expected:
        return f"SOPClassUID {sop} is not the single-frame {modality} image storage class"
    if modality == "PT" and "ATTN" not in _multi_str(first, "CorrectedImage"):
        return "CorrectedImage lacks ATTN (non-attenuation-corrected PET)"
    if n_files < MIN_SLICES:
        return f"only {n_files} slice(s)"
    return None


def _common_root(paths: Iterable[Path]) -> Path | None:
    paths = [str(p.parent) for p in paths]
    if not paths:
        return None
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:  # different drives
        return None


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


def find_dicom_studies(root: Path, progress: bool = False) -> list[DicomStudy]:
    """Find the PET/CT studies under ``root`` from the DICOM headers alone.

    Every regular file under ``root`` (recursively, hidden files included, any name or extension) is
    tried as DICOM with ``stop_before_pixels``; non-DICOM files and DICOMDIR files are skipped.
    Instances are grouped by StudyInstanceUID, then SeriesInstanceUID.

    Args:
        root: folder to walk.
        progress: show a tqdm progress bar over files.

    Returns:
        Studies sorted by (PatientID, StudyDate, StudyInstanceUID). Each has ``ct``/``pt`` set when
        exactly one usable series of the modality exists and ``problems`` listing why not otherwise
        (also: slices that do not form one regular volume). Studies without any CT or PT series at
        all (e.g. only a SEG) are returned too, with problems.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    from nnunetv2_petct.conversion.core import walk_files

    files = sorted(walk_files(root))  # folder links followed (each real folder once)
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="reading DICOM headers", unit="file")
    # study -> series -> [(path, header)]
    studies: dict[str, dict[str, list[tuple[Path, Any]]]] = defaultdict(lambda: defaultdict(list))
    n_skipped = 0
    for path in files:
        ds = _read_header(path)
        if ds is None:
            n_skipped += 1
            continue
        sop = _str(ds, "SOPClassUID") or _str(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
        if sop == MEDIA_DIRECTORY_STORAGE:
            continue
        st, se = _str(ds, "StudyInstanceUID"), _str(ds, "SeriesInstanceUID")
        if not st or not se:
            logger.debug("%s has no Study/SeriesInstanceUID; skipped", path)
            n_skipped += 1
            continue
        studies[st][se].append((path, ds))
    if n_skipped:
        logger.info("find_dicom_studies: %d file(s) under %s skipped (not DICOM images)", n_skipped, root)

    out: list[DicomStudy] = []
    for study_uid, series_map in studies.items():
        first_any = next(iter(series_map.values()))[0][1]
        study = DicomStudy(
            study_uid=study_uid, patient_id=_str(first_any, "PatientID"),
            study_date=_str(first_any, "StudyDate"),
            root=_common_root(p for items in series_map.values() for p, _ in items),
        )
        for series_uid, items in series_map.items():
            first = items[0][1]
            modality = _str(first, "Modality").upper()
            s = DicomSeries(
                series_uid=series_uid, modality=modality, files=[p for p, _ in items],
                description=_str(first, "SeriesDescription"), manufacturer=_str(first, "Manufacturer"),
                sop_class_uid=_str(first, "SOPClassUID"),
                frame_of_reference_uid=_str(first, "FrameOfReferenceUID"), units=_str(first, "Units").upper(),
            )
            if modality in ("CT", "PT"):
                s.excluded = _exclusion_reason(modality, first, len(items))
                headers = [h for _, h in items]
                try:
                    geom = slice_geometry(headers)
                    s.files = [items[i][0] for i in geom.order]
                except DicomStudyError as exc:
                    s.geometry_problem = str(exc)
                    s.files = [p for p, _ in sorted(items, key=lambda it: int(it[1].get("InstanceNumber") or 0))]
                if s.excluded:
                    study.notes.append(f"set aside {s.label()}: {s.excluded}")
            elif modality == "SEG":
                study.seg.append(s)
            study.series.append(s)
        study.series.sort(key=lambda s: (s.modality, s.description, s.series_uid))
        study._update_problems()
        out.append(study)
    out.sort(key=lambda s: (s.patient_id, s.study_date, s.study_uid))
    return out


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def _read_full(paths: Sequence[Path]) -> list[Any]:
    import pydicom

    out = []
    for p in paths:
        try:
            out.append(pydicom.dcmread(p))
        except Exception as exc:  # noqa: BLE001
            raise DicomStudyError(f"cannot read {p}: {exc}") from None
    return out


def _pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomStudyError(
            f"cannot decode the pixel data of {path} (transfer syntax {ts}): {exc}. Compressed DICOM may "
            "need pylibjpeg or python-gdcm"
        ) from None


def _image(arr_zyx: np.ndarray, geom: SliceGeometry):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr_zyx)
    img.SetOrigin(geom.origin_xyz)
    img.SetSpacing(geom.spacing_xyz)
    img.SetDirection(geom.direction)
    return img


def _load_series_headers(series: DicomSeries) -> tuple[list[Any], list[Path], SliceGeometry]:
    datasets = _read_full(series.files)
    try:
        geom = slice_geometry(datasets)
    except DicomStudyError as exc:
        raise DicomStudyError(f"{series.label()}: {exc}") from None
    return [datasets[i] for i in geom.order], [series.files[i] for i in geom.order], geom


def load_ct_series(series: DicomSeries) -> tuple[Any, dict]:
    """CT series -> (SimpleITK image in HU, facts).

    Each slice's RescaleSlope/RescaleIntercept is applied. Pixels equal to the stored
    PixelPaddingValue (outside the reconstruction field) are set to -1024 HU (recorded as an
    assumption). The image is int16 when every HU value is integral and fits, else float32.
    """
    from nnunetv2_petct.conversion.suv import SUVError, rescale_slope_intercept

    headers, paths, geom = _load_series_headers(series)
    vol = np.empty(tuple(reversed(geom.size_xyz)), dtype=np.float64)
    assumptions: list[str] = []
    n_padding = 0
    for k, (ds, p) in enumerate(zip(headers, paths)):
        px = _pixels(ds, p)
        try:
            slope, intercept = rescale_slope_intercept(ds)
        except SUVError as exc:
            raise DicomStudyError(f"{p}: {exc}") from None
        sl = px.astype(np.float64) * slope + intercept
        pad = ds.get("PixelPaddingValue")
        if pad is not None:
            padded = px == int(pad)
            if padded.any():
                n_padding += int(padded.sum())
                sl[padded] = -1024.0
        vol[k] = sl
    if n_padding:
        assumptions.append(f"{n_padding} CT voxels at PixelPaddingValue set to -1024 HU")
    if np.all(np.mod(vol, 1.0) == 0) and vol.min() >= -32768 and vol.max() <= 32767:
        arr = vol.astype(np.int16)
    else:
        arr = vol.astype(np.float32)
    facts = {"n_slices": len(headers), "hu_min": float(vol.min()), "hu_max": float(vol.max()),
             "manufacturer": _str(headers[0], "Manufacturer"), "assumptions": assumptions}
    return _image(arr, geom), facts


def tracer_info(header: Any) -> dict:
    """What the PET header says about the tracer.

    Returns:
        dict with ``radiopharmaceutical`` (text of (0018,0031)), ``radiopharmaceutical_code``
        (CodeValue/CodeMeaning of RadiopharmaceuticalCodeSequence), ``radionuclide`` (CodeMeaning of
        RadionuclideCodeSequence), ``is_fdg`` (True/False/None when the header does not name the
        tracer), ``is_f18`` (radionuclide code, or a half-life within 1 % of 6586.2 s).
    """
    info: dict = {"radiopharmaceutical": "", "radiopharmaceutical_code": "", "radionuclide": "",
                  "is_fdg": None, "is_f18": False}
    seq = header.get("RadiopharmaceuticalInformationSequence")
    item = seq[0] if seq is not None and len(seq) else None
    if item is None:
        return info
    text = _str(item, "Radiopharmaceutical")
    info["radiopharmaceutical"] = text
    codes: list[str] = []
    rp_seq = item.get("RadiopharmaceuticalCodeSequence")
    if rp_seq is not None and len(rp_seq):
        c = rp_seq[0]
        codes = [_str(c, "CodeValue").upper(), _str(c, "CodeMeaning")]
        info["radiopharmaceutical_code"] = " / ".join(x for x in codes if x)
    rn_seq = item.get("RadionuclideCodeSequence")
    nuclide_code = ""
    if rn_seq is not None and len(rn_seq):
        nuclide_code = _str(rn_seq[0], "CodeValue").upper()
        info["radionuclide"] = _str(rn_seq[0], "CodeMeaning") or nuclide_code
    words = " ".join([text] + codes[1:]).upper()
    named = bool(text) or bool(codes)
    if named:
        info["is_fdg"] = any(w in words for w in _FDG_WORDS) or (bool(codes) and codes[0] in _FDG_CODES)
    half = _floats(item, "RadionuclideHalfLife")
    info["is_f18"] = nuclide_code in _F18_CODES or (
        half is not None and math.isclose(half[0], F18_HALF_LIFE_S, rel_tol=0.01))
    return info


def load_pet_series(series: DicomSeries) -> tuple[Any, dict]:
    """PET series -> (SimpleITK float32 image in SUVbw, facts incl. the SUV computation).

    Raises:
        DicomStudyError: geometry problems; SUV problems (the SUVError message, prefixed with the
            series and its first file).
    """
    from nnunetv2_petct.conversion.suv import SUVError, compute_suv_bw, suv_volume_from_slices

    headers, paths, geom = _load_series_headers(series)
    try:
        comp = compute_suv_bw(headers)
        arrays = [_pixels(ds, p) for ds, p in zip(headers, paths)]
        suv = suv_volume_from_slices(headers, arrays, comp.factors)
    except SUVError as exc:
        raise DicomStudyError(f"{series.label()}, first file {paths[0]}: SUV: {exc}") from None
    facts = {"n_slices": len(headers), "manufacturer": _str(headers[0], "Manufacturer"),
             "units": comp.units, "suv": comp.to_dict(),
             "tracer_info": tracer_info(headers[0])}
    return _image(suv, geom), facts


def load_dicom_study(study: DicomStudy, allow_non_fdg: bool = False, assume_fdg_if_unnamed: bool = True
                     ) -> tuple[Any, Any, dict]:
    """Load the CT (HU) and PET (SUVbw) of a study found by :func:`find_dicom_studies`.

    Tracer policy: a header naming FDG (text or code) passes; a header naming another tracer raises
    :class:`NonFDGTracerError` unless ``allow_non_fdg``. A header naming no tracer passes as FDG when
    the radionuclide is 18F and ``assume_fdg_if_unnamed`` (recorded in ``assumptions``), else it is
    refused like a non-FDG tracer.

    Returns:
        ``(ct, pet, meta)``: CT in HU on its own grid (int16 or float32), PET in SUVbw (float32), and
        a JSON-serializable dict: ``vendor``, ``units``, ``tracer``, ``tracer_info``, ``suv`` (the
        factor, the times used and their sources: ``SUVComputation.to_dict``), series UIDs, slice
        counts, spacings (z, y, x), ``frame_of_reference_match``, ``assumptions`` and ``warnings``.

    Raises:
        DicomStudyError: the study has problems (no/ambiguous CT or PT, irregular slices), unreadable
            pixels, or SUV cannot be computed (message names the tag); NonFDGTracerError as above.
    """
    if study.problems:
        raise DicomStudyError(f"study {study.study_uid}: " + "; ".join(study.problems))
    if study.ct is None or study.pt is None:
        raise DicomStudyError(f"study {study.study_uid}: CT and PT series not chosen")
    assumptions: list[str] = []
    warnings: list[str] = []

    import pydicom

    pt_first = pydicom.dcmread(study.pt.files[0], stop_before_pixels=True)
    tinfo = tracer_info(pt_first)
    if tinfo["is_fdg"] is True:
        tracer = "FDG"
    elif tinfo["is_fdg"] is False:
        tracer = tinfo["radiopharmaceutical"] or tinfo["radiopharmaceutical_code"]
        if not allow_non_fdg:
            raise NonFDGTracerError(
                f"study {study.study_uid}: the PET tracer is '{tracer}', not FDG (first PT file "
                f"{study.pt.files[0]}); pass allow_non_fdg=True to convert it anyway"
            )
        warnings.append(f"non-FDG tracer '{tracer}' converted because allow_non_fdg=True")
    else:
        if tinfo["is_f18"] and assume_fdg_if_unnamed:
            tracer = "FDG"
            assumptions.append(
                "tracer not named in the PET header (no Radiopharmaceutical / RadiopharmaceuticalCodeSequence);"
                " radionuclide 18F, assumed FDG")
        elif allow_non_fdg:
            tracer = "unknown"
            warnings.append("tracer not named in the PET header; converted because allow_non_fdg=True")
        else:
            raise NonFDGTracerError(
                f"study {study.study_uid}: the PET header names no tracer and the radionuclide "
                f"'{tinfo['radionuclide'] or 'unknown'}' is not 18F (first PT file {study.pt.files[0]}); "
                "pass allow_non_fdg=True to convert it anyway"
            )

    ct, ct_facts = load_ct_series(study.ct)
    pet, pet_facts = load_pet_series(study.pt)
    assumptions += ct_facts.pop("assumptions")
    assumptions += [f"SUV: {n}" for n in pet_facts["suv"].get("notes", [])]
    for_match = (study.ct.frame_of_reference_uid == study.pt.frame_of_reference_uid
                 and bool(study.ct.frame_of_reference_uid))
    if not for_match:
        warnings.append("CT and PT have different (or missing) FrameOfReferenceUID; their header geometry "
                        "is assumed to share one patient coordinate system")
    meta = {
        "source_format": "DICOM",
        "study_uid": study.study_uid, "patient_id": study.patient_id, "study_date": study.study_date,
        "ct_series_uid": study.ct.series_uid, "pt_series_uid": study.pt.series_uid,
        "vendor": pet_facts["manufacturer"], "ct_manufacturer": ct_facts["manufacturer"],
        "units": pet_facts["units"], "tracer": tracer, "tracer_info": tinfo,
        "suv": pet_facts["suv"],
        "n_ct_slices": ct_facts["n_slices"], "n_pt_slices": pet_facts["n_slices"],
        "ct_spacing_mm": [float(s) for s in reversed(ct.GetSpacing())],
        "pet_spacing_mm": [float(s) for s in reversed(pet.GetSpacing())],
        "ct_hu_range": [ct_facts["hu_min"], ct_facts["hu_max"]],
        "frame_of_reference_match": for_match,
        "assumptions": assumptions, "warnings": warnings,
    }
    return ct, pet, meta


# --------------------------------------------------------------------------------------------
# DICOM-SEG
# --------------------------------------------------------------------------------------------


def _fg_item(ds: Any, keyword: str, frame_item: Any) -> Any:
    """Functional group macro item: per-frame first, then shared."""
    for container in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if container is None:
            continue
        seq = container.get(keyword)
        if seq is not None and len(seq):
            return seq[0]
    return None


def _first(seq: Any) -> Any:
    return seq[0] if seq is not None and len(seq) else None


def load_dicom_seg(path: Path, reference: Any, segment_numbers: Sequence[int] | None = None) -> Any:
    """Read a DICOM-SEG and rasterize it onto the grid of ``reference`` (all segments -> label 1).

    Frames are placed by PerFrameFunctionalGroupsSequence / PlanePositionSequence /
    ImagePositionPatient with the orientation of PlaneOrientationSequence and the pixel spacing of
    PixelMeasuresSequence (per-frame, else shared). Each foreground pixel centre is mapped to the
    nearest reference voxel: exact when the SEG frames lie on the reference grid (the usual case, a
    SEG drawn on the PET); a SEG on a coarser grid would leave holes (a warning is logged when frame
    pixels do not fall on reference voxel centres). FRACTIONAL segmentations are binarized at half
    of MaximumFractionalValue.

    Args:
        path: the SEG file.
        reference: SimpleITK image whose grid the output takes.
        segment_numbers: keep only these SegmentNumbers (default: all).

    Returns:
        uint8 SimpleITK image (0/1) on the reference grid. A SEG with no foreground (or none inside the
        reference) gives an all-zero image (warning logged).

    Raises:
        ValueError: not a SEG, or missing per-frame position/orientation/spacing (named).
    """
    import pydicom
    import SimpleITK as sitk

    ds = pydicom.dcmread(path)
    if _str(ds, "Modality").upper() != "SEG" and _str(ds, "SOPClassUID") != SEG_STORAGE:
        raise ValueError(f"{path} is not a DICOM-SEG (Modality {_str(ds, 'Modality')!r})")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    frames = np.asarray(ds.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape[0] != n_frames:
        raise ValueError(f"{path}: {frames.shape[0]} frames decoded, NumberOfFrames says {n_frames}")
    seg_type = _str(ds, "SegmentationType").upper() or "BINARY"
    if seg_type == "FRACTIONAL":
        max_val = float(ds.get("MaximumFractionalValue") or 255)
        frames = frames >= 0.5 * max_val
    else:
        frames = frames > 0
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise ValueError(f"{path}: PerFrameFunctionalGroupsSequence missing or not one item per frame")

    ref_size = np.asarray(reference.GetSize())  # (x, y, z)
    ref_origin = np.asarray(reference.GetOrigin(), dtype=np.float64)
    ref_spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)
    ref_dir = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    to_index = np.linalg.inv(ref_dir * ref_spacing[None, :])  # physical offset -> continuous index
    out = np.zeros(tuple(int(s) for s in ref_size[::-1]), dtype=np.uint8)  # (z, y, x)
    wanted = set(int(s) for s in segment_numbers) if segment_numbers is not None else None
    max_residual, n_outside, n_fg = 0.0, 0, 0
    for i, item in enumerate(per_frame):
        if wanted is not None:
            seg_id = _fg_item(ds, "SegmentIdentificationSequence", item)
            if seg_id is None or int(seg_id.get("ReferencedSegmentNumber") or 0) not in wanted:
                continue
        rr, cc = np.nonzero(frames[i])
        if rr.size == 0:
            continue
        pos_item = _fg_item(ds, "PlanePositionSequence", item)
        ori_item = _fg_item(ds, "PlaneOrientationSequence", item)
        pm_item = _fg_item(ds, "PixelMeasuresSequence", item)
        ipp = _floats(pos_item, "ImagePositionPatient") if pos_item is not None else None
        iop = _floats(ori_item, "ImageOrientationPatient") if ori_item is not None else None
        ps = _floats(pm_item, "PixelSpacing") if pm_item is not None else None
        if ipp is None or len(ipp) != 3:
            raise ValueError(f"{path}: frame {i} has no PlanePositionSequence ImagePositionPatient")
        if iop is None or len(iop) != 6:
            raise ValueError(f"{path}: frame {i} has no PlaneOrientationSequence ImageOrientationPatient")
        if ps is None or len(ps) != 2:
            raise ValueError(f"{path}: frame {i} has no PixelMeasuresSequence PixelSpacing")
        row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
        pts = (np.asarray(ipp)[None, :] + np.outer(cc * ps[1], row_dir) + np.outer(rr * ps[0], col_dir))
        cidx = (pts - ref_origin[None, :]) @ to_index.T  # (n, 3) continuous (x, y, z) index
        idx = np.rint(cidx).astype(np.int64)
        max_residual = max(max_residual, float(np.max(np.abs(cidx - idx))))
        inside = np.all((idx >= 0) & (idx < ref_size[None, :]), axis=1)
        n_fg += int(rr.size)
        n_outside += int((~inside).sum())
        idx = idx[inside]
        out[idx[:, 2], idx[:, 1], idx[:, 0]] = 1
    if max_residual > 0.25:
        logger.warning("%s: SEG pixels fall up to %.2f voxels off the reference voxel centres; placed on "
                       "the nearest voxel (SEG not drawn on this grid)", path, max_residual)
    if n_outside:
        logger.warning("%s: %d of %d foreground SEG pixels lie outside the reference image", path,
                       n_outside, n_fg)
    if not out.any():
        logger.warning("%s: empty segmentation on the reference grid", path)
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(reference)
    return img
