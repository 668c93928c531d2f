"""Seconds per training step: the MAE step vs plain ``nnUNetTrainer.train_step``, same network, same batch.

Both steps run in one process on networks built from one plans dict (identical weights), alternately
(MAE, plain, MAE, plain, ...) after ``n_warmup`` warm-up steps each, so drifting machine load hits both
alike. No dataset on disk: the batch is random (the step cost does not depend on the values).

- MAE: :func:`nnunetv2_petct.pretraining.mae.mae_train_step` (block-mask sampling on the device, zero imputation,
  forward without deep supervision, masked/visible MSE, backward, grad clip 1.0, AdamW) with the
  paper's :class:`~nnunetv2_petct.pretraining.mae.MAEConfig`.
- plain: nnU-Net's own ``nnUNetTrainer.train_step`` (called unbound on a stand-in object holding the
  network, SGD optimizer, DC+CE loss with deep supervision and grad scaler, exactly as the trainer
  builds them); deep-supervision targets are precomputed, as nnU-Net's data loader does.

Defaults: on CUDA a realistic 3d_fullres PlainConvUNet (6 stages, 32-64-128-256-320-320 features,
patch 96x128x128, batch 2, mixed precision as nnU-Net); on the CPU the same network with patch 64^3
(batch 2) so a run takes about a minute on 2 cores. The reported figures are medians over ``n_iter``
steps (means and all times are returned too).

    python -m nnunetv2_petct.benchmarks mae-step [--device cuda]
"""

from __future__ import annotations

import copy
import statistics
import time
from types import SimpleNamespace

import torch

from nnunetv2_petct.transfer.architecture import paper_architecture


def default_plans(device: str = "cpu") -> dict:
    """A minimal nnU-Net plans dict with one ``3d_fullres`` PlainConvUNet configuration (see module doc)."""
    patch = [96, 128, 128] if str(device).startswith("cuda") else [64, 64, 64]
    return {
        "dataset_name": "Dataset000_Benchmark",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 2.0, 2.0],
        "original_median_shape_after_transp": [300, 200, 200],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "spacing": [3.0, 2.0, 2.0],
                "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "batch_dice": False,
                "architecture": paper_architecture(),  # the paper's 6-stage PlainConvUNet
            }
        },
    }


def _ds_targets(target: torch.Tensor, pool_op_kernel_sizes) -> list[torch.Tensor]:
    """nnU-Net's deep-supervision targets: nearest-downsampled labels for every output but the lowest."""
    import numpy as np

    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(pool_op_kernel_sizes), axis=0))[:-1]
    out = []
    for s in scales:
        size = [max(1, round(d * f)) for d, f in zip(target.shape[2:], s)]
        out.append(torch.nn.functional.interpolate(target, size=size, mode="nearest"))
    return out


def run(device: str = "cpu", n_warmup: int = 2, n_iter: int = 5, plans: dict | None = None,
        configuration: str = "3d_fullres", seed: int = 0) -> dict:
    """Time both steps; returns ``mae_step_s``, ``plain_step_s`` (medians), ``ratio`` (MAE / plain), settings.

    ``plans``: an nnU-Net plans dict (default :func:`default_plans` for the device); its
    ``configuration`` gives the network, patch size and batch size.
    """
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch import GradScaler

    from nnunetv2_petct.nnunet.trainers.mae import freeze_deep_supervision_heads
    from nnunetv2_petct.pretraining.mae import MAEConfig, mae_train_step, resolve_block_size

    dev = torch.device(device)
    torch.manual_seed(seed)
    plans = copy.deepcopy(plans) if plans is not None else default_plans(str(dev))
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    patch, batch_size = list(cm.patch_size), int(cm.batch_size)

    mae_net = nnUNetTrainer.build_network_architecture(pm, cm, 2, 2, False).to(dev)
    freeze_deep_supervision_heads(mae_net)
    plain_net = nnUNetTrainer.build_network_architecture(pm, cm, 2, 2, True).to(dev)
    plain_net.load_state_dict(mae_net.state_dict())
    mae_net.train()
    plain_net.train()

    cfg = MAEConfig()
    block = resolve_block_size(patch, cfg.block_size)
    mae_opt = torch.optim.AdamW([p for p in mae_net.parameters() if p.requires_grad], lr=cfg.initial_lr,
                                weight_decay=cfg.weight_decay)
    plain_opt = torch.optim.SGD(plain_net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    generator = torch.Generator(device=dev).manual_seed(seed)

    data = torch.randn((batch_size, 2, *patch), device=dev)
    labels = (torch.rand((batch_size, 1, *patch), device=dev) > 0.9).float()
    ds_targets = _ds_targets(labels, cm.pool_op_kernel_sizes)
    weights = np.array([1 / (2**i) for i in range(len(ds_targets))])
    weights[-1] = 0
    weights = weights / weights.sum()
    loss = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": cm.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                       weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss),
        weights)
    cuda = dev.type == "cuda"
    plain_self = SimpleNamespace(device=dev, network=plain_net, optimizer=plain_opt, loss=loss,
                                 grad_scaler=GradScaler("cuda") if cuda else None)
    mae_scaler = GradScaler("cuda") if cuda else None
    batch = {"data": data, "target": ds_targets}

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def mae_step():
        return mae_train_step(mae_net, mae_opt, data, cfg, block, generator, mae_scaler)

    def plain_step():
        return nnUNetTrainer.train_step(plain_self, batch)

    for _ in range(n_warmup):
        mae_step()
        plain_step()
    mae_t, plain_t = [], []
    peak = {"mae": 0, "plain": 0}
    for _ in range(n_iter):
        for name, step, times in (("mae", mae_step, mae_t), ("plain", plain_step, plain_t)):
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
            if cuda:
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(dev))
    mae_s, plain_s = statistics.median(mae_t), statistics.median(plain_t)
    return {
        "mae_step_s": round(mae_s, 4),
        "plain_step_s": round(plain_s, 4),
        "ratio": round(mae_s / plain_s, 3),
        "mae_step_mean_s": round(statistics.mean(mae_t), 4),
        "plain_step_mean_s": round(statistics.mean(plain_t), 4),
        "mae_step_all_s": [round(t, 4) for t in mae_t],
        "plain_step_all_s": [round(t, 4) for t in plain_t],
        "device": str(dev),
        "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
        "features_per_stage": list(cm.network_arch_init_kwargs.get("features_per_stage", [])),
        "patch_size": patch,
        "batch_size": batch_size,
        "block_size": list(block),
        "n_warmup": n_warmup,
        "n_iter": n_iter,
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": cuda,
        # peak allocated GPU memory during one step of each kind (both networks and optimizers stay allocated
        # throughout, so each figure includes the other network's weights and optimizer state); None on the CPU
        "mae_peak_memory_gib": round(peak["mae"] / 2**30, 2) if cuda else None,
        "plain_peak_memory_gib": round(peak["plain"] / 2**30, 2) if cuda else None,
        "gpu_memory_total_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1) if cuda else None,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu")))
