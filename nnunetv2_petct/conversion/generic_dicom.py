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
                         load: Callable[..., LoadedCase], load_args: tuple = (), labeled: bool = False, *,
                         ct_series: str | None = None, pet_series: str | None = None) -> Discovery:
    """Every DICOM PET/CT study under ``source`` (:func:`~nnunetv2_petct.conversion.dicom.scan_dicom_folder`)
    as a :class:`CaseSource` of ``cohort``.

    ``identify(study)`` gives ``(case id, patient id, info)``; a case id met before gets ``_2``, ``_3``, ...
    Each source loads with ``load(study, *load_args)`` (module-level ``load``: picklable).
    ``ct_series`` / ``pet_series`` (``--ct-series`` / ``--pet-series``): choose, in every study, among the
    series matching this SeriesInstanceUID or SeriesDescription (wildcards allowed). What the scan ignored
    (objects that are not CT/PET images such as RTDOSE/RTPLAN/RTSTRUCT/SR/KO/PR, and DICOM-SEG when the
    cohort is unlabeled; studies without CT/PET images; non-DICOM files) is counted in ``Discovery.notes``.

    Raises:
        LayoutError: no DICOM PET/CT study under ``source`` (the message lists what is there).
    """
    from nnunetv2_petct.conversion.dicom import scan_dicom_folder

    root = Path(source)
    scan = scan_dicom_folder(root, ct_series=ct_series, pet_series=pet_series)
    notes = scan.summary(used_kinds=("SEG",) if labeled else ())
    studies = scan.studies
    if not studies:
        ignored = f" ({'; '.join(notes)})" if notes else ""
        raise LayoutError(f"no DICOM PET/CT study under {root}{ignored}. Found: {describe_tree(root)}")
    set_aside = sum(1 for st in studies for s in st.series if s.modality in ("CT", "PT") and s.excluded)
    if set_aside:
        notes.append(f"{set_aside} CT/PET series set aside (localizers, reformats, non-attenuation-corrected PET, "
                     "irregular stacks, ...): each case's manifest record says which and why "
                     "(extra.dicom.series_selection)")
    sources, used = [], set()
    for st in studies:
        case_id, patient_id, info = identify(st)
        sources.append(CaseSource(
            case_id=unique_case_id(case_id, used), patient_id=patient_id, cohort=cohort,
            source_path=str(st.root or root), load=partial(load, st, *load_args), info=info,
        ))
    return Discovery(sources=sources, labeled=labeled, pet_units="SUVbw", notes=notes)


def _dicom_identity(study) -> tuple[str, str, dict]:
    pid = study.patient_id or "unknown"
    date = study.study_date or ""
    case_id = sanitize_id(f"{pid}_{date or str(study.study_uid)[-12:]}")
    return case_id, sanitize_id(pid), {"study_uid": str(study.study_uid), "dicom_patient_id": pid,
                                       "study_date": date or None}


def discover_dicom(source: Path, allow_non_fdg: bool = False, ct_series: str | None = None,
                   pet_series: str | None = None) -> Discovery:
    """Every DICOM PET/CT study under ``source``; case id ``<patient id>_<study date or UID tail>``.

    ``ct_series`` / ``pet_series``: see :func:`discover_dicom_cases` (the series-selection rules are
    :data:`~nnunetv2_petct.conversion.dicom.CT_SELECTION_RULE` and ``PET_SELECTION_RULE``).
    """
    return discover_dicom_cases(source, "dicom", _dicom_identity, load_dicom_case, (allow_non_fdg,),
                                ct_series=ct_series, pet_series=pet_series)
