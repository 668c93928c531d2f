"""nnUNetv2_petct_evaluate: exit codes, outputs and messages (in-process and as a module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_petct.cli.evaluate import main

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, arr: np.ndarray, spacing_xyz=(2.0, 2.0, 3.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    """Two cases at 3 x 2 x 2 mm (0.012 ml voxels): c1 half found + 1 FP voxel, c2 found exactly."""
    ref, pred, pet = tmp_path / "labels", tmp_path / "pred", tmp_path / "images"
    g = np.zeros((6, 6, 6), np.uint8)
    g[1:3, 1:3, 1:3] = 1  # 8 voxels
    p = np.zeros_like(g)
    p[1:3, 1:3, 1] = 1  # 4 voxels inside
    p[5, 5, 5] = 1
    write(ref / "c1.nii.gz", g)
    write(pred / "c1.nii.gz", p)
    write(ref / "c2.nii.gz", g)
    write(pred / "c2.nii.gz", g)
    for c in ("c1", "c2"):
        write(pet / f"{c}_0001.nii.gz", np.full(g.shape, 3.0, np.float32))
    return ref, pred, pet, tmp_path / "out"


def test_cli_writes_outputs_and_prints_summary(folders, capsys):
    ref, pred, pet, out = folders
    rc = main(["-ref", str(ref), "-pred", str(pred), "-pet", str(pet), "-o", str(out), "--overlap", "iou0.5"])
    assert rc == 0
    js = json.loads((out / "summary.json").read_text())
    # c1: Dice 2*4/(8+5) = 8/13; c2: 1 -> mean (8/13 + 1)/2; FPV: c1 one voxel 0.012 ml, c2 0 -> mean 0.006
    assert js["mean"]["dice"] == pytest.approx((8 / 13 + 1) / 2)
    assert js["mean"]["fpv_ml"] == pytest.approx(0.006)
    # iou0.5: c1's prediction covers half the lesion, IoU 4/8 = 0.5 -> detected; c2 detected
    assert js["overlap"] == "iou0.5" and js["detection"]["n_gt_detected"] == 2
    # TLG of the GT lesion: SUV 3 x 8 x 0.012 ml = 0.288 in both cases
    assert js["mean"]["gt_total_tlg"] == pytest.approx(0.288)
    for name in ("per_case.csv", "per_lesion.csv", "summary.md"):
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "Dice" in printed and "2 cases" in printed


def test_cli_quiet_prints_nothing(folders, capsys):
    ref, pred, _, out = folders
    assert main(["-ref", str(ref), "-pred", str(pred), "-o", str(out), "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""


def test_cli_bad_input_exit_code_2_names_the_case(folders, capsys):
    ref, pred, _, out = folders
    (pred / "c2.nii.gz").unlink()
    assert main(["-ref", str(ref), "-pred", str(pred), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "c2" in err and "no prediction" in err


def test_cli_geometry_mismatch_exit_code_2(folders, capsys):
    ref, pred, _, out = folders
    write(pred / "c1.nii.gz", np.zeros((6, 6, 6), np.uint8), spacing_xyz=(2.0, 2.0, 2.0))
    assert main(["-ref", str(ref), "-pred", str(pred), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "c1" in err and "spacing" in err and "c2" not in err


def test_cli_help_and_bad_overlap(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("-ref", "-pred", "-pet", "-np", "--overlap", "summary.json"):
        assert opt in text
    with pytest.raises(SystemExit) as e:
        main(["-ref", "a", "-pred", "b", "-o", "c", "--overlap", "iou0.3"])
    assert e.value.code == 2


def test_cli_runs_as_a_module(folders):
    ref, pred, _, out = folders
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "nnunetv2_petct.cli.evaluate", "-ref", str(ref), "-pred",
                           str(pred), "-o", str(out), "-q", "-np", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2
