"""MAE pretraining through the stock nnU-Net CLI, and the foundation checkpoint's way into fine-tuning."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, run
from tests.transfer.upstream_reader import check_upstream_readable

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fold_dir(d, trainer: str, fold: str = "all") -> Path:
    return Path(d.env["nnUNet_results"]) / d.dataset_name / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def train(d, trainer: str, fold: str = "all", *extra: str, check: bool = True, timeout: float = 600):
    return run([cli("nnUNetv2_train"), str(d.dataset_id), "3d_fullres", fold, "-tr", trainer, "-device", "cpu",
                *extra], d.env, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def mae_run(tiny_dataset):
    proc = train(tiny_dataset, "nnUNetTrainerPETCTMAE_tiny")
    return fold_dir(tiny_dataset, "nnUNetTrainerPETCTMAE_tiny"), proc


def test_foundation_checkpoint_contract(mae_run, tiny_dataset):
    fold, _ = mae_run
    for name in ("foundation_final.pth", "foundation_best.pth", "checkpoint_final.pth"):
        assert (fold / name).is_file(), name
    ckpt = torch.load(fold / "foundation_final.pth", weights_only=True)  # plain types only
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan["architecture_plans"]["arch_class_name"].endswith(".unet.PlainConvUNet")
    assert plan["pretrain_num_input_channels"] == 2
    assert plan["patch_size"] == [32, 32, 32]  # the tiny plans
    assert plan["pretrain_plan"]["dataset_name"] == tiny_dataset.dataset_name
    assert plan["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stages.0"
    assert list(plan["pretrain_plan"]["configurations"]) == ["3d_fullres"]  # only the trained one
    check_upstream_readable(fold / "foundation_final.pth")  # what upstream nnU-Net's nnssl route reads
    w = ckpt["network_weights"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in w)
    for key in plan["keys_to_in_proj"]:
        assert w[f"{key}.weight"].shape[1] == 2
    # the reconstruction head: 2 output channels (CT, PET); the deep-supervision heads exist but are unused
    assert w["decoder.seg_layers.1.weight"].shape[0] == 2
    meta = ckpt["petct_metadata"]
    assert meta["channel_order"] == ["CT", "PET"]
    assert meta["trainer_name"] == "nnUNetTrainerPETCTMAE_tiny"
    assert meta["epoch"] == 1 and meta["epochs_completed"] == 2  # 2 tiny epochs
    assert meta["data"]["num_training_cases"] == 8 and meta["data"]["dataset_name"] == tiny_dataset.dataset_name
    assert meta["masking"]["block_size"] == [4, 4, 4]  # 8x8x8 grid over the 32^3 patch
    assert meta["masking"]["per_channel"] is True and meta["masking"]["mask_ratio"] == 0.5
    assert meta["val_loss"] > 0
    # the same weights as nnU-Net's own final checkpoint
    train_ckpt = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert all(torch.equal(w[k], v) for k, v in train_ckpt["network_weights"].items())
    assert train_ckpt["mae_state"]["config"]["visible_weight"] == 0.2


def test_logs_progress_previews_and_final_validation(mae_run):
    fold, proc = mae_run
    log = next(fold.glob("training_log_*.txt")).read_text()
    cfg = json.loads(re.search(r"MAE pretraining config: (\{.*?\}) \|", log).group(1))
    assert cfg["optimizer"] == "adamw" and cfg["initial_lr"] == 5e-4 and cfg["grad_clip"] == 1.0
    assert "foundation checkpoint written" in log
    assert "MAE training loader: MAEPatchLoader" in log  # the image-only loader is the one nnU-Net ran
    train_ckpt = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    logging = train_ckpt["logging"]
    assert len(logging["val_losses"]) == 2 and all(v > 0 for v in logging["val_losses"])
    assert len(logging["dice_per_class_or_region"][0]) == 2  # masked R² per channel (CT, PET)
    for name in ("preview_epoch_0001.png", "preview_final.png", "preview_latest.png", "progress.png"):
        data = (fold / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name
    summary = json.loads((fold / "validation_reconstruction.json").read_text())
    assert summary["num_cases"] == 8  # fold 'all': the 8 training cases
    assert summary["mean_loss"] > 0 and set(summary["cases"][0]["masked_mse"]) == {"CT", "PET"}
    assert not (fold / "validation").exists()  # no segmentation export


def test_foundation_loads_into_a_segmentation_network_in_process(mae_run):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_petct.nnunet.trainers.base import nnUNetTrainerPETCT

    fold, _ = mae_run
    plans = json.loads((fold.parent / "plans.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(123)
    net = nnUNetTrainerPETCT.build_network_architecture(pm, cm, 2, 2, True)  # 2 classes: background, lesion
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    load_pretrained_weights(net, str(fold / "foundation_final.pth"))
    pretrained = torch.load(fold / "foundation_final.pth", weights_only=True)["network_weights"]
    for k, v in net.state_dict().items():
        if ".seg_layers." in k:
            assert torch.equal(v, fresh[k]), k  # the output layers are not transferred
        else:
            assert torch.equal(v, pretrained[k]), k
    first = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(fresh[first], pretrained[first])


def test_stock_cli_finetune_with_pretrained_weights(mae_run, tiny_dataset):
    fold, _ = mae_run
    foundation = fold / "foundation_final.pth"
    proc = train(tiny_dataset, "nnUNetTrainerPETCT_tiny", "0", "-pretrained_weights", str(foundation), timeout=900)
    assert "Loading pretrained weights from file" in proc.stdout
    ft = torch.load(fold_dir(tiny_dataset, "nnUNetTrainerPETCT_tiny", "0") / "checkpoint_final.pth",
                    weights_only=False)["network_weights"]
    pre = torch.load(foundation, weights_only=True)["network_weights"]
    # 4 fine-tuning steps move the first conv only a little: it stays almost perfectly correlated with the
    # pretrained weights (an independent initialization would correlate ~0)
    first = "encoder.stages.0.0.convs.0.conv.weight"
    r = torch.corrcoef(torch.stack([ft[first].flatten(), pre[first].flatten()]))[0, 1].item()
    assert r > 0.9


def test_resume_with_c_restores_the_mae_state(mae_run, tiny_dataset):
    fold, _ = mae_run
    best = torch.load(fold / "checkpoint_final.pth", weights_only=False)["mae_state"]["best_val_loss_ema"]
    proc = train(tiny_dataset, "nnUNetTrainerPETCTMAE_tiny", "all", "--c")
    assert f"resumed MAE state: epoch 2, best EMA val loss {best}" in proc.stdout
    ckpt = torch.load(fold / "foundation_final.pth", weights_only=True)
    assert ckpt["petct_metadata"]["best_val_loss_ema"] == best


def test_ct_only_pretraining_has_one_input_and_output_channel(tiny_dataset):
    train(tiny_dataset, "nnUNetTrainerPETCTMAE_CTOnly_tiny")
    fold = fold_dir(tiny_dataset, "nnUNetTrainerPETCTMAE_CTOnly_tiny")
    ckpt = torch.load(fold / "foundation_final.pth", weights_only=True)
    plan, w = ckpt["nnssl_adaptation_plan"], ckpt["network_weights"]
    assert plan["pretrain_num_input_channels"] == 1 and plan["channel_names"] == ["CT"]
    assert w["encoder.stages.0.0.convs.0.conv.weight"].shape[1] == 1
    assert w["decoder.seg_layers.1.weight"].shape[0] == 1
    assert ckpt["petct_metadata"]["input_channels"] == [0]
    assert (fold / "preview_final.png").read_bytes()[:8] == PNG_SIGNATURE


def test_wrong_channel_count_is_refused_with_a_clear_message(tiny_dataset):
    d = tiny_dataset
    pre = Path(d.env["nnUNet_preprocessed"])
    one = pre / "Dataset503_PETCTOneChannel"
    if not one.exists():
        shutil.copytree(pre / d.dataset_name, one)
        ds = json.loads((one / "dataset.json").read_text())
        ds["channel_names"] = {"0": "CT"}
        (one / "dataset.json").write_text(json.dumps(ds))
        plans = json.loads((one / "nnUNetPlans.json").read_text())
        plans["dataset_name"] = one.name
        (one / "nnUNetPlans.json").write_text(json.dumps(plans))
    proc = run([cli("nnUNetv2_train"), "503", "3d_fullres", "all", "-tr", "nnUNetTrainerPETCTMAE_tiny", "-device",
                "cpu"], d.env, timeout=600, check=False)
    assert proc.returncode != 0
    assert "expects 2 channel(s) in the order _0000 = CT, _0001 = PET" in proc.stderr


_SEED_SCRIPT = """
import json, sys, torch
from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE_tiny as T
pre = sys.argv[1]
plans = json.load(open(pre + '/nnUNetPlans.json')); plans['continue_training'] = False
t = T(plans, '3d_fullres', 'all', json.load(open(pre + '/dataset.json')), device=torch.device('cpu'))
t.initialize()
print(json.dumps([float(v.double().sum()) for k, v in t.network.state_dict().items() if v.is_floating_point()]))
"""


def test_mae_initialisation_follows_the_training_seed(tiny_dataset):
    """NNUNETV2_PETCT_SEED seeds the MAE network's initialisation as it does the segmentation trainers'."""
    d = tiny_dataset
    pre = d.root / "preprocessed" / d.dataset_name

    def init_weights(seed: str | None) -> list[float]:
        env = {k: v for k, v in d.env.items() if k != "NNUNETV2_PETCT_SEED"}
        if seed is not None:
            env["NNUNETV2_PETCT_SEED"] = seed
        proc = run([sys.executable, "-c", _SEED_SCRIPT, str(pre)], env)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    a, b, c, unseeded = init_weights("7"), init_weights("7"), init_weights("8"), init_weights(None)
    assert a == b  # same seed, same network
    assert a != c and a != unseeded  # another seed (or none): other random weights
