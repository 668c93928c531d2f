"""Any folder of DICOM PET/CT studies (cohort ``dicom``): unlabeled, SUVbw from the headers (QIBA),
through :mod:`nnunetv2_petct.conversion.dicom`.

:func:`discover_dicom_cases` and :func:`load_dicom_case` are the DICOM cohort path of every DICOM
layout: the AutoPET DICOM release (:mod:`.autopet`) adds only its case ids and the DICOM-SEG label.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nnunetv2_petct.conversion.core import (
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    sanitize_id,
    unique_case_id,
)
from nnunetv2_petct.io import jsonable


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


def discover_dicom_cases(source: Path, cohort: str, identify: Callable[[Any], tuple[str, str, dict]],
                         load: Callable[..., LoadedCase], load_args: tuple = (), labeled: bool = False
                         ) -> Discovery:
    """Every DICOM PET/CT study under ``source`` (:func:`~nnunetv2_petct.conversion.dicom.find_dicom_studies`)
    as a :class:`CaseSource` of ``cohort``.

    ``identify(study)`` gives ``(case id, patient id, info)``; a case id met before gets ``_2``, ``_3``, ...
    Each source loads with ``load(study, *load_args)`` (module-level ``load``: picklable).

    Raises:
        LayoutError: no DICOM PET/CT study under ``source`` (the message lists what is there).
    """
    from nnunetv2_petct.conversion.dicom import find_dicom_studies

    root = Path(source)
    studies = find_dicom_studies(root)
    if not studies:
        raise LayoutError(f"no DICOM PET/CT study under {root}. Found: {describe_tree(root)}")
    sources, used = [], set()
    for st in studies:
        case_id, patient_id, info = identify(st)
        sources.append(CaseSource(
            case_id=unique_case_id(case_id, used), patient_id=patient_id, cohort=cohort,
            source_path=str(st.root or root), load=partial(load, st, *load_args), info=info,
        ))
    return Discovery(sources=sources, labeled=labeled, pet_units="SUVbw")


def _dicom_identity(study) -> tuple[str, str, dict]:
    pid = study.patient_id or "unknown"
    date = study.study_date or ""
    case_id = sanitize_id(f"{pid}_{date or str(study.study_uid)[-12:]}")
    return case_id, sanitize_id(pid), {"study_uid": str(study.study_uid), "dicom_patient_id": pid,
                                       "study_date": date or None}


def discover_dicom(source: Path, allow_non_fdg: bool = False) -> Discovery:
    """Every DICOM PET/CT study under ``source``; case id ``<patient id>_<study date or UID tail>``."""
    return discover_dicom_cases(source, "dicom", _dicom_identity, load_dicom_case, (allow_non_fdg,))
