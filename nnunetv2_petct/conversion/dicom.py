"""DICOM PET/CT studies: discovery by headers, series selection, loading CT (HU) and PET (SUVbw),
minimal DICOM-SEG reader.

Pure library module (pydicom, numpy, SimpleITK; no nnunetv2 import).

* :func:`scan_dicom_folder` (and its short form :func:`find_dicom_studies`) walks a folder, reads
  headers only (``stop_before_pixels``), groups instances by StudyInstanceUID then SeriesInstanceUID
  and chooses one CT (Modality CT) and one PET (Modality PT) series per study from the headers alone;
  file and folder names are never used. Objects of other modalities (RTDOSE, RTPLAN, RTSTRUCT, SR, SEG,
  KO, PR, MR, ...) are not images of a PET/CT volume: they are counted per kind
  (:attr:`DicomStudy.other_objects`, :attr:`DicomScan.other_objects`) and otherwise ignored (DICOM-SEG
  series are also kept in :attr:`DicomStudy.seg` for labeled layouts); a study holding no CT or PT
  instance at all (e.g. an RT-only study of the same patient) is not a PET/CT study and is only
  counted (:attr:`DicomScan.other_studies`).
* Series selection (:data:`PET_SELECTION_RULE`, :data:`CT_SELECTION_RULE`) goes by what the data is,
  not by its labels: a series *qualifies* when it is a single-frame CT/PET Image Storage volume of
  axial slices that form one regular grid (and, for PET, is attenuation corrected); ORIGINAL/DERIVED
  and PRIMARY/SECONDARY are not held against it. Localizers/scouts, projections, single images,
  non-axial reformats and irregular stacks are set aside with the reason. When several series qualify
  a documented ranking chooses (the PET first, then the CT by its overlap with that PET), and every
  other series gets the reason it was not chosen (:attr:`DicomStudy.selection`, recorded in the
  manifest). ``ct_series`` / ``pet_series`` (SeriesInstanceUID or SeriesDescription, wildcards
  allowed; ``--ct-series`` / ``--pet-series`` on the command line) restrict the choice.
* :meth:`DicomStudy.coverage` gives the axial (head-foot) extents of the chosen CT and PET in patient
  coordinates, the overlap, and which parts of the PET have no CT (callers decide their policy: the
  converter refuses a CT covering less than ``--min-overlap`` of the PET; the rest is filled with air).
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
column spacing = along x). Patient coordinates are DICOM's (LPS): +z points to the head (superior).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from collections import Counter, defaultdict
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
# ImageType values that say the pixels are not a stack of density/activity slices (whatever
# ORIGINAL/DERIVED, PRIMARY/SECONDARY say, which are not held against a series).
_NOT_A_VOLUME_IMAGE_TYPES = ("LOCALIZER", "PROJECTION IMAGE", "MIP", "MINIP", "SCREEN SAVE",
                             "VOLUME RENDERING", "VOLREND", "SURFACE RENDERING")
# Tolerances of the ranking: overlaps/extents compared to 1 % of the PET's axial extent, slice
# spacings to 0.01 mm, so rounding at the edges does not decide between two series.
_RANK_FRACTION_STEP = 0.01
_RANK_SPACING_STEP_MM = 0.01

PET_SELECTION_RULE = (
    "A PET series qualifies when it is PET Image Storage (single-frame), attenuation corrected (CorrectedImage "
    "includes ATTN; SUV needs it), not a localizer/projection (ImageType LOCALIZER, PROJECTION IMAGE, MIP, "
    "SCREEN SAVE), at least 3 slices forming one regular volume (one orientation, one pixel spacing and size, "
    "uniform slice spacing without gaps or repeats, no gantry tilt) of axial slices (slice normal closest to "
    "the patient's head-foot axis). ORIGINAL/DERIVED and PRIMARY/SECONDARY do not matter. Among qualifying "
    "series (restricted to those matching --pet-series when given): (1) largest axial extent (to 1 %), "
    "(2) earliest acquisition start (the first time point of a dual-time-point study), (3) finest voxels "
    "(smallest voxel volume), (4) lowest SeriesInstanceUID."
)
CT_SELECTION_RULE = (
    "A CT series qualifies when it is CT Image Storage (single-frame), not a localizer/scout or projection "
    "(ImageType LOCALIZER, PROJECTION IMAGE, MIP, SCREEN SAVE), at least 3 slices forming one regular volume "
    "(as for PET) of axial slices; ORIGINAL/DERIVED and PRIMARY/SECONDARY do not matter (merged and "
    "attenuation-correction CTs are often DERIVED\\SECONDARY). Among qualifying series (restricted to those "
    "matching --ct-series when given): (1) same FrameOfReferenceUID as the chosen PET, (2) largest axial "
    "overlap with the chosen PET (to 1 % of the PET's extent), (3) finest slice spacing (to 0.01 mm), "
    "(4) most slices, (5) lowest SeriesInstanceUID."
)


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
        excluded: why this CT/PT series does not qualify (set aside), None if it qualifies.
        geometry_problem: why the slices do not form one regular volume, None if they do.
        instance_problem: why the instances cannot stand for their slices (two slices sharing one
            SOPInstanceUID: a DICOM-SEG could not say which one it segments), None if they can.
        image_type: ImageType values (upper case).
        corrected_image: CorrectedImage values (PET; upper case).
        plane: "axial", "coronal" or "sagittal" (the patient axis closest to the slice normal), ""
            when the geometry is unknown.
        spacing_mm_zyx: (slice spacing, row spacing, column spacing) of a regular volume, else None.
        z_range_mm: (lowest, highest) patient z (head-foot; +z = head) covered by the volume's voxels
            (voxel edges), None without a regular geometry.
        acquisition_start: earliest AcquisitionDate+Time of the instances (ISO), else SeriesDate+Time,
            "" when neither parses.
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
    instance_problem: str | None = None
    image_type: list[str] = field(default_factory=list)
    corrected_image: list[str] = field(default_factory=list)
    plane: str = ""
    spacing_mm_zyx: tuple[float, float, float] | None = None
    z_range_mm: tuple[float, float] | None = None
    acquisition_start: str = ""

    def label(self) -> str:
        """Short human description used in messages."""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.modality} series {self.series_uid}{desc} ({len(self.files)} files)"

    @property
    def z_extent_mm(self) -> float:
        """Axial extent (mm) of the volume; 0 when unknown."""
        return 0.0 if self.z_range_mm is None else float(self.z_range_mm[1] - self.z_range_mm[0])

    def facts(self) -> dict:
        """JSON-serializable summary (what the manifest records for every CT/PT series)."""
        d = {"series_uid": self.series_uid, "description": self.description, "n_slices": len(self.files),
             "image_type": "\\".join(self.image_type), "sop_class_uid": self.sop_class_uid,
             "plane": self.plane or None,
             "spacing_mm_zyx": [round(s, 4) for s in self.spacing_mm_zyx] if self.spacing_mm_zyx else None,
             "z_range_mm": [round(z, 2) for z in self.z_range_mm] if self.z_range_mm else None,
             "frame_of_reference_uid": self.frame_of_reference_uid or None,
             "acquisition_start": self.acquisition_start or None}
        if self.modality == "PT":
            d["corrected_image"] = "\\".join(self.corrected_image)
            d["units"] = self.units
        return d

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` names this series: its SeriesInstanceUID, or its SeriesDescription
        (case-insensitive, ``*``/``?`` wildcards allowed, surrounding spaces ignored)."""
        spec = spec.strip()
        if spec == self.series_uid:
            return True
        return fnmatch.fnmatchcase(self.description.strip().lower(), spec.lower())


@dataclass
class DicomStudy:
    """One study found by :func:`find_dicom_studies`.

    Attributes:
        study_uid: StudyInstanceUID.
        patient_id: PatientID ("" if absent).
        study_date: StudyDate as written (``YYYYMMDD``; "" if absent).
        root: deepest folder holding all of the study's files.
        series: every series of the study (CT/PT ones, and the others).
        ct, pt: the chosen CT and PET series (None when no series qualifies or the choice failed).
        seg: DICOM-SEG series of the study.
        problems: why the study cannot be converted as it is (empty when ``ct`` and ``pt`` are set and
            their geometry is usable).
        notes: series set aside and why, and how the choice was made (informative).
        other_objects: instances that are not CT/PT images, by kind (Modality, else the SOP class
            name), e.g. ``{"RTSTRUCT": 1, "SEG": 1}``; they are ignored for the volumes.
        selection: how the CT and PET were chosen (JSON-serializable; see :meth:`selection_record`).
        ct_series_spec, pet_series_spec: the ``ct_series`` / ``pet_series`` choices applied, if any.
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
    other_objects: dict[str, int] = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    ct_series_spec: str | None = None
    pet_series_spec: str | None = None

    @property
    def seg_paths(self) -> list[Path]:
        """All DICOM-SEG files of the study."""
        return [p for s in self.seg for p in s.files]

    @property
    def ok(self) -> bool:
        return not self.problems and self.ct is not None and self.pt is not None

    def candidates(self, modality: str) -> list[DicomSeries]:
        """Qualifying series of a modality ("CT" or "PT"), whatever ``ct_series``/``pet_series`` say."""
        return [s for s in self.series if s.modality == modality and s.excluded is None]

    def select(self, ct_series_uid: str | None = None, pt_series_uid: str | None = None) -> None:
        """Choose the CT and/or PET series by SeriesInstanceUID (overrides the automatic choice, even
        of a series that was set aside) and recompute ``problems``.

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
            rec = self.selection.setdefault(mod, {"series": [s.facts() for s in self.series if s.modality == mod]})
            rec["chosen"] = uid
            rec["how"] = "chosen by the caller (DicomStudy.select)"
            for item in rec.get("series", []):
                if item["series_uid"] == uid:
                    item.update(status="chosen", reason="chosen by the caller")
                elif item.get("status") == "chosen":
                    item.update(status="not chosen", reason="the caller chose another series")
        self.problems = []
        for attr, name in (("ct", "CT"), ("pt", "PET (PT)")):
            chosen = getattr(self, attr)
            if chosen is None:
                self.problems.append(f"no {name} series chosen (DicomStudy.select)")
            elif chosen.geometry_problem:
                self.problems.append(f"{chosen.label()}: {chosen.geometry_problem}")

    def coverage(self) -> dict | None:
        """Axial (head-foot) coverage of the chosen PET by the chosen CT, from the headers.

        Returns:
            None unless both series are chosen with a regular geometry; else a dict:
            ``pet_z_range_mm`` and ``ct_z_range_mm`` ([lowest, highest] patient z of the voxel edges;
            +z = head), ``overlap_mm``, ``ct_fraction_of_pet_z`` (overlap / PET extent, 0..1, the
            figure ``--min-overlap`` is held against) and ``pet_without_ct``: the parts of the PET's
            axial extent with no CT, each ``{"from_mm", "to_mm", "length_mm", "side"}`` with side
            ``"inferior"`` (feet side of the CT) or ``"superior"`` (head side).
        """
        if self.ct is None or self.pt is None or self.ct.z_range_mm is None or self.pt.z_range_mm is None:
            return None
        return ct_z_coverage_of_pet(self.pt.z_range_mm, self.ct.z_range_mm)

    def selection_record(self) -> dict:
        """What the manifest records: the rules, and per modality the chosen series, how it was chosen
        and every series of that modality with its status and reason."""
        return {"rules": {"PT": PET_SELECTION_RULE, "CT": CT_SELECTION_RULE},
                **{k: v for k, v in self.selection.items() if k in ("PT", "CT")}}


@dataclass
class DicomScan:
    """Everything :func:`scan_dicom_folder` found under one folder.

    Attributes:
        root: the folder walked.
        studies: PET/CT studies (those with at least one CT or PT instance), sorted as
            :func:`find_dicom_studies` returns them.
        n_files: regular files looked at.
        n_not_dicom: files that are not readable DICOM (or lack Study/SeriesInstanceUID); DICOMDIR
            files are not counted.
        other_studies: studies without any CT/PT instance (e.g. RT objects of the same patient in
            another study folder), each ``{"study_uid", "patient_id", "root", "objects": {kind: n}}``.
        unreadable: files that carry the DICOM marker (``DICM`` after the 128-byte preamble) but whose header
            cannot be read (truncated or corrupt); counted in ``n_not_dicom`` too. A series with a gap in
            a folder that holds such files names them (a truncated slice, not a missing one).
    """

    root: Path
    studies: list[DicomStudy] = field(default_factory=list)
    n_files: int = 0
    n_not_dicom: int = 0
    other_studies: list[dict] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)

    @property
    def other_objects(self) -> dict[str, int]:
        """Every instance that is not a CT/PT image, by kind, over the PET/CT studies and the other
        studies together."""
        total: Counter = Counter()
        for st in self.studies:
            total.update(st.other_objects)
        for o in self.other_studies:
            total.update(o["objects"])
        return dict(sorted(total.items()))

    def summary(self, used_kinds: Iterable[str] = ()) -> list[str]:
        """One line each for what was ignored: objects that are not CT/PT images (leaving out
        ``used_kinds``, e.g. ``("SEG",)`` where DICOM-SEG labels are used), studies without CT/PT
        images, and non-DICOM files. Empty when nothing was ignored."""
        used = {k.upper() for k in used_kinds}
        counts = {k: n for k, n in self.other_objects.items() if k.upper() not in used}
        lines = []
        if counts:
            what = ", ".join(f"{n} {k}" for k, n in counts.items())
            lines.append(f"ignored {sum(counts.values())} DICOM object(s) that are not CT/PET images: {what}")
        if self.other_studies:
            lines.append(f"{len(self.other_studies)} study(ies) without CT/PET images ignored (e.g. study "
                         f"{self.other_studies[0]['study_uid']} of patient '{self.other_studies[0]['patient_id']}' "
                         f"in {self.other_studies[0]['root']})")
        if self.n_not_dicom:
            lines.append(f"{self.n_not_dicom} file(s) that are not DICOM ignored")
        return lines


def ct_z_coverage_of_pet(pet_z_range_mm: Sequence[float], ct_z_range_mm: Sequence[float]) -> dict:
    """How much of the PET's axial extent the CT covers, from the two series' header z ranges (see
    :meth:`DicomStudy.coverage`; for images on any grid use :func:`nnunetv2_petct.conversion.geometry.axial_coverage`).

    Both ranges are ``(lowest, highest)`` patient z in mm; an empty PET range gives fraction 0.
    """
    p_lo, p_hi = float(pet_z_range_mm[0]), float(pet_z_range_mm[1])
    c_lo, c_hi = float(ct_z_range_mm[0]), float(ct_z_range_mm[1])
    overlap = max(0.0, min(p_hi, c_hi) - max(p_lo, c_lo))
    extent = p_hi - p_lo
    gaps = []
    if c_lo > p_lo:
        hi = min(c_lo, p_hi)
        gaps.append({"from_mm": round(p_lo, 2), "to_mm": round(hi, 2), "length_mm": round(hi - p_lo, 2),
                     "side": "inferior"})
    if c_hi < p_hi:
        lo = max(c_hi, p_lo)
        gaps.append({"from_mm": round(lo, 2), "to_mm": round(p_hi, 2), "length_mm": round(p_hi - lo, 2),
                     "side": "superior"})
    return {"pet_z_range_mm": [round(p_lo, 2), round(p_hi, 2)], "ct_z_range_mm": [round(c_lo, 2), round(c_hi, 2)],
            "overlap_mm": round(overlap, 2), "ct_fraction_of_pet_z": round(overlap / extent, 4) if extent > 0 else 0.0,
            "pet_without_ct": gaps}


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


def _has_dicom_marker(path: Path) -> bool:
    """True when ``path`` has the DICOM Part 10 marker (``DICM`` at byte 128): a DICOM file, readable or not."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _name_unreadable_neighbours(s: DicomSeries, unreadable: Sequence[Path], n_files: int) -> None:
    """A series with a gap (non-uniform spacing) in a folder with unreadable DICOM files: say which files, so
    that a truncated slice is not taken for a missing one (re-copy them)."""
    if not unreadable or not s.geometry_problem or "missing slices" not in s.geometry_problem:
        return
    folders = {p.parent for p in s.files}
    near = sorted(p for p in unreadable if p.parent in folders)
    if not near:
        return
    shown = ", ".join(str(p) for p in near[:5]) + (f" and {len(near) - 5} more" if len(near) > 5 else "")
    s.geometry_problem += (f"; {len(near)} file(s) next to this series are DICOM but cannot be read (truncated "
                           f"or corrupt: copy them again): {shown}")
    s.excluded = _set_aside_reason(s, n_files)


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




def _common_root(paths: Iterable[Path]) -> Path | None:
    paths = [str(p.parent) for p in paths]
    if not paths:
        return None
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:  # different drives
        return None




def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:  # noqa: BLE001 - an odd UID string must not stop discovery
        name = uid
    return f"{name} ({uid})" if name and name != uid else uid


def _object_kind(ds: Any) -> str:
    """Kind of a non-CT/PT instance for the counts: its Modality, else its SOP class name."""
    modality = _str(ds, "Modality").upper()
    if modality:
        return modality
    sop = _str(ds, "SOPClassUID") or _str(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
    if not sop:
        return "unknown"
    try:
        from pydicom.uid import UID

        return UID(sop).name or sop
    except Exception:  # noqa: BLE001
        return sop


def _plane(normal: np.ndarray) -> str:
    """Name of the slice plane from its normal: the patient axis closest to it (x: sagittal,
    y: coronal, z: axial)."""
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _z_range_mm(geom: SliceGeometry) -> tuple[float, float]:
    """(lowest, highest) patient z of the volume's box (voxel edges: index -0.5 .. size - 0.5)."""
    d = np.asarray(geom.direction, dtype=np.float64).reshape(3, 3)
    sp = np.asarray(geom.spacing_xyz, dtype=np.float64)
    o = np.asarray(geom.origin_xyz, dtype=np.float64)
    zs = []
    for cx in (-0.5, geom.size_xyz[0] - 0.5):
        for cy in (-0.5, geom.size_xyz[1] - 0.5):
            for cz in (-0.5, geom.size_xyz[2] - 0.5):
                zs.append(float((o + d @ (np.array([cx, cy, cz]) * sp))[2]))
    return min(zs), max(zs)


def _acquisition_start(headers: Sequence[Any]) -> str:
    """Earliest AcquisitionDate/Time (date defaults to SeriesDate), else SeriesDate/Time; ISO or ""."""
    from nnunetv2_petct.conversion.suv import combine_date_time

    times = []
    for h in headers:
        d, t = _str(h, "AcquisitionDate") or _str(h, "SeriesDate"), _str(h, "AcquisitionTime")
        if d and t:
            try:
                times.append(combine_date_time(d, t))
            except ValueError:
                pass
    if not times and headers:
        try:
            times.append(combine_date_time(_str(headers[0], "SeriesDate"), _str(headers[0], "SeriesTime")))
        except ValueError:
            pass
    return min(times).isoformat() if times else ""


def _describe_series(series: DicomSeries, headers: Sequence[Any]) -> list[int] | None:
    """Fill the header facts of a CT/PT series (geometry, plane, extent, ImageType, ...) and decide
    whether it qualifies (``series.excluded``). Returns the slice order when the geometry is regular."""
    first = headers[0]
    series.image_type = _multi_str(first, "ImageType")
    series.corrected_image = _multi_str(first, "CorrectedImage")
    series.acquisition_start = _acquisition_start(headers)
    order = None
    try:
        geom = slice_geometry(headers)
    except DicomStudyError as exc:
        series.geometry_problem = str(exc)
        iop = _floats(first, "ImageOrientationPatient")
        if iop is not None and len(iop) == 6:
            series.plane = _plane(np.cross(np.asarray(iop[:3]), np.asarray(iop[3:])))
    else:
        order = geom.order
        normal = np.asarray(geom.direction).reshape(3, 3)[:, 2]
        series.plane = _plane(normal)
        series.spacing_mm_zyx = (geom.spacing_xyz[2], geom.spacing_xyz[1], geom.spacing_xyz[0])
        series.z_range_mm = _z_range_mm(geom)
        series.instance_problem = _shared_sop_instance_uids(series.files, headers)
    series.excluded = _set_aside_reason(series, len(headers))
    return order


def _shared_sop_instance_uids(paths: Sequence[Path], headers: Sequence[Any]) -> str | None:
    """Why the slices of a regular series cannot be told apart by SOPInstanceUID, or None.

    Called once the slices sit at distinct positions (copies of one instance are caught before, as repeated
    positions): two different slices with one UID are a broken export, and a DICOM-SEG referencing that UID
    would point at two images.
    """
    by_uid: dict[str, list[Path]] = defaultdict(list)
    for p, h in zip(paths, headers):
        uid = _str(h, "SOPInstanceUID")
        if uid:
            by_uid[uid].append(p)
    shared = {u: ps for u, ps in by_uid.items() if len(ps) > 1}
    if not shared:
        return None
    n = sum(len(ps) for ps in shared.values())
    uid, ps = next(iter(sorted(shared.items())))
    return (f"{n} slices at different positions share {len(shared)} SOPInstanceUID(s) (e.g. {uid}: "
            f"{', '.join(str(p) for p in ps[:3])}): every slice needs its own UID (a DICOM-SEG references each "
            "one); export the series again")


def _set_aside_reason(s: DicomSeries, n_files: int) -> str | None:
    """Why a CT/PT series cannot be the study's CT/PET volume (None if it qualifies): by what the data
    is, never by ORIGINAL/DERIVED or PRIMARY/SECONDARY."""
    expected = CT_IMAGE_STORAGE if s.modality == "CT" else PET_IMAGE_STORAGE
    kind = "CT" if s.modality == "CT" else "PET"
    if s.sop_class_uid and s.sop_class_uid != expected:
        return f"SOP class {_sop_name(s.sop_class_uid)} is not single-frame {kind} Image Storage"
    bad = [t for t in _NOT_A_VOLUME_IMAGE_TYPES if t in s.image_type]
    if bad:
        what = "a localizer/scout" if bad[0] == "LOCALIZER" else f"a {bad[0].lower()} image"
        return f"ImageType {'/'.join(s.image_type)} marks {what}, not a volume of slices"
    if s.modality == "PT" and "ATTN" not in s.corrected_image:
        return (f"not attenuation corrected (CorrectedImage {'/'.join(s.corrected_image) or 'missing'} lacks "
                "ATTN): no SUV")
    if n_files < MIN_SLICES:
        return f"only {n_files} slice(s): a localizer/scout or single image, not a volume"
    if s.geometry_problem:
        return f"not one regular volume: {s.geometry_problem}"
    if s.instance_problem:
        return s.instance_problem
    if s.plane and s.plane != "axial":
        return f"{s.plane} slices: a non-axial reformat"
    return None


def _voxel_mm3(s: DicomSeries) -> float:
    return float(np.prod(s.spacing_mm_zyx)) if s.spacing_mm_zyx else math.inf


def _q(x: float, step: float) -> int:
    return int(round(x / step))


def _rank_criteria(modality: str, pool: Sequence[DicomSeries], pet: DicomSeries | None) -> list[tuple]:
    """(key function, explanation(other, chosen)) per ranking criterion, in order; a smaller key wins."""
    if modality == "PT":
        max_ext = max((s.z_extent_mm for s in pool), default=0.0) or 1.0
        return [
            (lambda s: -_q(s.z_extent_mm / max_ext, _RANK_FRACTION_STEP),
             lambda o, c: f"smaller axial extent ({o.z_extent_mm:.1f} mm; the chosen series {c.z_extent_mm:.1f} mm)"),
            (lambda s: s.acquisition_start or "~",
             lambda o, c: f"acquired later ({o.acquisition_start or 'unknown'}; the chosen series "
                          f"{c.acquisition_start})"),
            (lambda s: round(_voxel_mm3(s), 3),
             lambda o, c: f"coarser voxels ({_voxel_mm3(o):.3g} mm3; the chosen series {_voxel_mm3(c):.3g} mm3)"),
            (lambda s: s.series_uid,
             lambda o, c: "ranks equal to the chosen series, whose SeriesInstanceUID sorts first"),
        ]

    def overlap(s: DicomSeries) -> float:
        if pet is None or pet.z_range_mm is None or s.z_range_mm is None:
            return 0.0
        return ct_z_coverage_of_pet(pet.z_range_mm, s.z_range_mm)["ct_fraction_of_pet_z"]

    def same_for(s: DicomSeries) -> int:
        return 0 if pet is None or (s.frame_of_reference_uid and s.frame_of_reference_uid == pet.frame_of_reference_uid) else 1

    def dz(s: DicomSeries) -> float:
        return s.spacing_mm_zyx[0] if s.spacing_mm_zyx else math.inf

    return [
        (same_for, lambda o, c: "its FrameOfReferenceUID differs from the PET's (the chosen series shares it)"),
        (lambda s: -_q(overlap(s), _RANK_FRACTION_STEP),
         lambda o, c: f"covers {100 * overlap(o):.1f} % of the PET's axial extent (the chosen series "
                      f"{100 * overlap(c):.1f} %)"),
        (lambda s: _q(dz(s), _RANK_SPACING_STEP_MM) if math.isfinite(dz(s)) else 10**9,
         lambda o, c: f"thicker slice spacing ({dz(o):g} mm; the chosen series {dz(c):g} mm)"),
        (lambda s: -len(s.files), lambda o, c: f"fewer slices ({len(o.files)}; the chosen series {len(c.files)})"),
        (lambda s: s.series_uid, lambda o, c: "ranks equal to the chosen series, whose SeriesInstanceUID sorts first"),
    ]


def _choose_series(study: DicomStudy, modality: str, spec: str | None, pet: DicomSeries | None
                   ) -> DicomSeries | None:
    """Choose the study's series of ``modality`` (see the module's selection rules), record how in
    ``study.selection[modality]`` and add problems/notes. Returns the chosen series or None."""
    name, flag = ("CT", "--ct-series") if modality == "CT" else ("PET (PT)", "--pet-series")
    series = [s for s in study.series if s.modality == modality]
    items = {s.series_uid: {**s.facts(), "status": "set aside", "reason": s.excluded} for s in series}
    record: dict = {"chosen": None, "how": None, "series": list(items.values())}
    study.selection[modality] = record
    for s in series:
        if s.excluded:
            study.notes.append(f"set aside {s.label()}: {s.excluded}")
    qualified = [s for s in series if s.excluded is None]
    pool = qualified
    if spec:
        record["requested"] = spec
        matching = [s for s in series if s.matches(spec)]
        pool = [s for s in matching if s.excluded is None]
        for s in qualified:
            if s not in pool:
                items[s.series_uid].update(status="not chosen", reason=f"does not match {flag} '{spec}'")
        if not matching:
            have = "; ".join(s.label() for s in series) or "none"
            study.problems.append(f"no {name} series matches {flag} '{spec}' (SeriesInstanceUID or "
                                  f"SeriesDescription; the study's {name} series: {have})")
            return None
        if not pool:
            study.problems.append(f"{flag} '{spec}' matches only {name} series that were set aside: "
                                  + "; ".join(f"{s.label()}: {s.excluded}" for s in matching))
            return None
    elif not qualified:
        set_aside = [f"{s.label()}: {s.excluded}" for s in series]
        extra = f" (set aside: {'; '.join(set_aside)})" if set_aside else ""
        study.problems.append(f"no usable {name} series{extra}")
        return None
    criteria = _rank_criteria(modality, pool, pet)
    ranked = sorted(pool, key=lambda s: tuple(k(s) for k, _ in criteria))
    chosen = ranked[0]
    for other in ranked[1:]:
        why = next(explain(other, chosen) for key, explain in criteria if key(other) != key(chosen))
        items[other.series_uid].update(status="not chosen", reason=f"qualifies, ranked below the chosen series: {why}")
    if spec:
        how = f"matches {flag} '{spec}'" + (f"; first of {len(pool)} matching series by the ranking rule"
                                             if len(pool) > 1 else "")
    elif len(pool) == 1:
        how = "the only qualifying series"
    else:
        how = f"first of {len(pool)} qualifying series by the ranking rule ({flag} chooses another)"
        study.notes.append(f"{len(pool)} {name} series qualify; chose {chosen.label()} by the ranking rule "
                           f"(pass {flag} with a SeriesInstanceUID or SeriesDescription to choose another)")
    items[chosen.series_uid].update(status="chosen", reason=how)
    record.update(chosen=chosen.series_uid, how=how)
    return chosen


def _select_series(study: DicomStudy) -> None:
    """(Re)choose the PET, then the CT (ranked by its overlap with that PET), from scratch."""
    study.problems, study.selection = [], {}
    study.notes = [n for n in study.notes if not n.startswith("set aside ") and " qualify; chose " not in n]
    study.pt = _choose_series(study, "PT", study.pet_series_spec, None)
    study.ct = _choose_series(study, "CT", study.ct_series_spec, study.pt)


def choose_series(study: DicomStudy, ct_series: str | None = None, pet_series: str | None = None) -> DicomStudy:
    """Re-choose a study's CT and PET restricted to series matching ``ct_series`` / ``pet_series``
    (SeriesInstanceUID or SeriesDescription, case-insensitive, ``*``/``?`` wildcards; None: any
    qualifying series); the ranking rule decides between several matches. Updates ``ct``, ``pt``,
    ``problems``, ``notes`` and ``selection`` in place and returns the study.

    A spec that matches no series of the study, or only series set aside (e.g. a localizer or a
    non-attenuation-corrected PET), is a problem of the study (named in ``problems``).
    """
    study.ct_series_spec, study.pet_series_spec = ct_series or None, pet_series or None
    _select_series(study)
    return study


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


def scan_dicom_folder(root: Path, progress: bool = False, *, ct_series: str | None = None,
                      pet_series: str | None = None) -> DicomScan:
    """Find the PET/CT studies under ``root`` from the DICOM headers alone, and count what was ignored.

    Every regular file under ``root`` (recursively, hidden files included, any name or extension) is
    tried as DICOM with ``stop_before_pixels``; non-DICOM files and DICOMDIR files are skipped.
    Instances are grouped by StudyInstanceUID, then SeriesInstanceUID. Series of Modality CT/PT are
    described and ranked (module docstring, :data:`CT_SELECTION_RULE`, :data:`PET_SELECTION_RULE`);
    every other instance (RTDOSE, RTPLAN, RTSTRUCT, SR, SEG, KO, PR, ...) is counted by kind.

    Args:
        root: folder to walk.
        progress: show a tqdm progress bar over files.
        ct_series, pet_series: restrict each study's choice to series matching this SeriesInstanceUID
            or SeriesDescription (see :func:`choose_series`).

    Returns:
        A :class:`DicomScan`; its ``studies`` are those with at least one CT or PT instance, sorted by
        (PatientID, StudyDate, StudyInstanceUID); each has ``ct``/``pt`` chosen where a series
        qualifies and ``problems`` saying why not otherwise.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    from nnunetv2_petct.conversion.core import walk_files

    files = sorted(walk_files(root))  # folder links followed (each real folder once)
    scan = DicomScan(root=root, n_files=len(files))
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="reading DICOM headers", unit="file")
    # study -> series -> [(path, header)]
    studies: dict[str, dict[str, list[tuple[Path, Any]]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        ds = _read_header(path)
        if ds is None:
            scan.n_not_dicom += 1
            if _has_dicom_marker(path):
                scan.unreadable.append(path)
            continue
        sop = _str(ds, "SOPClassUID") or _str(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
        if sop == MEDIA_DIRECTORY_STORAGE:
            continue
        st, se = _str(ds, "StudyInstanceUID"), _str(ds, "SeriesInstanceUID")
        if not st or not se:
            logger.debug("%s has no Study/SeriesInstanceUID; skipped", path)
            scan.n_not_dicom += 1
            if _has_dicom_marker(path):  # a truncated header reads as a dataset without its UIDs
                scan.unreadable.append(path)
            continue
        studies[st][se].append((path, ds))
    if scan.n_not_dicom:
        logger.info("scan_dicom_folder: %d file(s) under %s skipped (not DICOM)", scan.n_not_dicom, root)

    for study_uid, series_map in studies.items():
        first_any = next(iter(series_map.values()))[0][1]
        study = DicomStudy(
            study_uid=study_uid, patient_id=_str(first_any, "PatientID"),
            study_date=_str(first_any, "StudyDate"),
            root=_common_root(p for items in series_map.values() for p, _ in items),
            ct_series_spec=ct_series or None, pet_series_spec=pet_series or None,
        )
        other: Counter = Counter()
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
                order = _describe_series(s, [h for _, h in items])
                _name_unreadable_neighbours(s, scan.unreadable, len(items))
                if order is not None:
                    s.files = [items[i][0] for i in order]
                else:
                    s.files = [p for p, _ in sorted(items, key=lambda it: int(it[1].get("InstanceNumber") or 0))]
            else:
                for _, h in items:
                    other[_object_kind(h)] += 1
                if modality == "SEG":
                    study.seg.append(s)
            study.series.append(s)
        study.other_objects = dict(sorted(other.items()))
        if not any(s.modality in ("CT", "PT") for s in study.series):
            scan.other_studies.append({"study_uid": study_uid, "patient_id": study.patient_id,
                                       "root": str(study.root), "objects": study.other_objects})
            continue
        study.series.sort(key=lambda s: (s.modality, s.description, s.series_uid))
        _select_series(study)
        scan.studies.append(study)
    scan.studies.sort(key=lambda s: (s.patient_id, s.study_date, s.study_uid))
    scan.other_studies.sort(key=lambda o: (o["patient_id"], o["study_uid"]))
    return scan


def find_dicom_studies(root: Path, progress: bool = False, *, ct_series: str | None = None,
                       pet_series: str | None = None) -> list[DicomStudy]:
    """The PET/CT studies under ``root`` (:func:`scan_dicom_folder`'s ``studies``).

    Studies with at least one CT or PT instance are returned, each with its chosen ``ct``/``pt``
    (None where nothing qualifies, with ``problems`` saying why). Studies made only of other objects
    (RT objects, SR, a lone SEG, ...) are not PET/CT studies and are left out; use
    :func:`scan_dicom_folder` to see them counted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    return scan_dicom_folder(root, progress, ct_series=ct_series, pet_series=pet_series).studies


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
        counts, spacings (z, y, x), ``frame_of_reference_match``, ``series_selection`` (rules, chosen
        series, every CT/PT series with its status and reason: :meth:`DicomStudy.selection_record`),
        ``coverage`` (axial extents, overlap and the PET parts without CT: :meth:`DicomStudy.coverage`),
        ``other_objects`` (non-CT/PT instances of the study by kind), ``assumptions`` and ``warnings``.
        The CT is returned whatever its coverage; callers apply their own policy (the converter refuses
        less than ``min_overlap_fraction``, the rest of the PET gets air, -1024 HU).

    Raises:
        DicomStudyError: the study has problems (no usable CT or PT, irregular slices), unreadable
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
    from nnunetv2_petct.conversion.suv import weight_warning

    weight_note = weight_warning(pet_facts["suv"].get("weight_kg"))
    if weight_note:
        warnings.append(weight_note)  # shown per study by the CLIs and kept in their reports
    for_match = (study.ct.frame_of_reference_uid == study.pt.frame_of_reference_uid
                 and bool(study.ct.frame_of_reference_uid))
    for mod, name, flag in (("PT", "PET", "--pet-series"), ("CT", "CT", "--ct-series")):
        rec = study.selection.get(mod, {})
        if rec.get("how", "").startswith("first of"):
            others = [s["series_uid"] for s in rec.get("series", []) if s.get("status") == "not chosen"]
            warnings.append(f"{len(others) + 1} {name} series qualify; {rec['chosen']} was chosen by the ranking "
                            f"rule (series_selection says why the others were not); {flag} chooses another")
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
        "series_selection": study.selection_record(), "coverage": study.coverage(),
        "other_objects": dict(study.other_objects),
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
