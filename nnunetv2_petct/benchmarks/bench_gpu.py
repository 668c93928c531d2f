"""One GPU check, under 8 minutes on one H100/H200-class card: is the toolkit ready for real pretraining?

    python -m nnunetv2_petct.benchmarks gpu --json            # on a GPU machine
    python -m nnunetv2_petct.benchmarks gpu --json --tiny     # the same code path at a tiny size (CPU)

Four figures, each from the benchmark module that owns it:

1. **MAE step vs plain nnU-Net step** at the paper's preset (:mod:`bench_mae_step`): the paper network,
   ``dynamic_network_architectures.architectures.unet.PlainConvUNet`` with 6 stages of 32-64-128-256-320-320
   features, a 96x128x128 patch, batch 16, mixed precision; the MAE step (block masks, zero imputation,
   weighted MSE, AdamW) and nnU-Net's own ``train_step`` (Dice+CE with deep supervision, SGD) on the same
   network and batch, alternated; seconds per step, their ratio and the peak GPU memory of each;
2. **data loading** (:mod:`bench_dataloader`): pretraining patches per second of the MAE trainer's
   pipeline on full-size phantoms (96x128x128 patches, batch 16) with nnU-Net's default number of
   augmentation workers (``get_allowed_n_proc_DA``), against what the measured MAE step consumes
   (batch / step seconds): ``loading_is_bottleneck`` says whether the workers keep up (target: they do);
   and the MAE trainer's device-side zoom + mirroring of one batch (issue 22) next to the measured MAE
   step, ``device_augment_to_step_ratio`` (target: at most ``DEVICE_AUGMENT_TARGET`` = 3 % of a step);
   ``targets`` records both verdicts;
3. **prediction** (:mod:`bench_predict`): stock ``nnUNetv2_predict`` seconds for one full-size phantom case
   (PET 326x400x400, nnU-Net's default plans for it), without and with test-time mirroring.

``tiny=True`` (automatic without a GPU) runs the same code path on the CPU at a tiny size:
batch 2, features 4-8-16-32-32-32 (patch 64^3: the bottleneck of 6 stages is 2^3), tiny phantoms, two
workers at most.
"""

from __future__ import annotations

import copy
import os
import time

PAPER_PATCH = (96, 128, 128)
PAPER_BATCH = 16
PAPER_FEATURES = (32, 64, 128, 256, 320, 320)
TINY_PATCH = (64, 64, 64)  # the smallest patch the 6-stage network takes (InstanceNorm needs > 1 voxel at 1/32)
TINY_BATCH = 2
TINY_FEATURES = (4, 8, 16, 32, 32, 32)
#: Issue 22's GPU targets: the device-side augmentation of a batch costs at most this fraction of one MAE step,
#: and the loader with nnU-Net's default workers keeps up with the step.
DEVICE_AUGMENT_TARGET = 0.03


def paper_plans(tiny: bool = False) -> dict:
    """Plans with one ``3d_fullres`` configuration: the paper's network at the paper's patch and batch (or
    the tiny stand-in: same class and depth, small features, patch and batch)."""
    from nnunetv2_petct.benchmarks.bench_mae_step import default_plans

    plans = copy.deepcopy(default_plans("cuda"))
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = list(TINY_PATCH if tiny else PAPER_PATCH)
    cfg["batch_size"] = TINY_BATCH if tiny else PAPER_BATCH
    cfg["architecture"]["arch_kwargs"]["features_per_stage"] = list(TINY_FEATURES if tiny else PAPER_FEATURES)
    return plans


def default_workers() -> int:
    """nnU-Net's data-augmentation worker count per GPU on this machine (``nnUNet_n_proc_DA`` if set)."""
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    return int(get_allowed_n_proc_DA())


def loading_verdict(loader_patches_per_s: float, step_seconds: float, batch_size: int) -> dict:
    """Does data loading keep up with the training step? Pure arithmetic.

    The step consumes ``batch_size / step_seconds`` patches per second; loading is the bottleneck when
    the loader delivers fewer. Returns ``step_patches_per_s``, ``loader_patches_per_s``,
    ``loader_to_step_ratio`` (>= 1: the loader keeps up) and ``loading_is_bottleneck``.
    """
    if step_seconds <= 0 or batch_size < 1:
        raise ValueError("step_seconds must be > 0 and batch_size >= 1")
    need = batch_size / step_seconds
    return {"step_patches_per_s": round(need, 3), "loader_patches_per_s": round(float(loader_patches_per_s), 3),
            "loader_to_step_ratio": round(float(loader_patches_per_s) / need, 3),
            "loading_is_bottleneck": bool(loader_patches_per_s < need)}


def targets_verdict(device_augment_to_step_ratio: float, loading_is_bottleneck: bool) -> dict:
    """Issue 22's targets from the figures: ``device_augment_ok`` (ratio <= ``DEVICE_AUGMENT_TARGET``) and
    ``loader_keeps_up`` (loading not the bottleneck). Pure arithmetic."""
    return {"device_augment_to_step_ratio_max": DEVICE_AUGMENT_TARGET,
            "device_augment_ok": bool(device_augment_to_step_ratio <= DEVICE_AUGMENT_TARGET),
            "loader_keeps_up": not bool(loading_is_bottleneck)}


def run(device: str | None = None, tiny: bool | None = None, n_warmup: int = 3, n_iter: int = 10,
        n_batches: int | None = None, preprocessed_folder: str | os.PathLike | None = None,
        images_folder: str | os.PathLike | None = None, predict_mirroring: tuple[bool, ...] = (False, True)) -> dict:
    """Run the GPU check (see the module doc); returns the figures as a dict.

    Args:
        device: ``cuda`` (default when torch sees a GPU) or ``cpu``.
        tiny: the tiny size (default: True on the CPU, False on a GPU).
        n_warmup, n_iter: untimed and timed steps of each kind.
        n_batches: timed data-loader batches (default 10; 2 when tiny).
        preprocessed_folder, images_folder: an existing planned dataset and raw images for the loader and
            the prediction instead of phantoms (e.g. the tests' tiny dataset).
        predict_mirroring: the mirroring settings to time for ``nnUNetv2_predict``.
    """
    import torch

    from nnunetv2_petct.benchmarks import bench_dataloader, bench_mae_step, bench_predict

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' but torch sees no GPU")
    if tiny is None:
        tiny = device == "cpu"
    t0 = time.perf_counter()
    seconds = {}

    # 1. MAE step vs plain nnU-Net step on the paper network
    plans = paper_plans(tiny)
    step = bench_mae_step.run(device=device, n_warmup=n_warmup, n_iter=n_iter, plans=plans)
    seconds["steps"] = round(time.perf_counter() - t0, 1)

    # 2. data loading with nnU-Net's default worker count vs what the MAE step consumes
    t1 = time.perf_counter()
    workers = default_workers()
    if tiny:
        workers = min(workers, 2)
    batch = int(step["batch_size"])
    loader_kwargs = {"n_batches": n_batches or (2 if tiny else 10), "workers": (workers,), "batch_size": batch,
                     "gpu_seconds_per_patch": step["mae_step_s"] / batch, "profile_batches": 1 if tiny else 3,
                     "compare_cpu_augment": False, "measure_device_augment": False}
    if preprocessed_folder is not None:
        loader_kwargs["preprocessed_folder"] = preprocessed_folder
        loader_kwargs["patch_size"] = list(step["patch_size"]) if not tiny else "auto"
    else:
        loader_kwargs.update(size="tiny" if tiny else "full", n_cases=2,
                             patch_size="auto" if tiny else list(PAPER_PATCH))
    loader = bench_dataloader.run(**loader_kwargs)
    verdict = loading_verdict(loader["per_workers"][0]["patches_per_s"], step["mae_step_s"], loader["batch_size"])
    # the MAE trainer's device-side augmentation of one batch (the loader's source patch to the step's patch)
    # next to the MAE step measured above, same batch and device
    from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE
    from nnunetv2_petct.pretraining.augment import zoom_margin_patch_size

    cfg = nnUNetTrainerPETCTMAE.mae_config
    step_patch = [int(p) for p in step["patch_size"]]
    source = zoom_margin_patch_size(step_patch, tuple(cfg.zoom_range) if cfg.p_zoom > 0 else (1.0, 1.0))
    aug_s = bench_dataloader.time_device_augment(cfg, source, step_patch, batch, device=device,
                                                 n_iter=n_iter)
    aug_ratio = aug_s / step["mae_step_s"]
    targets = targets_verdict(aug_ratio, verdict["loading_is_bottleneck"])
    seconds["dataloader"] = round(time.perf_counter() - t1, 1)

    # 3. stock nnUNetv2_predict on one full-size case
    t2 = time.perf_counter()
    predict_kwargs = {"device": device, "mirroring": tuple(predict_mirroring), "n_cases": 1}
    if preprocessed_folder is not None:
        predict_kwargs.update(preprocessed_folder=preprocessed_folder, images_folder=images_folder)
    else:
        predict_kwargs["size"] = "tiny" if tiny else "full"
    predict = bench_predict.run(**predict_kwargs)
    seconds["predict"] = round(time.perf_counter() - t2, 1)

    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "tiny": bool(tiny),
        "network": step["network"],
        "features_per_stage": step["features_per_stage"],
        "patch_size": step["patch_size"],
        "batch_size": step["batch_size"],
        "mixed_precision": step["mixed_precision"],
        "mae_step_s": step["mae_step_s"],
        "plain_nnunet_step_s": step["plain_step_s"],
        "mae_to_plain_ratio": step["ratio"],
        "mae_peak_memory_gib": step["mae_peak_memory_gib"],
        "plain_peak_memory_gib": step["plain_peak_memory_gib"],
        "gpu_memory_total_gib": step["gpu_memory_total_gib"],
        "dataloader_workers": workers,
        "dataloader_patch_size": loader["patch_size"],
        **verdict,
        "device_augment_source_patch": list(source),
        "device_augment_s_per_batch": round(aug_s, 5),
        "device_augment_to_step_ratio": round(aug_ratio, 4),
        "targets": targets,
        "predict_seconds_per_case_no_mirroring": predict.get("seconds_per_case_no_mirroring"),
        "predict_seconds_per_case_mirroring": predict.get("seconds_per_case_mirroring"),
        "predict_measured_on": predict.get("measured_on"),
        "predict_patch_size": predict.get("patch_size"),
        "predict_windows_per_case": predict.get("n_steps_full_volume"),
        "seconds": seconds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "details": {"steps": step, "dataloader": loader, "predict": predict},
    }
