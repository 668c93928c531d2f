"""The autoPET IV interactive evaluation (Task 1) of a click-guided model, or of predictions made elsewhere.

For each test case the model predicts at 0, 1, ..., ``n_clicks`` clicks of each kind; prediction ``k`` sees
the first ``k`` tumor and the first ``k`` background clicks. The clicks come from

- a click folder (``--clicks DIR``, ``<case>.json``): the challenge's pre-simulated variant, a fixed list;
- ``simulate="presimulated"``: the same variant with a list made up front from the ground truth
  (:func:`nnunetv2_petct.interactive.simulation.presimulated_clicks`, seeded);
- ``simulate="error-driven"`` (default): the iterative variant. After prediction ``k-1``, the tumor click
  ``k`` is the interior point (maximum of the Euclidean distance transform, in mm) of the largest
  false-negative component (ground truth and not predicted, 18-connected) and the background click ``k``
  the interior point of the largest false-positive component (predicted and not ground truth)
  (:func:`~nnunetv2_petct.interactive.simulation.next_error_driven_clicks`). A kind without an error gets
  no click at that step; with no error of either kind the prediction is kept.

Per case: Dice, FPV and FNV (ml) after each click count (autoPET definitions,
:func:`nnunetv2_petct.evaluation.metrics.autopet_case_metrics`), and the six autoPET IV numbers
``dice_auc``, ``fpv_auc``, ``fnv_auc`` (area under the curve over the click index,
:func:`~nnunetv2_petct.interactive.protocol.click_auc`) and ``dice_final``, ``fpv_final``, ``fnv_final``
(after the last click). Outputs (``output_dir``):

- ``predictions/<case>_pred<k>.nii.gz`` (the challenge's naming; model mode only);
- ``clicks/<case>.json``: the clicks used (autoPET IV format, in order);
- ``interactive.csv``: one row per case with the six numbers, Dice/FPV/FNV per click count, and a
  ``mean`` row with ``n`` per number (NaN left out, as autoPET does: Dice is NaN without lesions);
- ``interactive_summary.json``: the means with n, the click rule, the model, seconds per click;
- ``dice_vs_clicks.png``: mean Dice (± sd over cases) against the number of clicks.

The per-click time is the in-memory path (:class:`~nnunetv2_petct.nnunet.interactive_predictor.InteractiveSession`:
the study is read and preprocessed once, each click costs one sliding-window pass and the export).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.interactive.clicks import ClickFileError, Clicks, read_click_folder, write_clicks
from nnunetv2_petct.interactive.protocol import (
    N_CLICK_STEPS,
    interactive_case_metrics,
    interactive_summary,
    plot_dice_vs_clicks,
    write_interactive_csv,
)
from nnunetv2_petct.interactive.simulation import next_error_driven_clicks, presimulated_clicks
from nnunetv2_petct.io import jsonable, probe_writable_dir, write_json_atomic

logger = logging.getLogger(__name__)

SIMULATIONS = ("error-driven", "presimulated")
CSV_FILE, SUMMARY_FILE, PLOT_FILE = "interactive.csv", "interactive_summary.json", "dice_vs_clicks.png"


class InteractiveEvaluationError(ValueError):
    """Bad input of the interactive evaluation (missing cases, files, geometry); the message names it."""


def _read_mask(path: Path) -> tuple[np.ndarray, tuple[float, float, float], tuple[int, ...]]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InteractiveEvaluationError(f"{path}: cannot read ({str(e).strip().splitlines()[-1]})") from None
    if img.GetDimension() != 3:
        raise InteractiveEvaluationError(f"{path}: {img.GetDimension()}D image, a 3D volume is needed")
    arr = sitk.GetArrayFromImage(img)
    return arr, tuple(float(s) for s in reversed(img.GetSpacing())), tuple(arr.shape)


def list_test_cases(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[str]:
    """Cases with a label ``<case>.nii.gz`` and both images ``<case>_0000.nii.gz`` (CT), ``<case>_0001.nii.gz``
    (PET). Raises :class:`InteractiveEvaluationError` for a missing folder, no case, or a label without images."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise InteractiveEvaluationError(f"{d}: no such folder")
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))
    if not cases:
        raise InteractiveEvaluationError(f"{labels_dir}: no label <case>.nii.gz")
    missing = [c for c in cases if not all((images_dir / f"{c}_{i:04d}.nii.gz").is_file() for i in (0, 1))]
    if missing:
        raise InteractiveEvaluationError(f"{images_dir}: no CT/PET pair (<case>_0000/_0001.nii.gz) for "
                                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return cases


def _case_rows(case: str, gt: np.ndarray, preds: Sequence[np.ndarray], spacing_mm, clicks_used: int) -> dict:
    m = interactive_case_metrics(gt, preds, spacing_mm)
    row = {"case": case, **{k: m[k] for k in ("dice_auc", "fpv_auc", "fnv_auc", "dice_final", "fpv_final",
                                              "fnv_final")}}
    for k in range(len(preds)):
        row[f"dice_{k}"] = m["dice_per_click"][k]
        row[f"fpv_{k}"] = m["fpv_per_click"][k]
        row[f"fnv_{k}"] = m["fnv_per_click"][k]
    row["clicks_used"] = clicks_used
    return row


def _finish(rows: list[dict], output_dir: Path, extra: dict, title: str) -> dict:
    summary = interactive_summary(rows)
    write_interactive_csv(output_dir / CSV_FILE, rows, summary)
    dice = np.array([[r[f"dice_{k}"] for k in range(extra["n_clicks"] + 1)] for r in rows], float)
    finite = dice[np.all(np.isfinite(dice), axis=1)]
    if len(finite):
        plot_dice_vs_clicks(output_dir / PLOT_FILE, {extra.get("label", "model"): finite}, title)
    out = {**extra, "n_cases": len(rows), "summary": summary,
           "files": {"csv": str(output_dir / CSV_FILE), "plot": str(output_dir / PLOT_FILE) if len(finite) else None}}
    write_json_atomic(jsonable(out, nan_as_null=True), output_dir / SUMMARY_FILE)
    return {**out, "rows": rows}


def evaluate_interactive_model(
    predictor,
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    clicks_dir: str | os.PathLike | None = None,
    simulate: str = "error-driven",
    n_clicks: int = N_CLICK_STEPS,
    seed: int = 0,
    cases: Sequence[str] | None = None,
    write_predictions: bool = True,
    label: str = "model",
    on_case: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the interactive protocol (module doc) with a click-guided model.

    Args:
        predictor: an :class:`~nnunetv2_petct.nnunet.interactive_predictor.InteractiveLesionPredictor`
            (anything with ``session(image_files)`` returning an ``InteractiveSession``).
        images_dir, labels_dir: nnU-Net raw layout (``imagesTs`` / ``labelsTs``).
        output_dir: created; see the module doc.
        clicks_dir: ``<case>.json`` per case (fixed lists, the challenge's pre-simulated variant);
            overrides ``simulate``.
        simulate: ``"error-driven"`` or ``"presimulated"`` (without ``clicks_dir``).
        n_clicks: the last click count (autoPET IV: 10).
        seed: for ``"presimulated"`` lists (per case: seed + case index).
        cases: a subset of the cases (default all with labels and images).
        write_predictions: write ``predictions/<case>_pred<k>.nii.gz``.
        label: the curve's name in the plot and the summary.
        on_case: called with each case's row (progress).

    Returns:
        The summary dict written to ``interactive_summary.json``, plus ``rows`` (one dict per case).

    Raises:
        InteractiveEvaluationError: missing cases / files, a label on another grid than the PET.
        ClickFileError: a bad click file (named).
    """
    if simulate not in SIMULATIONS:
        raise InteractiveEvaluationError(f"simulate must be one of {', '.join(SIMULATIONS)}, got {simulate!r}")
    if not (isinstance(n_clicks, int) and 0 <= n_clicks <= 100):
        raise InteractiveEvaluationError(f"n_clicks must be an integer 0..100, got {n_clicks!r}")
    images_dir, labels_dir, output_dir = Path(images_dir), Path(labels_dir), Path(output_dir)
    all_cases = list_test_cases(images_dir, labels_dir)
    if cases is not None:
        unknown = sorted(set(cases) - set(all_cases))
        if unknown:
            raise InteractiveEvaluationError(f"cases without label or images: {', '.join(unknown)}")
        all_cases = [c for c in all_cases if c in set(cases)]
    fixed = read_click_folder(clicks_dir, all_cases) if clicks_dir is not None else None
    probe_writable_dir(output_dir)
    pred_dir, click_dir = output_dir / "predictions", output_dir / "clicks"
    pred_dir.mkdir(parents=True, exist_ok=True)
    click_dir.mkdir(parents=True, exist_ok=True)
    rule = "clicks from files (fixed lists)" if fixed is not None else {
        "error-driven": "error-driven: tumor click at the interior (EDT maximum) of the largest false-negative "
                        "component, background click at the interior of the largest false-positive component "
                        "of the previous prediction (18-connectivity)",
        "presimulated": f"pre-simulated from the ground truth (presimulated_clicks, seed {seed} + case index)",
    }[simulate]
    rows, click_seconds, prep_seconds = [], [], []
    for index, case in enumerate(all_cases):
        gt, spacing_mm, shape = _read_mask(labels_dir / f"{case}.nii.gz")
        gt = (gt > 0).astype(np.uint8)
        t0 = time.perf_counter()
        session = predictor.session([images_dir / f"{case}_0000.nii.gz", images_dir / f"{case}_0001.nii.gz"])
        prep_seconds.append(time.perf_counter() - t0)
        if tuple(session.shape_zyx) != shape:
            raise InteractiveEvaluationError(f"{case}: label shape {shape[::-1]} (x, y, z) differs from the PET "
                                             f"{tuple(session.shape_zyx)[::-1]}")
        if fixed is not None:
            plan: Clicks | None = fixed[case]
        elif simulate == "presimulated":
            pet = _read_mask(images_dir / f"{case}_0001.nii.gz")[0].astype(np.float32)
            plan = presimulated_clicks(gt, pet, spacing_mm, np.random.default_rng(seed + index), n_per_kind=n_clicks)
        else:
            plan = None
        clicks = Clicks()
        preds: list[np.ndarray] = []
        for k in range(n_clicks + 1):
            if k > 0:
                if plan is not None:
                    clicks = plan.first(k)
                else:
                    tumor, background = next_error_driven_clicks(gt, preds[-1], spacing_mm)
                    if tumor is not None:
                        clicks = clicks.add("tumor", tumor)
                    if background is not None:
                        clicks = clicks.add("background", background)
            if k > 0 and plan is None and clicks == session.clicks:
                pred = preds[-1]  # no error left to click on: the prediction stays
            else:
                t1 = time.perf_counter()
                pred = session.predict(clicks)
                if k > 0:
                    click_seconds.append(time.perf_counter() - t1)
            preds.append(pred)
            if write_predictions:
                session.write(pred, pred_dir / f"{case}_pred{k}.nii.gz")
        write_clicks(click_dir / f"{case}.json", clicks)
        row = _case_rows(case, gt, preds, spacing_mm, clicks.n_tumor + clicks.n_background)
        rows.append(row)
        if on_case is not None:
            on_case(case, row)
    extra = {
        "label": label, "n_clicks": n_clicks, "click_rule": rule,
        "seconds_per_click_mean": float(np.mean(click_seconds)) if click_seconds else None,
        "seconds_per_click_n": len(click_seconds),
        "seconds_read_and_preprocess_mean": float(np.mean(prep_seconds)) if prep_seconds else None,
        "model": getattr(predictor, "identification", lambda: {})().get("model_folder"),
    }
    return _finish(rows, output_dir, extra, f"Dice vs clicks ({label}, n={len(rows)} cases)")


def evaluate_interactive_predictions(
    predictions_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    n_clicks: int = N_CLICK_STEPS,
    label: str = "predictions",
) -> dict:
    """The autoPET IV numbers of predictions made elsewhere: ``<case>_pred0.nii.gz ... <case>_pred<n_clicks>``
    in ``predictions_dir`` for every label ``<case>.nii.gz`` (same grid). Outputs as
    :func:`evaluate_interactive_model` without predictions and clicks.

    Raises:
        InteractiveEvaluationError: a missing folder, no label, a case with missing click steps (named), a
            prediction on another grid.
    """
    predictions_dir, labels_dir, output_dir = Path(predictions_dir), Path(labels_dir), Path(output_dir)
    for d in (predictions_dir, labels_dir):
        if not d.is_dir():
            raise InteractiveEvaluationError(f"{d}: no such folder")
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))
    if not cases:
        raise InteractiveEvaluationError(f"{labels_dir}: no label <case>.nii.gz")
    missing = [f"{c}_pred{k}.nii.gz" for c in cases for k in range(n_clicks + 1)
               if not (predictions_dir / f"{c}_pred{k}.nii.gz").is_file()]
    if missing:
        raise InteractiveEvaluationError(f"{predictions_dir}: missing {len(missing)} prediction(s): "
                                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    probe_writable_dir(output_dir)
    rows = []
    for case in cases:
        gt, spacing_mm, shape = _read_mask(labels_dir / f"{case}.nii.gz")
        preds = []
        for k in range(n_clicks + 1):
            p, _, pshape = _read_mask(predictions_dir / f"{case}_pred{k}.nii.gz")
            if pshape != shape:
                raise InteractiveEvaluationError(f"{case}_pred{k}.nii.gz: shape {pshape[::-1]} differs from the "
                                                 f"label {shape[::-1]} (x, y, z)")
            preds.append((p > 0).astype(np.uint8))
        rows.append(_case_rows(case, (gt > 0).astype(np.uint8), preds, spacing_mm, -1))
    extra = {"label": label, "n_clicks": n_clicks, "click_rule": "predictions given", "model": None}
    return _finish(rows, output_dir, extra, f"Dice vs clicks ({label}, n={len(rows)} cases)")


__all__ = ["ClickFileError", "InteractiveEvaluationError", "evaluate_interactive_model",
           "evaluate_interactive_predictions", "list_test_cases"]
