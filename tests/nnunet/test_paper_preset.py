"""The paper preset: nnUNetTrainerPETCTMAE_paper (block size in mm, schedule, optimisation) and the normalization
check of the fine-tuning trainers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from nnunetv2_petct.nnunet.plans import paper_plans
from tests.conftest import cli, run
from tests.nnunet.test_paper_plans import base_plans
from tests.transfer.upstream_reader import check_upstream_readable

DATASET_JSON = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 8, "file_ending": ".nii.gz"}


def make_trainer(plans: dict, tmp_path, monkeypatch, name: str = "nnUNetTrainerPETCTMAE_paper"):
    from nnunetv2_petct.nnunet.trainers import mae

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return getattr(mae, name)({**plans, "continue_training": False}, "3d_fullres", 0, dict(DATASET_JSON),
                              torch.device("cpu"))


def test_paper_trainer_recipe_and_block_size_on_paper_plans(tmp_path, monkeypatch):
    t = make_trainer(paper_plans(base_plans()), tmp_path, monkeypatch)
    assert t.mae_block_size == (12, 16, 16) and t._mae_block_warning is None  # 96x128x128 at 3x2x2 mm
    assert t.num_epochs * t.num_iterations_per_epoch == 62_500
    assert t.configuration_manager.batch_size == 16
    cfg = t.mae_config
    assert (cfg.optimizer, cfg.initial_lr, cfg.weight_decay, cfg.grad_clip) == ("adamw", 5e-4, 1e-5, 1.0)
    assert cfg.lr_schedule == "cosine" and 0 < cfg.warmup_epochs <= 0.05 * t.num_epochs  # short warm-up
    assert (cfg.mask_ratio, cfg.per_channel, cfg.visible_weight) == (0.5, True, 0.2)


def test_paper_trainer_block_follows_the_plans_axis_order(tmp_path, monkeypatch):
    # plans whose first array axis is the original y axis: spacing (y, z, x) = (2, 3, 2)
    plans = paper_plans(base_plans())
    plans["transpose_forward"], plans["transpose_backward"] = [1, 0, 2], [1, 0, 2]
    c = plans["configurations"]["3d_fullres"]
    c["spacing"], c["patch_size"] = [2.0, 3.0, 2.0], [128, 96, 128]
    t = make_trainer(plans, tmp_path, monkeypatch)
    assert t.mae_block_size == (16, 12, 16) and t._mae_block_warning is None


def test_paper_trainer_warns_when_the_block_is_not_the_papers(tmp_path, monkeypatch):
    plans = paper_plans(base_plans(), patch_size=(32, 32, 64))
    plans["configurations"]["3d_fullres"]["spacing"] = [8.0, 6.0, 6.0]
    t = make_trainer(plans, tmp_path, monkeypatch)
    assert t.mae_block_size == (5, 5, 5)  # 36/8 = 4.5 -> 5, 32/6 = 5.3 -> 5
    assert "[5, 5, 5] voxels" in t._mae_block_warning and "[12, 16, 16]" in t._mae_block_warning


# ------------------------------------------------------------------------------------ end to end (slow)


def fold_dir(d, trainer: str, fold: str = "all", plans: str = "nnUNetPlans") -> Path:
    return Path(d.env["nnUNet_results"]) / d.dataset_name / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"


@pytest.fixture(scope="module")
def paper_tiny_run(tiny_dataset):
    """nnUNetTrainerPETCTMAE_paper_tiny on the tiny plans (8x6x6 mm, patch 32^3): the block warning fires."""
    proc = run([cli("nnUNetv2_train"), str(tiny_dataset.dataset_id), "3d_fullres", "all", "-tr",
                "nnUNetTrainerPETCTMAE_paper_tiny", "-device", "cpu"], tiny_dataset.env, timeout=900)
    return fold_dir(tiny_dataset, "nnUNetTrainerPETCTMAE_paper_tiny"), proc


@pytest.mark.slow
def test_paper_trainer_end_to_end_logs_the_block_warning(paper_tiny_run):
    fold, proc = paper_tiny_run
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "WARNING: MAE blocks of [36.0, 32.0, 32.0] mm resolve to [5, 5, 5] voxels" in log
    assert "WARNING: MAE blocks" in proc.stdout
    cfg = json.loads(re.search(r"MAE pretraining config: (\{.*?\}) \|", log).group(1))
    assert cfg["block_size_mm"] == [36.0, 32.0, 32.0] and cfg["warmup_epochs"] > 0
    assert "paper recipe" in log and "the paper used batch 16" in log  # tiny plans: batch 2
    ckpt = torch.load(fold / "foundation_final.pth", weights_only=True)
    assert ckpt["petct_metadata"]["masking"]["block_size"] == [5, 5, 5]
    assert ckpt["petct_metadata"]["trainer_name"] == "nnUNetTrainerPETCTMAE_paper_tiny"
    check_upstream_readable(fold / "foundation_final.pth")


@pytest.mark.slow
def test_finetune_refuses_weights_pretrained_with_another_normalization(paper_tiny_run, tiny_dataset, tmp_path):
    fold, _ = paper_tiny_run
    ckpt = torch.load(fold / "foundation_final.pth", weights_only=True)
    assert ckpt["nnssl_adaptation_plan"]["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    ckpt["nnssl_adaptation_plan"]["normalization_schemes"] = ["ZScoreNormalization", "ZScoreNormalization"]
    other = tmp_path / "foundation_zscore_both.pth"
    torch.save(ckpt, other)
    proc = run([cli("nnUNetv2_train"), str(tiny_dataset.dataset_id), "3d_fullres", "1", "-tr",
                "nnUNetTrainerPETCTFinetune_tiny", "-device", "cpu", "-pretrained_weights", str(other)],
               tiny_dataset.env, timeout=900, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "pretrained with normalization ['ZScoreNormalization', 'ZScoreNormalization'] (zscore-both)" in out
    assert "the target plans use ['CTNormalization', 'ZScoreNormalization'] (nnunet)" in out
    assert not (fold_dir(tiny_dataset, "nnUNetTrainerPETCTFinetune_tiny", "1") / "checkpoint_final.pth").exists()
