"""The autoPET IV interactive metrics (Task 1).

Per case, predictions ``pred_0 .. pred_K`` (``pred_k`` after the first k tumor and k background clicks;
autoPET IV: K = 10) are scored with the autoPET Dice, false-positive volume and false-negative volume
(:func:`nnunetv2_petct.evaluation.metrics.autopet_case_metrics`: 18-connected components, volumes in ml),
and summarised as

- ``dice_auc``, ``fpv_auc``, ``fnv_auc``: the area under the metric-vs-click-index curve by the trapezoid
  rule with unit spacing over k = 0..K, not normalised (the challenge's evaluation script,
  lab-midas/autoPETCTIV ``evaluation_metrics.py``, integrates ``cumulative_trapezoid(values, arange(K+1))``
  and takes the last value; a perfect case scores K for dice_auc);
- ``dice_final``, ``fpv_final``, ``fnv_final``: the values at k = K.

Conventions for empty masks (ours, stated in :mod:`nnunetv2_petct.evaluation.metrics`): Dice and FNV are NaN
when the ground truth is empty, so a lesion-free case has NaN ``dice_auc``/``fnv_auc`` and is left out of
those means (the official script gives 0/0 = NaN for an empty pair and 0 for a false-positive-only one);
FPV is 0 for an empty prediction, and counts the whole prediction of a lesion-free case.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.evaluation.metrics import autopet_case_metrics
from nnunetv2_petct.io import write_text_atomic

N_CLICK_STEPS = 10
SIX = ("dice_auc", "fpv_auc", "fnv_auc", "dice_final", "fpv_final", "fnv_final")


def click_auc(values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` at click indices 0, 1, ..., len-1 (unit spacing); NaN if any value is
    NaN; 0 for a single value (no interval); ValueError for no value."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("click_auc needs at least one value")
    if np.isnan(v).any():
        return math.nan
    return float(((v[1:] + v[:-1]) / 2.0).sum())


def interactive_case_metrics(gt_zyx: np.ndarray, preds_by_k: Sequence[np.ndarray],
                             spacing_mm: Sequence[float]) -> dict:
    """The six autoPET IV numbers of one case, plus ``dice_per_click``, ``fpv_per_click``, ``fnv_per_click``
    (lists over k = 0..K). ``preds_by_k[k]``: the prediction after k clicks of each kind (same shape as
    ``gt_zyx``)."""
    if len(preds_by_k) == 0:
        raise ValueError("need at least the prediction without clicks (k = 0)")
    dice, fpv, fnv = [], [], []
    for pred in preds_by_k:
        m = autopet_case_metrics(gt_zyx, pred, spacing_mm)
        dice.append(m["dice"])
        fpv.append(m["fpv_ml"])
        fnv.append(m["fnv_ml"])
    return {"dice_auc": click_auc(dice), "fpv_auc": click_auc(fpv), "fnv_auc": click_auc(fnv),
            "dice_final": dice[-1], "fpv_final": fpv[-1], "fnv_final": fnv[-1],
            "dice_per_click": dice, "fpv_per_click": fpv, "fnv_per_click": fnv}


def _finite(values) -> np.ndarray:
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def interactive_summary(rows: Sequence[Mapping]) -> dict:
    """Per number of :data:`SIX` (and every ``dice_<k>`` column present): ``{"mean", "n"}`` over the cases
    with a finite value (NaN left out; mean NaN when n = 0)."""
    keys = list(SIX)
    if rows:
        keys += [k for k in rows[0] if k.startswith("dice_") and k[5:].isdigit()]
    out = {}
    for key in keys:
        v = _finite(r.get(key) for r in rows)
        out[key] = {"mean": float(v.mean()) if v.size else math.nan, "n": int(v.size)}
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 6))
    return str(v)


def write_interactive_csv(path: str | os.PathLike, rows: Sequence[Mapping], summary: Mapping) -> Path:
    """Per-case rows (columns of the first row; NaN as empty) and a last row ``case = mean`` with the means,
    followed by a row ``case = n`` with the counts. Written atomically."""
    path = Path(path)
    cols = list(dict.fromkeys(k for r in rows for k in r)) or ["case", *SIX]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(_cell(r.get(c, "")) for c in cols))
    lines.append(",".join("mean" if c == "case" else _cell(summary[c]["mean"]) if c in summary else "" for c in cols))
    lines.append(",".join("n" if c == "case" else str(summary[c]["n"]) if c in summary else "" for c in cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic("\n".join(lines) + "\n", path)


def plot_dice_vs_clicks(path: str | os.PathLike, curves: Mapping[str, np.ndarray], title: str = "") -> Path | None:
    """Mean Dice against the number of clicks, one line per method with ± sd error bars over the rows of its
    array (cases or seeds: ``(n, K + 1)``; NaN rows left out per click). Writes a PNG; None without data."""
    from nnunetv2_petct.evaluation.plots import _new_figure, _save_figure

    data = {k: np.asarray(v, dtype=np.float64).reshape(len(v), -1) for k, v in curves.items() if len(v)}
    if not data:
        return None
    fig, ax = _new_figure((6.0, 4.0), 120)
    for i, (name, arr) in enumerate(data.items()):
        x = np.arange(arr.shape[1]) + (i - (len(data) - 1) / 2) * 0.06
        mean = np.nanmean(arr, axis=0)
        sd = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1])
        ax.errorbar(x, mean, yerr=sd, marker="o", ms=3, capsize=3, label=f"{name} (n={arr.shape[0]})")
    ax.set_xlabel("clicks of each kind (tumor + background)")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save_figure(fig, path)


__all__ = ["N_CLICK_STEPS", "SIX", "click_auc", "interactive_case_metrics", "interactive_summary",
           "plot_dice_vs_clicks", "write_interactive_csv"]
