"""The click axis of the label-efficiency runner: every trained run of a grid, evaluated after 0..10 clicks.

The label-efficiency runner (:mod:`nnunetv2_petct.nnunet.label_efficiency`) designs the subsets, trains every
(subset, seed, method) run through stock ``nnUNetv2_train``, predicts the held-out test set and evaluates it.
:func:`click_axis` adds one axis to those finished runs: each run of a click-guided method
(``interactive_*``, ``nnUNetTrainerPETCTInteractive*``) goes through the autoPET IV protocol
(:func:`nnunetv2_petct.nnunet.interactive_eval.evaluate_interactive_model`, error-driven clicks by default);
a non-interactive method (e.g. ``pretrained``) cannot take clicks, so its curve is flat: its runner
prediction at every click count (what a user gets from it, however many clicks they would give).

Outputs in ``<runner output>/interactive/``: ``<method>/<run>/`` (the protocol's CSV, summary, plot),
``interactive_runs.csv`` (per run: mean over test cases), ``interactive_cases.csv`` (per run and case),
``interactive_summary.csv`` (per method: mean, sd and n over seeds), ``interactive_paired.csv`` (paired
comparisons on the same test cases, per-case values averaged over seeds, bootstrap CI and Wilcoxon p),
``interactive.md`` (the tables) and ``dice_vs_clicks.png`` (mean Dice per click count, error bars = sd over
seeds).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.io import csv_text, write_text_atomic

logger = logging.getLogger(__name__)

SIX = ("dice_auc", "fpv_auc", "fnv_auc", "dice_final", "fpv_final", "fnv_final")
#: (method A, method B) compared on dice_auc when both ran.
PAIRS = (("interactive_pretrained", "interactive_scratch"), ("interactive_pretrained", "interactive_stock"),
         ("interactive_pretrained", "pretrained"), ("interactive_scratch", "pretrained"))
TABLE_CLICKS = (0, 1, 3, 10)


def is_interactive_method(method: str) -> bool:
    return method.startswith("interactive_")


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _static_rows(pred_dir: Path, labels_dir: Path, cases: Sequence[str], n_clicks: int) -> list[dict]:
    """Protocol rows of a model that ignores clicks: its one prediction at every click count."""
    import SimpleITK as sitk

    from nnunetv2_petct.interactive.protocol import interactive_case_metrics

    rows = []
    for case in cases:
        ref = sitk.ReadImage(str(labels_dir / f"{case}.nii.gz"))
        gt = (sitk.GetArrayFromImage(ref) > 0).astype(np.uint8)
        pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{case}.nii.gz"))) > 0).astype(np.uint8)
        m = interactive_case_metrics(gt, [pred] * (n_clicks + 1), tuple(reversed(ref.GetSpacing())))
        row = {"case": case, **{k: m[k] for k in SIX}}
        for k in range(n_clicks + 1):
            row.update({f"dice_{k}": m["dice_per_click"][k], f"fpv_{k}": m["fpv_per_click"][k],
                        f"fnv_{k}": m["fnv_per_click"][k]})
        rows.append(row)
    return rows


def click_axis(runner_out: str | os.PathLike, test_images: str | os.PathLike, test_labels: str | os.PathLike,
               *, methods: Sequence[str], trainer_suffix: str = "", device: str = "cpu", n_clicks: int = 10,
               simulate: str = "error-driven", quiet: bool = True) -> dict:
    """Evaluate every finished run of a label-efficiency grid after 0..``n_clicks`` clicks (module doc).

    Args:
        runner_out: the runner's ``-o`` folder (``label_efficiency_design.json``, ``predictions/``).
        test_images, test_labels: the held-out test set the runner predicted.
        methods: the runner's methods (``finetune.TRANSFER_TRAINERS`` keys), each with ``trainer_suffix``.
        device: ``cpu`` or ``cuda`` for the interactive predictions.

    Returns:
        ``{"runs", "cases", "summary", "paired", "table_md", "files", "seconds_per_click_mean"}``.

    Raises:
        FileNotFoundError: the runner's design or a run's model / predictions are missing (named).
    """
    import json

    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    from nnunetv2_petct.evaluation.statistics import mean_sd, paired_comparison, per_case_seed_means
    from nnunetv2_petct.interactive.protocol import plot_dice_vs_clicks
    from nnunetv2_petct.nnunet.interactive_eval import evaluate_interactive_model
    from nnunetv2_petct.nnunet.interactive_predictor import InteractiveLesionPredictor
    from nnunetv2_petct.nnunet.label_efficiency import DESIGN_FILE
    from nnunetv2_petct.nnunet.trainers.finetune import TRANSFER_TRAINERS

    runner_out, test_images, test_labels = Path(runner_out), Path(test_images), Path(test_labels)
    design_file = runner_out / DESIGN_FILE
    if not design_file.is_file():
        raise FileNotFoundError(f"{design_file}: no label-efficiency design (run the runner first)")
    design = json.loads(design_file.read_text())
    results = Path(os.environ["nnUNet_results"]) / design["dataset_name"]
    cases = sorted(design["test"])
    out = runner_out / "interactive"
    run_rows, case_rows, click_seconds = [], [], []
    for s in design["subsets"]:
        for m in methods:
            trainer = design.get("methods", {}).get(m, {}).get("trainer") or TRANSFER_TRAINERS[m] + trainer_suffix
            base = {"subset": s["name"], "run": s["run_name"], "replicate": s["replicate"], "seed": s["seed"],
                    "method": m, "trainer": trainer, "n_train_cases": len(s["train"])}
            if is_interactive_method(m):
                folder = results / convert_trainer_plans_config_to_identifier(trainer, design["plans"],
                                                                              design["configuration"])
                predictor = InteractiveLesionPredictor(folder, [s["fold"]], "checkpoint_final.pth", device, True,
                                                       0, 0, 0.5, quiet=True)
                res = evaluate_interactive_model(predictor, test_images, test_labels, out / m / s["run_name"],
                                                 simulate=simulate, n_clicks=n_clicks, cases=cases,
                                                 write_predictions=False, label=m)
                rows = res["rows"]
                if res.get("seconds_per_click_mean") is not None:
                    click_seconds.append(res["seconds_per_click_mean"])
            else:
                pred_dir = runner_out / "predictions" / m / s["run_name"]
                if not pred_dir.is_dir():
                    raise FileNotFoundError(f"{pred_dir}: no predictions of {m} / {s['run_name']}")
                rows = _static_rows(pred_dir, test_labels, cases, n_clicks)
            for r in rows:
                case_rows.append({**base, **r})
            run_row = dict(base)
            for key in [*SIX, *(f"dice_{k}" for k in range(n_clicks + 1))]:
                st = mean_sd(r[key] for r in rows)
                run_row[key] = st["mean"]
            run_row["n_cases"] = len(rows)
            run_rows.append(run_row)
            if not quiet:
                logger.warning("%s %s: dice_auc %.3f", m, s["run_name"], run_row["dice_auc"])

    summary = []
    for m in methods:
        rows = [r for r in run_rows if r["method"] == m]
        if not rows:
            continue
        row = {"method": m, "trainer": rows[0]["trainer"], "n_seeds": len(rows)}
        for key in [*SIX, *(f"dice_{k}" for k in range(n_clicks + 1))]:
            st = mean_sd(r[key] for r in rows)
            row.update({f"{key}_mean": st["mean"], f"{key}_sd": st["sd"], f"{key}_n": st["n"]})
        summary.append(row)

    paired = []
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        for metric in ("dice_auc", "dice_final", "fpv_auc", "fnv_auc"):
            vals = {}
            for meth in (a, b):
                by_seed: dict = {}
                for r in case_rows:
                    if r["method"] == meth:
                        by_seed.setdefault(r["replicate"], {})[r["case"]] = r[metric]
                vals[meth] = per_case_seed_means(by_seed)
            res = paired_comparison(vals[a], vals[b])
            paired.append({"method_a": a, "method_b": b, "metric": metric, "n_cases": res["n"],
                           **{k: res[k] for k in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high",
                                                  "confidence", "p_wilcoxon")}})

    curves = {}
    for m in methods:
        per_seed = [[r[f"dice_{k}"] for k in range(n_clicks + 1)] for r in run_rows if r["method"] == m]
        if per_seed:
            curves[m] = np.asarray(per_seed, float)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_dice_vs_clicks(out / "dice_vs_clicks.png", curves,
                               f"Dice vs clicks, {len(cases)} test cases (error bars: sd over seeds)")
    files = {"runs": out / "interactive_runs.csv", "cases": out / "interactive_cases.csv",
             "summary": out / "interactive_summary.csv", "paired": out / "interactive_paired.csv",
             "table": out / "interactive.md", "plot": Path(plot) if plot else out / "dice_vs_clicks.png"}
    for key, rows in (("runs", run_rows), ("cases", case_rows), ("summary", summary), ("paired", paired)):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        write_text_atomic(csv_text(rows, cols), files[key])
    table = table_markdown(summary, paired, n_cases=len(cases), n_clicks=n_clicks, simulate=simulate)
    write_text_atomic(table, files["table"])
    return {"runs": run_rows, "cases": case_rows, "summary": summary, "paired": paired, "table_md": table,
            "files": {k: str(v) for k, v in files.items()},
            "seconds_per_click_mean": float(np.mean(click_seconds)) if click_seconds else None}


def _fmt(v, digits: int = 3) -> str:
    x = _num(v)
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def table_markdown(summary: Sequence[dict], paired: Sequence[dict], *, n_cases: int, n_clicks: int,
                   simulate: str) -> str:
    """The click-axis tables: per method mean ± sd over seeds (n seeds), and the paired comparisons."""
    ks = [k for k in TABLE_CLICKS if k <= n_clicks]
    head = (["method", "trainer", "seeds"] + [f"Dice @{k}" for k in ks]
            + ["dice_auc", "fpv_auc (ml)", "fnv_auc (ml)", "dice_final"])
    lines = [f"Interactive protocol (autoPET IV): {simulate} clicks 0..{n_clicks}, {n_cases} held-out test cases; "
             "mean ± sd over seeds (n seeds); Dice leaves lesion-free cases out (NaN), as autoPET does.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], f"`{r['trainer']}`", str(r["n_seeds"])]
        for key in [*(f"dice_{k}" for k in ks), "dice_auc", "fpv_auc", "fnv_auc", "dice_final"]:
            cells.append(f"{_fmt(r[f'{key}_mean'])} ± {_fmt(r[f'{key}_sd'])}")
        lines.append("| " + " | ".join(cells) + " |")
    if paired:
        lines += ["", "Paired comparisons on the same test cases (per-case values averaged over seeds; bootstrap "
                      "95 % CI of the mean difference; Wilcoxon signed-rank p):", "",
                  "| A | B | metric | n cases | mean A | mean B | A - B | 95 % CI | p |", "|---|---|---|---|---|---|---|---|---|"]
        for p in paired:
            lines.append(f"| {p['method_a']} | {p['method_b']} | {p['metric']} | {p['n_cases']} | {_fmt(p['mean_a'])} | "
                         f"{_fmt(p['mean_b'])} | {_fmt(p['mean_diff'])} | [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}] | "
                         f"{_fmt(p['p_wilcoxon'])} |")
    return "\n".join(lines) + "\n"


__all__ = ["PAIRS", "click_axis", "is_interactive_method", "table_markdown"]
