"""Any folder of DICOM PET/CT studies (cohort ``dicom``): unlabeled, SUVbw from the headers (QIBA),
through :mod:`nnunetv2_petct.conversion.dicom`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from nnunetv2_petct.conversion.core import (
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    jsonable,
    sanitize_id,
)


def load_dicom_case(study, allow_non_fdg: bool = False) -> LoadedCase:
    """Load one DICOM PET/CT study (no label) through :mod:`nnunetv2_petct.conversion.dicom`."""
    from nnunetv2_petct.conversion.dicom import load_dicom_study

    try:
        ct, pet, meta = load_dicom_study(study, allow_non_fdg=allow_non_fdg)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - dicom.py's errors carry the reason (missing tag, tracer)
        raise ConversionError(f"{type(e).__name__}: {e}") from None
    meta = dict(meta or {})
    return LoadedCase(ct=ct, pet=pet, label=None, meta={
        "pet_units": "SUVbw", "ct_units": "HU", "tracer": str(meta.pop("tracer", "FDG")),
        "assumptions": list(meta.pop("assumptions", [])), "warnings": list(meta.pop("warnings", [])),
        "source_files": {}, "dicom": jsonable(meta),
    })


def discover_dicom(source: Path, allow_non_fdg: bool = False) -> Discovery:
    """Every DICOM PET/CT study under ``source``; case id ``<patient id>_<study date or UID tail>``."""
    from nnunetv2_petct.conversion.dicom import find_dicom_studies

    root = Path(source)
    studies = find_dicom_studies(root)
    if not studies:
        raise LayoutError(f"no DICOM PET/CT study under {root}. Found: {describe_tree(root)}")
    sources, used = [], set()
    for st in studies:
        pid = st.patient_id or "unknown"
        date = st.study_date or ""
        case_id = sanitize_id(f"{pid}_{date or str(st.study_uid)[-12:]}")
        base, i = case_id, 2
        while case_id in used:
            case_id = f"{base}_{i}"
            i += 1
        used.add(case_id)
        sources.append(CaseSource(
            case_id=case_id, patient_id=sanitize_id(pid), cohort="dicom",
            source_path=str(st.root or root),
            load=partial(load_dicom_case, st, allow_non_fdg),
            info={"study_uid": str(st.study_uid), "dicom_patient_id": pid, "study_date": date or None},
        ))
    return Discovery(sources=sources, labeled=False, pet_units="SUVbw")
