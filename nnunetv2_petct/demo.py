"""``make demo``: the whole foundation-model pipeline, from raw cohort "downloads" to a report.

Run ``python -m nnunetv2_petct.demo --help``. Every step is a real command-line call (our CLIs
and the stock nnU-Net ones) in a subprocess, recorded in ``demo_output/commands.sh`` so that it can
be copied and pasted; the same commands run on real downloads with other paths, dataset ids and
trainer names (see the README).

Steps (each skipped when its outputs exist; ``--fresh`` starts clean):
 1. synthetic downloads: AutoPET per-study NIfTI (labeled), DEEP-PSMA, SPADE, ViMed-like, DICOM;
 2. conversion of each cohort, the pretraining set, planning (tiny plans for the CPU), plans
    transferred to the AutoPET dataset;
 3. MAE pretraining;
 4. label-efficiency runs at a small label fraction: fine-tuned, from scratch, linear probe,
    each predicted on the held-out test set with ``nnUNetv2_predict`` and evaluated;
 5. ``demo_output/report.md`` with the commands, cohort counts, metric table and figures.

Numbers from this toy run are not the paper's: the phantoms are tiny and the schedules short.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# Dataset ids used by the demo (the 9xx range is rarely used by real datasets).
AUTOPET_ID, DEEPPSMA_ID, SPADE_ID, VIMED_ID, DICOM_ID, PRETRAIN_ID = 901, 902, 903, 904, 905, 910


@dataclass
class Profile:
    """How big the demo is. ``demo`` is what ``make demo`` runs; ``test`` is the tiniest (CI)."""

    name: str
    phantom_size: str
    n_autopet: int          # labeled AutoPET studies (training pool + held-out test)
    n_test: int             # held-out AutoPET test studies
    n_unlabeled: int        # studies per unlabeled cohort (DEEP-PSMA, SPADE, ViMed)
    n_dicom: int
    fractions: tuple[float, ...]
    trainer_suffix: str     # "_demo" or "_tiny"
    patch: tuple[int, int, int]
    max_features: int


PROFILES = {
    "demo": Profile("demo", "small", 30, 6, 4, 2, (0.1,), "_demo", (48, 48, 48), 32),
    "test": Profile("test", "tiny", 10, 2, 2, 1, (0.5,), "_tiny", (32, 32, 32), 16),
}


@dataclass
class Demo:
    out: Path
    profile: Profile
    device: str
    quiet: bool = False
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # ---- paths -----------------------------------------------------------------------------
    @property
    def downloads(self) -> Path:
        return self.out / "downloads"

    @property
    def raw(self) -> Path:
        return self.out / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.out / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.out / "nnUNet_results"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def state(self) -> Path:
        return self.out / ".state"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_compile="false", MPLBACKEND="Agg",
                   PYTHONUNBUFFERED="1")
        env.setdefault("nnUNet_def_n_proc", "2")
        env.setdefault("nnUNet_n_proc_DA", "0" if self.device == "cpu" else "4")
        env.update(extra)
        return env

    # ---- running ---------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[demo] {msg}", flush=True)

    def sh(self, args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 3600) -> None:
        """Run one CLI call (recorded for commands.sh); stop the demo with its output on failure."""
        exe = Path(sys.executable).parent / args[0]
        cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
        shown = " ".join(shlex.quote(a.replace(str(self.out), "$DEMO")) for a in args)
        if env_extra:
            shown = " ".join(f"{k}={v}" for k, v in env_extra.items()) + " " + shown
        self.commands.append(shown)
        self.say(f"$ {shown}")
        log = self.out / "demo.log"
        with open(log, "a") as f:
            f.write(f"\n$ {shown}\n")
            f.flush()
            proc = subprocess.run(cmd, env=self.env(**(env_extra or {})), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        if proc.returncode != 0:
            tail = log.read_text()[-4000:]
            raise RuntimeError(f"step failed ({proc.returncode}): {shown}\n--- last lines of {log} ---\n{tail}")

    def step(self, name: str, fn) -> None:
        marker = self.state / f"{name}.done"
        if marker.exists():
            self.say(f"step '{name}': done before, skipped")
            saved = json.loads(marker.read_text())
            self.commands.extend(saved.get("commands", []))
            self.timings[name] = saved.get("seconds", 0.0)
            return
        self.say(f"step '{name}' ...")
        n_before = len(self.commands)
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        marker.write_text(json.dumps({"commands": self.commands[n_before:], "seconds": seconds}))
        self.say(f"step '{name}' finished in {seconds:.0f} s")


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (with a hint)."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except Exception:
        pass
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    from nnunetv2_petct.demo_steps import run_demo

    p = argparse.ArgumentParser(
        prog="python -m nnunetv2_petct.demo",
        description="Run the whole PET/CT foundation-model pipeline on a synthetic multi-cohort download: "
        "convert, pretrain (MAE), fine-tune / scratch / linear probe, predict, evaluate, report. "
        "Outputs go to --out only; re-running reuses finished steps.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="demo: what `make demo` runs (~10 min on 2 CPU cores); test: the tiniest settings")
    p.add_argument("--fresh", action="store_true", help="delete --out first and start clean")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
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
    demo = Demo(out=out, profile=PROFILES[a.profile], device=device, quiet=a.quiet)
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
