"""Benchmark: a phantom label-efficiency study (pretrained vs scratch vs stock nnU-Net vs linear probe).

    python -m nnunetv2_petct.benchmarks label-efficiency [--budget cpu-1h|gpu] [--out DIR]

Runs the demo's pipeline (:mod:`nnunetv2_petct.demo`, every step a recorded command) with a bigger
profile: synthetic cohort downloads, conversion, a pretraining set of a few hundred unlabeled phantoms
(the held-out test studies excluded), planning, MAE pretraining, then the label-efficiency grid of
``nnUNetv2_petct_label_efficiency`` over several label fractions, each repeated with ``seeds`` subset
draws and training seeds, on one held-out test set. The runner writes the table (mean ± sd and n per
cell, paired comparisons of pretrained against each baseline) and the Dice-vs-fraction plot with error
bars; this benchmark copies them to ``--out`` and returns them with the iteration counts.

Budgets (profiles of :data:`nnunetv2_petct.demo.config.PROFILES`):

- ``cpu-1h``: about one hour on a 2-core CPU; small phantoms (64^3 at 6 mm), the demo's tiny plans and
  ``_demo`` schedules, fractions 10/30/100 %, 3 seeds, 4 methods = 36 training runs, 2 at a time;
- ``gpu``: nnU-Net's own plans for the small phantoms and the ``_bench`` schedules, fractions
  5/10/30/100 %, 3 seeds, 4 methods = 48 runs, 3 at a time on one GPU;
- ``tiny``: the same code path at the tiniest size (tests).

Re-running with the same ``--out`` reuses finished steps and training runs (an interrupted run resumes).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

BUDGETS = {"cpu-1h": "bench-cpu-1h", "gpu": "bench-gpu", "tiny": "bench-tiny"}
#: The grid's folder inside ``--out`` (the demo's own grid is ``label_efficiency``; a benchmark can share a
#: demo folder and reuse its finished downloads, conversion, planning and pretraining).
OUTPUT_FOLDER = "grid"


def planned_iterations(profile_name: str) -> dict:
    """Training iterations the budget plans: MAE, per segmentation run, the number of runs and the total.

    A fraction of 1.0 draws the same subset for every seed; the runs still repeat (training seeds).
    """
    from nnunetv2_petct.demo.config import PROFILES
    from nnunetv2_petct.nnunet.registry import find_trainer_class
    from nnunetv2_petct.nnunet.trainers.finetune import TRANSFER_TRAINERS

    p = PROFILES[profile_name]

    def its(trainer: str) -> int:
        cls = find_trainer_class(trainer)
        return int(cls.tiny_num_epochs) * int(cls.tiny_iterations_per_epoch)

    n_subsets = (len(p.fractions) + len(p.shots)) * p.seeds
    per_method = {m: its(TRANSFER_TRAINERS[m] + p.trainer_suffix) for m in p.methods}
    return {
        "mae_iterations": its(f"nnUNetTrainerPETCTMAE{p.trainer_suffix}"),
        "segmentation_iterations_per_run": per_method,
        "n_training_runs": n_subsets * len(p.methods),
        "segmentation_iterations_total": n_subsets * sum(per_method.values()),
    }


def _read_table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(budget: str = "cpu-1h", out: str | os.PathLike | None = None, device: str | None = None,
        jobs: int | None = None, quiet: bool = False) -> dict:
    """Run the benchmark (see the module doc); returns the figures as a dict.

    Args:
        budget: ``cpu-1h``, ``gpu`` or ``tiny``.
        out: output folder (default ``label_efficiency_benchmark_<budget>``); reused when it exists.
        device: ``cpu`` or ``cuda`` (default: ``cuda`` when torch sees a GPU).
        jobs: training runs side by side (default: 2 on a CPU, 3 on a GPU; 1 for ``tiny``).
        quiet: no progress output (otherwise it goes to stderr).

    Returns:
        ``table_md`` (the runner's markdown table), ``summary`` (its rows per subset and method: mean, sd and
        n over seeds of Dice, FPV, FNV), ``paired`` (its Dice comparisons: pretrained vs each baseline on the
        same test cases, bootstrap CI, Wilcoxon p), ``files`` (tables, per-case CSV, plot, design, commands),
        ``planned`` (iteration counts), ``seconds_per_step`` and settings.

    Raises:
        ValueError: unknown budget or device; RuntimeError: a step failed (its log named).
    """
    from nnunetv2_petct.demo.config import PROFILES, Demo, default_device
    from nnunetv2_petct.demo.steps import convert_all, finetune, make_downloads, plan, pretrain

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose from {sorted(BUDGETS)}")
    device = device or default_device()
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    profile = PROFILES[BUDGETS[budget]]
    if jobs is None:
        jobs = 1 if budget == "tiny" else (3 if device == "cuda" else 2)
    root = Path(out if out is not None else f"label_efficiency_benchmark_{budget}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(out=root, profile=profile, device=device, quiet=quiet, jobs=int(jobs), stream=sys.stderr)
    demo.state.mkdir(exist_ok=True)
    planned = planned_iterations(profile.name)
    demo.say(f"budget {budget}: MAE {planned['mae_iterations']} iterations, {planned['n_training_runs']} segmentation "
             f"runs ({planned['segmentation_iterations_total']} iterations in all), {jobs} at a time on {device}")
    t0 = time.perf_counter()
    demo.step("downloads", lambda: make_downloads(demo))
    demo.step("convert", lambda: convert_all(demo))
    demo.step("plan", lambda: plan(demo))
    demo.step("pretrain", lambda: pretrain(demo))
    demo.step("grid", lambda: finetune(demo, OUTPUT_FOLDER))
    le = root / OUTPUT_FOLDER
    names = ("label_efficiency.md", "label_efficiency_summary.csv", "label_efficiency_paired.csv",
             "label_efficiency_runs.csv", "label_efficiency.csv", "label_efficiency_dice.png",
             "label_efficiency_design.json", "commands.sh")
    files = {name: le / name for name in names if (le / name).is_file()}
    from nnunetv2_petct.demo.report import commands_script
    from nnunetv2_petct.io import write_text_atomic

    write_text_atomic(commands_script(demo.commands), root / "commands.sh")
    summary = _read_table(files["label_efficiency_summary.csv"]) if "label_efficiency_summary.csv" in files else []
    paired = _read_table(files["label_efficiency_paired.csv"]) if "label_efficiency_paired.csv" in files else []
    design = json.loads(files["label_efficiency_design.json"].read_text()) if "label_efficiency_design.json" in files \
        else {}
    return {
        "budget": budget,
        "profile": profile.name,
        "device": device,
        "jobs": jobs,
        "out": str(root),
        "fractions": list(profile.fractions),
        "seeds": profile.seeds,
        "methods": list(profile.methods),
        "n_test_cases": len(design.get("test", [])),
        "n_training_pool": len(design.get("pool", [])),
        "planned": planned,
        "seconds_per_step": {k: round(v, 1) for k, v in demo.timings.items()},
        "seconds_total": round(time.perf_counter() - t0, 1),
        "table_md": files["label_efficiency.md"].read_text() if "label_efficiency.md" in files else None,
        "summary": summary,
        "paired": [r for r in paired if r.get("metric") == "dice"],
        "files": {k: str(v) for k, v in files.items()},
        "commands": str(root / "commands.sh"),
    }


def estimate_seconds(planned: dict, seconds_per_iteration: float, jobs: int, fixed_seconds: float = 0.0) -> float:
    """Rough wall time: MAE alone, then the segmentation iterations spread over ``jobs`` parallel runs,
    plus ``fixed_seconds`` (downloads, conversion, planning, predictions). Pure arithmetic."""
    if seconds_per_iteration <= 0 or jobs < 1:
        raise ValueError("seconds_per_iteration must be > 0 and jobs >= 1")
    return (planned["mae_iterations"] * seconds_per_iteration
            + planned["segmentation_iterations_total"] * seconds_per_iteration / jobs + fixed_seconds)


__all__ = ["BUDGETS", "estimate_seconds", "planned_iterations", "run"]
