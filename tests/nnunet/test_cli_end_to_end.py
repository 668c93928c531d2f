"""The stock nnU-Net CLIs with our base trainer, in subprocesses, on a tiny phantom dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import cli, run

pytestmark = pytest.mark.slow


def test_train_and_predict_with_stock_clis(tiny_dataset, tmp_path):
    d = tiny_dataset
    tr = "nnUNetTrainerPETCT_tiny"
    run([cli("nnUNetv2_train"), str(d.dataset_id), "3d_fullres", "0", "-tr", tr, "-device", "cpu"], d.env, timeout=900)
    fold = Path(d.env["nnUNet_results"]) / d.dataset_name / f"{tr}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = json.loads((fold.parent / "plans.json").read_text())
    assert log["configurations"]["3d_fullres"]["batch_size"] == 2  # the tiny plans were used

    out = tmp_path / "pred"
    run([cli("nnUNetv2_predict"), "-i", str(d.test_images), "-o", str(out), "-d", str(d.dataset_id),
         "-c", "3d_fullres", "-f", "0", "-tr", tr, "-device", "cpu", "-chk", "checkpoint_final.pth",
         "-npp", "1", "-nps", "1", "--disable_tta"], d.env, timeout=900)
    pets = sorted(d.test_images.glob("*_0001.nii.gz"))
    assert pets
    for pet_file in pets:
        case = pet_file.name[: -len("_0001.nii.gz")]
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        pet = sitk.ReadImage(str(pet_file))
        assert pred.GetSize() == pet.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), pet.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(pred.GetOrigin(), pet.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(pred.GetDirection(), pet.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}


def test_channel_check_stops_training_with_a_clear_message(tiny_dataset, tmp_path):
    # Same preprocessed data, but dataset.json claims the channels the other way round.
    import shutil

    d = tiny_dataset
    pre = Path(d.env["nnUNet_preprocessed"])
    swapped = pre / "Dataset502_PETCTSwapped"
    shutil.copytree(pre / d.dataset_name, swapped)
    ds = json.loads((swapped / "dataset.json").read_text())
    ds["channel_names"] = {"0": "PET", "1": "CT"}
    (swapped / "dataset.json").write_text(json.dumps(ds))
    plans = json.loads((swapped / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = swapped.name
    (swapped / "nnUNetPlans.json").write_text(json.dumps(plans))
    proc = run([cli("nnUNetv2_train"), "502", "3d_fullres", "0", "-tr", "nnUNetTrainerPETCT_tiny", "-device", "cpu"],
               d.env, timeout=600, check=False)
    assert proc.returncode != 0
    assert "expects 2 channel(s) in the order _0000 = CT, _0001 = PET" in proc.stderr
