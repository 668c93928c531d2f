"""The demo's configuration: profiles, dataset ids, paths and the recorded command runner."""


from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_petct.conversion.registry import find_dataset_dir
from nnunetv2_petct.nnunet.env import nnunet_env

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
        return nnunet_env(raw=self.raw, preprocessed=self.preprocessed, results=self.results, threads=None,
                          n_proc_da=0 if self.device == "cpu" else 4, create=False, **extra)

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


def dataset_dir(root: Path, dataset_id: int) -> Path:
    """``root/DatasetXXX_*`` of a demo dataset (raw, preprocessed or results root)."""
    return find_dataset_dir(root, dataset_id)


def fold_dir(demo: Demo, dataset_id: int, trainer: str, fold: int | str) -> Path:
    """A demo run's ``fold_<fold>`` folder, named by nnU-Net's ``get_output_folder`` rule. The demo sets
    ``nnUNet_results`` only for its subprocesses, so the root is ``demo.results`` here."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    run = convert_trainer_plans_config_to_identifier(trainer, "nnUNetPlans", "3d_fullres")
    return dataset_dir(demo.results, dataset_id) / run / f"fold_{fold}"


def foundation_checkpoint(demo: Demo) -> Path:
    trainer = f"nnUNetTrainerPETCTMAE{demo.profile.trainer_suffix}"
    return fold_dir(demo, PRETRAIN_ID, trainer, "all") / "foundation_final.pth"
