"""From a folder of PET/CT studies to lesion masks, DICOM-SEGs and SUV lesion reports.

Pure library (no nnunetv2 import): the model is a :class:`LesionPredictor` handed in by the caller
(:class:`nnunetv2_petct.nnunet.predictor.NnUNetLesionPredictor` runs nnU-Net's own ``nnUNetPredictor``; tests
hand in a predictor that paints known masks).

:func:`predict_studies` runs in three passes so that nnU-Net can pipeline many studies in one call:

1. **prepare** each study (:mod:`nnunetv2_petct.clinical.studies`): load, SUV, CT on the PET grid, CT coverage;
   the network input is written to a work folder inside the output folder;
2. **predict** all prepared studies with one ``predictor.predict`` call (if that call fails and there was more
   than one study, each study is retried alone, so one bad study cannot take the others down);
3. **report** each predicted study into ``OUT/<study>/``, built in a staging folder and renamed into place
   (:func:`nnunetv2_petct.io.atomic_directory`): ``lesions.nii.gz`` (uint8, PET grid), ``lesions_seg.dcm``
   (DICOM input only, :mod:`nnunetv2_petct.conversion.dicom_seg`), ``lesions.csv``, ``report.json`` and
   ``report.html``.

Then ``OUT/summary.csv`` lists every study of the run (done, failed with its reason, or already there). All
numbers come from the SUV image on the original PET grid (:mod:`nnunetv2_petct.evaluation.lesion_report`).
A failed study leaves nothing behind; the input folder is only read.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nnunetv2_petct.clinical.studies import (
    LoadedStudy,
    StudyError,
    StudyInput,
    find_study_inputs,
    load_study,
    network_input,
)
from nnunetv2_petct.evaluation.lesion_report import (
    DEFAULT_MIN_VOLUME_ML,
    LESION_CSV_COLUMNS,
    csv_text,
    lesion_csv_row,
    lesion_report,
)
from nnunetv2_petct.io import (
    atomic_directory,
    jsonable,
    mark_staging,
    read_json,
    staging_owner_pid,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

MASK_FILE = "lesions.nii.gz"
SEG_FILE = "lesions_seg.dcm"
LESION_CSV = "lesions.csv"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = (
    "study", "status", "reason", "input", "patient_id", "study_date", "lesion_count", "tmtv_ml", "total_tlg",
    "suv_max", "suv_peak", "ct_axial_coverage", "seg", "seconds", "folder",
)  # fmt: skip
_WORK_PREFIX = ".work_"


class BadRunInput(ValueError):
    """The run cannot start (missing input folder, output inside the input, no study found)."""


class LesionPredictor(Protocol):
    """What :func:`predict_studies` needs from a model."""

    def identification(self) -> dict:
        """How the model is identified in the outputs: at least ``name`` (e.g. the trainer) and ``version``;
        ``parameters`` (text values: model folder, folds, checkpoint, ...) go into the SEG's algorithm
        identification; everything else is recorded in ``report.json``."""

    def predict(self, cases: Mapping[str, Sequence[Path]], output_dir: Path) -> None:
        """Segment each case (``{name: [ct_file, pet_file]}``, nnU-Net raw NIfTI files) into
        ``output_dir/<name>.nii.gz`` on the input grid, label > 0 = lesion."""


@dataclass
class StudyResult:
    """Outcome of one study: ``status`` is ``"done"``, ``"failed"`` or ``"exists"``."""

    name: str
    status: str
    input: str = ""
    reason: str = ""
    folder: str = ""
    seconds: float = 0.0
    row: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    """Outcome of :func:`predict_studies`."""

    output_dir: Path
    results: list[StudyResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[StudyResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        n = {s: sum(1 for r in self.results if r.status == s) for s in ("done", "exists", "failed")}
        lines = [f"{len(self.results)} studies: {n['done']} done, {n['exists']} already there, {n['failed']} failed "
                 f"({self.seconds:.1f} s) -> {self.output_dir / SUMMARY_CSV}"]
        lines += [f"  FAILED {r.name}: {r.reason} [{r.input}]" for r in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nnunetv2_petct", "nnunetv2", "torch", "highdicom", "pydicom", "SimpleITK", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, StudyError) else f"{type(exc).__name__}: {text}"


def check_run_folders(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Raise :class:`BadRunInput` unless ``input_dir`` is a folder and ``output_dir`` is not inside it."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise BadRunInput(f"input folder {input_dir} does not exist or is not a folder")
    i, o = input_dir.resolve(), output_dir.resolve()
    if o == i or i in o.parents:
        raise BadRunInput(f"the output folder {output_dir} must not be inside the input folder {input_dir} "
                          "(the input is never modified)")


def _anonymize_suv(suv: dict) -> dict:
    out = dict(suv)
    if isinstance(out.get("qiba"), dict):
        q = dict(out["qiba"])
        for k in ("scan_datetime", "injection_datetime"):
            if q.get(k):
                q[k] = "omitted (--anonymize)"
        out["qiba"] = q
    return out


def _existing_row(study: StudyInput, folder: Path) -> dict:
    row = {"study": study.name, "status": "exists", "input": study.source, "folder": str(folder)}
    try:
        rep = read_json(folder / REPORT_JSON, "report")
    except Exception:  # noqa: BLE001 - an unreadable old report only leaves the numbers out
        return row
    return {**_summary_numbers(rep), **row}


def _summary_numbers(rep: Mapping) -> dict:
    t = rep.get("totals", {})
    st = rep.get("study", {})
    cov = rep.get("ct_coverage", {}).get("axial", {})
    return {"patient_id": st.get("patient_id", ""), "study_date": st.get("study_date", ""),
            "lesion_count": t.get("lesion_count"), "tmtv_ml": t.get("tmtv_ml"), "total_tlg": t.get("total_tlg"),
            "suv_max": t.get("suv_max"), "suv_peak": t.get("suv_peak"),
            "ct_axial_coverage": cov.get("fraction"), "seg": "yes" if rep.get("outputs", {}).get("seg") else "no"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_work(output_dir: Path) -> int:
    """Remove work and staging folders left in ``output_dir`` by runs that were killed: folders that hold
    :data:`nnunetv2_petct.io.STAGING_MARKER` with the id of a process that is gone. Folders of live processes
    and every folder without the marker (results, whatever their name) are left alone. Returns the count."""
    n = 0
    for d in output_dir.iterdir():
        if not d.is_dir() or d.is_symlink():
            continue
        pid = staging_owner_pid(d)
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


@dataclass
class _Prepared:
    study: StudyInput
    pet_geometry: dict
    pet_file: Path
    loaded_meta: dict
    coverage: dict
    seconds: float


def _pet_grid_text(pet) -> str:
    sx, sy, sz = pet.GetSpacing()
    nx, ny, nz = pet.GetSize()
    return f"{nx} x {ny} x {nz} voxels of {sx:.2f} x {sy:.2f} x {sz:.2f} mm"


def _prepare(study: StudyInput, inputs_dir: Path, allow_non_fdg: bool) -> _Prepared:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    loaded: LoadedStudy = load_study(study, allow_non_fdg=allow_non_fdg)
    ct_on_pet, pet, coverage = network_input(loaded)
    ct_file = inputs_dir / f"{study.name}_0000.nii.gz"
    pet_file = inputs_dir / f"{study.name}_0001.nii.gz"
    sitk.WriteImage(ct_on_pet, str(ct_file), True)
    sitk.WriteImage(pet, str(pet_file), True)
    meta = {"identity": loaded.identity, "suv": loaded.suv, "pet_files": [str(p) for p in loaded.pet_files],
            "warnings": loaded.warnings + coverage.pop("warnings", []), "assumptions": loaded.assumptions,
            "series": loaded.series, "pet_grid_text": _pet_grid_text(pet)}
    geometry = {"origin": tuple(pet.GetOrigin()), "spacing": tuple(pet.GetSpacing()),
                "direction": tuple(pet.GetDirection()), "size": tuple(pet.GetSize())}
    return _Prepared(study, geometry, pet_file, meta, coverage, time.perf_counter() - t0)


def _with_geometry(img, geometry: dict):
    img.SetOrigin(geometry["origin"])
    img.SetSpacing(geometry["spacing"])
    img.SetDirection(geometry["direction"])
    return img


def _read_prediction(path: Path, geometry: dict):
    """The prediction on the PET grid (uint8 0/1), with the PET geometry restored exactly (NIfTI stores it in
    float32)."""
    import SimpleITK as sitk

    from nnunetv2_petct.io import check_nifti_gz_complete

    if not path.is_file():
        raise StudyError("the predictor wrote no segmentation for this study")
    check_nifti_gz_complete(path)
    pred = sitk.ReadImage(str(path))
    if tuple(pred.GetSize()) != tuple(geometry["size"]):
        raise StudyError(f"the prediction has size {pred.GetSize()}, the PET {geometry['size']}")
    for key, tol in (("origin", 1e-2), ("spacing", 1e-3), ("direction", 1e-4)):
        got = {"origin": pred.GetOrigin(), "spacing": pred.GetSpacing(), "direction": pred.GetDirection()}[key]
        if not np.allclose(got, geometry[key], rtol=0.0, atol=tol):
            raise StudyError(f"the prediction's {key} {tuple(got)} differs from the PET's {geometry[key]}")
    arr = sitk.GetArrayFromImage(pred)
    out = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    return _with_geometry(out, geometry), sorted(int(v) for v in np.unique(arr))


def _no_ct_bands(pet, coverage: Mapping) -> list[tuple[float, float, str]]:
    """Patient-z ranges without CT (the coverage record is along the PET's slice normal: equal to +-z for axial
    series; nothing is shaded for other orientations)."""
    normal_z = float(pet.GetDirection()[8])
    if abs(normal_z) < 0.99:
        return []
    sign = 1.0 if normal_z > 0 else -1.0
    return [(sign * g["from_mm"], sign * g["to_mm"], "no CT")
            for g in (coverage.get("axial") or {}).get("uncovered", [])]


def _mip_images(pet, mask, lesions: Sequence[dict], coverage: Mapping) -> list[tuple[str, bytes]]:
    """Coronal and sagittal MIPs (LPS-oriented for display) with lesion outlines and numbers, the axial ranges
    without CT shaded."""
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.geometry import spacing_mm_zyx
    from nnunetv2_petct.evaluation.plots import pet_mip_png

    pet_lps = sitk.DICOMOrient(pet, "LPS")
    mask_lps = sitk.DICOMOrient(mask, "LPS")
    pet_arr = sitk.GetArrayViewFromImage(pet_lps)
    mask_arr = sitk.GetArrayViewFromImage(mask_lps)
    spacing = spacing_mm_zyx(pet_lps)
    labels = []
    for d in lesions[:20]:  # numbers of the 20 hottest lesions (more would clutter the picture)
        x, y, z = pet_lps.TransformPhysicalPointToContinuousIndex(tuple(d["centroid_mm"]))
        labels.append(((z, y, x), str(d["lesion_id"])))
    coronal = np.asarray(pet_arr).max(axis=1)  # one grey scale for both views: the coronal MIP's 99.5th pct.
    finite = coronal[np.isfinite(coronal)]
    vmax = max(float(np.percentile(finite, 99.5)) if finite.size else 1.0, 1.0)
    bands = _no_ct_bands(pet, coverage)
    out = []
    for view, caption in (("coronal", "Coronal MIP, patient's right on the left; axes in patient mm"),
                          ("sagittal", "Sagittal MIP, anterior on the left; axes in patient mm")):
        out.append((caption, pet_mip_png(pet_arr, mask_arr, spacing, view, vmax_suv=vmax, labels=labels,
                                         title=f"{view} MIP, SUV 0 (white) to {vmax:.1f} (black)",
                                         origin_mm_zyx=tuple(reversed(pet_lps.GetOrigin())),
                                         z_bands_mm=bands)))
    return out


def _report_study(prep: _Prepared, pred_file: Path, output_dir: Path, model: dict, software: dict, *,
                  min_volume_ml: float, anonymize: bool, overwrite: bool, predict_seconds: float) -> StudyResult:
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.dicom_seg import SegAlgorithm, write_lesion_seg
    from nnunetv2_petct.conversion.geometry import geometry_record
    from nnunetv2_petct.evaluation.html_report import RESEARCH_USE_LINE, render_study_report_html

    t0 = time.perf_counter()
    study, meta = prep.study, prep.loaded_meta
    mask, labels_found = _read_prediction(pred_file, prep.pet_geometry)
    pet = _with_geometry(sitk.ReadImage(str(prep.pet_file)), prep.pet_geometry)
    lr = lesion_report(mask, pet, min_volume_ml)
    warnings = list(meta["warnings"])
    if len([v for v in labels_found if v > 0]) > 1:
        warnings.append(f"the model predicted labels {labels_found}; every label > 0 was taken as lesion")
    identity = {} if anonymize else dict(meta["identity"])
    series = {} if anonymize else {k: v for k, v in meta["series"].items() if k.endswith("_uid")}
    study_rec = {
        "name": study.name, "source_format": "DICOM" if study.kind == "dicom" else "NIfTI",
        "anonymized": anonymize, **identity, **series,
        "pet_series_description": meta["series"].get("pet_series_description"),
        "tracer": meta["series"].get("tracer"), "pet_grid_text": meta["pet_grid_text"],
    }
    if not anonymize:
        study_rec["input"] = study.source
    report: dict[str, Any] = {
        "format": "nnunetv2_petct lesion report 1",
        "research_use_only": RESEARCH_USE_LINE,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": study_rec,
        "totals": lr.totals, "lesions": lr.lesions, "removed_small": lr.removed,
        "settings": {"min_volume_ml": min_volume_ml, "connectivity": 18, "suv_peak_sphere_ml": 1.0,
                     "coordinates": "DICOM patient coordinates (LPS), mm"},
        "ct_coverage": prep.coverage,
        "suv": _anonymize_suv(meta["suv"]) if anonymize else meta["suv"],
        "pet_grid": geometry_record(pet),
        "model": model, "software": software,
        "warnings": warnings, "assumptions": meta["assumptions"],
        "outputs": {"mask": MASK_FILE, "seg": None, "lesions_csv": LESION_CSV, "html": REPORT_HTML},
    }
    folder = output_dir / study.name
    with atomic_directory(folder, overwrite=overwrite) as stage:
        sitk.WriteImage(lr.mask, str(stage / MASK_FILE), True)
        if study.kind == "dicom":
            algo = SegAlgorithm(name=str(model.get("name", "nnU-Net")), version=str(model.get("version", "")),
                                parameters={str(k): str(v) for k, v in (model.get("parameters") or {}).items()})
            seg = write_lesion_seg(lr.mask, meta["pet_files"], stage / SEG_FILE, algo,
                                   software_version=f"nnunetv2_petct {software.get('nnunetv2_petct', '')}")
            seg.pop("path")
            report["outputs"]["seg"] = SEG_FILE
            report["seg"] = seg if not anonymize else {k: v for k, v in seg.items() if k in ("n_frames", "empty")}
        else:
            report["outputs"]["seg_note"] = "no DICOM-SEG: the input was NIfTI (no DICOM series to reference)"
        write_text_atomic(csv_text([lesion_csv_row(d) for d in lr.lesions], LESION_CSV_COLUMNS), stage / LESION_CSV)
        report["timing_s"] = {"prepare": round(prep.seconds, 2), "predict": round(predict_seconds, 2),
                              "report": round(time.perf_counter() - t0, 2)}
        write_json_atomic(report, stage / REPORT_JSON, nan_as_null=True)
        html = render_study_report_html(jsonable(report), _mip_images(pet, lr.mask, lr.lesions, prep.coverage))
        write_text_atomic(html, stage / REPORT_HTML)
    seconds = prep.seconds + predict_seconds + (time.perf_counter() - t0)
    row = {"study": study.name, "status": "done", "input": study.source, "folder": str(folder),
           "seconds": round(seconds, 2), **_summary_numbers(jsonable(report))}
    return StudyResult(study.name, "done", study.source, folder=str(folder), seconds=seconds, row=row,
                       warnings=warnings)


# ------------------------------------------------------------------------------------------ the run


def predict_studies(input_dir: str | os.PathLike, output_dir: str | os.PathLike, predictor: LesionPredictor, *,
                    min_volume_ml: float = DEFAULT_MIN_VOLUME_ML, anonymize: bool = False, overwrite: bool = False,
                    allow_non_fdg: bool = False, quiet: bool = False, ct_series: str | None = None,
                    pet_series: str | None = None,
                    on_study: Callable[[StudyResult], None] | None = None) -> RunReport:
    """Segment every PET/CT study under ``input_dir`` and write one result folder per study (module docstring).

    Args:
        input_dir: DICOM studies and/or NIfTI pairs (read only).
        output_dir: created; gets ``<study>/`` folders and ``summary.csv``; must not be inside ``input_dir``.
        predictor: the model (:class:`LesionPredictor`).
        min_volume_ml: lesions (18-connected components) below this volume are dropped from all outputs.
        anonymize: leave patient/study identifiers out of the report files and name folders ``study_<hash>``
            (the DICOM-SEG keeps the PET's patient and study attributes: it must attach to that study).
        overwrite: redo studies whose folder exists (default: keep them, status ``"exists"``).
        allow_non_fdg: accept PET tracers other than FDG (the models are trained on FDG).
        ct_series, pet_series: choose the CT / PET series of DICOM studies by SeriesInstanceUID or
            SeriesDescription (wildcards allowed) instead of the documented ranking rule.
        quiet: no progress bars.
        on_study: called with each study's result as soon as it is known (progress messages).

    Returns:
        A :class:`RunReport`; ``ok`` is False when a study failed (its reason is in ``summary.csv``).

    Raises:
        BadRunInput: missing input folder, output inside the input, or no study found.
    """
    from tqdm import tqdm

    from nnunetv2_petct.conversion.core import describe_tree

    t_run = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_run_folders(input_dir, output_dir)
    if not (math.isfinite(min_volume_ml) and min_volume_ml >= 0):
        raise BadRunInput(f"--min-volume-ml must be >= 0, got {min_volume_ml}")
    studies = find_study_inputs(input_dir, anonymize=anonymize, ct_series=ct_series, pet_series=pet_series)
    if not studies:
        raise BadRunInput(f"no DICOM PET/CT study and no NIfTI pair (<case>_0000.nii.gz + <case>_0001.nii.gz) "
                          f"under {input_dir}. Found: {describe_tree(input_dir)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    if clean_stale_work(output_dir):
        logger.info("removed leftovers of killed runs in %s", output_dir)
    report = RunReport(output_dir)
    results: dict[str, StudyResult] = {}

    def finish(res: StudyResult) -> None:
        results[res.name] = res
        if on_study is not None:
            on_study(res)

    model = jsonable(predictor.identification())
    software = _versions()
    work = output_dir / f"{_WORK_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    inputs_dir, pred_dir = work / "inputs", work / "predictions"
    try:
        work.mkdir(parents=True)
        mark_staging(work)
        inputs_dir.mkdir()
        pred_dir.mkdir()
        prepared: dict[str, _Prepared] = {}
        for st in tqdm(studies, desc="loading studies", unit="study", disable=quiet, file=sys.stderr):
            folder = output_dir / st.name
            if folder.exists() and not overwrite:
                finish(StudyResult(st.name, "exists", st.source, folder=str(folder), row=_existing_row(st, folder)))
                continue
            try:
                prepared[st.name] = _prepare(st, inputs_dir, allow_non_fdg)
            except Exception as e:  # noqa: BLE001 - one study's failure is its reason, the others go on
                logger.debug("study %s failed while loading", st.name, exc_info=True)
                finish(StudyResult(st.name, "failed", st.source, reason=_one_line(e)))

        predict_seconds: dict[str, float] = {}
        if prepared:
            cases = {n: [inputs_dir / f"{n}_0000.nii.gz", p.pet_file] for n, p in prepared.items()}
            t0 = time.perf_counter()
            try:
                predictor.predict(cases, pred_dir)
                share = (time.perf_counter() - t0) / len(cases)
                predict_seconds = dict.fromkeys(cases, share)
            except Exception as e:  # noqa: BLE001
                if len(cases) == 1:
                    name = next(iter(cases))
                    finish(StudyResult(name, "failed", prepared.pop(name).study.source,
                                       reason=f"prediction failed: {_one_line(e)}"))
                else:
                    logger.warning("prediction of %d studies failed (%s); predicting them one by one",
                                   len(cases), _one_line(e))
                    for name in list(cases):
                        t1 = time.perf_counter()
                        try:
                            predictor.predict({name: cases[name]}, pred_dir)
                            predict_seconds[name] = time.perf_counter() - t1
                        except Exception as e1:  # noqa: BLE001
                            finish(StudyResult(name, "failed", prepared.pop(name).study.source,
                                               reason=f"prediction failed: {_one_line(e1)}"))

        for name, prep in tqdm(list(prepared.items()), desc="writing results", unit="study", disable=quiet,
                               file=sys.stderr):
            try:
                finish(_report_study(prep, pred_dir / f"{name}.nii.gz", output_dir, model, software,
                                     min_volume_ml=min_volume_ml, anonymize=anonymize, overwrite=overwrite,
                                     predict_seconds=predict_seconds.get(name, 0.0)))
            except Exception as e:  # noqa: BLE001
                logger.debug("study %s failed while writing its results", name, exc_info=True)
                finish(StudyResult(name, "failed", prep.study.source, reason=_one_line(e)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report.results = [results[s.name] for s in studies if s.name in results]
    rows = []
    for r in report.results:
        row = dict(r.row) or {"study": r.name, "status": r.status, "input": r.input, "folder": r.folder}
        row.update(status=r.status, reason=r.reason)
        if anonymize:
            row.update(patient_id="", study_date="", input="")
        rows.append(row)
    write_text_atomic(csv_text(rows, SUMMARY_COLUMNS), output_dir / SUMMARY_CSV)
    report.seconds = time.perf_counter() - t_run
    return report
