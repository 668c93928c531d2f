"""Benchmark: pretraining patches per second from preprocessed blosc2 data, per data-augmentation worker count.

The pipeline is exactly what ``nnUNetv2_train ... -tr nnUNetTrainerPETCTMAE`` builds (nnU-Net's
``nnUNetTrainer.get_dataloaders``), assembled here without a trainer instance:

- data: nnU-Net's blosc2 dataset class (``infer_dataset_class``) over ``<preprocessed>/<data_identifier>``;
- the trainer's loader class (``training_loader_class``: the MAE trainer's image-only ``MAEPatchLoader``, else
  ``nnUNetDataLoader``) with the trainer's initial (pre-augmentation) patch size, the final patch size,
  the plans' batch size and the trainer's foreground oversampling (MAE: 0);
- the trainer's ``get_training_transforms`` (MAE: random zoom with p 0.2 and mirroring only; nnU-Net's
  default trainer when the MAE trainer cannot be imported) with its own
  ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, applied per sample inside the loader;
- 0 workers: ``SingleThreadedAugmenter``; n workers: ``NonDetMultiThreadedAugmenter`` (n processes,
  ``num_cached = max(6, n // 2)``, as nnU-Net sets ``nnUNet_n_proc_DA = n``).

Throughput is steady-state: the first ``2 * num_cached + n + 2`` batches (process start and everything the
augmenter can have buffered meanwhile) are not timed. A single-process profile then splits the per-patch cost into loading (blosc2 decompression and the
crop of the initial patch, ``generate_train_batch`` without transforms) and each transform, to say where
the bottleneck is.

"What the GPU consumes" cannot be measured without a GPU: ``gpu_seconds_per_patch`` defaults to
:data:`H100_SECONDS_PER_PATCH_ESTIMATE` (an *estimate*, see ``docs/benchmarks.md``) scaled by patch voxels;
pass a measured value (e.g. ``mae_step_s / batch_size`` from ``python -m nnunetv2_petct.benchmarks mae-step
--device cuda``) to replace it.

Data: ``n_cases`` unlabeled phantoms (body-mask pseudo-labels, like a real pretraining set) of ``size``,
planned and preprocessed by the stock ``nnUNetv2_plan_and_preprocess`` in a temporary tree; or an existing
preprocessed dataset (``preprocessed_folder``), e.g. a real pretraining dataset.

``run()`` prints nothing; it returns the figures as a dict.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from nnunetv2_petct.benchmarks import _nnunet_fixtures as fx
from nnunetv2_petct.nnunet.env import nnunet_env

logger = logging.getLogger(__name__)

DATASET_ID = 986
DATASET_NAME = "BenchDataloaderPETCT"
#: The paper's pretraining patch (z, y, x).
PRETRAINING_PATCH = (96, 128, 128)
#: Estimated H100 training time per 96x128x128 patch for the 6-stage PlainConvUNet with mixed precision
#: (forward + backward + optimizer step); an estimate, not a measurement: see docs/benchmarks.md.
H100_SECONDS_PER_PATCH_ESTIMATE = 0.025


#: ``trainer`` names: the MAE trainer (augmentation on the device, the default), the MAE pipeline before issue
#: 22 (zoom + mirroring per patch in the loader workers) and nnU-Net's default trainer.
TRAINERS = ("auto", "mae", "mae_cpu_augment", "nnunet")


def _trainer_class(trainer: str):
    """(class, is_mae) for "auto" (MAE trainer if importable, else nnUNetTrainer), "mae", "mae_cpu_augment"
    (``nnUNetTrainerPETCTMAE_CPUAugment``) or "nnunet"."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if trainer in ("auto", "mae", "mae_cpu_augment"):
        try:
            from nnunetv2_petct.nnunet.trainers.mae import (
                nnUNetTrainerPETCTMAE,
                nnUNetTrainerPETCTMAE_CPUAugment,
            )
        except ImportError:
            if trainer != "auto":
                raise
            logger.warning("MAE trainer not importable; using nnUNetTrainer's transforms")
            return nnUNetTrainer, False
        return (nnUNetTrainerPETCTMAE_CPUAugment if trainer == "mae_cpu_augment" else nnUNetTrainerPETCTMAE), True
    if trainer == "nnunet":
        return nnUNetTrainer, False
    raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")


def _augments_on_device(trainer_cls) -> bool:
    cfg = getattr(trainer_cls, "mae_config", None)
    return cfg is not None and getattr(cfg, "spatial_augment_on", "cpu") == "device"


def _augmentation_setup(trainer_cls, is_mae: bool, cm, patch: Sequence[int]):
    """The trainer's (rotation, dummy_2d, initial_patch, mirror_axes, deep_supervision_scales, oversample).

    Calls the trainer's own methods on a stand-in holding only what they read.
    """
    stub = SimpleNamespace(
        configuration_manager=SimpleNamespace(patch_size=list(patch), pool_op_kernel_sizes=cm.pool_op_kernel_sizes),
        mae_config=getattr(trainer_cls, "mae_config", None),
        print_to_log_file=lambda *a, **k: None,
        inference_allowed_mirroring_axes=None,
        enable_deep_supervision=not is_mae,  # the MAE trainer switches it off in __init__
    )
    rotation, dummy_2d, initial_patch, mirror_axes = \
        trainer_cls.configure_rotation_dummyDA_mirroring_and_inital_patch_size(stub)
    ds_scales = trainer_cls._get_deep_supervision_scales(stub)
    oversample = 0.0 if is_mae else 0.33  # the MAE trainer's and nnUNetTrainer's __init__ values
    return rotation, dummy_2d, [int(i) for i in initial_patch], mirror_axes, ds_scales, oversample


def _case_shapes(dataset, identifiers: Sequence[str]) -> list[tuple[int, ...]]:
    shapes = []
    for key in identifiers:
        data = dataset.load_case(key)[0]
        shapes.append(tuple(int(s) for s in data.shape[1:]))
    return shapes


def _throughput(make_loader, n_workers: int, n_batches: int, batch_size: int, patch: Sequence[int]) -> dict:
    """Steady-state batches through the augmenter nnU-Net would use for ``n_workers``; ``patch`` is the
    spatial shape the loader delivers (the source patch when the augmentation runs on the device)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    loader = make_loader()
    if n_workers == 0:
        augmenter = SingleThreadedAugmenter(loader, None)
        warmup = 1
    else:
        num_cached = max(6, n_workers // 2)
        augmenter = NonDetMultiThreadedAugmenter(loader, None, n_workers, num_cached=num_cached, seeds=None,
                                                 pin_memory=False, wait_time=0.002)
        # everything the augmenter can buffer: the worker queue and the results-thread queue (num_cached
        # each), one batch in the results thread and one per worker
        warmup = 2 * num_cached + n_workers + 2
    try:
        t0 = time.perf_counter()
        first = next(augmenter)
        first_batch_s = time.perf_counter() - t0
        expected = (batch_size, *patch)
        got = tuple(first["data"].shape)
        if got[0] != expected[0] or got[2:] != tuple(expected[1:]):
            raise RuntimeError(f"unexpected batch shape {got}, expected (batch, C, *patch) = {expected}")
        for _ in range(warmup - 1):
            next(augmenter)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            batch = next(augmenter)
        seconds = time.perf_counter() - t0
        if not bool(np.isfinite(np.asarray(batch["data"])).all()):
            raise RuntimeError("non-finite values in a batch")
    finally:
        if n_workers > 0:
            augmenter._finish()
    return {
        "workers": n_workers,
        "augmenter": type(augmenter).__name__,
        "first_batch_s": round(first_batch_s, 3),
        "untimed_warmup_batches": warmup,
        "timed_batches": n_batches,
        "seconds": round(seconds, 3),
        "batches_per_s": round(n_batches / seconds, 3),
        "patches_per_s": round(n_batches * batch_size / seconds, 3),
    }


def _profile(make_raw_loader, transforms, n_batches: int, batch_size: int) -> dict:
    """Single-thread per-patch seconds: loading+crop, then each transform (as a worker runs them)."""
    import torch
    from threadpoolctl import threadpool_limits

    loader = make_raw_loader()
    load_s = 0.0
    per_transform: dict[str, float] = {}
    n = 0
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as nnU-Net's workers (producer) do
    try:
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for _ in range(n_batches):
                t0 = time.perf_counter()
                batch = loader.generate_train_batch()
                load_s += time.perf_counter() - t0
                for j in range(batch_size):
                    target = batch.get("target")
                    sample = {"image": batch["data"][j], "segmentation": None if target is None else target[j]}
                    for t in getattr(transforms, "transforms", [transforms]):
                        t0 = time.perf_counter()
                        sample = t(**sample)
                        name = type(t).__name__
                        per_transform[name] = per_transform.get(name, 0.0) + time.perf_counter() - t0
                    n += 1
    finally:
        torch.set_num_threads(old_threads)
    stages = {"loading_and_crop": load_s / n, **{k: v / n for k, v in per_transform.items()}}
    total = sum(stages.values())
    bottleneck = max(stages, key=stages.get)
    return {
        "n_patches": n,
        "ms_per_patch": {k: round(v * 1000, 2) for k, v in stages.items()},
        "fraction": {k: round(v / total, 3) for k, v in stages.items()},
        "ms_per_patch_total": round(total * 1000, 2),
        "single_worker_patches_per_s": round(1.0 / total, 3),
        "bottleneck": bottleneck,
    }


def _median_run(runs: Sequence[dict], key: str) -> dict:
    """The run whose ``key`` is the median of ``runs`` (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return dict(ordered[(len(ordered) - 1) // 2])


def _floor(dataset, identifiers: Sequence[str], crop: Sequence[int], n_patches: int, seed: int = 0) -> dict:
    """The loading floor: per patch, open a case, decompress and crop ``crop`` voxels of its image (a random
    in-bounds position; clipped to small cases), as a contiguous float32 tensor; nothing else (no label, no
    padding, no transform). Single thread, as a loader worker."""
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = 0.0
    try:
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for i in range(n_patches):
                key = identifiers[i % len(identifiers)]
                t0 = time.perf_counter()
                data = dataset.load_case(key)[0]
                shape = data.shape[1:]
                starts = [int(rng.integers(0, max(0, s - c) + 1)) for s, c in zip(shape, crop)]
                sl = tuple(slice(st, st + c) for st, c in zip(starts, crop))
                patch = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *sl)], dtype=np.float32))
                seconds += time.perf_counter() - t0
                del patch
    finally:
        torch.set_num_threads(old_threads)
    return {"n_patches": n_patches, "crop": [int(c) for c in crop], "ms_per_patch": round(seconds / n_patches * 1000, 2)}


def time_device_augment(cfg, source: Sequence[int], patch: Sequence[int], batch_size: int, device: str = "cpu",
                        n_iter: int = 20, seed: int = 0) -> float:
    """Median seconds of the MAE device-side augmentation (:func:`~nnunetv2_petct.pretraining.augment.
    augment_batch` with ``cfg``'s zoom/mirror settings) of one batch of ``batch_size`` patches of ``source``
    voxels (``len(cfg.input_channels)`` channels) to ``patch``, over ``n_iter`` batches after one warm-up;
    the parameters of every batch drawn from one seeded generator, so zoomed and un-zoomed patches mix as in
    training."""
    import statistics

    import torch

    from nnunetv2_petct.pretraining.augment import augment_batch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    patch = [int(p) for p in patch]
    mirror_axes = tuple(range(len(patch))) if cfg.mirror else None
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, len(cfg.input_channels), *[int(s) for s in source]), device=dev)
    times = []
    for i in range(n_iter + 1):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        augment_batch(x, patch, tuple(cfg.zoom_range), cfg.p_zoom, mirror_axes, gen)
        if cuda:
            torch.cuda.synchronize(dev)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def device_augment_timing(trainer_cls, plans: dict, configuration: str, source: Sequence[int],
                          patch: Sequence[int], batch_size: int, device: str = "cpu", n_iter: int = 20,
                          step_batch_size: int | None = None, step_iter: int = 1, seed: int = 0) -> dict:
    """Seconds of the MAE trainer's device-side augmentation for one batch (``batch_size`` patches of
    ``source`` voxels, 2 channels, the trainer's zoom/mirror settings; median over ``n_iter`` batches drawn
    from one seeded generator) next to one MAE training step (``mae_train_step`` on the plans' network,
    ``step_batch_size`` patches of ``patch``; median of ``step_iter`` after one untimed step) on ``device``.

    ``device_augment_to_step_ratio`` compares them per patch: (augment s / batch_size) / (step s /
    step_batch_size) (equal batch sizes: per batch).
    """
    import statistics

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_petct.nnunet.trainers.mae import freeze_deep_supervision_heads
    from nnunetv2_petct.pretraining.mae import mae_train_step, resolve_block_size

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    cfg = trainer_cls.mae_config
    patch = [int(p) for p in patch]
    aug_s = time_device_augment(cfg, source, patch, batch_size, device=device, n_iter=n_iter, seed=seed)

    torch.manual_seed(seed)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n = len(cfg.input_channels)
    net = nnUNetTrainer.build_network_architecture(pm, cm, n, n, False).to(dev)
    freeze_deep_supervision_heads(net)
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.initial_lr,
                            weight_decay=cfg.weight_decay)
    scaler = torch.GradScaler("cuda") if cuda else None
    sb = int(step_batch_size or batch_size)
    data = torch.randn((sb, n, *patch), device=dev)
    block = resolve_block_size(patch, cfg.block_size)
    mgen = torch.Generator(device=dev).manual_seed(seed)
    step_times = []
    for i in range(step_iter + 1):
        sync()
        t0 = time.perf_counter()
        mae_train_step(net, opt, data, cfg, block, mgen, scaler)
        sync()
        if i:
            step_times.append(time.perf_counter() - t0)
    step_s = statistics.median(step_times)
    return {
        "device": str(dev),
        "augment_batch_size": int(batch_size),
        "augment_source_patch": [int(s) for s in source],
        "device_augment_s_per_batch": round(aug_s, 5),
        "device_augment_ms_per_patch": round(aug_s / batch_size * 1000, 3),
        "step_batch_size": sb,
        "mae_step_s": round(step_s, 4),
        "device_augment_to_step_ratio": round((aug_s / batch_size) / (step_s / sb), 4),
        "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
    }


def run(size: str = "small", n_batches: int = 20, workers: Sequence[int] = (0, 1, 2),
        patch_size: str | Sequence[int] = "auto", batch_size: int | None = None, n_cases: int = 4,
        trainer: str = "auto", gpu_seconds_per_patch: float | None = None,
        preprocessed_folder: str | os.PathLike | None = None, configuration: str = "3d_fullres",
        plans_identifier: str = "nnUNetPlans", profile_batches: int | None = None, keep: bool = False,
        workdir: str | os.PathLike | None = None, seed: int = 0, compare_cpu_augment: bool = True,
        measure_device_augment: bool = True, device: str = "cpu", step_batch_size: int | None = None,
        profile_repeats: int = 3) -> dict:
    """Patches per second of the pretraining data pipeline for each worker count in ``workers``.

    Args:
        size: phantom size ("tiny", "small", "full") when no ``preprocessed_folder`` is given.
        n_batches: timed batches per worker count (after the untimed warm-up).
        workers: augmentation worker counts (0 = in the main process).
        patch_size: "auto" = 96x128x128 when every case is at least that large, else the plans' patch;
            or explicit (z, y, x).
        batch_size: default the plans' batch size (what the MAE trainer uses).
        n_cases: phantoms to generate.
        trainer: "auto" (MAE trainer, else nnU-Net's default), "mae", "mae_cpu_augment" (the MAE pipeline
            before issue 22: zoom and mirroring in the workers) or "nnunet" (whose transforms).
        gpu_seconds_per_patch: GPU training seconds per patch of this size; default the H100 *estimate*
            scaled by patch voxels.
        preprocessed_folder: an existing ``nnUNet_preprocessed/DatasetXXX_Name`` folder to read instead
            of phantoms.
        configuration, plans_identifier: which preprocessed data and plans.
        profile_batches: batches for the single-process profile (default ``min(n_batches, 10)``).
        profile_repeats: rounds of the single-process figures (pipeline profile, floor, the earlier pipeline's
            profile), interleaved after all worker runs; each figure is the median over the rounds.
        keep, workdir: keep / place the temporary tree.
        seed: numpy/torch seed for patch sampling and augmentation.
        compare_cpu_augment: with the MAE trainer (augmentation on the device), measure the pipeline before
            issue 22 (``trainer="mae_cpu_augment"``) in the same run too (``before``, ``single_worker_speedup``).
        measure_device_augment: time the device-side augmentation of one batch next to one MAE step
            (:func:`device_augment_timing`) on ``device``, with ``step_batch_size`` patches per step
            (default ``min(batch, 2)``: a full-size step on a CPU takes tens of seconds).

    Returns:
        ``patch_size``, ``batch_size``, ``per_workers`` (one dict per worker count: ``patches_per_s``,
        ``first_batch_s``, ...), ``patches_per_s_by_workers``, ``profile`` (ms per patch per stage,
        ``bottleneck``), ``ms_per_patch_total`` (the profile's CPU cost of a patch), ``floor_ms_per_patch``
        (:func:`_floor` of the crop the loader reads) and ``cpu_cost_to_floor_ratio``; ``before`` (the same for
        the CPU-augmenting pipeline) and ``single_worker_speedup``; ``device_augment`` and
        ``device_augment_to_step_ratio``; the GPU comparison
        (``gpu_patches_per_s_needed``, ``gpu_figure_is_estimate``, ``workers_needed_estimate``), setup
        seconds and load averages.
    """
    import torch
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    workers = [int(w) for w in workers]
    if not workers or min(workers) < 0:
        raise ValueError(f"workers must be non-negative counts, got {workers}")
    if n_batches < 1:
        raise ValueError("n_batches must be >= 1")
    load_before = os.getloadavg()
    np.random.seed(seed)
    torch.manual_seed(seed)

    own_root = preprocessed_folder is None and workdir is None
    root = Path(workdir) if workdir is not None else (
        Path(tempfile.mkdtemp(prefix="bench_dataloader_")) if own_root else None)
    setup: dict[str, float] = {}
    try:
        if preprocessed_folder is None:
            env = nnunet_env(root)
            t0 = time.perf_counter()
            fx.write_phantom_dataset(root / "raw", DATASET_ID, DATASET_NAME, size, n_cases=n_cases, seed=seed,
                                     labels=False)
            setup["write_phantoms"] = round(time.perf_counter() - t0, 1)
            planned = fx.plan_dataset(env, DATASET_ID, preprocess=True, configuration=configuration)
            setup["plan_and_preprocess"] = round(planned["seconds"], 1)
            preprocessed_folder = planned["preprocessed_folder"]
            source = f"{n_cases} unlabeled {size}-size phantoms (body-mask pseudo-labels)"
        else:
            source = f"preprocessed dataset {Path(preprocessed_folder).name}"
        preprocessed_folder = Path(preprocessed_folder)
        plans = json.loads((preprocessed_folder / f"{plans_identifier}.json").read_text())
        dataset_json = json.loads((preprocessed_folder / "dataset.json").read_text())
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        lm = pm.get_label_manager(dataset_json)
        data_folder = preprocessed_folder / cm.data_identifier
        dataset_class = infer_dataset_class(str(data_folder))
        dataset = dataset_class(str(data_folder))
        identifiers = list(dataset.identifiers)
        if not identifiers:
            raise ValueError(f"no preprocessed cases in {data_folder}")
        shapes = _case_shapes(dataset, identifiers)
        min_shape = [min(s[a] for s in shapes) for a in range(3)]

        if patch_size == "auto":
            fits = all(m >= p for m, p in zip(min_shape, PRETRAINING_PATCH))
            patch = list(PRETRAINING_PATCH) if fits else [int(p) for p in cm.patch_size]
            patch_choice = ("96x128x128 (the paper's pretraining patch)" if fits else
                            f"plans' patch (cases {min_shape} smaller than 96x128x128)")
        else:
            patch = [int(p) for p in patch_size]
            patch_choice = "given"
        bs = int(batch_size) if batch_size is not None else int(cm.batch_size)

        profile_n = profile_batches if profile_batches is not None else min(n_batches, 10)

        def measure(name: str) -> dict:
            """Throughput per worker count and the single-process profile of one trainer's pipeline."""
            trainer_cls, is_mae = _trainer_class(name)
            rotation, dummy_2d, initial_patch, mirror_axes, ds_scales, oversample = _augmentation_setup(
                trainer_cls, is_mae, cm, patch)
            transforms = trainer_cls.get_training_transforms(
                patch, rotation, ds_scales, mirror_axes, dummy_2d, use_mask_for_norm=cm.use_mask_for_norm,
                is_cascaded=False, foreground_labels=lm.foreground_labels,
                regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
            on_device = is_mae and _augments_on_device(trainer_cls)
            delivered = initial_patch if on_device else patch

            loader_class = getattr(trainer_cls, "training_loader_class", lambda: nnUNetDataLoader)()

            def make_loader(with_transforms=True):
                return loader_class(dataset, bs, initial_patch, patch, lm,
                                        oversample_foreground_percent=oversample, sampling_probabilities=None,
                                        pad_sides=None, transforms=transforms if with_transforms else None,
                                        probabilistic_oversampling=False)

            per_workers = []
            for w in workers:
                per_workers.append(_throughput(make_loader, w, n_batches, bs, delivered))
                logger.info("dataloader %s workers=%d: %.2f patches/s", name, w, per_workers[-1]["patches_per_s"])
            return {
                "trainer": name,
                "trainer_class": trainer_cls,
                "transforms_from": trainer_cls.__name__,
                "loader_class": loader_class.__name__,
                "augmentation_on": "device" if on_device else "cpu",
                "initial_patch_size": initial_patch,
                "delivered_patch_size": [int(p) for p in delivered],
                "transforms": [type(t).__name__ for t in getattr(transforms, "transforms", [transforms])],
                "per_workers": per_workers,
                "patches_per_s_by_workers": {str(r["workers"]): r["patches_per_s"] for r in per_workers},
                "make_raw_loader": lambda: make_loader(False),
                "transform_pipeline": transforms,
            }

        main = measure(trainer)
        trainer_cls = main.pop("trainer_class")
        on_device = main["augmentation_on"] == "device"
        before = None
        if compare_cpu_augment and on_device:
            before = measure("mae_cpu_augment")
            before.pop("trainer_class")
        # single-process costs after every worker is gone, interleaved (pipeline, floor, [before], ...) so
        # that each figure sees the same machine state; the median of ``profile_repeats`` rounds each
        runs: dict[str, list] = {"main": [], "floor": [], "before": []}
        for r in range(max(1, int(profile_repeats))):
            runs["main"].append(_profile(main["make_raw_loader"], main["transform_pipeline"], profile_n, bs))
            runs["floor"].append(_floor(dataset, identifiers, main["initial_patch_size"], max(1, profile_n * bs),
                                        seed=seed + r))
            if before is not None:
                runs["before"].append(_profile(before["make_raw_loader"], before["transform_pipeline"], profile_n,
                                               bs))
        for d in (main, before):
            if d is not None:
                d.pop("make_raw_loader")
                d.pop("transform_pipeline")
        main["profile"] = _median_run(runs["main"], "ms_per_patch_total")
        if before is not None:
            before["profile"] = _median_run(runs["before"], "ms_per_patch_total")
        floor = _median_run(runs["floor"], "ms_per_patch")
        floor["repeats_ms_per_patch"] = [f["ms_per_patch"] for f in runs["floor"]]
        main["profile"]["repeats_ms_per_patch_total"] = [p["ms_per_patch_total"] for p in runs["main"]]
        per_workers, profile = main["per_workers"], main["profile"]
        total_ms = profile["ms_per_patch_total"]

        voxels = float(np.prod(patch))
        gpu_is_estimate = gpu_seconds_per_patch is None
        gpu_s = (H100_SECONDS_PER_PATCH_ESTIMATE * voxels / float(np.prod(PRETRAINING_PATCH))
                 if gpu_is_estimate else float(gpu_seconds_per_patch))
        needed = 1.0 / gpu_s
        best = max(per_workers, key=lambda r: r["patches_per_s"])
        single = profile["single_worker_patches_per_s"]
        out = {
            "source": source,
            "n_cases": len(identifiers),
            "case_shapes_zyx": [list(s) for s in shapes[:8]],
            "target_spacing_mm": [float(s) for s in cm.spacing],
            "patch_size": patch,
            "patch_choice": patch_choice,
            "batch_size": bs,
            **main,
            "best_patches_per_s": best["patches_per_s"],
            "best_workers": best["workers"],
            "ms_per_patch_total": total_ms,
            "floor_ms_per_patch": floor["ms_per_patch"],
            "floor": floor,
            "cpu_cost_to_floor_ratio": round(total_ms / floor["ms_per_patch"], 3) if floor["ms_per_patch"] > 0
            else None,
            "gpu_seconds_per_patch": round(gpu_s, 4),
            "gpu_figure_is_estimate": gpu_is_estimate,
            "gpu_patches_per_s_needed": round(needed, 1),
            "gpu_steps_per_s_needed": round(needed / bs, 2),
            "workers_needed_estimate": int(np.ceil(needed / single)),
            "best_measured_fraction_of_gpu_demand": round(best["patches_per_s"] / needed, 3),
        }
        if before is not None:
            old_single = before["profile"]["single_worker_patches_per_s"]
            out["before"] = before
            out["before_ms_per_patch_total"] = before["profile"]["ms_per_patch_total"]
            out["before_workers_needed_estimate"] = int(np.ceil(needed / old_single))
            out["single_worker_speedup"] = round(single / old_single, 3)  # profile: one process, one thread
            out["patches_per_s_speedup_by_workers"] = {
                k: round(v / before["patches_per_s_by_workers"][k], 3)
                for k, v in main["patches_per_s_by_workers"].items() if before["patches_per_s_by_workers"][k] > 0}
        if on_device and measure_device_augment:
            out["device_augment"] = device_augment_timing(
                trainer_cls, plans, configuration, main["initial_patch_size"], patch, bs, device=device,
                step_batch_size=step_batch_size if step_batch_size is not None else min(bs, 2), seed=seed)
            out["device_augment_to_step_ratio"] = out["device_augment"]["device_augment_to_step_ratio"]
        out.update({
            "setup_seconds": setup,
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": ("CPU-only machine: worker scaling is limited by its cores (and by other load); the GPU "
                     "demand is an estimate unless gpu_seconds_per_patch was given"),
        })
        return out | ({"workdir": str(root)} if keep and root is not None else {})
    finally:
        if own_root and not keep and root is not None:
            shutil.rmtree(root, ignore_errors=True)
