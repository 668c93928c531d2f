"""Transfer trainers (fine-tune, scratch, stock nnU-Net, linear and late-fusion probes) through the stock
nnU-Net CLIs on phantoms.

The expensive part, one tiny training + stock ``nnUNetv2_predict`` per (method, seed), is done once per
session by the ``transfer_grid`` fixture, which runs the label-efficiency CLI (fraction 0.5, ``--seeds 2``,
the default grid + ``late_fusion_probe``) on a private copy of the tiny dataset (its splits_final.json
gets extra folds; the shared fixture's stays untouched). ``tests/nnunet/test_label_efficiency.py``
imports the same fixture and checks the tables, the statistics and the plot.
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
FRACTIONS = ("0.5",)
SEEDS = 2
RUNS = ("frac0.5", "frac0.5_seed1")  # run folder names of the two replicates
METHODS = ("pretrained", "scratch", "nnunet_default", "probe", "late_fusion_probe")
TRAINERS = {"pretrained": "nnUNetTrainerPETCTFinetune_tiny", "scratch": "nnUNetTrainerPETCTScratch_tiny",
            "nnunet_default": "nnUNetTrainerPETCT_tiny", "probe": "nnUNetTrainerPETCTLinearProbe_tiny",
            "late_fusion_probe": "nnUNetTrainerPETCTLateFusionProbe_tiny"}


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
                               seed: int = 0, channel_names=("CT", "PET"), metadata: dict | None = None) -> Path:
    """A checkpoint shaped like the MAE trainer's ``foundation_final.pth``: the U-Net of the dataset's
    plans with ``num_input_channels`` inputs and as many outputs (reconstruction head), random weights,
    plus the ``nnssl_adaptation_plan`` and ``metadata`` (``petct_metadata``). Random weights are enough to
    test transfer mechanics."""
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
                                       {"trainer_name": "synthetic (tests)", **(metadata or {})}, list(channel_names))
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_foundation_checkpoint(ckpt, out)


def fold_dir(env, dataset_name: str, trainer: str, fold: int | str) -> Path:
    return Path(env["nnUNet_results"]) / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def load_trained(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's own checkpoint (trusted)


def pretraining_data(cases, dataset_name: str = "Dataset999_SyntheticPretraining") -> list[dict]:
    """``petct_metadata.pretraining_data`` of a synthetic foundation checkpoint pretrained on ``cases``."""
    return [{"dataset_name": dataset_name, "cases": [{"case_id": c} for c in cases]}]


@dataclass
class TransferGrid:
    env: dict
    dataset_name: str
    foundation: Path
    foundation_ct: Path
    foundation_pet: Path
    out: Path
    design: dict
    proc_stdout: str
    test_images: Path
    test_labels: Path


@pytest.fixture(scope="session")
def transfer_grid(tiny_dataset, tmp_path_factory) -> TransferGrid:
    """The label-efficiency CLI end to end: fraction 0.5 x 2 seeds x {pretrained, scratch, nnunet_default, probe,
    late_fusion_probe} (_tiny): 10 tiny trainings and predictions."""
    d = tiny_dataset
    name = copy_dataset(d, COPY_ID, COPY_NAME)
    # A fixed folder, and a marker when done: test_label_efficiency imports this fixture, which gives it a
    # second definition in pytest; the second call then reuses the finished grid instead of re-running it.
    work = tmp_path_factory.getbasetemp() / "transfer_grid"
    work.mkdir(exist_ok=True)
    foundation, out, done = work / "foundation_final.pth", work / "le", work / "done.json"
    ct, pet = work / "foundation_ct.pth", work / "foundation_pet.pth"
    env = {**d.env, "nnUNet_def_n_proc": "1"}  # fewer spawned worker processes: faster on 2 cores
    if not done.is_file():
        pre = Path(d.env["nnUNet_preprocessed"]) / name
        # pretrained on cases that are not the test cases: the leakage guard verifies them
        make_foundation_checkpoint(pre, foundation, metadata={"pretraining_data": pretraining_data(["unlabeled_001"])})
        make_foundation_checkpoint(pre, ct, 1, seed=2, channel_names=("CT",), metadata={
            "input_channels": [0], "pretraining_data": pretraining_data(["unlabeled_002"])})
        make_foundation_checkpoint(pre, pet, 1, seed=3, channel_names=("PET",), metadata={
            "input_channels": [1], "pretraining_data": pretraining_data(["unlabeled_003"])})
        proc = run([cli("nnUNetv2_petct_label_efficiency"), "-d", str(COPY_ID), "--pretrained", str(foundation),
                    "--pretrained-ct", str(ct), "--pretrained-pet", str(pet), "--seeds", str(SEEDS),
                    "--fractions", *FRACTIONS, "--methods", *METHODS, "--trainer-suffix", "_tiny",
                    "--test-images", str(d.test_images), "--test-labels", str(d.test_labels), "-device", "cpu",
                    "--disable-tta", "-npp", "0", "-nps", "0", "-o", str(out), "-q"], env, timeout=1800)
        done.write_text(json.dumps({"stdout": proc.stdout}))
    design = json.loads((out / "label_efficiency_design.json").read_text())
    stdout = json.loads(done.read_text())["stdout"]
    return TransferGrid(env, name, foundation, ct, pet, out, design, stdout, d.test_images, d.test_labels)


def _fold_of(grid: TransferGrid, run_name: str) -> int:
    return next(s["fold"] for s in grid.design["subsets"] if s["run_name"] == run_name)


# --------------------------------------------------------------------------------------- e2e tests

@pytest.mark.slow
@pytest.mark.parametrize("subset", RUNS)
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
    fold = _fold_of(g, "frac0.5")
    pretrained = torch.load(g.foundation, weights_only=True)["network_weights"]
    ft = fold_dir(g.env, g.dataset_name, TRAINERS["pretrained"], fold)
    sc = fold_dir(g.env, g.dataset_name, TRAINERS["scratch"], fold)
    st = fold_dir(g.env, g.dataset_name, TRAINERS["nnunet_default"], fold)
    assert json.loads((ft / "pretrained_weights.json").read_text())["pretrained_weights_loaded"] is True
    info_sc = json.loads((sc / "pretrained_weights.json").read_text())
    assert info_sc["pretrained_weights_loaded"] is False and info_sc["pretrained_weights_file"] is None
    changed = differing_tensors(pretrained, load_trained(ft / "checkpoint_final.pth")["network_weights"])
    assert "encoder.stages.0.0.convs.0.conv.weight" in changed  # fine-tuning trains the encoder too

    def log(fd):
        return "\n".join(p.read_text() for p in fd.glob("training_log_*.txt"))

    # the tiny schedule (2 epochs, warm-up 1 epoch) reaches each peak at once: fine-tuning 1e-3, scratch 1e-2
    # (its own tuned rate, same warm-up and length); stock nnU-Net: 1e-2 then poly 1e-2 * (1 - 1/2) ** 0.9
    assert re.findall(r"Current learning rate: ([0-9.]+)", log(ft)) == ["0.001", "0.001"]
    assert re.findall(r"Current learning rate: ([0-9.]+)", log(sc)) == ["0.01", "0.01"]
    assert re.findall(r"Current learning rate: ([0-9.]+)", log(st)) == ["0.01", str(round(1e-2 * 0.5 ** 0.9, 5))]
    assert "linear warm-up 1 epoch(s)" in log(ft) and "linear warm-up 1 epoch(s)" in log(sc)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_stock_predict_output_is_on_the_pet_grid(transfer_grid, method):
    import SimpleITK as sitk

    g = transfer_grid
    pets = sorted(g.test_images.glob("*_0001.nii.gz"))
    assert pets
    for subset in RUNS:
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
    ("nnUNetTrainerPETCTLateFusionProbe_tiny", False, "nnUNetv2_petct_late_fusion_checkpoint --ct"),
    ("nnUNetTrainerPETCTScratchLR1e3_tiny", True, "refuses pretrained weights"),
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
    # the foundation lists what it was pretrained on (fold all: every case of the dataset), for the leakage guard
    (data,) = mae["petct_metadata"]["pretraining_data"]
    cases = sorted(p.name[: -len(".b2nd")] for p in (pre / "nnUNetPlans_3d_fullres").glob("*.b2nd")
                   if not p.name.endswith("_seg.b2nd"))
    assert len(cases) == 8 and [c["case_id"] for c in data["cases"]] == cases
    assert data["dataset_name"] == g.dataset_name and data["fold"] == "all"
    assert data["identities_from"].startswith("case ids only")  # the phantom raw dataset has no manifest.jsonl
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


def _lr_per_epoch(trainer_cls, num_epochs: int) -> list[float]:
    """The learning rate of every epoch as the trainer's own optimizer and scheduler give it: build them with
    the trainer's ``configure_optimizers`` and step the scheduler with the epoch index, as nnU-Net's
    ``on_train_epoch_start`` does. ``initial_lr`` is what ``initialize`` sets (nnU-Net's 1e-2 for the stock
    trainer; ``finetune_initial_lr`` for ours, checked end to end in the tiny runs' logs)."""
    t = object.__new__(trainer_cls)
    t.network = _tiny_unet()
    t.num_epochs = num_epochs
    t.weight_decay = 3e-5
    t.initial_lr = getattr(trainer_cls, "finetune_initial_lr", 1e-2)
    t.print_to_log_file = lambda *a, **k: None
    optimizer, scheduler = t.configure_optimizers()
    lrs = []
    for epoch in range(num_epochs):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_scratch_and_finetune_schedules_value_by_value():
    from nnunetv2_petct.nnunet.trainers.base import nnUNetTrainerPETCT
    from nnunetv2_petct.nnunet.trainers.finetune import (
        nnUNetTrainerPETCTFinetune,
        nnUNetTrainerPETCTScratch,
        nnUNetTrainerPETCTScratchLR1e3,
    )

    def by_hand(peak: float, e: int) -> float:
        # 1000 epochs: warm-up 5 % = 50 epochs, linear up to the peak in epoch 49, then poly (0.9) over 950
        if e < 50:
            return peak * (e + 1) / 50
        return peak * (1 - (e - 50) / 950) ** 0.9

    ft = _lr_per_epoch(nnUNetTrainerPETCTFinetune, 1000)
    sc = _lr_per_epoch(nnUNetTrainerPETCTScratch, 1000)
    lr3 = _lr_per_epoch(nnUNetTrainerPETCTScratchLR1e3, 1000)
    stock = _lr_per_epoch(nnUNetTrainerPETCT, 1000)
    for e in range(1000):
        assert ft[e] == pytest.approx(by_hand(1e-3, e), rel=1e-12, abs=1e-15), e
        assert sc[e] == pytest.approx(by_hand(1e-2, e), rel=1e-12, abs=1e-15), e
        assert sc[e] == pytest.approx(10 * ft[e], rel=1e-12, abs=1e-15)  # same warm-up and length, 10x the peak
        assert lr3[e] == ft[e]  # the ablation: the fine-tuning schedule exactly
        assert stock[e] == pytest.approx(1e-2 * (1 - e / 1000) ** 0.9, rel=1e-12, abs=1e-15)  # nnU-Net's poly
    # a few values written out: epoch 0 = peak / 50, epoch 24 = peak / 2, epochs 49 and 50 = peak,
    # epoch 525 = half-way through the decay, the last epoch = peak * (1/950) ** 0.9
    assert [sc[e] for e in (0, 24, 49, 50)] == pytest.approx([2e-4, 5e-3, 1e-2, 1e-2])
    assert [ft[e] for e in (0, 24, 49, 50)] == pytest.approx([2e-5, 5e-4, 1e-3, 1e-3])
    assert sc[525] == pytest.approx(0.01 * 0.5 ** 0.9) and sc[525] == pytest.approx(0.0053589, rel=1e-4)
    assert sc[999] == pytest.approx(0.01 * (1 / 950) ** 0.9)
    assert stock[0] == 1e-2 and stock[500] == pytest.approx(0.0053589, rel=1e-4)
    # the tiny schedule (2 epochs): warm-up max(1, round(0.1)) = 1 epoch reaches the peak, then poly starts at 1
    assert _lr_per_epoch(nnUNetTrainerPETCTScratch, 2) == pytest.approx([1e-2, 1e-2])
    assert _lr_per_epoch(nnUNetTrainerPETCTFinetune, 2) == pytest.approx([1e-3, 1e-3])


def test_training_seed_comes_from_the_environment():
    from nnunetv2_petct.nnunet.trainers.base import training_seed_from_env

    assert training_seed_from_env({"NNUNETV2_PETCT_SEED": "13345"}) == 13345
    assert training_seed_from_env({}) is None and training_seed_from_env({"NNUNETV2_PETCT_SEED": " "}) is None
    with pytest.raises(ValueError, match="not an integer"):
        training_seed_from_env({"NNUNETV2_PETCT_SEED": "abc"})


def test_trainer_schedule_reads_what_each_variant_really_runs():
    """The label-efficiency table names the schedule a column really ran; short variants differ from the recipe."""
    from nnunetv2_petct.nnunet.label_efficiency import _recipe, _schedule
    from nnunetv2_petct.nnunet.trainers.base import nnUNetTrainerPETCT_tiny
    from nnunetv2_petct.nnunet.trainers.demo import (
        nnUNetTrainerPETCTFinetune_cpu1h,
        nnUNetTrainerPETCTScratch_demo,
    )
    from nnunetv2_petct.nnunet.trainers.finetune import (
        nnUNetTrainerPETCTFinetune,
        nnUNetTrainerPETCTLinearProbe,
        trainer_schedule,
    )

    def sched(cls):
        s = trainer_schedule(cls)
        return s["peak_lr"], s["warmup_epochs"], s["epochs"], s["iterations_per_epoch"]

    assert sched(nnUNetTrainerPETCTFinetune) == (1e-3, 50, 1000, 250)  # 5 % of 1000 epochs
    assert sched(nnUNetTrainerPETCTLinearProbe) == (1e-2, 0, 1000, 250)
    assert sched(nnUNetTrainerPETCT_tiny) == (1e-2, 0, 2, 2)  # nnU-Net's rate, the tiny length
    assert sched(nnUNetTrainerPETCTFinetune_cpu1h) == (1e-2, 2, 32, 25)  # round(32 * 0.05) = 2
    assert sched(nnUNetTrainerPETCTScratch_demo) == (1e-2, 3, 60, 25)  # round(60 * 0.05) = 3
    text = _recipe("pretrained", "nnUNetTrainerPETCTFinetune_cpu1h", _schedule("nnUNetTrainerPETCTFinetune_cpu1h"))
    assert text.startswith("fine-tuned from the joint CT+PET foundation model: SGD peak lr 1e-3")  # the full recipe
    assert "as run by `nnUNetTrainerPETCTFinetune_cpu1h`: peak lr 0.01, warm-up 2 epoch(s), 32 x 25 it." in text
    from nnunetv2_petct.nnunet.trainers.finetune import METHOD_RECIPES

    assert _schedule("nnUNetTrainerPETCTNoSuch") is None
    assert _recipe("pretrained", "nnUNetTrainerPETCTNoSuch", None) == METHOD_RECIPES["pretrained"]  # unknown: recipe only
