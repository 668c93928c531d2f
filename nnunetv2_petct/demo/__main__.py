"""``python -m nnunetv2_petct.demo``: the command-line entry of the demo (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from nnunetv2_petct.demo.config import PROFILES, Demo, default_device
from nnunetv2_petct.demo.steps import run_demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nnunetv2_petct.demo",
        description="Run the whole PET/CT foundation-model pipeline on a synthetic multi-cohort download: "
        "convert, pretrain (MAE), fine-tune / scratch / linear probe, predict, evaluate, report. "
        "Outputs go to --out only; re-running reuses finished steps.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--profile", choices=list(PROFILES), default="demo",
                   help="; ".join(f"{k}: {v.description}" for k, v in PROFILES.items()))
    p.add_argument("--fresh", action="store_true", help="delete --out first and start clean")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs side by side (default: 2 on a CPU with >= 2 cores, one thread each; 1 on a GPU)")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    device = default_device() if a.device == "auto" else a.device
    if device == "cpu" and a.device == "auto" and not a.quiet:
        print("[demo] no GPU found: running on the CPU (fine for this demo; real pretraining needs a GPU)")
    out = a.out.resolve()
    if a.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = a.jobs if a.jobs is not None else (2 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 1)
    if jobs < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return 2
    demo = Demo(out=out, profile=PROFILES[a.profile], device=device, quiet=a.quiet, jobs=jobs)
    demo.state.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        report = run_demo(demo)
    except (RuntimeError, ValueError) as e:
        print(f"[demo] FAILED: {e}", file=sys.stderr)
        return 1
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s. Report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
