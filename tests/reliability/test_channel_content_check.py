"""Issue 16, item 9: the channel check looks at the content, not only the names: from nnU-Net's dataset
fingerprint, channel 0 must look like HU and channel 1 like SUV/counts. A dataset with PET stored as
``_0000`` under the names CT/PET fails at trainer start, with the fix-it message; an override exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reliability_helpers import run_cli

from nnunetv2_petct.conversion.channels import channel_content_problems


def _props(**channels):
    return {k[1:]: dict(zip(("min", "percentile_00_5", "percentile_99_5", "max"), v)) for k, v in channels.items()}


@pytest.mark.parametrize("props, n_problems, n_notes", [
    # body-mask foreground (pretraining set): air/lung in CT, SUV in PET
    (_props(c0=(-1024, -950, 900, 2500), c1=(0.0, 0.1, 6.0, 40.0)), 0, 0),
    # lesion foreground, a lung lesion: CT reaches -667, PET 2.8..17 (the tiny phantoms)
    (_props(c0=(-667, -448, 54, 55), c1=(2.8, 2.86, 16.4, 17.2)), 0, 0),
    # swapped lesion dataset: PET in channel 0, CT in channel 1 (the 2.8-17.2)
    (_props(c0=(2.8, 2.86, 16.4, 17.2), c1=(-667, -448, 54, 55)), 2, 0),
    # swapped, soft-tissue lesions with a fat margin: only the minimum of channel 1 is HU-like
    (_props(c0=(1.5, 2.0, 9.0, 12.0), c1=(-80, -20, 80, 120)), 1, 0),
    # contrast-enhanced lesions and a PET with reconstruction noise slightly below 0: a note, no failure
    (_props(c0=(30, 45, 160, 210), c1=(-0.4, 0.0, 12.0, 20.0)), 0, 1),
    # contrast-enhanced lesions only: no negative HU and a non-negative PET: cannot tell, a note
    (_props(c0=(30, 45, 160, 210), c1=(1.0, 1.5, 12.0, 20.0)), 0, 1),
    # PET with slight reconstruction noise below 0 is fine
    (_props(c0=(-900, -120, 60, 300), c1=(-0.4, 0.0, 8.0, 15.0)), 0, 0),
])
def test_content_rules_by_hand(props, n_problems, n_notes):
    problems, notes = channel_content_problems(props)
    assert (len(problems), len(notes)) == (n_problems, n_notes), (problems, notes)


def test_single_channel_pet_dataset_holding_ct_is_caught():
    problems, _ = channel_content_problems(_props(c0=(-1024, -1000, 300, 1500)), expected=("PET",))
    assert problems and "HU-like" in problems[0]


@pytest.mark.slow
def test_swapped_channels_fail_at_trainer_start_through_nnunetv2_train(tiny_planned, tmp_path):
    d = tiny_planned
    raw, pre = Path(d.env["nnUNet_raw"]), Path(d.env["nnUNet_preprocessed"])
    # the planned dataset passes the rules on its real fingerprint
    real_fp = json.loads((pre / d.dataset_name / "dataset_fingerprint.json").read_text())
    assert channel_content_problems(real_fp["foreground_intensity_properties_per_channel"]) == ([], [])

    # the same cases with the files of the two channels exchanged, names still CT/PET
    swapped = raw / "Dataset517_PETCTSwappedFiles"
    shutil.copytree(raw / d.dataset_name, swapped)
    for f in sorted((swapped / "imagesTr").glob("*_0000.nii.gz")):
        pet = f.with_name(f.name.replace("_0000", "_0001"))
        tmp = f.with_name("swap.tmp")
        f.rename(tmp)
        pet.rename(f)
        tmp.rename(pet)
    env = {**d.env, "nnUNet_results": str(tmp_path / "results")}
    proc = run_cli("nnUNetv2_extract_fingerprint", ["-d", 517, "-np", 1], {**env, "nnUNet_n_proc_DA": "1"})
    assert proc.returncode == 0, proc.stderr
    plans = json.loads((pre / d.dataset_name / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = swapped.name
    (pre / swapped.name / "nnUNetPlans.json").write_text(json.dumps(plans))
    shutil.copy(swapped / "dataset.json", pre / swapped.name / "dataset.json")

    args = [517, "3d_fullres", 0, "-tr", "nnUNetTrainerPETCT_tiny", "-device", "cpu"]
    proc = run_cli("nnUNetv2_train", args, env, timeout=600)
    assert proc.returncode != 0
    assert "ChannelOrderError: the dataset's channel contents do not match their names" in proc.stderr
    assert "channel 1 (_0001, PET) has HU-like values" in proc.stderr
    assert "channel 0 (_0000, CT) has no negative value in the foreground" in proc.stderr
    assert "Reconvert the data with nnUNetv2_petct_convert" in proc.stderr
    assert "NNUNETV2_PETCT_SKIP_CHANNEL_CONTENT_CHECK=1" in proc.stderr

    # the override: the check is logged and training goes on (here it then stops later, for lack of
    # preprocessed data, which this test did not make)
    proc = run_cli("nnUNetv2_train", args, {**env, "NNUNETV2_PETCT_SKIP_CHANNEL_CONTENT_CHECK": "1"}, timeout=600)
    assert "channel content check overridden by NNUNETV2_PETCT_SKIP_CHANNEL_CONTENT_CHECK=1" in proc.stdout
    assert "ChannelOrderError" not in proc.stderr
    logs = list((tmp_path / "results").rglob("training_log_*.txt"))
    assert any("channel content check overridden" in p.read_text() for p in logs)
