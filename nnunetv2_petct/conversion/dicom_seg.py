"""A lesion mask on the PET grid as a DICOM Segmentation object (written with highdicom), and back.

Pure library module (highdicom, pydicom, numpy, SimpleITK; no nnunetv2 import).

What :func:`write_lesion_seg` writes
------------------------------------
* SOP Class Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), BINARY, Explicit VR Little Endian,
  one frame per PET slice that holds lesion voxels (all frames when the mask is empty, see below);
* the source PET series is referenced: same FrameOfReferenceUID, ReferencedSeriesSequence listing every
  PET instance, and per frame a DerivationImageSequence naming its source PET slice; the frames lie
  exactly on the PET slices (ImagePositionPatient, ImageOrientationPatient, PixelSpacing of the PET);
* Patient and Study attributes are those of the PET (highdicom copies the Patient and General Study modules;
  PatientAge/PatientSize/PatientWeight of the Patient Study module are copied too), with a new series
  (new SeriesInstanceUID, SeriesNumber :data:`SEG_SERIES_NUMBER`) in the PET's study;
* one segment, number 1, label "lesion", algorithm type AUTOMATIC, coded as
  category SCT 49755003 "Morphologically Abnormal Structure" (DICOM CID 7150) and
  type SCT 108369006 "Neoplasm" (DICOM CID 7159, lesion segmentation types): the autoPET-style
  label that our models learn is "FDG-avid tumour lesion"; "Neoplasm" is the SPEC's choice and what
  viewers show as the segment type;
* the AlgorithmIdentificationSequence names the model (AlgorithmName, e.g. the trainer), its version
  (package versions) and the parameters that identify the weights (model folder, trainer, plans,
  configuration, folds, checkpoint), family DCM 123110 "Artificial Intelligence".

An empty mask (no lesion found) still gives a valid SEG: highdicom cannot omit every frame, so all
frames are written (all zero) and ContentDescription says "no lesion found". A viewer then shows the
study as segmented with nothing found, which is different from "not processed".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_SERIES_NUMBER = 901
SEGMENT_LABEL = "lesion"
RESEARCH_USE = "research use only"
_LO_MAX = 64  # characters of a DICOM LO value
PATIENT_STUDY_KEYWORDS = ("PatientAge", "PatientSize", "PatientWeight")


class SegWriteError(ValueError):
    """The mask cannot be written as a SEG of the given PET series (the message says why)."""


@dataclass
class SegAlgorithm:
    """How the segmentation was made, for the SEG's AlgorithmIdentificationSequence.

    Attributes:
        name: AlgorithmName (truncated to 64 characters), e.g. the trainer class.
        version: AlgorithmVersion (truncated to 64 characters), e.g. package versions.
        parameters: AlgorithmParameters, e.g. model folder, folds, checkpoint (all values as text).
        source: AlgorithmSource.
    """

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    source: str = "nnunetv2_petct"


def _lo(text: str) -> str:
    text = str(text).replace("\\", "/")
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def read_pet_headers(pet_files: Sequence[str | os.PathLike]) -> list[Any]:
    """Headers (no pixel data) of a PET series' single-frame instances, sorted along the slice normal.

    The order is that of :func:`nnunetv2_petct.conversion.dicom.slice_geometry`, the same order in which
    :func:`~nnunetv2_petct.conversion.dicom.load_dicom_study` stacks the slices of the PET image, so
    ``headers[k]`` is slice ``k`` of the (z, y, x) array.

    Raises:
        SegWriteError: a file is unreadable or the slices do not form one regular volume.
    """
    import pydicom

    from nnunetv2_petct.conversion.dicom import DicomStudyError, slice_geometry

    headers = []
    for f in pet_files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
            raise SegWriteError(f"cannot read the PET header {f}: {exc}") from None
    try:
        geom = slice_geometry(headers)
    except DicomStudyError as exc:
        raise SegWriteError(f"PET series: {exc}") from None
    return [headers[i] for i in geom.order]


def _check_grid(mask, headers: Sequence[Any], tol_mm: float = 1e-3) -> None:
    """The mask image must lie on the grid the headers describe (origin, spacing, direction, size)."""
    from nnunetv2_petct.conversion.dicom import slice_geometry

    geom = slice_geometry(headers)
    problems = []
    if tuple(int(s) for s in mask.GetSize()) != tuple(geom.size_xyz):
        problems.append(f"size {tuple(mask.GetSize())} vs {geom.size_xyz}")
    for what, a, b in (("origin", mask.GetOrigin(), geom.origin_xyz), ("spacing", mask.GetSpacing(), geom.spacing_xyz),
                       ("direction", mask.GetDirection(), geom.direction)):
        if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0.0, atol=tol_mm):
            problems.append(f"{what} {tuple(round(float(x), 4) for x in a)} vs {tuple(round(float(x), 4) for x in b)}")
    if problems:
        raise SegWriteError("the mask is not on the PET series' grid: " + "; ".join(problems))


def build_lesion_seg(mask, pet_headers: Sequence[Any], algorithm: SegAlgorithm, *,
                     series_description: str = f"nnU-Net lesions ({RESEARCH_USE})",
                     series_number: int = SEG_SERIES_NUMBER, manufacturer: str = "nnunetv2_petct",
                     model_name: str = "nnU-Net PET/CT lesion segmentation", software_version: str = "",
                     content_description: str | None = None):
    """The highdicom ``Segmentation`` of a binary lesion mask drawn on a PET series (see module docstring).

    Args:
        mask: SimpleITK image (values > 0 are lesion) on the grid of the PET series.
        pet_headers: the series' headers in slice order (:func:`read_pet_headers`).
        algorithm: model identification.
        series_description, series_number, manufacturer, model_name, software_version: SEG series and
            equipment attributes (LO values are truncated to 64 characters).
        content_description: ContentDescription; default "lesion segmentation (research use only)", or
            "no lesion found (research use only)" for an empty mask.

    Raises:
        SegWriteError: the mask is not on the series' grid.
    """
    import highdicom as hd
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes

    _check_grid(mask, pet_headers)
    arr = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
    empty = not arr.any()
    if content_description is None:
        content_description = f"no lesion found ({RESEARCH_USE})" if empty else f"lesion segmentation ({RESEARCH_USE})"
    algo = hd.AlgorithmIdentificationSequence(
        name=_lo(algorithm.name), version=_lo(algorithm.version), source=_lo(algorithm.source),
        family=codes.cid7162.ArtificialIntelligence,
        parameters={str(k): str(v) for k, v in algorithm.parameters.items()} or None,
    )
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    seg = hd.seg.Segmentation(
        source_images=list(pet_headers), pixel_array=arr,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=_lo(manufacturer), manufacturer_model_name=_lo(model_name),
        software_versions=_lo(software_version or algorithm.version), device_serial_number="none",
        content_description=_lo(content_description), content_label="LESIONS",
        series_description=_lo(series_description),
        omit_empty_frames=not empty,  # highdicom writes every frame of an empty mask anyway (and warns)
    )
    # highdicom copies the Patient and General Study modules; the Patient Study module (study-level, so it
    # must agree between the instances of a study) is copied here
    for kw in PATIENT_STUDY_KEYWORDS:
        value = pet_headers[0].get(kw)
        if value is not None and str(value).strip():
            setattr(seg, kw, value)
    return seg


def write_lesion_seg(mask, pet_files: Sequence[str | os.PathLike], path: str | os.PathLike,
                     algorithm: SegAlgorithm, **kwargs: Any) -> dict:
    """Write a lesion mask on a PET series' grid as a DICOM-SEG file (atomically, see :mod:`nnunetv2_petct.io`).

    Args:
        mask: SimpleITK image on the PET grid (as from ``load_dicom_study``).
        pet_files: the PET series' instance files (any order).
        path: the SEG file to write.
        algorithm: model identification.
        **kwargs: passed to :func:`build_lesion_seg`.

    Returns:
        ``{"path", "sop_class_uid", "series_instance_uid", "sop_instance_uid", "frame_of_reference_uid",
        "n_frames", "empty", "referenced_series_uid"}``.

    Raises:
        SegWriteError: unreadable PET headers or a mask not on their grid;
        nnunetv2_petct.io.WriteError: the file system refused.
    """
    import SimpleITK as sitk

    from nnunetv2_petct.io import atomic_write

    headers = read_pet_headers(pet_files)
    seg = build_lesion_seg(mask, headers, algorithm, **kwargs)
    with atomic_write(path) as tmp:
        seg.save_as(tmp)
    return {
        "path": str(path), "sop_class_uid": SEG_STORAGE,
        "series_instance_uid": str(seg.SeriesInstanceUID), "sop_instance_uid": str(seg.SOPInstanceUID),
        "frame_of_reference_uid": str(seg.FrameOfReferenceUID), "n_frames": int(seg.NumberOfFrames),
        "empty": not bool((sitk.GetArrayViewFromImage(mask) > 0).any()),
        "referenced_series_uid": str(headers[0].SeriesInstanceUID),
    }


def read_lesion_seg(path: str | os.PathLike, pet_files: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read a SEG written on a PET series back as a (z, y, x) uint8 array in the PET's slice order.

    Frames are matched to the PET instances by SOPInstanceUID (highdicom); slices without a stored frame
    are zero; all segments are merged.

    Raises:
        ValueError: not a Segmentation, or it does not reference these PET instances.
    """
    import highdicom as hd

    headers = read_pet_headers(pet_files)
    seg = hd.seg.segread(path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(h.SOPInstanceUID) for h in headers],
        combine_segments=True, skip_overlap_checks=True, dtype=np.uint8,
    )
