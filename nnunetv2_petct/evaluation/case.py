"""Everything about one case from a single labelling pass: metrics, detection, quantification, rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .detection import detection_from_pair
from .metrics import label_pair, metrics_from_pair
from .quantification import quantification_from_pair

CASE_COLUMNS = (
    "case", "dice", "fpv_ml", "fnv_ml",
    "n_gt_lesions", "n_gt_detected", "n_fn_lesions", "n_pred_lesions", "n_pred_tp", "n_fp_lesions",
    "lesion_sensitivity", "lesion_precision",
    "gt_tmtv_ml", "pred_tmtv_ml", "gt_total_tlg", "pred_total_tlg",
    "gt_suv_max", "pred_suv_max", "gt_suv_peak", "pred_suv_peak",
)  # fmt: skip

LESION_COLUMNS = (
    "case", "source", "lesion_id", "n_voxels", "mtv_ml", "centroid_z", "centroid_y", "centroid_x",
    "matched", "best_iou", "partner_id", "suv_max", "suv_mean", "suv_peak", "tlg", "peak_z", "peak_y", "peak_x",
)  # fmt: skip


def evaluate_case(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing_mm: Sequence[float],
    suv: np.ndarray | None = None,
    overlap: str = "any",
) -> dict:
    """Metrics, lesion detection and (with ``suv``) quantification of one case, labelling once.

    Returns ``{"metrics": autopet_case_metrics-dict, "detection": lesion_detection-dict,
    "quantification": case_quantification-dict or None}``.
    """
    pair = label_pair(gt, pred)
    return {
        "metrics": metrics_from_pair(pair, spacing_mm),
        "detection": detection_from_pair(pair, spacing_mm, overlap),
        "quantification": None if suv is None else quantification_from_pair(pair, suv, spacing_mm),
    }


def case_rows(case: str, result: dict) -> tuple[dict, list[dict]]:
    """Flatten an :func:`evaluate_case` result into one per-case row and per-lesion rows.

    Quantities needing the PET are NaN when no PET was given; TMTV never needs it.
    """
    m, det, q = result["metrics"], result["detection"], result["quantification"]
    row: dict = {"case": case, **m}
    for k in ("n_gt_lesions", "n_gt_detected", "n_fn_lesions", "n_pred_lesions", "n_pred_tp", "n_fp_lesions",
              "lesion_sensitivity", "lesion_precision"):
        row[k] = det[k]
    for side in ("gt", "pred"):
        lesions = det[f"{side}_lesions"]
        row[f"{side}_tmtv_ml"] = float(sum(d["mtv_ml"] for d in lesions))
        for k in ("total_tlg", "suv_max", "suv_peak"):
            row[f"{side}_{k}"] = math.nan if q is None else q[side]["totals"][k]
    lesion_rows = []
    for side in ("gt", "pred"):
        quant = {} if q is None else {d["lesion_id"]: d for d in q[side]["lesions"]}
        for d in det[f"{side}_lesions"]:
            r = {"case": case, "source": side, **d}
            qd = quant.get(d["lesion_id"], {})
            for k in ("suv_max", "suv_mean", "suv_peak", "tlg", "peak_z", "peak_y", "peak_x"):
                r[k] = qd.get(k, math.nan)
            lesion_rows.append(r)
    return row, lesion_rows
