"""``demo_output/report.md``: what the demo ran, cohort counts, metrics with n, the pretrained-vs-scratch
comparison, figures and every command."""

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
from nnunetv2_petct.io import fmt_number, machine_facts, write_text_atomic

METHOD_LABELS = {
    "pretrained": "fine-tuned from the foundation model",
    "scratch": "from scratch",
    "nnunet_default": "stock nnU-Net",
    "probe": "linear probe (frozen foundation model)",
}


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mean(values) -> tuple[float | None, int]:
    xs = [x for x in (_num(v) for v in values) if x is not None]
    return (sum(xs) / len(xs) if xs else None), len(xs)


def cohort_counts(demo: Demo) -> list[tuple[str, int, str]]:
    rows = []
    for ds in sorted(demo.raw.glob("Dataset*_*")):
        dj = json.loads((ds / "dataset.json").read_text())
        cohorts = dj.get("petct_cohorts")
        kind = dj.get("petct_label_kind", "")
        rows.append((ds.name, int(dj.get("numTraining", 0)), f"{kind}; cohorts: {cohorts}" if cohorts else kind))
    return rows


def read_per_case(eval_dir: Path) -> list[dict]:
    with open(eval_dir / "per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def method_metrics(eval_dir: Path) -> dict:
    """Metrics of one method's evaluation folder, each with the number of cases (or lesions) behind it.

    - ``dice``: mean Dice over the lesion-positive test cases (``n_dice`` cases; empty ground truth has no
      Dice, autoPET rule);
    - ``sensitivity``: detected / all ground-truth lesions pooled over the test set (any-overlap rule;
      ``n_lesions``);
    - ``fp_lesions``: false-positive components per case (all ``n_cases``);
    - ``fpv_free_ml``: false-positive volume on the lesion-free cases (``n_free``); ``fpv_ml``: on all cases;
    - ``fnv_ml``: false-negative volume on the lesion-positive cases;
    - ``tmtv_error_ml``: mean |predicted - true total metabolic tumour volume| over all cases.
    """
    cases = read_per_case(eval_dir)
    positive = [c for c in cases if (_num(c.get("n_gt_lesions")) or 0) > 0]
    free = [c for c in cases if (_num(c.get("n_gt_lesions")) or 0) == 0]
    n_lesions = sum(int(_num(c.get("n_gt_lesions")) or 0) for c in cases)
    n_detected = sum(int(_num(c.get("n_gt_detected")) or 0) for c in cases)
    dice, n_dice = _mean(c.get("dice") for c in positive)
    fpv_free, n_free = _mean(c.get("fpv_ml") for c in free)
    fpv_all, n_all = _mean(c.get("fpv_ml") for c in cases)
    fnv, n_fnv = _mean(c.get("fnv_ml") for c in positive)
    fp_lesions, _ = _mean(c.get("n_fp_lesions") for c in cases)
    errors = [abs(p - g) for c in cases
              if (g := _num(c.get("gt_tmtv_ml"))) is not None and (p := _num(c.get("pred_tmtv_ml"))) is not None]
    return {
        "dice": dice, "n_dice": n_dice,
        "sensitivity": n_detected / n_lesions if n_lesions else None, "n_lesions": n_lesions, "n_detected": n_detected,
        "fp_lesions": fp_lesions, "fpv_free_ml": fpv_free, "n_free": n_free, "fpv_ml": fpv_all, "n_cases": n_all,
        "fnv_ml": fnv, "n_fnv": n_fnv,
        "tmtv_error_ml": sum(errors) / len(errors) if errors else None,
    }


def run_recipe(fold: Path, trainer: str) -> dict:
    """What a finished run did, read from its checkpoint: epochs, iterations, peak learning rate, the
    epochs of linear warm-up before it, and the pseudo-Dice curve."""
    from nnunetv2_petct.demo.figures import iterations_axis, read_training_log
    from nnunetv2_petct.nnunet.registry import find_trainer_class

    log = read_training_log(fold / "checkpoint_final.pth")
    cls = find_trainer_class(trainer)
    per_epoch = int(getattr(cls, "tiny_iterations_per_epoch", 250))
    lrs = log.get("lrs", [])
    n = len(log.get("mean_fg_dice", []))
    peak = max(lrs) if lrs else None
    warmup = lrs.index(peak) + 1 if lrs and lrs[0] < peak else 0  # epochs up to and including the peak
    return {"epochs": n, "iterations_per_epoch": per_epoch, "iterations": n * per_epoch, "peak_lr": peak,
            "warmup_epochs": warmup,
            "curve": {"iterations": iterations_axis(n, per_epoch), "mean_fg_dice": log.get("mean_fg_dice", []),
                      "ema_fg_dice": log.get("ema_fg_dice", [])}}


def paired_rows(le_dir: Path, subset: str, metric: str = "dice") -> dict[tuple[str, str], dict]:
    """The label-efficiency runner's paired comparisons (``label_efficiency_paired.csv``: mean difference
    A - B on the same test cases, bootstrap 95 % CI, Wilcoxon p) of ``metric`` inside ``subset``, keyed by
    ``(method_a, method_b)``; numbers as floats."""
    path = le_dir / "label_efficiency_paired.csv"
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["metric"] == metric and r["subset_a"] == subset and r["subset_b"] == subset:
                row = {k: _num(r.get(k)) for k in ("mean_diff", "ci_low", "ci_high", "p_wilcoxon")}
                row["n"] = int(float(r.get("n_cases") or 0))
                out[(r["method_a"], r["method_b"])] = row
    return out


def comparison_sentence(name_a: str, name_b: str, cmp: dict | None) -> str:
    """One honest sentence about ``A - B`` in Dice: the difference, its CI, p and n, and whether the CI
    includes 0 ("within noise")."""
    if cmp is None or not cmp.get("n") or cmp.get("ci_low") is None or cmp.get("ci_high") is None:
        return f"{name_a} vs {name_b}: no paired comparison available (no lesion-positive test case both scored)."
    d, lo, hi, p, n = cmp["mean_diff"], cmp["ci_low"], cmp["ci_high"], cmp["p_wilcoxon"], cmp["n"]
    text = (f"{name_a} minus {name_b}: Dice difference {d:+.3f} (95 % bootstrap CI {lo:+.3f} to {hi:+.3f}, "
            f"Wilcoxon p = {fmt_number(p, 2)}, n = {n} lesion-positive test cases). ")
    if lo <= 0 <= hi:
        return text + "**Within noise**: this run does not show a difference between them."
    better = name_a if d > 0 else name_b
    return text + f"The interval excludes 0: {better} is better on these {n} cases (one training run each)."


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
                               title=f"{case}: ground truth vs {METHOD_LABELS.get(method, method)}")
    return out if out.is_file() else None


def design_subset(design: dict) -> dict:
    """The labeled subset the demo's segmentation runs trained on (the first of the design)."""
    return design["subsets"][0]


def evaluate_all(demo: Demo) -> None:
    """``nnUNetv2_petct_evaluate`` per method, with the PET for lesion quantification."""
    le_dir = demo.out / "label_efficiency"
    design = json.loads((le_dir / "label_efficiency_design.json").read_text())
    subset = design_subset(design)["name"]
    for method in demo.profile.methods:
        pred = le_dir / "predictions" / method / subset
        if pred.is_dir():
            demo.sh(["nnUNetv2_petct_evaluate", "-ref", str(le_dir / "test_labels"), "-pred", str(pred),
                     "-pet", str(le_dir / "test_images"), "-o", str(demo.out / "evaluation" / method), "-q"],
                    label=f"evaluate {method}")


def _subset_text(s: dict, n_pool: int) -> str:
    n = len(s["train"])
    if s.get("shots"):
        return (f"{s['shots']}-shot: {n} lesion-positive studies of {n} different patients "
                f"({100 * n / n_pool:.0f} % of the {n_pool}-study training pool)")
    return (f"label fraction {s.get('requested_fraction') or s['fraction']:g}: {n} studies "
            f"({100 * n / n_pool:.0f} % of the {n_pool}-study training pool, whole patients)")


def write_report(demo: Demo) -> Path:
    from nnunetv2_petct.demo.figures import first_iteration_above, plot_pseudo_dice_curves

    demo.figures.mkdir(parents=True, exist_ok=True)
    le_dir = demo.out / "label_efficiency"
    design = json.loads((le_dir / "label_efficiency_design.json").read_text())
    subset = design_subset(design)
    suffix = demo.profile.trainer_suffix

    metrics = {m: method_metrics(demo.out / "evaluation" / m) for m in demo.profile.methods
               if (demo.out / "evaluation" / m / "per_case.csv").is_file()}
    from nnunetv2_petct.nnunet.trainers.finetune import TRANSFER_TRAINERS

    recipes = {}
    for m in metrics:
        trainer = TRANSFER_TRAINERS[m] + suffix
        fold = fold_dir(demo, AUTOPET_ID, trainer, subset["fold"])
        if (fold / "checkpoint_final.pth").is_file():
            recipes[m] = run_recipe(fold, trainer) | {"trainer": trainer, "fold_dir": fold}

    test = design["test"]
    any_case = next(iter(metrics.values()), None)
    n_pos = any_case["n_dice"] if any_case else 0
    n_free = any_case["n_free"] if any_case else 0
    n_lesions = any_case["n_lesions"] if any_case else 0
    pretrain_json = next(demo.raw.glob(f"Dataset{PRETRAIN_ID}_*/dataset.json"), None)
    n_pretrain = json.loads(pretrain_json.read_text()).get("numTraining") if pretrain_json else None
    mae_fold = foundation_checkpoint(demo).parent
    mae_trainer = f"nnUNetTrainerPETCTMAE{suffix}"
    mae = run_recipe(mae_fold, mae_trainer) if (mae_fold / "checkpoint_final.pth").is_file() else None

    # figures
    curves = {f"{METHOD_LABELS[m]}": r["curve"] | {"method": m} for m, r in recipes.items()}
    figures: dict[str, Path | None] = {}
    if curves:
        figures["Validation pseudo-Dice against training iteration"] = plot_pseudo_dice_curves(
            curves, demo.figures / "pseudo_dice_curves.png",
            subtitle=f"{len(design['val'])} validation studies; bold: moving average (nnU-Net's EMA), thin: per epoch")
    figures["PET MIP: ground truth and the fine-tuned model's prediction"] = mip_figure(
        demo, le_dir, "pretrained", subset["name"])
    figures["PET MIP: ground truth and the from-scratch prediction"] = mip_figure(demo, le_dir, "scratch", subset["name"])
    figures["MAE reconstruction preview (original, masked input, reconstruction; PET MIP)"] = _copy_figure(
        mae_fold / "preview_latest.png", demo.figures / "mae_preview.png")
    figures["MAE training and validation loss (nnU-Net's progress plot; green: masked R² instead of Dice)"] = \
        _copy_figure(mae_fold / "progress.png", demo.figures / "mae_progress.png")
    if len(design["subsets"]) > 1:
        figures["Dice vs label fraction"] = _copy_figure(le_dir / "label_efficiency_dice.png",
                                                         demo.figures / "dice_vs_fraction.png")

    lines = [
        "# nnunetv2_petct demo report", "",
        "> **Synthetic phantoms, tiny plans, a short CPU schedule.** The numbers below show that the pipeline "
        "works end to end and how the methods compare *on these phantoms*; they are not the paper's results. "
        "Run the same commands on the real cohorts at full size for that (README).", "",
        f"Profile `{demo.profile.name}`, device `{demo.device}`, trainers `*{suffix}`.", "",
        "## What was trained", "",
        f"- **Pretraining** (MAE, no labels): Dataset{PRETRAIN_ID}, {n_pretrain} studies from five cohorts "
        f"(the held-out AutoPET test studies excluded)"
        + (f"; {mae['iterations']} iterations ({mae['epochs']} epochs of {mae['iterations_per_epoch']})." if mae else "."),
        f"- **Labeled subset** for every segmentation run: {_subset_text(subset, len(design['pool']))}; fixed "
        f"validation set: {len(design['val'])} studies.",
        f"- **Held-out test set**: {len(test)} AutoPET studies ({n_pos} lesion-positive with {n_lesions} lesions, "
        f"{n_free} lesion-free), never trained, validated or pretrained on.",
        "",
        "| method | trainer | peak lr | warm-up | iterations |", "|---|---|---|---|---|",
    ]
    for m, r in recipes.items():
        warm = f"{r['warmup_epochs']} epochs" if r["warmup_epochs"] else "none"
        lines.append(f"| {METHOD_LABELS[m]} | `{r['trainer']}` | {fmt_number(r['peak_lr'], 4)} | {warm} | "
                     f"{r['iterations']} ({r['epochs']} x {r['iterations_per_epoch']}) |")
    lines += ["", "Learning rates and warm-up as read from each run's log. In the demo, fine-tuned and scratch share "
              "one schedule, so they differ only in their initialization; stock nnU-Net keeps its recipe (no "
              "warm-up); the probe trains only the final 1x1x1 convolution on the frozen pretrained network. "
              "Every run starts its output layer at the foreground prior (README, \"What `make demo` shows\").", "",
              "## Metrics on the held-out test set", "",
              "| method | Dice (lesion-positive) | lesion sensitivity | FP lesions / case | FPV on lesion-free (ml) | "
              "FPV all (ml) | FNV (ml) | TMTV abs. error (ml) |",
              "|---|---|---|---|---|---|---|---|"]
    for m, x in metrics.items():
        lines.append(
            f"| {METHOD_LABELS[m]} | {fmt_number(x['dice'])} (n={x['n_dice']}) | {fmt_number(x['sensitivity'])} "
            f"({x['n_detected']}/{x['n_lesions']} lesions) | {fmt_number(x['fp_lesions'], 2)} (n={x['n_cases']}) | "
            f"{fmt_number(x['fpv_free_ml'], 2)} (n={x['n_free']}) | {fmt_number(x['fpv_ml'], 2)} (n={x['n_cases']}) | "
            f"{fmt_number(x['fnv_ml'], 2)} (n={x['n_fnv']}) | {fmt_number(x['tmtv_error_ml'], 2)} (n={x['n_cases']}) |")
    lines += ["", "n = test cases (or lesions) behind each number. Dice and FNV are over the lesion-positive cases "
              "(empty ground truth has no Dice, autoPET rule); lesion sensitivity is pooled over lesions with the "
              "any-overlap rule; FPV = volume of predicted components touching no lesion. Per-case and per-lesion "
              "tables (SUVmax, SUVpeak, MTV, TLG): `evaluation/<method>/`.", ""]

    lines += ["## Pretrained vs scratch", ""]
    paired = paired_rows(le_dir, subset["name"])
    if "pretrained" in metrics:
        for other in ("scratch", "nnunet_default"):
            if other in metrics:
                lines += ["- " + comparison_sentence(METHOD_LABELS["pretrained"], METHOD_LABELS[other],
                                                     paired.get(("pretrained", other)))]
        escapes = []
        for m, r in recipes.items():
            it = first_iteration_above(r["curve"]["iterations"], r["curve"]["ema_fg_dice"], 0.1)
            escapes.append(f"{METHOD_LABELS[m]}: {'never' if it is None else f'iteration {it}'}")
        lines += ["- Validation pseudo-Dice (moving average) above 0.1 first at: " + "; ".join(escapes) + ".",
                  "- Paired over the same test cases by the label-efficiency runner (`label_efficiency/"
                  "label_efficiency_paired.csv`, also FPV and FNV). One training run per method: the interval covers "
                  "the variation over test cases, not over training seeds or subset draws (`python -m "
                  "nnunetv2_petct.benchmarks label-efficiency` repeats them with 3 seeds).", ""]

    lines += ["## Figures", ""]
    for title, path in figures.items():
        if path is not None:
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(demo.out)})", ""]
        else:
            lines += [f"### {title}", "", "(not produced in this run)", ""]
    progress = [f"[{m}]({(r['fold_dir'] / 'progress.png').relative_to(demo.out)})" for m, r in recipes.items()
                if (r["fold_dir"] / "progress.png").is_file()]
    if progress:
        lines += ["nnU-Net's own progress plots of the segmentation runs: " + ", ".join(progress) + ".", ""]
    lines += what_decides_the_numbers(demo)
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|",
              *[f"| {k} | {v:.0f} |" for k, v in demo.timings.items()], "",
              f"Training runs of a step ran {demo.jobs} at a time.", "",
              "## Every command that was run", "",
              "Re-run them in a fresh folder with `DEMO=<folder> bash commands.sh` (the virtual environment "
              "active), or one by one after `export DEMO=<folder> nnUNet_raw=$DEMO/nnUNet_raw "
              "nnUNet_preprocessed=$DEMO/nnUNet_preprocessed nnUNet_results=$DEMO/nnUNet_results`.", "",
              "```bash", *demo.commands, "```", ""]
    write_text_atomic(commands_script(demo.commands), demo.out / "commands.sh")
    return write_text_atomic("\n".join(lines), demo.out / "report.md")


def training_threads_text(demo: Demo, facts: dict) -> str:
    """How many CPU threads each training run used, as the demo started them."""
    if demo.device != "cpu":
        return f"device {demo.device}"
    if demo.jobs > 1:
        return f"OMP_NUM_THREADS=1 per run, {demo.jobs} runs at a time"
    omp = demo.env().get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={omp}" if omp else f"torch's default ({facts.get('logical_cores')} logical cores)"


def what_decides_the_numbers(demo: Demo) -> list[str]:
    """The report section that says where the seeded numbers repeat (issue 21, item 4)."""
    f = machine_facts()
    gpu = f" GPU {f['gpu']}," if f.get("gpu") and demo.device == "cuda" else ""
    return ["## What decides these numbers", "",
            "Everything is seeded: the numbers repeat **on the same machine** with the same software. Another "
            "CPU (or GPU), another thread count or another torch version runs other floating-point kernels, and "
            "a seeded run there gives other numbers, sometimes another verdict; every comparison above is "
            "stated with its own interval for that reason.", "",
            f"This run: CPU `{f['cpu_model'] or 'unknown'}` ({f['logical_cores']} logical cores),{gpu} torch "
            f"`{f['torch']}`, Python {f['python']}, training threads: {training_threads_text(demo, f)}; "
            f"`{f['platform']}`.", ""]


def commands_script(commands: list[str]) -> str:
    """``commands.sh``: the demo's commands, runnable with ``DEMO=<folder> bash commands.sh``."""
    return ("#!/usr/bin/env bash\n# The demo's commands; run with DEMO=<empty or new folder> bash commands.sh\n"
            "set -euo pipefail\n"
            ": \"${DEMO:?set DEMO to the demo output folder}\"\n"
            "mkdir -p \"$DEMO\"\n"
            "export nnUNet_raw=\"$DEMO/nnUNet_raw\" nnUNet_preprocessed=\"$DEMO/nnUNet_preprocessed\" "
            "nnUNet_results=\"$DEMO/nnUNet_results\"\n" + "\n".join(commands) + "\n")
