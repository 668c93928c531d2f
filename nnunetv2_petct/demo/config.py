"""The demo's configuration: profiles, dataset ids, paths and the recorded command runner."""


from __future__ import annotations

import json
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from nnunetv2_petct.conversion.registry import find_dataset_dir
from nnunetv2_petct.nnunet.env import nnunet_env

logger = logging.getLogger(__name__)

ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# Dataset ids used by the demo (the 9xx range is rarely used by real datasets).
AUTOPET_ID, DEEPPSMA_ID, SPADE_ID, VIMED_ID, DICOM_ID, PRETRAIN_ID = 901, 902, 903, 904, 905, 910
# Training seed of the MAE run (NNUNETV2_PETCT_SEED); the segmentation runs get the label-efficiency runner's.
PRETRAIN_SEED = 12345


@dataclass(frozen=True)
class Profile:
    """How big the demo is. ``demo`` is what ``make demo`` runs; ``test`` is the tiniest (CI); the
    ``bench-*`` profiles are the phantom label-efficiency benchmark (``python -m nnunetv2_petct.benchmarks
    label-efficiency``), which runs the same pipeline with a larger grid.

    Every segmentation run (fine-tuned, scratch, stock nnU-Net, probe) of one subset trains on the same
    labeled studies: ``shots`` lesion-positive studies of different patients (K-shot) and/or the label
    ``fractions`` of the training pool; ``seeds`` > 1 repeats each subset with other draws and seeds.
    """

    name: str
    phantom_size: str
    n_autopet: int                  # labeled AutoPET studies (training pool + validation + held-out test)
    autopet_lesion_free: float      # share of lesion-free AutoPET studies
    n_test_positive: int            # held-out test: at least this many lesion-positive studies ...
    n_test_negative: int            # ... and at least this many lesion-free ones (false positives)
    n_unlabeled: int                # studies per unlabeled cohort (DEEP-PSMA, SPADE, ViMed)
    n_dicom: int
    fractions: tuple[float, ...]
    shots: tuple[int, ...]
    trainer_suffix: str             # "_demo", "_tiny" or "_bench"
    patch: tuple[int, int, int] | None = (32, 32, 32)  # tiny plans (None: nnU-Net's own plans): patch (z, y, x),
    stages: int = 3                                      # stages, features and batch size
    base_features: int = 8
    max_features: int = 32
    batch_size: int = 2
    methods: tuple[str, ...] = ("pretrained", "scratch", "nnunet_default", "probe")
    seeds: int = 1
    description: str = ""
    lesion_radius_mm: tuple[float, float] | None = None  # AutoPET lesion radii (None: the phantom size's range)


PROFILES = {
    "demo": Profile("demo", "small", n_autopet=48, autopet_lesion_free=0.25, n_test_positive=8, n_test_negative=3,
                    n_unlabeled=4, n_dicom=2, fractions=(), shots=(10,), trainer_suffix="_demo",
                    description="what `make demo` runs (~10-15 min on 2 CPU cores)"),
    "test": Profile("test", "tiny", n_autopet=10, autopet_lesion_free=0.4, n_test_positive=1, n_test_negative=1,
                    n_unlabeled=2, n_dicom=1, fractions=(0.5,), shots=(), trainer_suffix="_tiny", base_features=4,
                    max_features=16, description="the tiniest settings (tests, CI)"),
    "bench-cpu-1h": Profile("bench-cpu-1h", "small", n_autopet=100, autopet_lesion_free=0.25, n_test_positive=12,
                            n_test_negative=4, n_unlabeled=100, n_dicom=2, fractions=(0.1, 0.3, 1.0), shots=(),
                            trainer_suffix="_cpu1h", seeds=3,
                            description="label-efficiency benchmark, about 1 h on 2 CPU cores"),
    "bench-gpu": Profile("bench-gpu", "small", n_autopet=200, autopet_lesion_free=0.25, n_test_positive=30,
                         n_test_negative=10, n_unlabeled=150, n_dicom=2, fractions=(0.05, 0.1, 0.3, 1.0), shots=(),
                         trainer_suffix="_bench", patch=None, seeds=3,
                         description="label-efficiency benchmark with nnU-Net's own plans, for one GPU"),
}

# The benchmark's tiniest budget: the test profile's data (a benchmark can share a finished test-profile demo
# folder) with a grid of one fraction, two methods and two seeds.
PROFILES["bench-tiny"] = replace(PROFILES["test"], name="bench-tiny", fractions=(1.0,), methods=("pretrained", "scratch"),
                                 seeds=2, description="the benchmark's code path at the tiniest size (tests)")

# The interactive (click-guided) benchmark, ``python -m nnunetv2_petct.benchmarks interactive``: the label-efficiency
# pipeline with the interactive methods and the non-interactive fine-tuned model on the same subsets and seeds.
INTERACTIVE_METHODS = ("interactive_pretrained", "interactive_scratch", "pretrained")
PROFILES["bench-interactive-cpu"] = replace(PROFILES["demo"], name="bench-interactive-cpu", methods=INTERACTIVE_METHODS,
                                            seeds=3, description="interactive benchmark, ~1-1.5 h on 2 CPU cores")
PROFILES["bench-interactive-gpu"] = replace(PROFILES["bench-gpu"], name="bench-interactive-gpu",
                                            methods=INTERACTIVE_METHODS, fractions=(0.3,),
                                            description="interactive benchmark for one GPU")
PROFILES["bench-interactive-tiny"] = replace(PROFILES["bench-tiny"], name="bench-interactive-tiny",
                                             methods=("interactive_pretrained", "pretrained"), seeds=1,
                                             description="the interactive benchmark's code path (tests)")


@dataclass
class Demo:
    out: Path
    profile: Profile
    device: str
    quiet: bool = False
    jobs: int = 1                   # training runs side by side (the runs of the label-efficiency grid)
    stream: TextIO | None = None    # where progress goes (default sys.stdout)
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _step_started: float | None = None

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
            print(f"[demo] {msg}", file=self.stream or sys.stdout, flush=True)

    def shown(self, args: list[str], env_extra: dict[str, str] | None = None) -> str:
        """The command as recorded in ``commands.sh`` / the report: paths under the demo folder as
        ``"$DEMO/..."`` (double quotes, so the shell expands the variable), everything else shell-quoted."""
        words = [shell_word(a, self.out) for a in args]
        if env_extra:
            words = [f"{k}={shell_word(v, self.out)}" for k, v in env_extra.items()] + words
        return " ".join(words)

    def _resolve(self, args: list[str]) -> tuple[list[str], dict[str, str]]:
        """(command with the program resolved next to this interpreter, leading ``NAME=value`` assignments)."""
        env = {}
        while args and ENV_ASSIGNMENT.match(args[0]):
            name, value = args[0].split("=", 1)
            env[name] = value
            args = args[1:]
        if not args:
            raise ValueError("empty command")
        exe = Path(sys.executable).parent / args[0]
        return [str(exe) if exe.exists() else args[0], *args[1:]], env

    def sh(self, args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 3600,
           label: str | None = None, total_epochs: int | None = None) -> None:
        """Run one CLI call (recorded for commands.sh) with a live status line (epoch x/N of a training
        run, elapsed time); its output goes to ``demo.log``. Stops the demo with the output's tail on failure."""
        self.sh_parallel([(args, label or args[0], total_epochs)], env_extra=env_extra, timeout=timeout)

    def sh_parallel(self, commands: list[tuple[list[str], str, int | None]], jobs: int = 1,
                    env_extra: dict[str, str] | None = None, timeout: float = 7200,
                    run_env: dict[str, str] | None = None) -> None:
        """Run independent CLI calls (``(args, label, total_epochs)``), ``jobs`` at a time, each recorded for
        commands.sh (in order) with its output in ``logs/<label>.log`` (``demo.log`` when one runs alone).
        Leading ``NAME=value`` words of ``args`` and ``env_extra`` are recorded with the command and set in
        its environment; ``run_env`` (e.g. thread counts) only applies here."""
        from nnunetv2_petct.demo.live import Job, StatusPrinter, run_jobs

        job_list = []
        for args, label, total in commands:
            shown = self.shown(args, env_extra)
            self.commands.append(shown)
            self.say(f"$ {shown}")
            log = self.out / "demo.log" if len(commands) == 1 else self.out / "logs" / f"{_slug(label)}.log"
            cmd, own_env = self._resolve(args)
            job_list.append(Job(cmd, label, log, total, self.env(**(env_extra or {}), **own_env, **(run_env or {}))))
        status = StatusPrinter("[demo]   ", enabled=not self.quiet, stream=self.stream)
        try:
            run_jobs(job_list, max_parallel=jobs, status=status, timeout_s=timeout, clock_start=self._step_started)
        except TimeoutError as e:
            raise RuntimeError(f"step timed out: {e}") from e
        failed = [(i, j) for i, j in enumerate(job_list) if j.returncode not in (0, None)]
        if failed:
            i, job = failed[0]
            tail = job.log_file.read_text()[-4000:] if job.log_file.is_file() else ""
            raise RuntimeError(f"failed ({job.returncode}): {self.shown(commands[i][0], env_extra)}\n"
                               f"--- last lines of {job.log_file} ---\n{tail}")

    def write_file(self, path: Path, text: str, what: str) -> None:
        """Write a small text file and record it for commands.sh as a here-document."""
        from nnunetv2_petct.io import write_text_atomic

        write_text_atomic(text, path)
        body = text if text.endswith("\n") else text + "\n"
        shown = f"# {what}\ncat > {shell_word(str(path), self.out)} <<'EOF'\n{body}EOF"
        self.commands.append(shown)
        self.say(f"wrote {path.relative_to(self.out) if path.is_relative_to(self.out) else path} ({what})")

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
        self._step_started = time.monotonic()
        try:
            fn()
        finally:
            self._step_started = None
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        marker.write_text(json.dumps({"commands": self.commands[n_before:], "seconds": seconds}))
        self.say(f"step '{name}' finished in {seconds:.0f} s")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "command"


def shell_word(arg: str, out: Path) -> str:
    """``arg`` as one shell word; occurrences of the demo folder ``out`` become ``$DEMO``.

    Words without the folder are quoted by :func:`shlex.quote`. Words with it are double-quoted with
    ``"``, ``\\``, ``$`` and backquotes escaped, so that only ``$DEMO`` is expanded (``${DEMO}`` when a name
    character follows). Example: ``/x/demo/downloads/autopet`` with ``out=/x/demo`` ->
    ``"$DEMO/downloads/autopet"``.
    """
    root = str(out)
    if root not in arg:
        return shlex.quote(arg)
    pieces = []
    for i, part in enumerate(arg.split(root)):
        if i > 0:
            follows = part[:1]
            pieces.append("${DEMO}" if follows and (follows.isalnum() or follows == "_") else "$DEMO")
        pieces.append(part.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`"))
    return '"' + "".join(pieces) + '"'


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
