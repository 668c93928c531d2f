"""``nnUNetv2_petct_adapt_checkpoint`` through the installed script; outputs loaded with nnU-Net's own loader."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import cli
from tests.nnunet.test_finetune_trainers import make_foundation_checkpoint

IN_PROJ = "encoder.stages.0.0.convs.0.conv.weight"


def _adapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli("nnUNetv2_petct_adapt_checkpoint"), *args], capture_output=True, text=True,
                          timeout=300)


def _adapt_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same CLI through its ``main(argv)`` in this interpreter: exit code, stdout and stderr as from
    :func:`_adapt`, without a fresh torch + nnU-Net import per call (the script itself is run by the other
    tests here)."""
    from nnunetv2_petct.cli.adapt_checkpoint import main

    capsys.readouterr()  # drop anything printed before
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["nnUNetv2_petct_adapt_checkpoint", *args], code, out.out, out.err)


def _plans_network(pre: Path, in_ch: int):
    """The network nnU-Net builds for the tiny dataset's plans with ``in_ch`` input channels."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), in_ch, 2, True)


@pytest.fixture(scope="module")
def pre(tiny_planned) -> Path:
    """The tiny dataset's preprocessed folder: real nnU-Net plans (shrunk) and dataset.json, no data."""
    return Path(tiny_planned.env["nnUNet_preprocessed"]) / tiny_planned.dataset_name


def test_keep_pet_output_loads_with_stock_pretrained_weights_loader(pre, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    src = make_foundation_checkpoint(pre, tmp_path / "foundation_final.pth", seed=1)
    out = tmp_path / "foundation_pet.pth"
    proc = _adapt(str(src), "--keep", "PET", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    net = _plans_network(pre, 1)
    load_pretrained_weights(net, str(out))  # nnU-Net asserts every non-output key and shape
    original = torch.load(src, weights_only=True)["network_weights"]
    got = net.state_dict()
    assert torch.equal(got[IN_PROJ], original[IN_PROJ][:, 1:2])  # the PET slice (channel 1)
    assert torch.equal(got["encoder.stages.1.0.convs.0.conv.weight"], original["encoder.stages.1.0.convs.0.conv.weight"])
    ck = torch.load(out, weights_only=True)
    plan = ck["nnssl_adaptation_plan"]
    assert plan["pretrain_num_input_channels"] == 1 and plan["channel_names"] == ["PET"]
    assert plan["normalization_schemes"] == ["ZScoreNormalization"]  # the tiny plans: CT -> CTNormalization
    assert ck["petct_metadata"]["adaptations"][-1]["source_file"] == str(src.resolve())


def test_merge_ct_and_pet_outputs_load_into_a_two_channel_network(pre, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    ct = make_foundation_checkpoint(pre, tmp_path / "ct.pth", 1, seed=2, channel_names=("CT",))
    pet = make_foundation_checkpoint(pre, tmp_path / "pet.pth", 1, seed=3, channel_names=("PET",))
    out = tmp_path / "joint.pth"
    no_rule = _adapt("--ct", str(ct), "--pet", str(pet), "-o", str(out))
    assert no_rule.returncode == 2 and "--rule" in no_rule.stderr and not out.exists()
    proc = _adapt("--ct", str(ct), "--pet", str(pet), "--rule", "first", "-o", str(out), "--check", str(pre))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compatible" in proc.stdout
    net = _plans_network(pre, 2)
    load_pretrained_weights(net, str(out))
    wc = torch.load(ct, weights_only=True)["network_weights"]
    wp = torch.load(pet, weights_only=True)["network_weights"]
    got = net.state_dict()
    # rule "first": [w_ct, w_pet] for the input projection, the CT network's tensors everywhere else
    assert torch.equal(got[IN_PROJ], torch.cat([wc[IN_PROJ], wp[IN_PROJ]], 1))
    k = "decoder.stages.0.convs.1.norm.weight"
    assert torch.equal(got[k], wc[k]) and not torch.equal(got[k], wp[k])
    plan = torch.load(out, weights_only=True)["nnssl_adaptation_plan"]
    assert plan["pretrain_num_input_channels"] == 2 and plan["channel_names"] == ["CT", "PET"]


def test_check_mode_explains_mismatch_and_exit_codes(pre, tmp_path, capsys):
    two = make_foundation_checkpoint(pre, tmp_path / "two.pth")
    one = make_foundation_checkpoint(pre, tmp_path / "one.pth", 1, channel_names=("PET",))
    ok = _adapt_main(capsys, str(two), "--check", str(pre))
    assert ok.returncode == 0 and "compatible" in ok.stdout
    bad = _adapt(str(one), "--check", str(pre))  # the installed script once: exit code 1 reaches the shell
    assert bad.returncode == 1
    assert "Input channels: checkpoint 1, network 2" in bad.stdout and "nnUNetv2_petct_adapt_checkpoint" in bad.stdout
    # a different architecture: features changed in the plans -> the move-plans fix
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][-1] *= 2
    (tmp_path / "other_plans.json").write_text(json.dumps(plans))
    other = _adapt_main(capsys, str(two), "--check", str(tmp_path / "other_plans.json"), "--num-input-channels", "2")
    assert other.returncode == 1 and "nnUNetv2_move_plans_between_datasets" in other.stdout
    assert "vs" in other.stdout and "encoder.stages.2" in other.stdout
    # bad input: exit 2 with the offending file named
    missing = _adapt_main(capsys, str(tmp_path / "nope.pth"), "--keep", "PET", "-o", str(tmp_path / "x.pth"))
    assert missing.returncode == 2 and "nope.pth" in missing.stderr
    exists = _adapt_main(capsys, str(two), "--keep", "PET", "-o", str(two))
    assert exists.returncode == 2 and "exists" in exists.stderr
    unknown = _adapt_main(capsys, str(two), "--keep", "MR", "-o", str(tmp_path / "y.pth"))
    assert unknown.returncode == 2 and "'MR' not in the checkpoint's channels" in unknown.stderr


def test_help_states_the_merge_rule_and_its_limits():
    proc = _adapt("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "ONLY TO INITIALISE FINE-TUNING" in text and "first-conv only" in text
    assert "There is no averaging rule" in text and "not aligned unit by unit" in text
    assert "Do not linear-probe a merged checkpoint" in text and "nnUNetTrainerPETCTLateFusionProbe" in text
    assert "--rule {first,second}" in text
