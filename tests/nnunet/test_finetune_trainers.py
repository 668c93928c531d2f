"""Transfer trainers (fine-tune, scratch, linear probe) through the stock nnU-Net CLIs on phantoms.

The expensive part, one tiny training + stock ``nnUNetv2_predict`` per (method, label fraction), is done
once per session by the ``transfer_grid`` fixture, which runs the label-efficiency CLI on a private copy
of the tiny dataset (its splits_final.json gets extra folds; the shared fixture's stays untouched).
``tests/nnunet/test_label_efficiency.py`` imports the same fixture and checks the table.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli, run

COPY_ID, COPY_NAME = 561, "PETCTTransferTiny"
FRACTIONS = ("0.5", "1.0")
METHODS = ("pretrained", "scratch", "probe")
TRAINERS = {"pretrained": "nnUNetTrainerPETCTFinetune_tiny", "scratch": "nnUNetTrainerPETCTScratch_tiny",
            "probe": "nnUNetTrainerPETCTLinearProbe_tiny"}


# ------------------------------------------------------------------------------------------ helpers
def copy_dataset(d, dataset_id: int, name: str) -> str:
    """Copy the tiny dataset's preprocessed folder (and raw metadata) to a new id; returns its name."""
    new = f"Dataset{dataset_id:03d}_{name}"
    pre = Path(d.env["nnUNet_preprocessed"])
    if not (pre / new).exists():
        shutil.copytree(pre / d.dataset_name, pre / new)
        (pre / new / "splits_final.json").unlink(missing_ok=True)
        plans = json.loads((pre / new / "nnUNetPlans.json").read_text())
        plans["dataset_name"] = new
        (pre / new / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
        raw_src, raw_dst = Path(d.env["nnUNet_raw"]) / d.dataset_name, Path(d.env["nnUNet_raw"]) / new
        raw_dst.mkdir(parents=True, exist_ok=True)
        for f in ("dataset.json", "phantom_cases.json"):
            shutil.copy2(raw_src / f, raw_dst / f)
    return new


def make_foundation_checkpoint(preprocessed_dataset_dir: Path, out: Path, num_input_channels: int = 2,
                               seed: int = 0, channel_names=("CT", "PET")) -> Path:
    """A checkpoint shaped like the MAE trainer's ``foundation_final.pth``: the U-Net of the dataset's
    plans with ``num_input_channels`` inputs and as many outputs (reconstruction head), random weights,
    plus the ``nnssl_adaptation_plan``. Random weights are enough to test transfer mechanics."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_petct.transfer.foundation import build_foundation_checkpoint, save_foundation_checkpoint

    plans = json.loads((preprocessed_dataset_dir / "nnUNetPlans.json").read_text())
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), num_input_channels,
                                                   num_input_channels, False)
    with torch.no_grad():  # make norm parameters non-trivial so that any reset would show
        for n, p in net.named_parameters():
            if "norm" in n:
                p.add_(0.05 * torch.randn_like(p))
    ckpt = build_foundation_checkpoint(net.state_dict(), plans, "3d_fullres", num_input_channels,
                                       {"trainer_name": "synthetic (tests)"}, list(channel_names))
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_foundation_checkpoint(ckpt, out)


def fold_dir(env, dataset_name: str, trainer: str, fold: int | str) -> Path:
    return Path(env["nnUNet_results"]) / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def load_trained(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's own checkpoint (trusted)


@dataclass
class TransferGrid:
    env: dict
    dataset_name: str
    foundation: Path
    out: Path
    design: dict
    proc_stdout: str
    test_images: Path
    test_labels: Path


@pytest.fixture(scope="session")
def transfer_grid(tiny_dataset, tmp_path_factory) -> TransferGrid:
    """The label-efficiency CLI end to end: fractions 0.5 and 1.0 x {pretrained, scratch, probe} (_tiny)."""
    d = tiny_dataset
    name = copy_dataset(d, COPY_ID, COPY_NAME)
    # A fixed folder, and a marker when done: test_label_efficiency imports this fixture, which gives it a
    # second definition in pytest; the second call then reuses the finished grid instead of re-running it.
    work = tmp_path_factory.getbasetemp() / "transfer_grid"
    work.mkdir(exist_ok=True)
    foundation, out, done = work / "foundation_final.pth", work / "le", work / "done.json"
    env = {**d.env, "nnUNet_def_n_proc": "1"}  # fewer spawned worker processes: faster on 2 cores
    if not done.is_file():
        make_foundation_checkpoint(Path(d.env["nnUNet_preprocessed"]) / name, foundation)
        proc = run([cli("nnUNetv2_petct_label_efficiency"), "-d", str(COPY_ID), "--pretrained", str(foundation),
                    "--fractions", *FRACTIONS, "--methods", *METHODS, "--trainer-suffix", "_tiny",
                    "--test-images", str(d.test_images), "--test-labels", str(d.test_labels), "-device", "cpu",
                    "--disable-tta", "-npp", "0", "-nps", "0", "-o", str(out), "-q"], env, timeout=1500)
        done.write_text(json.dumps({"stdout": proc.stdout}))
    design = json.loads((out / "label_efficiency_design.json").read_text())
    stdout = json.loads(done.read_text())["stdout"]
    return TransferGrid(env, name, foundation, out, design, stdout, d.test_images, d.test_labels)


def _fold_of(grid: TransferGrid, subset: str) -> int:
    return next(s["fold"] for s in grid.design["subsets"] if s["name"] == subset)


# --------------------------------------------------------------------------------------- e2e tests

@pytest.mark.slow
@pytest.mark.parametrize("subset", ["frac0.5", "frac1"])
def test_probe_keeps_every_pretrained_weight_bit_for_bit(transfer_grid, subset):
    from nnunetv2_petct.transfer.weights import differing_tensors, is_output_key

    g = transfer_grid
    fd = fold_dir(g.env, g.dataset_name, TRAINERS["probe"], _fold_of(g, subset))
    final = load_trained(fd / "checkpoint_final.pth")["network_weights"]
    pretrained = torch.load(g.foundation, weights_only=True)["network_weights"]
    assert differing_tensors(pretrained, final) == []  # all but .seg_layers.
    assert sum(not is_output_key(k) for k in final) > 100  # and that is most of the network
    info = json.loads((fd / "pretrained_weights.json").read_text())
    assert info["pretrained_weights_loaded"] is True
    assert Path(info["pretrained_weights_file"]) == g.foundation
    log = "\n".join(p.read_text() for p in fd.glob("training_log_*.txt"))
    # tiny plans: last decoder stage has 4 features, 2 classes: a 1x1x1 conv = 4*2 weights + 2 biases
    assert re.search(r"trainable: 10\s*$", log, re.M)
    assert "Current learning rate: 0.01" in log  # probe schedule = nnU-Net's default rate
    assert "verified: frozen weights are bit-identical" in log


@pytest.mark.slow
def test_finetune_loads_then_trains_and_scratch_does_not_load(transfer_grid):
    from nnunetv2_petct.transfer.weights import differing_tensors

    g = transfer_grid
    fold = _fold_of(g, "frac1")
    pretrained = torch.load(g.foundation, weights_only=True)["network_weights"]
    ft = fold_dir(g.env, g.dataset_name, TRAINERS["pretrained"], fold)
    sc = fold_dir(g.env, g.dataset_name, TRAINERS["scratch"], fold)
    assert json.loads((ft / "pretrained_weights.json").read_text())["pretrained_weights_loaded"] is True
    info_sc = json.loads((sc / "pretrained_weights.json").read_text())
    assert info_sc["pretrained_weights_loaded"] is False and info_sc["pretrained_weights_file"] is None
    changed = differing_tensors(pretrained, load_trained(ft / "checkpoint_final.pth")["network_weights"])
    assert "encoder.stages.0.0.convs.0.conv.weight" in changed  # fine-tuning trains the encoder too
    for fd in (ft, sc):  # same schedule: lr 1e-3 (tiny: 1 warm-up epoch reaches the peak at once)
        log = "\n".join(p.read_text() for p in fd.glob("training_log_*.txt"))
        assert "Current learning rate: 0.001" in log and "linear warm-up 1 epoch(s)" in log


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_stock_predict_output_is_on_the_pet_grid(transfer_grid, method):
    import SimpleITK as sitk

    g = transfer_grid
    pets = sorted(g.test_images.glob("*_0001.nii.gz"))
    assert pets
    for subset in ("frac0.5", "frac1"):
        pred_dir = g.out / "predictions" / method / subset
        for pet_file in pets:
            case = pet_file.name[: -len("_0001.nii.gz")]
            pred, pet = sitk.ReadImage(str(pred_dir / f"{case}.nii.gz")), sitk.ReadImage(str(pet_file))
            assert pred.GetSize() == pet.GetSize()
            np.testing.assert_allclose(pred.GetSpacing(), pet.GetSpacing(), rtol=1e-5)
            np.testing.assert_allclose(pred.GetOrigin(), pet.GetOrigin(), atol=1e-3)
            assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("trainer,with_weights,expected", [
    ("nnUNetTrainerPETCTFinetune_tiny", False, "needs pretrained weights, but none were loaded"),
    ("nnUNetTrainerPETCTLinearProbe_tiny", False, "needs pretrained weights, but none were loaded"),
    ("nnUNetTrainerPETCTScratch_tiny", True, "refuses pretrained weights"),
    ("nnUNetTrainerPETCTLinearProbeRandomInit_tiny", True, "refuses pretrained weights"),
])
def test_wrong_initialization_is_refused_with_a_clear_message(transfer_grid, trainer, with_weights, expected):
    g = transfer_grid
    cmd = [cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "1", "-tr", trainer, "-device", "cpu"]
    if with_weights:
        cmd += ["-pretrained_weights", str(g.foundation)]
    proc = run(cmd, g.env, timeout=300, check=False)
    assert proc.returncode != 0
    assert "PretrainedWeightsError" in proc.stderr and expected in proc.stderr
    assert not (fold_dir(g.env, g.dataset_name, trainer, 1) / "checkpoint_final.pth").exists()


@pytest.mark.slow
def test_real_mae_tiny_output_loads_bit_for_bit_into_a_probe(transfer_grid):
    """Integration with the MAE trainer: its foundation_final.pth goes through stock -pretrained_weights."""
    from nnunetv2_petct.nnunet.trainers.finetune import network_from_plans
    from nnunetv2_petct.transfer.weights import check_compatibility, differing_tensors

    g = transfer_grid
    run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "all", "-tr", "nnUNetTrainerPETCTMAE_tiny", "-device",
         "cpu"], g.env, timeout=900)
    foundation = fold_dir(g.env, g.dataset_name, "nnUNetTrainerPETCTMAE_tiny", "all") / "foundation_final.pth"
    assert foundation.is_file()
    mae = torch.load(foundation, weights_only=True)
    pre = Path(g.env["nnUNet_preprocessed"]) / g.dataset_name
    net = network_from_plans(json.loads((pre / "nnUNetPlans.json").read_text()), "3d_fullres",
                             dataset_json=json.loads((pre / "dataset.json").read_text()))
    assert check_compatibility(mae, net).ok
    # fold 0: the patient-grouped CV fold the runner wrote before its own folds (none of the grid's runs)
    run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerPETCTLinearProbe_tiny",
         "-device", "cpu", "-pretrained_weights", str(foundation)], g.env, timeout=900)
    fd = fold_dir(g.env, g.dataset_name, "nnUNetTrainerPETCTLinearProbe_tiny", 0)
    final = load_trained(fd / "checkpoint_final.pth")["network_weights"]
    assert differing_tensors(mae["network_weights"], final) == []
    assert json.loads((fd / "pretrained_weights.json").read_text())["pretrained_weights_file"] == str(foundation)


# ------------------------------------------------------------------------------- in-process units
def test_warmup_poly_lr_by_hand():
    from nnunetv2_petct.nnunet.trainers.finetune import warmup_poly_lr

    # 50 warm-up epochs of 1000, peak 1e-3: epoch e < 50 -> 1e-3 * (e + 1) / 50
    assert warmup_poly_lr(0, 1e-3, 50, 1000) == pytest.approx(2e-5)
    assert warmup_poly_lr(24, 1e-3, 50, 1000) == pytest.approx(5e-4)
    assert warmup_poly_lr(49, 1e-3, 50, 1000) == pytest.approx(1e-3)
    # then poly over the remaining 950 epochs: epoch 525 is half-way -> 1e-3 * 0.5 ** 0.9
    assert warmup_poly_lr(50, 1e-3, 50, 1000) == pytest.approx(1e-3)
    assert warmup_poly_lr(525, 1e-3, 50, 1000) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert warmup_poly_lr(1000, 1e-3, 50, 1000) == 0.0
    # no warm-up = nnU-Net's PolyLRScheduler: 1e-2 * (1 - 500/1000) ** 0.9
    assert warmup_poly_lr(500, 1e-2, 0, 1000) == pytest.approx(1e-2 * 0.5 ** 0.9)


def test_scheduler_is_stateless_in_the_epoch():
    from nnunetv2_petct.nnunet.trainers.finetune import WarmupPolyLRScheduler, warmup_poly_lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLRScheduler(opt, 1e-3, 50, 1000)
    sched.step(700)  # a run continued with --c at epoch 700 gets epoch 700's rate directly
    assert opt.param_groups[0]["lr"] == pytest.approx(warmup_poly_lr(700, 1e-3, 50, 1000))


def _tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(input_channels=2, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d,
                         kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=2, num_classes=2,
                         n_conv_per_stage_decoder=[2, 2], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=False)


def test_freezing_selects_the_right_parameters_and_modes():
    from types import SimpleNamespace

    from nnunetv2_petct.nnunet.trainers.finetune import FreezeMixin, FrozenEncoderMixin, LinearProbeMixin

    net = _tiny_unet()
    probe = SimpleNamespace(network=net, trainable_parameters=lambda m: LinearProbeMixin.trainable_parameters(None, m))
    FreezeMixin._apply_freeze(probe)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"decoder.seg_layers.1.weight", "decoder.seg_layers.1.bias"}  # last of 2 output convs
    net.train()
    FreezeMixin._set_frozen_modules_to_eval(probe)
    modes = {n: m.training for n, m in net.named_modules() if next(m.children(), None) is None}
    assert modes["decoder.seg_layers.1"] is True
    assert all(not t for n, t in modes.items() if n != "decoder.seg_layers.1")  # norms, convs, activations
    assert set(FreezeMixin._frozen_state(probe)) == set(net.state_dict()) - trainable

    net = _tiny_unet()
    enc = SimpleNamespace(network=net, trainable_parameters=lambda m: FrozenEncoderMixin.trainable_parameters(None, m))
    FreezeMixin._apply_freeze(enc)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for n, p in net.decoder.named_parameters() if not n.startswith("encoder."))
    net.train()
    FreezeMixin._set_frozen_modules_to_eval(enc)
    assert not net.encoder.stages[0][0].convs[0].norm.training
    assert net.decoder.stages[0].convs[0].norm.training and net.decoder.stages[0].convs[0].nonlin.training


def test_pretrained_file_is_read_from_argv():
    from nnunetv2_petct.nnunet.trainers.finetune import _pretrained_file_from_argv

    assert _pretrained_file_from_argv(["nnUNetv2_train", "1", "3d_fullres", "0", "-pretrained_weights", "f.pth"]) \
        == "f.pth"
    assert _pretrained_file_from_argv(["nnUNetv2_train", "1", "3d_fullres", "0"]) is None
