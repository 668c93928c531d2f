"""nnUNetv2_petct_predict reads the model folder's checkpoints weights-only (issue 21, items 0 and 1): a
checkpoint whose pickle would run code is refused before anything runs, broken or foreign checkpoints are
named with what to do; exit 2, nothing written. A good checkpoint predicts through the same safe path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from reliability_helpers import model_checkpoint as _checkpoint
from reliability_helpers import network_state as _network_state
from reliability_helpers import run_cli
from reliability_helpers import write_model_folder as _model_folder


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _predict(folder: Path, inp: Path, out: Path, **env: str):
    inp.mkdir(exist_ok=True)
    args = ["-i", inp, "-o", out, "-m", folder, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0",
            "-nps", "0", "-q"]
    return run_cli("nnUNetv2_petct_predict", args, {**os.environ, **env}, timeout=300)


def test_payload_checkpoint_in_model_folder_never_runs(tmp_path):
    folder = _model_folder(tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "trainer_name": Payload(marker),
                "init_args": {"configuration": "3d_fullres"}}, ckpt)
    out = tmp_path / "out"
    proc = _predict(folder, tmp_path / "in", out)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert str(ckpt) in proc.stderr and "not a weights-only checkpoint" in proc.stderr
    assert "--import-trusted" in proc.stderr and "NNUNETV2_PETCT_TRUST_CHECKPOINT" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    # control: the file is live (the documented override unpickles it, running the payload)
    _predict(folder, tmp_path / "in", out, NNUNETV2_PETCT_TRUST_CHECKPOINT="1")
    assert marker.exists()


def _broken(kind: str, ckpt: Path) -> str:
    if kind == "empty":
        ckpt.write_bytes(b"")
        return "is empty (0 bytes)"
    if kind == "text":
        ckpt.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
        return "it is a text file"
    if kind == "truncated":
        torch.save(_checkpoint({"w": torch.zeros(1000)}), ckpt)
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
        return "truncated or corrupt"
    if kind == "no_trainer_name":
        torch.save({"network_weights": {"w": torch.zeros(1)}, "init_args": {"configuration": "3d_fullres"}}, ckpt)
        return "it lacks trainer_name"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "no_trainer_name"])
def test_broken_model_checkpoint_is_named(tmp_path, kind):
    folder = _model_folder(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    says = _broken(kind, ckpt)
    out = tmp_path / "out"
    proc = _predict(folder, tmp_path / "in", out)
    assert proc.returncode == 2, proc.stderr
    assert str(ckpt) in proc.stderr and says in proc.stderr, proc.stderr
    assert ("again" in proc.stderr) and "Traceback" not in proc.stderr and not out.exists()


def test_other_architecture_and_good_checkpoint(tiny_planned, tmp_path):
    d = tiny_planned
    pre = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset = json.loads((pre / "dataset.json").read_text())
    folder = _model_folder(tmp_path, plans, dataset)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(_checkpoint(_network_state(plans, dataset, in_channels=1)), ckpt)
    out = tmp_path / "out"
    proc = _predict(folder, d.test_images, out)
    assert proc.returncode == 2, proc.stderr
    assert str(ckpt) in proc.stderr and "another architecture" in proc.stderr and "of another shape" in proc.stderr
    assert len(proc.stderr.splitlines()) < 5 and "Traceback" not in proc.stderr and not out.exists()
    # the same folder with weights of this network predicts through the weights-only path
    torch.save(_checkpoint(_network_state(plans, dataset)), ckpt)
    inp = tmp_path / "in"
    inp.mkdir()
    first = sorted(d.test_images.glob("*_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
    for ch in ("0000", "0001"):
        shutil.copy(d.test_images / f"{first}_{ch}.nii.gz", inp)
    proc = _predict(folder, inp, out)
    assert proc.returncode == 0, proc.stderr
    assert (out / first / "lesions.nii.gz").is_file()
