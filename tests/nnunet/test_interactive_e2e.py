"""Click-guided trainers through the real CLIs on phantoms (issue 23).

One session fixture trains, through stock ``nnUNetv2_train`` on the tiny dataset:

- ``nnUNetTrainerPETCTInteractive_tiny`` from a foundation checkpoint (the 4-channel stem check, stock
  ``nnUNetv2_predict`` compatibility);
- ``nnUNetTrainerPETCTInteractiveScratch_tiny`` from scratch (and its refusal of pretrained weights).

What the clicks do at prediction (``nnUNetv2_petct_predict --clicks``, the autoPET IV layout, the evaluation
protocol) is tested with a model that learned to use them: ``tests/nnunet/test_click_model_cli.py``. A tiny
model trained within the test budget only moves the lesion logit in the right direction (measured: ~0.2
against a -4.6 prior on a copy with the lesions hidden in the PET), too little to show a click finding a lesion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import cli, run
from tests.nnunet.test_finetune_trainers import (
    copy_dataset,
    fold_dir,
    make_foundation_checkpoint,
    pretraining_data,
)

pytestmark = pytest.mark.slow

COPY_ID, COPY_NAME = 571, "PETCTInteractiveTiny"
FROM_FOUNDATION = "nnUNetTrainerPETCTInteractive_tiny"
FROM_SCRATCH = "nnUNetTrainerPETCTInteractiveScratch_tiny"


@dataclass
class Interactive:
    env: dict
    dataset_name: str
    foundation: Path
    test_images: Path  # the tiny dataset's held-out cases


@pytest.fixture(scope="session")
def interactive(tiny_dataset, tmp_path_factory) -> Interactive:
    d = tiny_dataset
    name = copy_dataset(d, COPY_ID, COPY_NAME)
    work = tmp_path_factory.mktemp("interactive")
    env = {**d.env, "nnUNet_def_n_proc": "1", "NNUNETV2_PETCT_SEED": "7"}
    foundation = work / "foundation_final.pth"
    pre = Path(d.env["nnUNet_preprocessed"]) / name
    make_foundation_checkpoint(pre, foundation, metadata={"pretraining_data": pretraining_data(["unlabeled_001"])})
    run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "0", "-tr", FROM_FOUNDATION, "-device", "cpu",
         "-pretrained_weights", str(foundation)], env, timeout=900)
    run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "0", "-tr", FROM_SCRATCH, "-device", "cpu"], env,
        timeout=900)
    return Interactive(env, name, foundation, d.test_images)


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _cases(images: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))


# --------------------------------------------------------------------------------------- training
def test_foundation_stem_becomes_four_channels_and_step_zero_is_the_pretrained_network(interactive):
    fold = fold_dir(interactive.env, interactive.dataset_name, FROM_FOUNDATION, 0)
    record = json.loads((fold / "interactive_stem.json").read_text())
    assert record["input_channels_pretrained"] == 2 and record["input_channels_now"] == 4
    assert record["max_abs_output_difference"] <= record["tolerance"] <= 1e-5
    info = json.loads((fold / "pretrained_weights.json").read_text())
    assert info["pretrained_weights_loaded"] is True
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["trainer_name"] == FROM_FOUNDATION
    stem = [v for k, v in ckpt["network_weights"].items() if k.endswith(".weight") and v.ndim == 5][0]
    assert stem.shape[1] == 4
    # the image slices started from the foundation model: after 4 tiny steps they are still close to it
    found = torch.load(interactive.foundation, map_location="cpu", weights_only=True)["network_weights"]
    first = [v for k, v in found.items() if k.endswith(".weight") and v.ndim == 5][0]
    assert first.shape[1] == 2
    assert float((stem[:, :2] - first).norm() / first.norm()) < 0.5


def test_scratch_interactive_model_trained_and_refuses_pretrained_weights(interactive):
    fold = fold_dir(interactive.env, interactive.dataset_name, FROM_SCRATCH, 0)
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    stem = [v for k, v in ckpt["network_weights"].items() if k.endswith(".weight") and v.ndim == 5][0]
    assert ckpt["trainer_name"] == FROM_SCRATCH and stem.shape[1] == 4  # CT, PET, two click channels
    assert not (fold / "interactive_stem.json").exists()  # nothing to widen from scratch
    proc = run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "1", "-tr", FROM_SCRATCH, "-device", "cpu",
                "-pretrained_weights", str(interactive.foundation)], interactive.env, check=False, timeout=600)
    assert proc.returncode != 0
    assert "refuses pretrained weights" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("trainer", [FROM_FOUNDATION, FROM_SCRATCH])
def test_stock_nnunetv2_predict_runs_the_interactive_model_without_clicks(interactive, tmp_path, trainer):
    out = tmp_path / "stock"
    run([cli("nnUNetv2_predict"), "-i", str(interactive.test_images), "-o", str(out), "-d", str(COPY_ID), "-c",
         "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps",
         "0"], interactive.env, timeout=600)
    for case in _cases(interactive.test_images):
        pred, pimg = _read(out / f"{case}.nii.gz")
        ref_arr, ref = _read(interactive.test_images / f"{case}_0001.nii.gz")
        assert pred.shape == ref_arr.shape and pimg.GetSpacing() == ref.GetSpacing()
