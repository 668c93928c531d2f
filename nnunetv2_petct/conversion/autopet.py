"""AutoPET FDG-PET-CT-Lesions: discover studies in its three public layouts.

Case ids follow the autoPET III/IV nnU-Net release, ``fdg_<patient hash>_<MM-DD-YYYY>``, whichever
layout the data come from, so the same study gets the same id (and the paper's split lists map onto
it, see :mod:`nnunetv2_petct.transfer.splits`). The patient id is the TCIA one, ``PETCT_<hash>``.

- ``autopet``: the per-study NIfTI release ``<root>/PETCT_<hash>/<MM-DD-YYYY>-NA-<description>-<nr>/``
  with ``CT.nii.gz`` (original CT grid), ``CTres.nii.gz`` (CT on the PET grid), ``PET.nii.gz``
  (Bq/ml), ``SUV.nii.gz`` (SUVbw) and ``SEG.nii.gz``. We use SUV, the label SEG, and resample the
  original CT onto the SUV grid ourselves (CTres only when CT.nii.gz is missing).
- ``autopet-nnunet``: the autoPET III/IV nnU-Net release ``imagesTr/<id>_0000.nii.gz`` (CTres, HU),
  ``<id>_0001.nii.gz`` (SUV), ``labelsTr/<id>.nii.gz``; ids ``fdg_*`` (default) and ``psma_*``
  (``include_psma``; recorded as tracer PSMA).
- ``autopet-dicom``: the TCIA DICOM release with DICOM-SEG lesion masks: the generic DICOM path
  (:mod:`nnunetv2_petct.conversion.generic_dicom`) with these case ids and the DICOM-SEG label.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

from nnunetv2_petct.conversion.core import (
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    read_image,
    sanitize_id,
    unique_case_id,
    walk_files,
)
from nnunetv2_petct.conversion.generic_dicom import discover_dicom_cases, load_dicom_case

logger = logging.getLogger(__name__)

STUDY_FILES = ("CT.nii.gz", "CTres.nii.gz", "PET.nii.gz", "SUV.nii.gz", "SEG.nii.gz")
_PATIENT_RE = re.compile(r"^PETCT_([0-9A-Za-z]+)$")
_DATE_RE = re.compile(r"^(\d{2}-\d{2}-\d{4})")
_NNUNET_ID_RE = re.compile(r"^(fdg|psma)_([0-9A-Za-z]+)_(\d{2}-\d{2}-\d{4})$")


def autopet_case_id(patient_key: str, study_date: str | None, fallback: str) -> str:
    """``fdg_<patient key>_<MM-DD-YYYY>``; the sanitized study folder replaces a missing date."""
    return f"fdg_{sanitize_id(patient_key)}_{study_date or sanitize_id(fallback)}"


def patient_key_from_folder(name: str) -> str:
    """The hash of ``PETCT_<hash>``; any other folder name is used as it is (sanitized)."""
    m = _PATIENT_RE.match(name)
    return m.group(1) if m else sanitize_id(name)


# ------------------------------------------------------------------------------------ NIfTI release


def load_autopet_study(study_dir: str) -> LoadedCase:
    """Load one study folder of the per-study NIfTI release.

    Raises:
        ConversionError: SUV.nii.gz missing (PET.nii.gz is Bq/ml, not SUV), no CT.nii.gz nor
            CTres.nii.gz, SEG.nii.gz missing, or a file that cannot be read.
    """
    d = Path(study_dir)
    suv, seg = d / "SUV.nii.gz", d / "SEG.nii.gz"
    if not suv.is_file():
        raise ConversionError(f"SUV.nii.gz missing in {d} (PET.nii.gz is in Bq/ml; the converter needs SUV)")
    if not seg.is_file():
        raise ConversionError(f"SEG.nii.gz missing in {d}")
    assumptions = []
    ct_path = d / "CT.nii.gz"
    if not ct_path.is_file():
        ct_path = d / "CTres.nii.gz"
        if not ct_path.is_file():
            raise ConversionError(f"neither CT.nii.gz nor CTres.nii.gz in {d}")
        assumptions.append("CT.nii.gz missing: CTres.nii.gz (CT already resampled onto the PET grid) used")
    pet = read_image(suv)
    ct = read_image(ct_path)
    label = read_image(seg)
    return LoadedCase(ct=ct, pet=pet, label=label, meta={
        "pet_units": "SUVbw", "ct_units": "HU", "tracer": "FDG", "label_source": "SEG.nii.gz",
        "source_files": {"ct": ct_path.name, "pet": suv.name, "label": seg.name},
        "assumptions": assumptions,
    })


def _find_study_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in walk_files(root) if p.name in STUDY_FILES})  # folder links followed


def discover_autopet(source: Path) -> Discovery:
    """Studies of the per-study NIfTI release under ``source`` (any depth).

    A study folder is any folder holding one of CT/CTres/PET/SUV/SEG.nii.gz; a study with missing
    files is still listed and fails at conversion with the reason.

    Raises:
        LayoutError: no study folder found (the message lists what is there).
    """
    root = Path(source)
    studies = _find_study_dirs(root)
    if not studies:
        raise LayoutError(
            f"no AutoPET study folder (holding {', '.join(STUDY_FILES)}) under {root}. Found: {describe_tree(root)}. "
            f"For the nnU-Net release (imagesTr/labelsTr) use cohort 'autopet-nnunet'."
        )
    sources: list[CaseSource] = []
    used: set[str] = set()
    for study in studies:
        patient_folder = study.parent.name if study != root else study.name
        key = patient_key_from_folder(patient_folder)
        m = _DATE_RE.match(study.name)
        date = m.group(1) if m else None
        case_id = unique_case_id(autopet_case_id(key, date, study.name), used)  # two studies on one day
        patient_id = patient_folder if _PATIENT_RE.match(patient_folder) else f"PETCT_{key}"
        sources.append(CaseSource(
            case_id=case_id, patient_id=patient_id, cohort="autopet", source_path=str(study),
            load=partial(load_autopet_study, str(study)),
            info={"patient_folder": patient_folder, "study_folder": study.name, "study_date": date,
                  "patient_key": key},
        ))
    return Discovery(sources=sources, labeled=True, pet_units="SUVbw")


# ------------------------------------------------------------------------------------ nnU-Net release


def load_nnunet_release_case(ct_path: str, pet_path: str, label_path: str, tracer: str) -> LoadedCase:
    """Load one case of the autoPET III/IV nnU-Net release (CT is CTres, already on the SUV grid)."""
    for p in (ct_path, pet_path, label_path):
        if not Path(p).is_file():
            raise ConversionError(f"{p} missing")
    return LoadedCase(ct=read_image(ct_path), pet=read_image(pet_path), label=read_image(label_path), meta={
        "pet_units": "SUVbw", "ct_units": "HU", "tracer": tracer, "label_source": Path(label_path).name,
        "source_files": {"ct": ct_path, "pet": pet_path, "label": label_path},
        "assumptions": ["CT from the release's CTres (already resampled onto the PET grid by the autoPET team)"],
    })


def discover_autopet_nnunet(source: Path, include_psma: bool = False) -> Discovery:
    """Cases of the autoPET III/IV nnU-Net release (``source`` holds ``imagesTr`` and ``labelsTr``).

    FDG cases (``fdg_*``) only, unless ``include_psma``; other ids are kept with tracer "unknown"
    and a patient id equal to the case id.

    Raises:
        LayoutError: no ``imagesTr/*_0000.nii.gz`` under ``source``.
    """
    root = Path(source)
    images = root / "imagesTr"
    if not images.is_dir():
        cands = sorted(p.parent for p in walk_files(root)
                       if p.parent.name == "imagesTr" and p.name.endswith("_0000.nii.gz"))
        if len(cands) >= 1:
            images = cands[0].parent if cands[0].name == "imagesTr" else cands[0]
            root = images.parent
    ct_files = sorted(images.glob("*_0000.nii.gz")) if images.is_dir() else []
    if not ct_files:
        raise LayoutError(
            f"no imagesTr/*_0000.nii.gz under {Path(source)} (autoPET nnU-Net release). Found: {describe_tree(Path(source))}"
        )
    sources, excluded = [], []
    for ct in ct_files:
        case_id = ct.name[: -len("_0000.nii.gz")]
        pet = images / f"{case_id}_0001.nii.gz"
        label = root / "labelsTr" / f"{case_id}.nii.gz"
        m = _NNUNET_ID_RE.match(case_id)
        tracer = {"fdg": "FDG", "psma": "PSMA"}.get(m.group(1)) if m else "unknown"
        if tracer == "PSMA" and not include_psma:
            excluded.append({"case_id": case_id, "source_path": str(ct), "reason": "PSMA case (use --include-psma)"})
            continue
        if m:
            patient_id = f"PETCT_{m.group(2)}" if tracer == "FDG" else f"PSMA_{m.group(2)}"
        else:
            patient_id = case_id
        sources.append(CaseSource(
            case_id=case_id, patient_id=patient_id, cohort="autopet-nnunet", source_path=str(ct.parent),
            load=partial(load_nnunet_release_case, str(ct), str(pet), str(label), tracer),
            info={"release_id": case_id, "study_date": m.group(3) if m else None,
                  "patient_key": m.group(2) if m else None, "tracer": tracer},
            files=(str(ct), str(pet), str(label)),
        ))
    return Discovery(sources=sources, labeled=True, pet_units="SUVbw", excluded=excluded)


# ------------------------------------------------------------------------------------ DICOM release


def _dicom_date_to_mdy(date: str | None) -> str | None:
    """``YYYYMMDD`` (DICOM DA) -> ``MM-DD-YYYY`` (TCIA folder names); None when not parseable."""
    if date and re.fullmatch(r"\d{8}", str(date)):
        d = str(date)
        return f"{d[4:6]}-{d[6:8]}-{d[0:4]}"
    return None


def load_autopet_dicom_study(study, allow_non_fdg: bool = False, missing_seg_as_empty: bool = False) -> LoadedCase:
    """Load one TCIA AutoPET DICOM study: CT and PET as :func:`~.generic_dicom.load_dicom_case`, plus the
    DICOM-SEG lesion mask.

    Raises:
        ConversionError: the study's problems (no/ambiguous CT or PT), SUV or tracer errors from
            :func:`~nnunetv2_petct.conversion.dicom.load_dicom_study`, more than one DICOM-SEG, or none
            (unless ``missing_seg_as_empty``: then the label is empty and a warning is recorded).
    """
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.dicom import load_dicom_seg

    case = load_dicom_case(study, allow_non_fdg)
    pet, seg_paths, warnings = case.pet, list(study.seg_paths), list(case.meta["warnings"])
    if len(seg_paths) > 1:
        raise ConversionError(f"{len(seg_paths)} DICOM-SEG objects in the study; expected one")
    if seg_paths:
        try:
            label = load_dicom_seg(seg_paths[0], pet)
        except Exception as e:  # noqa: BLE001 - any reader error is this case's failure reason
            raise ConversionError(f"cannot read DICOM-SEG {seg_paths[0]}: {e}") from None
        label_source = "DICOM-SEG"
    elif missing_seg_as_empty:
        label = sitk.Image(pet.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(pet)
        label_source = None
        warnings.append("no DICOM-SEG in the study: empty label assumed (--missing-seg-empty)")
    else:
        problems = list(study.problems)
        raise ConversionError("no DICOM-SEG in the study (use --missing-seg-empty to treat such studies as "
                              "lesion-free)" + (f"; {'; '.join(problems)}" if problems else ""))
    case.label = label
    case.meta.update(label_source=label_source, warnings=warnings,
                     source_files={"seg": str(seg_paths[0]) if seg_paths else None})
    return case


def _autopet_dicom_identity(study) -> tuple[str, str, dict]:
    pid = study.patient_id or "unknown"
    key = patient_key_from_folder(pid)
    date = _dicom_date_to_mdy(study.study_date)
    patient_id = pid if _PATIENT_RE.match(pid) else f"PETCT_{key}"
    return autopet_case_id(key, date, str(study.study_uid)[-12:]), patient_id, {
        "study_uid": str(study.study_uid), "dicom_patient_id": pid, "study_date": date, "patient_key": key}


def discover_autopet_dicom(source: Path, allow_non_fdg: bool = False, missing_seg_empty: bool = False,
                           ct_series: str | None = None, pet_series: str | None = None) -> Discovery:
    """Studies of the TCIA AutoPET DICOM release (PET, CT and DICOM-SEG series per study), found as
    :func:`~.generic_dicom.discover_dicom` finds them (same series selection; ``ct_series`` /
    ``pet_series`` as there).

    Case ids ``fdg_<hash>_<MM-DD-YYYY>`` from PatientID ``PETCT_<hash>`` and StudyDate, as in the
    NIfTI releases. ``missing_seg_empty``: a study without DICOM-SEG gets an empty label instead of
    failing.
    """
    return discover_dicom_cases(source, "autopet-dicom", _autopet_dicom_identity, load_autopet_dicom_study,
                                (allow_non_fdg, missing_seg_empty), labeled=True,
                                ct_series=ct_series, pet_series=pet_series)
