"""Evaluate a folder of predictions against a folder of reference labels (NIfTI, SimpleITK).

Inputs
------
* ``ref_dir``: reference label maps ``<case>.nii.gz`` (nnU-Net ``labelsTr``/``labelsTs`` style);
* ``pred_dir``: predictions ``<case>.nii.gz`` (other files, e.g. nnU-Net's ``*.json``, are ignored);
* ``pet_dir`` (optional): PET images in SUV, nnU-Net raw ``imagesTr``/``imagesTs`` style, where the PET
  is channel 1, ``<case>_0001.nii.gz``; a plain ``<case>.nii.gz`` is accepted too (``_0001`` wins).

The case sets of ``ref_dir`` and ``pred_dir`` must be equal, and prediction and PET must be on the
reference grid (size, spacing, origin, direction); otherwise :class:`EvaluationInputError` names the
cases. Voxel volumes use the reference spacing. SimpleITK's (x, y, z) spacing is reversed to the
(z, y, x) order of the numpy arrays.

Outputs (in ``out_dir``, each written to a temp file then renamed): ``per_case.csv``,
``per_lesion.csv``, ``summary.json`` and ``summary.md``. Means leave NaN out, as the autoPET
challenge does (Dice and FNV are NaN for cases with empty ground truth), and ``n_used`` says how many
cases each mean is over.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.io import (
    IncompleteFileError,
    check_nifti_gz_complete,
    csv_text,
    describe_itk_error,
    fmt_number,
    jsonable,
    probe_writable_dir,
    run_parallel,
    write_json_atomic,
    write_text_atomic,
)

from .case import CASE_COLUMNS, LESION_COLUMNS, case_rows, evaluate_case
from .detection import parse_overlap_rule

logger = logging.getLogger(__name__)

NIFTI_SUFFIX = ".nii.gz"
PER_CASE_CSV = "per_case.csv"
PER_LESION_CSV = "per_lesion.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
_MAX_NAMES = 20


class EvaluationInputError(ValueError):
    """Bad evaluation input (missing folder, mismatched case sets or geometries); names the cases."""


# ----------------------------------------------------------------------------------------------- inputs
def list_cases(folder: Path) -> dict[str, Path]:
    """``{case: path}`` of the ``*.nii.gz`` files directly in ``folder`` (hidden files ignored)."""
    return {
        p.name[: -len(NIFTI_SUFFIX)]: p
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name.endswith(NIFTI_SUFFIX) and not p.name.startswith(".")
    }


def find_pet_file(pet_dir: Path, case: str) -> Path | None:
    """PET file of ``case`` in ``pet_dir``: ``<case>_0001.nii.gz``, else ``<case>.nii.gz``, else None."""
    for name in (f"{case}_0001{NIFTI_SUFFIX}", f"{case}{NIFTI_SUFFIX}"):
        p = Path(pet_dir) / name
        if p.is_file():
            return p
    return None


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - _MAX_NAMES} more)" if len(names) > _MAX_NAMES else ""
    return ", ".join(names[:_MAX_NAMES]) + more


def _header(path: Path) -> dict:
    """Geometry of a NIfTI file in SimpleITK (x, y, z) order, read without the pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {
        "dim": reader.GetDimension(),
        "size": tuple(reader.GetSize()),
        "spacing": tuple(reader.GetSpacing()),
        "origin": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }


def _geometry_difference(ref: dict, other: dict) -> str | None:
    """Human-readable difference between two headers (SimpleITK x, y, z order), None if same grid."""
    if ref["dim"] != other["dim"]:
        return f"dimension {other['dim']} vs {ref['dim']}"
    if ref["size"] != other["size"]:
        return f"size (x, y, z) {other['size']} vs {ref['size']}"
    if not np.allclose(other["spacing"], ref["spacing"], rtol=1e-4, atol=1e-5):
        return f"spacing (x, y, z) {other['spacing']} vs {ref['spacing']}"
    if not np.allclose(other["origin"], ref["origin"], rtol=1e-6, atol=1e-3):
        return f"origin {other['origin']} vs {ref['origin']}"
    if not np.allclose(other["direction"], ref["direction"], atol=1e-4):
        return f"direction {other['direction']} vs {ref['direction']}"
    return None


def collect_cases(
    ref_dir: Path, pred_dir: Path, pet_dir: Path | None = None
) -> list[tuple[str, Path, Path, Path | None]]:
    """Check the folders and return ``(case, ref, pred, pet)`` tuples sorted by case.

    Raises:
        EvaluationInputError: a folder is missing, no reference case, case sets differ, a PET is
            missing, or a prediction/PET is not on its reference grid (all offending cases named).
    """
    for name, d in (("reference", ref_dir), ("prediction", pred_dir), ("PET", pet_dir)):
        if d is not None and not Path(d).is_dir():
            raise EvaluationInputError(f"{name} folder not found: {d}")
    refs = list_cases(Path(ref_dir))
    preds = list_cases(Path(pred_dir))
    if not refs:
        raise EvaluationInputError(f"no {NIFTI_SUFFIX} files in the reference folder {ref_dir}")
    missing, extra = set(refs) - set(preds), set(preds) - set(refs)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} case(s) have no prediction in {pred_dir}: {_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) have no reference in {ref_dir}: {_names(extra)}")
        raise EvaluationInputError("case sets differ; " + "; ".join(parts))
    pets: dict[str, Path | None] = {c: None for c in refs}
    if pet_dir is not None:
        no_pet = []
        for c in refs:
            pets[c] = find_pet_file(Path(pet_dir), c)
            if pets[c] is None:
                no_pet.append(c)
        if no_pet:
            raise EvaluationInputError(
                f"{len(no_pet)} case(s) have no PET (<case>_0001{NIFTI_SUFFIX} or <case>{NIFTI_SUFFIX}) "
                f"in {pet_dir}: {_names(no_pet)}"
            )
    problems = []
    for c in refs:
        bad = _incomplete_files(c, (("reference", refs[c]), ("prediction", preds[c]), ("PET", pets[c])))
        if bad:
            problems += bad
            continue
        try:
            current = ("reference", refs[c])
            h_ref = _header(refs[c])
            if h_ref["dim"] != 3:
                problems.append(f"{c}: reference {refs[c].name} is {h_ref['dim']}D, expected 3D")
                continue
            for kind, path in (("prediction", preds[c]), ("PET", pets[c])):
                if path is None:
                    continue
                current = (kind, path)
                diff = _geometry_difference(h_ref, _header(path))
                if diff is not None:
                    problems.append(f"{c}: {kind} {path.name} is not on the reference grid ({diff})")
        except RuntimeError as e:  # SimpleITK cannot read a header
            problems.append(f"{c}: cannot read {current[0]} {current[1]}: {describe_itk_error(e)}")
    if problems:
        shown = "\n  ".join(problems[:_MAX_NAMES])
        more = f"\n  (+{len(problems) - _MAX_NAMES} more)" if len(problems) > _MAX_NAMES else ""
        raise EvaluationInputError(f"{len(problems)} case(s) with bad geometry or files:\n  {shown}{more}")
    return [(c, refs[c], preds[c], pets[c]) for c in sorted(refs)]


def _incomplete_files(case: str, files: Iterable[tuple[str, Path | None]]) -> list[str]:
    """``"<case>: cannot read <kind> <path>: <reason>"`` for each empty, truncated or corrupt ``.nii.gz``
    (ITK would read a truncated one without error, with zeros for the missing voxels)."""
    out = []
    for what, path in files:
        if path is not None and str(path).lower().endswith(".nii.gz"):
            try:
                check_nifti_gz_complete(path, f"{what} {path}")
            except IncompleteFileError as e:
                out.append(f"{case}: {e}")
    return out


# ------------------------------------------------------------------------------------------ computation
def _evaluate_files(case: str, ref: Path, pred: Path, pet: Path | None, overlap: str) -> tuple[dict, list[dict]]:
    import SimpleITK as sitk

    bad = _incomplete_files(case, (("reference", ref), ("prediction", pred), ("PET", pet)))
    if bad:  # checked again here: a file may have changed since collect_cases; never score a truncated one
        raise EvaluationInputError(bad[0])
    try:
        ref_img = sitk.ReadImage(str(ref))
        gt = sitk.GetArrayFromImage(ref_img)  # (z, y, x)
        spacing_mm = tuple(float(s) for s in reversed(ref_img.GetSpacing()))  # (x, y, z) -> (z, y, x)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))
        suv = None if pet is None else sitk.GetArrayFromImage(sitk.ReadImage(str(pet), sitk.sitkFloat32))
        result = evaluate_case(gt, seg, spacing_mm, suv=suv, overlap=overlap)
    except EvaluationInputError:
        raise
    except Exception as e:
        raise EvaluationInputError(f"case {case}: evaluation failed: {e}") from e
    return case_rows(case, result)


def _evaluate_indexed(case: str, *args) -> tuple[str, tuple[dict, list[dict]]]:
    return case, _evaluate_files(case, *args)


def _raise_for_case(task: tuple, exc: BaseException):
    """A case failed in a worker process: re-raise as the named input error it was."""
    if isinstance(exc, EvaluationInputError):
        raise exc
    cause = exc.__cause__
    if isinstance(cause, EvaluationInputError):
        raise cause
    raise EvaluationInputError(f"case {task[0]}: evaluation failed: {exc}") from exc


def _finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            if math.isfinite(float(v)):
                out.append(float(v))
    return out


def summarize(case_rows_: Sequence[dict], overlap: str, with_pet: bool) -> dict:
    """Summary of per-case rows: NaN-free means and counts of cases used, pooled lesion detection."""
    n = len(case_rows_)
    mean: dict[str, float | None] = {}
    n_used: dict[str, int] = {}
    for col in CASE_COLUMNS[1:]:
        vals = _finite(r[col] for r in case_rows_)
        n_used[col] = len(vals)
        mean[col] = float(np.mean(vals)) if vals else None
    tot = {k: int(sum(r[k] for r in case_rows_)) for k in
           ("n_gt_lesions", "n_gt_detected", "n_fn_lesions", "n_pred_lesions", "n_pred_tp", "n_fp_lesions")}
    detection = {
        **tot,
        "lesion_sensitivity_pooled": tot["n_gt_detected"] / tot["n_gt_lesions"] if tot["n_gt_lesions"] else None,
        "lesion_precision_pooled": tot["n_pred_tp"] / tot["n_pred_lesions"] if tot["n_pred_lesions"] else None,
        "fp_per_case": tot["n_fp_lesions"] / n if n else None,
    }
    return {
        "n_cases": n,
        "n_cases_empty_gt": sum(1 for r in case_rows_ if r["n_gt_lesions"] == 0),
        "overlap": overlap,
        "pet": bool(with_pet),
        "nan_policy": "means leave NaN out (autoPET challenge rule); n_used = number of cases in each mean",
        "mean": mean,
        "n_used": n_used,
        "detection": detection,
        "files": {"per_case": PER_CASE_CSV, "per_lesion": PER_LESION_CSV, "summary_md": SUMMARY_MD},
    }


def _fmt(v) -> str:
    return fmt_number(v, 4, "g")


def summary_markdown(summary: dict) -> str:
    """A short human-readable Markdown rendering of :func:`summarize`'s output."""
    m, u, d = summary["mean"], summary["n_used"], summary["detection"]
    lines = [
        "# Evaluation summary",
        "",
        f"{summary['n_cases']} cases ({summary['n_cases_empty_gt']} with empty ground truth); "
        f"lesions are 18-connected components; detection overlap rule: `{summary['overlap']}`.",
        "Means leave NaN out (Dice and FNV are undefined for empty ground truth), as the autoPET challenge does.",
        "",
        "| metric | mean | cases used |",
        "|---|---|---|",
    ]
    rows = [("Dice", "dice"), ("FPV (ml)", "fpv_ml"), ("FNV (ml)", "fnv_ml"),
            ("lesion sensitivity (per-case mean)", "lesion_sensitivity"), ("FP lesions per case", "n_fp_lesions"),
            ("TMTV ground truth (ml)", "gt_tmtv_ml"), ("TMTV prediction (ml)", "pred_tmtv_ml")]
    if summary["pet"]:
        rows += [("total TLG ground truth", "gt_total_tlg"), ("total TLG prediction", "pred_total_tlg"),
                 ("SUVmax ground truth", "gt_suv_max"), ("SUVmax prediction", "pred_suv_max"),
                 ("SUVpeak ground truth", "gt_suv_peak"), ("SUVpeak prediction", "pred_suv_peak")]
    lines += [f"| {name} | {_fmt(m[k])} | {u[k]} |" for name, k in rows]
    lines += [
        "",
        f"Lesions: {d['n_gt_detected']} of {d['n_gt_lesions']} ground-truth lesions detected "
        f"(pooled sensitivity {_fmt(d['lesion_sensitivity_pooled'])}); "
        f"{d['n_fp_lesions']} false-positive lesions of {d['n_pred_lesions']} predicted "
        f"({_fmt(d['fp_per_case'])} per case).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- output
def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    return csv_text(rows, columns, cell=lambda v: int(v) if isinstance(v, bool) else v)


def evaluate_folders(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pet_dir: str | os.PathLike | None = None,
    overlap: str = "any",
    num_processes: int = 1,
    quiet: bool = False,
) -> dict:
    """Evaluate every case of ``pred_dir`` against ``ref_dir``; write CSVs, JSON and Markdown to ``out_dir``.

    Args:
        ref_dir: reference labels ``<case>.nii.gz``.
        pred_dir: predictions ``<case>.nii.gz`` (same case set, same grids).
        out_dir: output folder (created if needed).
        pet_dir: optional PET (SUV) images, ``<case>_0001.nii.gz`` or ``<case>.nii.gz``; without it the
            SUV quantities (TLG, SUVmax/mean/peak) are NaN; TMTV is always given.
        overlap: lesion detection rule, ``"any"``, ``"iou0.1"`` or ``"iou0.5"``.
        num_processes: worker processes (1 = in this process).
        quiet: no progress bar.

    Returns:
        The summary written to ``summary.json`` (NaN written as null).

    Every input ``.nii.gz`` is checked to be complete (not empty, not truncated) before anything is
    scored, and ``out_dir`` is checked for writing before the evaluation starts.

    Raises:
        EvaluationInputError: bad folders, mismatched case sets or geometries, empty or truncated
            files (each named), or a case that fails to evaluate.
        WriteError: ``out_dir`` cannot be written (a file, read-only, disk full): one line naming it.
        ValueError: unknown ``overlap`` or ``num_processes`` < 1.
    """

    overlap = str(overlap).strip().lower()
    parse_overlap_rule(overlap)
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    cases = collect_cases(Path(ref_dir), Path(pred_dir), None if pet_dir is None else Path(pet_dir))
    out = probe_writable_dir(out_dir, "output folder")
    results: dict[str, tuple[dict, list[dict]]] = {}
    tasks = [(c, r, p, pet, overlap) for c, r, p, pet in cases]
    for c, result in run_parallel(_evaluate_indexed, tasks, int(num_processes), desc="evaluating", quiet=quiet,
                                  on_crash=_raise_for_case):
        results[c] = result
    per_case = [results[c][0] for c, *_ in cases]
    per_lesion = [row for c, *_ in cases for row in results[c][1]]
    summary = jsonable(summarize(per_case, overlap, pet_dir is not None), nan_as_null=True)
    write_text_atomic(_csv_text(per_case, CASE_COLUMNS), out / PER_CASE_CSV)
    write_text_atomic(_csv_text(per_lesion, LESION_COLUMNS), out / PER_LESION_CSV)
    write_text_atomic(summary_markdown(summary), out / SUMMARY_MD)
    write_json_atomic(summary, out / SUMMARY_JSON, nan_as_null=True)
    logger.info("evaluated %d cases into %s", len(cases), out)
    return summary
