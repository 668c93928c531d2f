"""``nnUNetv2_petct_predict`` reads every model checkpoint weights-only (issue 21, items 0 and 1), through the
real command: a checkpoint whose pickle would run a command runs nothing; broken checkpoints are named
errors (exit 2, nothing written for the studies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, run

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerPETCT_tiny"


@pytest.fixture(scope="module")
def model(tiny_dataset, tmp_path_factory):
    d = tiny_dataset
    results = tmp_path_factory.mktemp("ckpt_results")
    env = {**d.env, "nnUNet_results": str(results)}
    run([cli("nnUNetv2_train"), str(d.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env,
        timeout=900)
    return env, results / d.dataset_name / f"{TRAINER}__nnUNetPlans__3d_fullres"


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _predict(env, model_folder: Path, study: Path, out: Path, extra_env=None):
    return run([cli("nnUNetv2_petct_predict"), "-i", str(study), "-o", str(out), "-m", str(model_folder), "-f", "0",
                "-device", "cpu", "--disable_tta", "-np", "0", "-q"], {**env, **(extra_env or {})}, check=False,
               timeout=600)


def _study(tiny_dataset, dest: Path) -> Path:
    dest.mkdir()
    case = sorted(tiny_dataset.test_images.glob("*_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
    for i in (0, 1):
        shutil.copy2(tiny_dataset.test_images / f"{case}_{i:04d}.nii.gz", dest)
    return dest


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_code_payload_in_a_model_checkpoint_never_runs(model, tiny_dataset, tmp_path):
    env, folder = model
    bad = _copy(folder, tmp_path / "model")
    marker = tmp_path / "PWNED"
    good = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    torch.save({**good, "payload": _Payload(marker)}, bad / "fold_0" / "checkpoint_final.pth")
    proc = _predict(env, bad, _study(tiny_dataset, tmp_path / "in"), tmp_path / "out")
    assert not marker.exists(), "the checkpoint's code ran"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(bad / "fold_0" / "checkpoint_final.pth") in proc.stderr
    assert "not a weights-only checkpoint" in proc.stderr and "posix.system" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*/lesions.nii.gz"))


@pytest.mark.parametrize("kind,expected", [
    ("empty", "is empty (0 bytes)"),
    ("text", "is not a PyTorch checkpoint: it is a text file"),
    ("truncated", "truncated or corrupt"),
    ("no_trainer_name", "not an nnU-Net training checkpoint (no 'trainer_name'"),
    ("other_architecture", "do not fit the network nnUNetTrainerPETCT_tiny builds"),
])
def test_broken_model_checkpoints_are_named(model, tiny_dataset, tmp_path, kind, expected):
    env, folder = model
    bad = _copy(folder, tmp_path / "model")
    path = bad / "fold_0" / "checkpoint_final.pth"
    good = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif kind == "truncated":
        data = (folder / "fold_0" / "checkpoint_final.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_trainer_name":
        torch.save({k: v for k, v in good.items() if k != "trainer_name"}, path)
    else:
        weights = dict(good["network_weights"])
        key = next(k for k, v in weights.items() if v.ndim == 5)
        weights[key] = torch.zeros((weights[key].shape[0] * 2, *weights[key].shape[1:]))
        torch.save({**good, "network_weights": weights}, path)
    proc = _predict(env, bad, _study(tiny_dataset, tmp_path / "in"), tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*/lesions.nii.gz"))


def test_the_intact_model_still_predicts_and_the_override_is_documented(model, tiny_dataset, tmp_path):
    env, folder = model
    proc = _predict(env, folder, _study(tiny_dataset, tmp_path / "in"), tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*/lesions.nii.gz"))) == 1
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "NNUNETV2_PETCT_TRUST_CHECKPOINT" in readme and "unpickles" in readme
