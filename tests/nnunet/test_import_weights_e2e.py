"""From the authors' released file (a replica) to a fine-tuning run with the stock nnU-Net commands only:
nnUNetv2_petct_import_weights -> nnUNetv2_preprocess -> nnUNetv2_train -pretrained_weights (the paper's 31 M-parameter
U-Net on a 32x32x64 patch, batch 1: about a minute on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, run
from tests.transfer.liu2026_replica import MultiModalMIMWrapper, write_replica

pytestmark = pytest.mark.slow
FIRST = "encoder.stages.0.0.convs.0.conv.weight"


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def test_released_weights_to_finetuning_with_stock_commands(tiny_planned, tmp_path):
    d = tiny_planned
    wrapper = MultiModalMIMWrapper(seed=11)
    replica = write_replica(tmp_path / "nnunet_v2_mim_best.pth", wrapper)
    foundation = tmp_path / "foundation_liu2026.pth"
    run([cli("nnUNetv2_petct_import_weights"), str(replica), "-o", str(foundation), "-d", str(d.dataset_id),
         "--patch", "32", "32", "64", "--batch-size", "1", "-q"], d.env)
    pre = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name
    assert (pre / "nnUNetPlans_liu2026.json").is_file()
    run([cli("nnUNetv2_preprocess"), "-d", str(d.dataset_id), "-plans_name", "nnUNetPlans_liu2026", "-c",
         "3d_fullres", "-np", "2"], {**d.env, "nnUNet_n_proc_DA": "2"}, timeout=900)
    proc = run([cli("nnUNetv2_train"), str(d.dataset_id), "3d_fullres", "0", "-p", "nnUNetPlans_liu2026", "-tr",
                "nnUNetTrainerPETCTFinetune_tiny", "-pretrained_weights", str(foundation), "-device", "cpu"],
               d.env, timeout=900)
    assert "Loading pretrained weights from file" in proc.stdout
    fold = (Path(d.env["nnUNet_results"]) / d.dataset_name / "nnUNetTrainerPETCTFinetune_tiny__nnUNetPlans_liu2026__3d_fullres"
            / "fold_0")
    info = json.loads((fold / "pretrained_weights.json").read_text())
    assert info["pretrained_weights_loaded"] is True
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "normalization matches the pretraining: ['ZScoreNormalization', 'ZScoreNormalization']" in log
    # 4 small SGD steps barely move the first conv: it still is the imported one, in OUR channel order
    tuned = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"][FIRST]
    source = wrapper.nnunet.state_dict()[FIRST]  # (PET, CT)
    assert corr(tuned[:, 0], source[:, 1]) > 0.99 and corr(tuned[:, 1], source[:, 0]) > 0.99  # CT, PET
    assert abs(corr(tuned[:, 0], source[:, 0])) < 0.5  # not the unswapped channel
