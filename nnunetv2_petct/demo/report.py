"""``demo_output/report.md``: what the demo ran, cohort counts, metrics and figures."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

from nnunetv2_petct.demo.config import (
    AUTOPET_ID,
    PRETRAIN_ID,
    Demo,
    fold_dir,
    foundation_checkpoint,
)
from nnunetv2_petct.io import fmt_number, write_text_atomic

METHOD_LABELS = {"pretrained": "fine-tuned from the foundation model", "scratch": "from scratch (same schedule)",
                 "probe": "linear probe (frozen foundation model)"}


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def cohort_counts(demo: Demo) -> list[tuple[str, int, str]]:
    rows = []
    for ds in sorted(demo.raw.glob("Dataset*_*")):
        dj = json.loads((ds / "dataset.json").read_text())
        cohorts = dj.get("petct_cohorts")
        kind = dj.get("petct_label_kind", "")
        rows.append((ds.name, int(dj.get("numTraining", 0)), f"{kind}; cohorts: {cohorts}" if cohorts else kind))
    return rows


def method_metrics(eval_dir: Path) -> dict:
    """Dice / FPV / FNV / lesion sensitivity / FP lesions / TMTV error from an evaluation folder."""
    summary = json.loads((eval_dir / "summary.json").read_text())
    mean, det = summary["mean"], summary.get("detection", {})
    with open(eval_dir / "per_case.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    errors = [abs(p - g) for c in cases
              if (g := _num(c.get("gt_tmtv_ml"))) is not None and (p := _num(c.get("pred_tmtv_ml"))) is not None]
    return {
        "dice": mean.get("dice"), "fpv_ml": mean.get("fpv_ml"), "fnv_ml": mean.get("fnv_ml"),
        "lesion_sensitivity": det.get("lesion_sensitivity_pooled"),
        "fp_lesions_per_case": mean.get("n_fp_lesions"),
        "tmtv_abs_error_ml": sum(errors) / len(errors) if errors else None,
        "n_cases": summary.get("n_cases"),
    }


def _copy_figure(src: Path, dst: Path) -> Path | None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst
    return None


def mip_figure(demo: Demo, le_dir: Path, method: str, subset: str) -> Path | None:
    """PET MIP with ground-truth and predicted contours for the test case with the most lesion volume."""
    import SimpleITK as sitk

    from nnunetv2_petct.evaluation import plot_pet_mip_with_contours

    labels = sorted((le_dir / "test_labels").glob("*.nii.gz"))
    if not labels:
        return None
    best = max(labels, key=lambda p: int(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(bool).sum()))
    case = best.name[: -len(".nii.gz")]
    pred = le_dir / "predictions" / method / subset / best.name
    pet = le_dir / "test_images" / f"{case}_0001.nii.gz"
    if not (pred.is_file() and pet.is_file()):
        return None
    pet_img = sitk.ReadImage(str(pet))
    sx, sy, sz = pet_img.GetSpacing()
    out = demo.figures / f"mip_{method}_{case}.png"
    plot_pet_mip_with_contours(sitk.GetArrayFromImage(pet_img), sitk.GetArrayFromImage(sitk.ReadImage(str(best))) > 0,
                               sitk.GetArrayFromImage(sitk.ReadImage(str(pred))) > 0, (sz, sy, sx), out,
                               title=f"{case}: ground truth vs {method}")
    return out if out.is_file() else None


def evaluate_all(demo: Demo) -> None:
    """``nnUNetv2_petct_evaluate`` per method, with the PET for lesion quantification."""
    le_dir = demo.out / "label_efficiency"
    design = json.loads((le_dir / "label_efficiency_design.json").read_text())
    subset = design["subsets"][0]["name"]
    for method in METHOD_LABELS:
        pred = le_dir / "predictions" / method / subset
        if pred.is_dir():
            demo.sh(["nnUNetv2_petct_evaluate", "-ref", str(le_dir / "test_labels"), "-pred", str(pred),
                     "-pet", str(le_dir / "test_images"), "-o", str(demo.out / "evaluation" / method), "-q"])


def write_report(demo: Demo) -> Path:
    demo.figures.mkdir(parents=True, exist_ok=True)
    le_dir = demo.out / "label_efficiency"
    design = json.loads((le_dir / "label_efficiency_design.json").read_text())
    subsets = [s["name"] for s in design["subsets"]]
    subset = subsets[0]

    rows = [(m, method_metrics(demo.out / "evaluation" / m)) for m in METHOD_LABELS
            if (demo.out / "evaluation" / m / "summary.json").is_file()]

    mae_fold = foundation_checkpoint(demo).parent
    figures = {
        "MAE reconstruction preview (original, masked input, reconstruction; PET MIP)":
            _copy_figure(mae_fold / "preview_latest.png", demo.figures / "mae_preview.png"),
        "MAE training and validation loss": _copy_figure(mae_fold / "progress.png", demo.figures / "mae_progress.png"),
        "Dice vs label fraction": _copy_figure(le_dir / "label_efficiency_dice.png", demo.figures / "dice_vs_fraction.png"),
    }
    for method in ("pretrained", "scratch"):
        fold = design["subsets"][0]["fold"]
        trainer = f"{'nnUNetTrainerPETCTFinetune' if method == 'pretrained' else 'nnUNetTrainerPETCTScratch'}" \
                  f"{demo.profile.trainer_suffix}"
        prog = fold_dir(demo, AUTOPET_ID, trainer, fold) / "progress.png"
        figures[f"Fine-tuning loss curves: {METHOD_LABELS[method]}"] = _copy_figure(
            prog, demo.figures / f"progress_{method}.png")
    figures["PET MIP with ground truth and fine-tuned prediction"] = mip_figure(demo, le_dir, "pretrained", subset)

    subset_sizes = ", ".join(f"{s['name']}: {len(s['train'])} cases" for s in design["subsets"])
    lines = [
        "# nnunetv2_petct demo report", "",
        "> **A toy run.** Tiny synthetic phantoms, tiny plans and a few dozen iterations on a CPU: these numbers "
        "show that the pipeline works end to end; they are **not** the paper's results and say nothing about "
        "the method's benefit. Run the same commands on the real cohorts at full size for that (README).", "",
        f"Profile `{demo.profile.name}`, device `{demo.device}`, label fraction(s) "
        f"{', '.join(f'{f:g}' for f in demo.profile.fractions)}, trainers `*{demo.profile.trainer_suffix}`.", "",
        "## Cohorts (converted nnU-Net datasets)", "",
        "| dataset | cases | content |", "|---|---|---|",
        *[f"| {n} | {c} | {k} |" for n, c, k in cohort_counts(demo)], "",
        f"Pretraining set: Dataset{PRETRAIN_ID}; target: Dataset{AUTOPET_ID} with a held-out test set of "
        f"{len(design['test'])} studies, a fixed validation set of {len(design['val'])} and a training pool of "
        f"{len(design['pool'])} ({subset_sizes}).", "",
        "## Metrics on the held-out test set", "",
        "| method | Dice | FPV (ml) | FNV (ml) | lesion sensitivity | FP lesions / case | TMTV abs. error (ml) | cases |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, m in rows:
        lines.append(f"| {METHOD_LABELS[method]} | {fmt_number(m['dice'])} | {fmt_number(m['fpv_ml'], 2)} | {fmt_number(m['fnv_ml'], 2)} | "
                     f"{fmt_number(m['lesion_sensitivity'])} | {fmt_number(m['fp_lesions_per_case'], 2)} | "
                     f"{fmt_number(m['tmtv_abs_error_ml'], 2)} | {m['n_cases']} |")
    lines += ["", "Dice and FNV leave out cases with empty ground truth (autoPET rule); lesion sensitivity is "
              "pooled over lesions with the any-overlap rule. Per-case and per-lesion tables (SUVmax, SUVpeak, "
              "MTV, TLG): `evaluation/<method>/`.", "", "## Figures", ""]
    for title, path in figures.items():
        if path is not None:
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(demo.out)})", ""]
        else:
            lines += [f"### {title}", "", "(not produced in this run)", ""]
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|",
              *[f"| {k} | {v:.0f} |" for k, v in demo.timings.items()], "",
              "## Every command that was run", "",
              "Run from any folder after `export DEMO=<this folder>` and "
              "`export nnUNet_raw=$DEMO/nnUNet_raw nnUNet_preprocessed=$DEMO/nnUNet_preprocessed "
              "nnUNet_results=$DEMO/nnUNet_results`. The synthetic downloads come from "
              "`nnunetv2_petct.demo.steps.make_downloads` (Python).", "", "```bash",
              *demo.commands, "```", ""]
    write_text_atomic("#!/usr/bin/env bash\nset -euo pipefail\n"
                      ": \"${DEMO:?set DEMO to the demo output folder}\"\n"
                      "export nnUNet_raw=$DEMO/nnUNet_raw nnUNet_preprocessed=$DEMO/nnUNet_preprocessed "
                      "nnUNet_results=$DEMO/nnUNet_results\n" + "\n".join(demo.commands) + "\n", demo.out / "commands.sh")
    return write_text_atomic("\n".join(lines), demo.out / "report.md")
