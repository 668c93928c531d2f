"""nnUNetv2_petct_predict: bad input gives one `error:` line and exit code 2 (real console script)."""

from __future__ import annotations

import pytest

from nnunetv2_petct.nnunet.env import nnunet_env
from tests.conftest import cli, run


@pytest.fixture()
def env(tmp_path):
    return nnunet_env(tmp_path / "nnunet")


def _assert_error(proc, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr[-2000:]


def test_missing_input_folder(tmp_path, env):
    proc = run([cli("nnUNetv2_petct_predict"), "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out"),
                "-m", str(tmp_path)], env, check=False, timeout=120)
    _assert_error(proc, "does not exist")
    assert not (tmp_path / "out").exists()


def test_model_folder_missing_or_not_chosen(tmp_path, env):
    (tmp_path / "in").mkdir()
    proc = run([cli("nnUNetv2_petct_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                "-m", str(tmp_path / "no_model")], env, check=False, timeout=120)
    _assert_error(proc, "model folder")
    proc = run([cli("nnUNetv2_petct_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")],
               env, check=False, timeout=120)
    _assert_error(proc, "choose the model")
    proc = run([cli("nnUNetv2_petct_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "out"),
                "-m", str(tmp_path)], env, check=False, timeout=120)
    _assert_error(proc, "must not be inside the input folder")


def test_missing_fold_and_wrong_channels_are_named(tmp_path, env):
    import json

    model = tmp_path / "Dataset777_X" / "nnUNetTrainerPETCT__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"not read")
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET", "1": "CT"},
                                                    "labels": {"background": 0, "lesion": 1}}))
    (tmp_path / "in").mkdir()
    base = [cli("nnUNetv2_petct_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model)]
    proc = run(base + ["-f", "0", "1"], env, check=False, timeout=120)
    _assert_error(proc, "no checkpoint_final.pth for fold(s) 1 (folds with this checkpoint: 0)")
    proc = run(base + ["-f", "0"], env, check=False, timeout=120)
    _assert_error(proc, "_0000 = CT, _0001 = PET")


def test_help_explains_the_outputs():
    import subprocess

    proc = subprocess.run([cli("nnUNetv2_petct_predict"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for word in ("lesions_seg.dcm", "report.html", "summary.csv", "--min-volume-ml", "--anonymize", "-device",
                 "--disable_tta", "partial CT coverage"):
        assert word in proc.stdout, word
