"""`make demo`'s pipeline code with the tiniest settings (profile "test"), through the real CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import nnunet_env

pytestmark = pytest.mark.slow


def test_demo_pipeline_runs_end_to_end_and_is_idempotent(tmp_path):
    out = tmp_path / "demo_output"
    env = nnunet_env(tmp_path / "unused")  # CPU settings; the demo sets its own nnUNet_* folders under --out
    cmd = [sys.executable, "-m", "nnunetv2_petct.demo", "--profile", "test", "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out / "report.md"
    assert f"Report: {report}" in proc.stdout
    text = report.read_text()

    # every cohort was converted; the pretraining set excludes the held-out AutoPET test studies
    for name in ("AutoPETDemo", "DEEPPSMADemo", "SPADEDemo", "ViMedDemo", "DICOMDemo", "PETCTPretrainDemo"):
        assert name in text
    test_ids = (out / "test_cases.txt").read_text().split()
    pretrain_cases = [p.name for p in (out / "nnUNet_raw").glob("Dataset910_*/labelsTr/*.nii.gz")]
    assert test_ids and pretrain_cases
    assert not [c for c in pretrain_cases if any(t in c for t in test_ids)]

    # the metric table has the three methods, with numbers evaluated on the held-out cases
    for label in ("fine-tuned from the foundation model", "from scratch", "linear probe"):
        assert f"| {label}" in text
    for method in ("pretrained", "scratch", "probe"):
        summary = json.loads((out / "evaluation" / method / "summary.json").read_text())
        assert summary["n_cases"] == len(test_ids)

    # the figures exist as real PNGs and the report links them
    for fig in ("mae_preview.png", "mae_progress.png", "dice_vs_fraction.png", "progress_pretrained.png"):
        path = out / "figures" / fig
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
        assert f"figures/{fig}" in text
    assert list((out / "figures").glob("mip_pretrained_*.png"))

    # every command is recorded, copy-pasteable, with the demo folder as $DEMO
    commands = (out / "commands.sh").read_text()
    for tool in ("nnUNetv2_petct_convert", "nnUNetv2_plan_and_preprocess", "nnUNetv2_train",
                 "nnUNetv2_petct_label_efficiency", "nnUNetv2_petct_evaluate"):
        assert tool in commands
    assert str(out) not in commands

    # idempotent: a second run reuses every step and rewrites the same report
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 6
    assert report.read_text().split("## Time per step")[0] == text.split("## Time per step")[0]
    assert (out / "commands.sh").read_text() == commands
