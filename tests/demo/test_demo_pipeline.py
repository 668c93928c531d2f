"""`make demo`'s pipeline with the tiniest settings (profile "test"), through the real CLIs; then its
recorded commands re-run in a fresh folder, and the label-efficiency benchmark's grid on the same data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import nnunet_env

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class DemoRun:
    out: Path
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo_output"
    env = nnunet_env(root / "unused")  # CPU settings; the demo sets its own nnUNet_* folders under --out
    cmd = [sys.executable, "-m", "nnunetv2_petct.demo", "--profile", "test", "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return DemoRun(out, cmd, env, proc)


def test_demo_report(demo_run):
    out = demo_run.out
    report = out / "report.md"
    assert f"Report: {report}" in demo_run.proc.stdout
    text = report.read_text()

    assert "## What decides these numbers" in text and "on the same machine" in text  # issue 21 item 4
    # every cohort was converted; the pretraining set excludes the held-out AutoPET test studies
    for name in ("AutoPETDemo", "DEEPPSMADemo", "SPADEDemo", "ViMedDemo", "DICOMDemo", "PETCTPretrainDemo"):
        assert name in text
    test_ids = (out / "test_cases.txt").read_text().split()
    pretrain_cases = [p.name for p in (out / "nnUNet_raw").glob("Dataset910_*/labelsTr/*.nii.gz")]
    assert test_ids and pretrain_cases
    assert not [c for c in pretrain_cases if any(t in c for t in test_ids)]
    # the test set has the lesion-positive and lesion-free studies the profile asks for
    records = [json.loads(line) for line in
               next((out / "nnUNet_raw").glob("Dataset901_*/manifest.jsonl")).read_text().splitlines()]
    fg = {r["case_id"]: r["label"]["foreground_voxels"] for r in records}
    assert sum(fg[c] > 0 for c in test_ids) >= 1 and sum(fg[c] == 0 for c in test_ids) >= 1

    # the metric table has the four methods, each number with its n, evaluated on the held-out cases
    for label in ("fine-tuned from the foundation model", "from scratch", "stock nnU-Net", "linear probe"):
        assert f"| {label}" in text
    for method in ("pretrained", "scratch", "nnunet_default", "probe"):
        summary = json.loads((out / "evaluation" / method / "summary.json").read_text())
        assert summary["n_cases"] == len(test_ids)
    n_pos = sum(fg[c] > 0 for c in test_ids)
    assert f"(n={n_pos})" in text  # Dice over the lesion-positive test cases
    assert "## Pretrained vs scratch" in text and "pseudo-Dice" in text

    # the figures exist as real PNGs and the report links them
    for fig in ("pseudo_dice_curves.png", "mae_preview.png", "mae_progress.png"):
        path = out / "figures" / fig
        assert path.read_bytes()[:8] == PNG, fig
        assert f"figures/{fig}" in text
    assert list((out / "figures").glob("mip_pretrained_*.png"))

    # progress was shown while the training runs went (epoch x/N of each run)
    assert "MAE pretraining" in demo_run.proc.stdout
    assert "pretrained: done" in demo_run.proc.stdout and "scratch: done" in demo_run.proc.stdout

    # every command is recorded, with the demo folder as "$DEMO" (expanded by the shell)
    commands = (out / "commands.sh").read_text()
    for tool in ("python -m nnunetv2_petct.demo.downloads", "nnUNetv2_petct_convert", "nnUNetv2_plan_and_preprocess",
                 "nnUNetv2_train", "nnUNetv2_petct_label_efficiency", "nnUNetv2_petct_evaluate"):
        assert tool in commands
    assert str(out) not in commands
    assert "'$DEMO" not in commands and '"$DEMO/' in commands
    assert subprocess.run(["bash", "-n", str(out / "commands.sh")]).returncode == 0


def test_demo_rerun_reuses_every_step(demo_run):
    text = (demo_run.out / "report.md").read_text()
    commands = (demo_run.out / "commands.sh").read_text()
    again = subprocess.run(demo_run.cmd, env=demo_run.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 6
    assert (demo_run.out / "report.md").read_text().split("## Time per step")[0] == text.split("## Time per step")[0]
    assert (demo_run.out / "commands.sh").read_text() == commands


def test_recorded_commands_rerun_in_a_fresh_folder(demo_run, tmp_path):
    """commands.sh up to the pretraining set (downloads, the five conversions, the test list, the merge) in an
    empty folder gives the same datasets; `bash -n` has checked the whole script above."""
    lines = (demo_run.out / "commands.sh").read_text().splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("nnUNetv2_petct_pretraining_dataset"))
    script = tmp_path / "head.sh"
    script.write_text("\n".join(lines[: stop + 1]) + "\n")
    fresh = tmp_path / "fresh demo"  # a space in the path: the quoting must hold
    env = {**demo_run.env, "DEMO": str(fresh), "PATH": f"{Path(sys.executable).parent}:{demo_run.env['PATH']}"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for ds in sorted((demo_run.out / "nnUNet_raw").glob("Dataset*")):
        original = sorted(p.name for p in (ds / "imagesTr").glob("*.nii.gz"))
        again = sorted(p.name for p in (fresh / "nnUNet_raw" / ds.name / "imagesTr").glob("*.nii.gz"))
        assert again == original and original, ds.name
    assert (fresh / "test_cases.txt").read_text() == (demo_run.out / "test_cases.txt").read_text()


def test_label_efficiency_benchmark_grid_on_the_demo_data(demo_run, tmp_path):
    """The benchmark's tiny budget shares the test profile's data: on a copy of the finished demo folder it
    runs only its grid (one fraction, two methods, two seeds) and returns the runner's table."""
    out = tmp_path / "bench"
    shutil.copytree(demo_run.out, out, symlinks=True)
    proc = subprocess.run([sys.executable, "-m", "nnunetv2_petct.benchmarks", "label-efficiency", "--budget", "tiny",
                           "--out", str(out), "--device", "cpu", "--json"], env=demo_run.env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["benchmark"] == "label-efficiency" and res["budget"] == "tiny"
    assert "done before, skipped" in proc.stderr  # downloads, conversion, planning, pretraining reused
    assert set(res["seconds_per_step"]) >= {"grid"}
    assert res["planned"]["n_training_runs"] == 1 * 2 * 2  # fractions x seeds x methods
    # the runner's statistics: one row per method with mean, sd and n over the 2 seeds
    assert {r["method"] for r in res["summary"]} == {"pretrained", "scratch"}
    assert all(r["n_seeds"] == "2" for r in res["summary"])
    # pretrained vs scratch on the same test cases (the lesion-positive ones for Dice)
    [cmp] = [r for r in res["paired"] if r["method_a"] == "pretrained" and r["method_b"] == "scratch"]
    assert cmp["n_cases"] == "1"
    for name in ("label_efficiency.md", "label_efficiency_summary.csv", "label_efficiency_paired.csv"):
        assert Path(res["files"][name]).is_file()
    assert "±" in res["table_md"] or "(n=" in res["table_md"]
    # two seeds: four training commands with their seeds recorded in the grid's commands
    grid = (out / "grid" / "commands.sh").read_text()
    assert grid.count("nnUNetv2_train ") == 4 and "NNUNETV2_PETCT_SEED=" in grid
