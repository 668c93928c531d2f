"""Benchmark: click-guided lesion segmentation on phantoms (autoPET IV protocol), pretrained vs scratch.

    python -m nnunetv2_petct.benchmarks interactive [--budget cpu-1h|gpu|tiny] [--out DIR]

The demo's pipeline (:mod:`nnunetv2_petct.demo`: synthetic cohorts, conversion, planning, MAE pretraining on
the unlabeled studies and the training pool, the held-out test studies excluded), then the label-efficiency
runner with the interactive methods on the same labeled subsets and seeds:

- ``interactive_pretrained``: ``nnUNetTrainerPETCTInteractive`` fine-tuned from the foundation model (the
  click weights start at zero), the fine-tuning recipe;
- ``interactive_scratch``: ``nnUNetTrainerPETCTInteractiveScratch`` from random weights, its own recipe;
- ``pretrained``: the non-interactive fine-tuned model (``nnUNetTrainerPETCTFinetune``): clicks do not
  change its output (a flat curve);

then the click axis (:func:`nnunetv2_petct.nnunet.interactive_study.click_axis`): every run after 0..10
error-driven clicks on the held-out test set, Dice-vs-clicks curves with error bars over seeds, and paired
comparisons on dice_auc (per-case values averaged over seeds, bootstrap CI, Wilcoxon p).

Budgets: ``cpu-1h`` (about 1-1.5 h on 2 CPU cores, measured 80 min: the demo's small phantoms and tiny plans, 10-shot subsets,
3 seeds, the ``_demo`` schedules, 1,500 iterations per run); ``gpu`` (nnU-Net's own plans, ``_bench``
schedules, 30 % fraction, 3 seeds); ``tiny`` (the code path at the tiniest size, tests). Re-running with the
same ``--out`` reuses finished steps.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

BUDGETS = ("cpu-1h", "gpu", "tiny")
GRID_FOLDER = "grid_interactive"


def profile_for(budget: str):
    """The demo profile of a budget (see the module doc; defined in :data:`nnunetv2_petct.demo.config.PROFILES`)."""
    from nnunetv2_petct.demo.config import PROFILES

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    return PROFILES[f"bench-interactive-{'cpu' if budget == 'cpu-1h' else budget}"]


def run(budget: str = "cpu-1h", out: str | os.PathLike | None = None, device: str | None = None,
        jobs: int | None = None, quiet: bool = False, n_clicks: int = 10) -> dict:
    """Run the benchmark (module doc); returns the figures.

    Returns:
        ``table_md`` (per method: Dice at 0/1/3/10 clicks, dice_auc, fpv_auc, fnv_auc, mean ± sd over seeds;
        paired comparisons), ``summary``, ``paired``, ``seconds_per_click_mean`` (in-memory path, CPU or GPU as
        run), ``seconds_per_step``, ``files``.
    """
    from nnunetv2_petct.demo.config import Demo, default_device
    from nnunetv2_petct.demo.steps import convert_all, finetune, make_downloads, plan, pretrain
    from nnunetv2_petct.nnunet.interactive_study import click_axis

    profile = profile_for(budget)
    device = device or default_device()
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if jobs is None:
        jobs = 1 if budget == "tiny" else (3 if device == "cuda" else 2)
    root = Path(out if out is not None else f"interactive_benchmark_{budget}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(out=root, profile=profile, device=device, quiet=quiet, jobs=int(jobs), stream=sys.stderr)
    demo.state.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    demo.step("downloads", lambda: make_downloads(demo))
    demo.step("convert", lambda: convert_all(demo))
    demo.step("plan", lambda: plan(demo))
    demo.step("pretrain", lambda: pretrain(demo))
    demo.step("grid", lambda: finetune(demo, GRID_FOLDER))
    grid = root / GRID_FOLDER
    result: dict = {}

    def clicks() -> None:
        env = demo.env()
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            result.update(click_axis(grid, grid / "test_images", grid / "test_labels", methods=profile.methods,
                                     trainer_suffix=profile.trainer_suffix, device=device, n_clicks=n_clicks,
                                     quiet=quiet))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    t_clicks = time.perf_counter()
    clicks()  # not a cached step: it is cheap next to the training and its figures are returned
    demo.timings["click_axis"] = time.perf_counter() - t_clicks
    return {
        "budget": budget, "profile": profile.name, "device": device, "jobs": jobs, "out": str(root),
        "methods": list(profile.methods), "seeds": profile.seeds, "n_clicks": n_clicks,
        "n_test_cases": len({r["case"] for r in result["cases"]}),
        "table_md": result["table_md"], "summary": result["summary"], "paired": result["paired"],
        "seconds_per_click_mean": result["seconds_per_click_mean"],
        "seconds_per_step": {k: round(v, 1) for k, v in demo.timings.items()},
        "seconds_total": round(time.perf_counter() - t0, 1), "files": result["files"],
    }


__all__ = ["BUDGETS", "profile_for", "run"]
