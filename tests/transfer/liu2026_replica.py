"""A replica of the authors' released file (``nnunet_v2_mim_best.pth``, Liu et al. 2026), built from the published
facts with random weights; never a stored file.

Facts (issue 14, from the authors' pretraining notebook): a dict ``{epoch, model_state_dict, optimizer_state_dict,
scaler_state_dict, scheduler_state_dict, best_loss}``; the network is dynamic_network_architectures'
``PlainConvUNet`` (2 in, 6 stages, features 32-64-128-256-320-320, 3x3x3, strides 1 then 2, 2 convs per stage,
num_classes 2, conv bias, InstanceNorm3d eps 1e-5 affine, LeakyReLU 0.01, no deep supervision), held as the
attribute ``nnunet`` of a wrapper (keys ``nnunet.*``; ``module.nnunet.*`` from DataParallel); channel 0 = PET,
channel 1 = CT; AdamW 5e-4 with a cosine schedule over 200 epochs and a grad scaler. The optimizer state is left
empty (the real file's AdamW moments triple its size to ~375 MB; they are dropped on import anyway).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def issue_facts_network(n_in: int = 2, n_out: int = 2):
    """The authors' network, written from the published facts (not from our PAPER_ARCHITECTURE constant)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(input_channels=n_in, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
                         conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                         n_conv_per_stage=[2] * 6, num_classes=n_out, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         dropout_op=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 1e-2, "inplace": True},
                         deep_supervision=False)


class MultiModalMIMWrapper(nn.Module):
    """The authors' wrapper: the U-Net is the attribute ``nnunet``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.nnunet = issue_facts_network()
        with torch.no_grad():
            for p in self.nnunet.parameters():  # random everywhere (norm layers too), so any mix-up shows
                p.normal_(0.0, 0.05)


def replica_checkpoint(wrapper: nn.Module, data_parallel: bool = False, **overrides) -> dict:
    model = nn.DataParallel(wrapper) if data_parallel else wrapper
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    ckpt = {
        "epoch": 187,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                              "_growth_tracker": 0},
        "scheduler_state_dict": scheduler.state_dict(),
        "best_loss": 0.0421,
    }
    ckpt.update(overrides)
    return ckpt


def write_replica(path: Path, wrapper: nn.Module, data_parallel: bool = False, **overrides) -> Path:
    torch.save(replica_checkpoint(wrapper, data_parallel, **overrides), path)
    return path
