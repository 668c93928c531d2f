"""The studies of a prediction run: found in an input folder, loaded, and turned into network input.

Pure library (no nnunetv2 import). Two kinds of input, in one folder or mixed:

* **DICOM** PET/CT studies anywhere below the folder, found from the headers by
  :func:`nnunetv2_petct.conversion.dicom.find_dicom_studies` (file names do not matter) and loaded by
  :func:`~nnunetv2_petct.conversion.dicom.load_dicom_study`: CT in HU, PET in SUVbw (QIBA, with the record of
  how the factor was derived);
* **NIfTI pairs** ``<case>_0000.nii.gz`` (CT in HU) + ``<case>_0001.nii.gz`` (PET, taken to be SUVbw as given),
  the nnU-Net raw naming.

The network input is made exactly like the training data of the converters
(:func:`nnunetv2_petct.conversion.core.harmonize`, unlabeled, no crop): the PET stays on its own grid, the CT
is resampled onto it (linear, int16). **Partial CT coverage policy**: where the CT does not reach (a CT that
covers only part of the PET's axial extent, e.g. head and neck), the CT channel is filled with air
(-1024 HU), the study is predicted anyway, and :func:`~nnunetv2_petct.conversion.geometry.axial_coverage`
records which axial range (mm, PET slices, fraction of the PET's axial extent, inferior/superior end) had no
CT; the report shows it. A CT that does not overlap the PET at all fails the study.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NIFTI_CT_SUFFIX = "_0000.nii.gz"
NIFTI_PET_SUFFIX = "_0001.nii.gz"


class StudyError(RuntimeError):
    """One study cannot be processed; the message is the reason shown to the user."""


@dataclass
class StudyInput:
    """One study found in the input folder.

    Attributes:
        name: output folder name (unique in the run): ``<PatientID>_<StudyDate>`` for DICOM, the case id for
            NIfTI, or ``study_<hash>`` with ``anonymize``.
        kind: ``"dicom"`` or ``"nifti"``.
        source: folder (DICOM) or CT file (NIfTI) the study comes from, for messages.
        dicom: the :class:`~nnunetv2_petct.conversion.dicom.DicomStudy` (DICOM only).
        ct_path, pet_path: the NIfTI files (NIfTI only; ``pet_path`` None when the PET file is missing).
    """

    name: str
    kind: str
    source: str
    dicom: Any = None
    ct_path: Path | None = None
    pet_path: Path | None = None


@dataclass
class LoadedStudy:
    """A study in memory.

    Attributes:
        ct: CT in HU on its own grid (SimpleITK).
        pet: PET in SUVbw on its original grid (SimpleITK, float32).
        identity: patient/study identifiers and descriptions (empty values left out).
        suv: how SUV was obtained (``description``, ``factor``, the QIBA record under ``qiba`` for DICOM).
        pet_files: the PET series' files (DICOM; for the SEG's references), else empty.
        warnings, assumptions: from the reader.
        series: CT and PET series UIDs and descriptions (DICOM).
    """

    ct: Any
    pet: Any
    identity: dict = field(default_factory=dict)
    suv: dict = field(default_factory=dict)
    pet_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    series: dict = field(default_factory=dict)


def _anonymous_name(key: str) -> str:
    return "study_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]


def find_study_inputs(input_dir: str | os.PathLike, anonymize: bool = False, *, ct_series: str | None = None,
                      pet_series: str | None = None) -> list[StudyInput]:
    """Every DICOM PET/CT study and every NIfTI pair under ``input_dir`` (read only).

    DICOM studies come first (sorted by patient, date, UID), then NIfTI cases sorted by name. A DICOM study
    whose series cannot be used (no PET series, several candidates, irregular slices) is still returned: it
    fails with the reader's reason when loaded. A ``_0000`` file without its ``_0001`` is returned too and
    fails when loaded. Names are made unique with ``_2``, ``_3``, ... ``ct_series`` / ``pet_series`` pick a
    series by UID or description (:func:`nnunetv2_petct.conversion.dicom.find_dicom_studies`).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    from nnunetv2_petct.conversion.core import sanitize_id, unique_case_id
    from nnunetv2_petct.conversion.dicom import find_dicom_studies

    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    used: set[str] = set()
    out: list[StudyInput] = []
    for st in find_dicom_studies(root, ct_series=ct_series, pet_series=pet_series):
        if not any(s.modality in ("CT", "PT") for s in st.series):
            continue  # e.g. a folder of SEG or RT objects only: not a PET/CT study
        if anonymize:
            name = _anonymous_name(str(st.study_uid))
        else:
            name = sanitize_id(f"{st.patient_id or 'unknown'}_{st.study_date or str(st.study_uid)[-12:]}")
        out.append(StudyInput(name=unique_case_id(name, used), kind="dicom", source=str(st.root or root), dicom=st))
    for ct_path in sorted(root.rglob("*" + NIFTI_CT_SUFFIX)):
        case = ct_path.name[: -len(NIFTI_CT_SUFFIX)]
        pet_path = ct_path.with_name(case + NIFTI_PET_SUFFIX)
        name = _anonymous_name(str(ct_path.relative_to(root))) if anonymize else sanitize_id(case)
        out.append(StudyInput(name=unique_case_id(name, used), kind="nifti", source=str(ct_path), ct_path=ct_path,
                              pet_path=pet_path if pet_path.is_file() else None))
    return out


def _header_identity(header: Any) -> dict:
    keys = {"patient_name": "PatientName", "patient_id": "PatientID", "patient_birth_date": "PatientBirthDate",
            "patient_sex": "PatientSex", "study_date": "StudyDate", "study_time": "StudyTime",
            "study_description": "StudyDescription", "accession_number": "AccessionNumber",
            "study_uid": "StudyInstanceUID", "institution": "InstitutionName"}
    out = {}
    for k, kw in keys.items():
        v = header.get(kw)
        if v is not None and str(v).strip():
            out[k] = str(v).strip()
    return out


def _suv_record_dicom(suv: dict) -> dict:
    dose = suv.get("injected_dose_bq")
    uptake = suv.get("uptake_time_s")
    return {
        "description": "SUVbw from the DICOM headers (QIBA vendor-neutral)",
        "factor": suv.get("factor"), "units": suv.get("units"), "method": suv.get("method"),
        "weight_kg": suv.get("weight_kg"),
        "injected_dose_mbq": None if dose is None else round(float(dose) / 1e6, 3),
        "uptake_time_min": None if uptake is None else round(float(uptake) / 60.0, 2),
        "scan_time_source": suv.get("scan_time_source"), "injection_time_source": suv.get("injection_time_source"),
        "qiba": suv,
    }


def load_study(study: StudyInput, allow_non_fdg: bool = False) -> LoadedStudy:
    """Load one study: CT in HU and PET in SUVbw, with identifiers and the SUV record.

    Raises:
        StudyError: the reason (no PET series, missing SUV tag named, unreadable or corrupt file, non-FDG
            tracer, missing ``_0001`` file, ...).
    """
    if study.kind == "nifti":
        from nnunetv2_petct.conversion.core import ConversionError, read_image

        if study.pet_path is None:
            raise StudyError(f"no PET file {Path(study.source).name.replace(NIFTI_CT_SUFFIX, NIFTI_PET_SUFFIX)} "
                             f"next to {study.source}")
        try:
            ct, pet = read_image(study.ct_path), read_image(study.pet_path)
        except ConversionError as e:
            raise StudyError(str(e)) from None
        return LoadedStudy(ct=ct, pet=pet, suv={
            "description": "NIfTI input: the _0001 image is taken as SUVbw as given (no DICOM headers to derive "
                           "it from)", "factor": None})

    import pydicom

    from nnunetv2_petct.conversion.dicom import DicomStudyError, load_dicom_study

    st = study.dicom
    try:
        ct, pet, meta = load_dicom_study(st, allow_non_fdg=allow_non_fdg)
    except DicomStudyError as e:
        raise StudyError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - pydicom/numpy errors of a corrupt file: a reason, not a crash
        raise StudyError(f"{type(e).__name__}: {e}") from None
    header = pydicom.dcmread(st.pt.files[0], stop_before_pixels=True)
    identity = _header_identity(header)
    series = {"pet_series_uid": meta.get("pt_series_uid"), "ct_series_uid": meta.get("ct_series_uid"),
              "pet_series_description": st.pt.description, "ct_series_description": st.ct.description,
              "pet_manufacturer": meta.get("vendor"), "tracer": meta.get("tracer")}
    return LoadedStudy(ct=ct, pet=pet, identity=identity, suv=_suv_record_dicom(meta.get("suv", {})),
                       pet_files=list(st.pt.files), warnings=list(meta.get("warnings", [])),
                       assumptions=list(meta.get("assumptions", [])), series=series)


def network_input(loaded: LoadedStudy) -> tuple[Any, Any, dict]:
    """CT and PET as the network expects them (the converters' harmonization, see module docstring).

    Returns:
        ``(ct_on_pet, pet, coverage)``: int16 CT in HU on the PET grid (-1024 where the CT does not reach),
        float32 PET in SUV on its original grid, and the CT coverage record: ``axial`` (see
        :func:`~nnunetv2_petct.conversion.geometry.axial_coverage`) and ``in_plane_fraction_xy``.

    Raises:
        StudyError: CT and PET do not overlap, PET empty or not finite, CT not in HU or without body (the
            converters' checks).
    """
    from nnunetv2_petct.conversion.core import (
        ConversionError,
        ConversionOptions,
        LoadedCase,
        NonFiniteImageError,
        harmonize,
    )
    from nnunetv2_petct.conversion.geometry import axial_coverage, overlap_fractions_xyz

    try:
        fx, fy, _ = overlap_fractions_xyz(loaded.ct, loaded.pet)
        coverage = {"axial": axial_coverage(loaded.ct, loaded.pet),
                    "in_plane_fraction_xy": [round(fx, 4), round(fy, 4)]}
        images, facts = harmonize(LoadedCase(ct=loaded.ct, pet=loaded.pet, label=None, meta={"warnings": []}),
                                  ConversionOptions(labeled=False, crop_to_body=False, min_overlap_fraction=0.0))
    except NonFiniteImageError as e:  # the converter's hint (--nonfinite zero) is not an option of predict
        raise StudyError(f"{e.finding}: NaN/inf voxels cannot be segmented; replace them in the input image "
                         "(e.g. by 0) and run again") from None
    except ConversionError as e:
        raise StudyError(str(e)) from None
    # the converter's coverage line is replaced by the more precise coverage record
    coverage["warnings"] = [w for w in facts.get("warnings", []) if not w.startswith("CT covers")]
    return images["ct"], images["pet"], coverage
