"""Issue 16, items 2 and 8 (evaluation): a truncated or empty prediction, reference or PET is never scored;
nnUNetv2_petct_evaluate exits 2 naming the file and the reason; -o that cannot be written exits 2 up
front (one line), before any case is evaluated."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import cli_env, read_only_tree, run_cli

from nnunetv2_petct.cli.evaluate import main


def _write(path, arr):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def folders(tmp_path):
    """Two cases of 40^3 voxels, a 10^3 lesion each; predictions equal to the references."""
    ref, pred, pet = tmp_path / "labels", tmp_path / "pred", tmp_path / "images"
    g = np.zeros((40, 40, 40), np.uint8)
    g[10:20, 10:20, 10:20] = 1
    for c in ("c1", "c2"):
        _write(ref / f"{c}.nii.gz", g)
        _write(pred / f"{c}.nii.gz", g)
        _write(pet / f"{c}_0001.nii.gz", np.where(g > 0, 8.0, 1.0).astype(np.float32))
    return ref, pred, pet


@pytest.mark.parametrize("which, damage, reason", [
    ("pred", "truncate", "truncated"),
    ("pred", "empty", "the file is empty (0 bytes)"),
    ("ref", "truncate", "truncated"),
    ("pet", "truncate", "truncated"),
])
def test_damaged_input_is_named_and_exits_2(folders, tmp_path, which, damage, reason):
    ref, pred, pet = folders
    target = {"pred": pred / "c2.nii.gz", "ref": ref / "c2.nii.gz", "pet": pet / "c2_0001.nii.gz"}[which]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3] if damage == "truncate" else b"")
    out = tmp_path / "out"
    proc = run_cli("nnUNetv2_petct_evaluate", ["-ref", ref, "-pred", pred, "-pet", pet, "-o", out], cli_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(target) in proc.stderr and reason in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing scored, nothing written


def test_intact_inputs_still_score_perfectly(folders, tmp_path):
    ref, pred, pet = folders
    proc = run_cli("nnUNetv2_petct_evaluate", ["-ref", ref, "-pred", pred, "-pet", pet, "-o", tmp_path / "out"],
                   cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Dice 1 (n=2)" in proc.stdout


def test_output_that_is_a_file_or_below_a_file_exits_2(folders, tmp_path):
    ref, pred, pet = folders
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    for out, says in ((a_file, "it is a file, not a folder"), (a_file / "sub", "is a file, not a folder")):
        proc = run_cli("nnUNetv2_petct_evaluate", ["-ref", ref, "-pred", pred, "-o", out], cli_env(tmp_path))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot") and says in lines[0], proc.stderr
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("code, says", [
    (errno.EROFS, "Read-only file system"),
    (errno.EACCES, "Permission denied"),
    (errno.ENOSPC, "No space left on device (disk full, or no free inodes)"),
    (errno.EDQUOT, "quota"),
    (errno.EMFILE, "Too many open files"),
])
def test_unwritable_output_folder_exits_2_before_evaluating(folders, tmp_path, capsys, monkeypatch, code, says):
    """Simulated in-process (root ignores chmod): writes under -o fail with ``code``."""
    ref, pred, pet = folders
    out = tmp_path / "out"
    out.mkdir()
    import nnunetv2_petct.evaluation.folders as F

    evaluated = []
    monkeypatch.setattr(F, "_evaluate_files", lambda *a: evaluated.append(a))
    with read_only_tree(out, code):
        rc = main(["-ref", str(ref), "-pred", str(pred), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: cannot write to the output folder {out}") and says in err
    assert evaluated == [] and list(out.iterdir()) == []


def test_no_free_inodes_or_full_disk_detected_up_front(folders, tmp_path, capsys, monkeypatch):
    """os.statvfs simulated: no free inode, then no free block."""
    import os

    ref, pred, _ = folders
    real = os.statvfs

    class Fake:
        def __init__(self, st, **changes):
            self.__dict__.update({k: getattr(st, k) for k in dir(st) if k.startswith("f_")}, **changes)

    for changes, says in (({"f_favail": 0}, "no free inodes"), ({"f_bavail": 0}, "is full")):
        monkeypatch.setattr(os, "statvfs", lambda p, c=changes: Fake(real(p), **c))
        rc = main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out"), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and says in err and err.count("\n") == 1, err
