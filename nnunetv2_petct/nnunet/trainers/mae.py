"""Masked-autoencoder pretraining of nnU-Net's own U-Net on CT+PET patches (SPEC §1).

    nnUNetv2_train DATASET 3d_fullres all -tr nnUNetTrainerPETCTMAE

The network is whatever the plans say (PlainConvUNet, ResidualEncoderUNet presets, ...), built by
nnU-Net with as many input *and* output channels as the channels it reconstructs (2 for CT+PET), deep
supervision off: the reconstruction head is the network's final output layer. Everything else is
nnU-Net's: data loading from the preprocessed dataset, folds, logging, ``progress.png``, ``--c``,
``-num_gpus``. All knobs live in one :class:`~nnunetv2_petct.pretraining.mae.MAEConfig` (class attribute
``mae_config``), printed to the training log at start and saved in every checkpoint.

Per iteration: the batch's channels are masked block-wise (independently per channel by default), masked
voxels are set to 0 (zero-mean imputation), and the loss is ``MSE(masked) + 0.2 * MSE(visible)``.

Data and augmentation
    Labels are ignored (an unlabeled pretraining set carries body-mask pseudo-labels only because
    nnU-Net's planning needs labels); no foreground oversampling. Augmentation is spatial only: random
    zoom 0.9-1.1 and mirroring. No intensity augmentation: the input is its own reconstruction target, so
    noise, blur, gamma, brightness/contrast or low-resolution simulation would either ask the network to
    reproduce random corruption or shift the intensity statistics (HU and SUV are quantitative, and zero
    imputation relies on 0 being the mean of the normalized data). Zoom pads with 0 (the mean).

    Where it runs (``mae_config.spatial_augment_on``, default ``"device"``): nnU-Net's loader workers only
    decompress and crop a source patch of the final patch plus exactly the zoom margin
    (:func:`~nnunetv2_petct.pretraining.augment.zoom_margin_patch_size`: ``ceil(max(1, zoom_max) (P - 1)) + 1``
    per axis, 106x141x141 for 96x128x128; no rotation margin), and ``train_step`` zooms and mirrors the whole
    batch on the training device (:mod:`nnunetv2_petct.pretraining.augment`: same distribution and output
    geometry as batchgeneratorsv2's ``SpatialTransform`` + ``MirrorTransform`` with these settings) before the
    masking. The parameters come from a CPU generator re-seeded every epoch from ``seed``, rank and epoch (a
    stream separate from the masks'), so ``--c`` and CPU/GPU runs draw the same zooms and flips. The training
    loader is :class:`~nnunetv2_petct.nnunet.mae_loader.MAEPatchLoader` (image only, decompressed straight into
    the batch; no label, no properties file). Where the
    plans normalise inside a mask (``use_mask_for_norm``), the loader zeroes the outside of the mask before the
    zoom instead of after it (a difference only in the interpolated edge voxels). ``"cpu"``
    (:class:`nnUNetTrainerPETCTMAE_CPUAugment`) is the earlier pipeline: both transforms per patch in the
    workers, from nnU-Net's initial patch ``get_patch_size(patch, 0, 0, 0, zoom_range)``.

Validation
    Every epoch, ``num_val_iterations_per_epoch`` batches from the validation cases (random patches, as
    nnU-Net's own validation) are scored with deterministic masks (a generator re-seeded with
    ``val_seed`` each epoch). nnU-Net's logger / ``progress.png``: ``train_losses`` and ``val_losses`` are
    the reconstruction losses (blue and red curves); the "pseudo dice" keys hold the masked-voxel R² relative
    to zero imputation, ``1 - SSE/SS`` over masked voxels (``dice_per_class_or_region``: one value per
    channel; ``mean_fg_dice``: their mean; green curves; 0 = no better than the mean fill, 1 = perfect).
    With fold ``all`` nnU-Net validates on the training cases; use a fold (0-4) or a
    ``splits_final.json`` to hold cases out.

Seeding
    Training masks come from a generator seeded with ``seed``, rank and epoch. With ``NNUNETV2_PETCT_SEED``
    set, the network initialisation and the main process's draws are seeded too (``TrainingSeedMixin``, as in
    the segmentation trainers; the seed is recorded in ``training_seed.json``).

Outputs in the fold folder (besides nnU-Net's checkpoints and logs)
    ``foundation_final.pth`` (end of training) and ``foundation_best.pth`` (lowest exponential moving
    average of the validation loss, factor 0.9 as nnU-Net's pseudo-Dice EMA): see
    :mod:`nnunetv2_petct.transfer.foundation`; load them into fine-tuning with stock ``-pretrained_weights``
    (same plans and channel count; the output layers are not transferred).
    ``preview_epoch_XXXX.png`` every ``preview_every`` epochs (default nnU-Net's ``save_every``) and at the
    last epoch, ``preview_final.png`` from the final validation, ``preview_latest.png`` = the newest.
    The final ``perform_actual_validation`` (segmentation export in nnU-Net) instead reconstructs the
    centre patch of up to ``final_val_max_cases`` validation cases with fixed masks and writes
    ``validation_reconstruction.json``.

Multi-GPU (``-num_gpus N``): masks are drawn per rank (seeds differ by rank and epoch); DDP averages the
gradients as for nnU-Net; losses are gathered for logging like nnU-Net's; only rank 0 writes checkpoints,
foundation files and previews. The output layers of the lower decoder stages (only used by deep
supervision) are frozen so DDP sees no unused parameters.

Not supported: cascade configurations; ``nnUNetv2_predict`` with an MAE trainer (it is not a segmenter).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from time import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import distributed as dist

from nnunetv2_petct.io import atomic_write, write_json_atomic
from nnunetv2_petct.nnunet.mae_loader import MAEPatchLoader
from nnunetv2_petct.nnunet.trainers.base import (
    CheckedPretrainedWeightsMixin,
    PETCTChannelCheckMixin,
    SafeCheckpointMixin,
    TinyScheduleMixin,
    TrainingSeedMixin,
    unwrap_network,
)
from nnunetv2_petct.pretraining.augment import (
    apply_spatial_augmentation,
    augment_seed,
    sample_spatial_params,
    zoom_margin_patch_size,
)
from nnunetv2_petct.pretraining.mae import (
    PAPER_BLOCK_SIZE,
    PAPER_BLOCK_SIZE_MM,
    CosineWarmupLR,
    MAEConfig,
    center_patch,
    mae_eval_step,
    mae_train_step,
    masked_r2,
    resolve_block_size,
    resolve_block_size_mm,
    seed_for,
)
from nnunetv2_petct.transfer.foundation import (
    build_foundation_checkpoint,
    check_writable_folder,
    save_foundation_checkpoint,
)

STAT_KEYS = ("sse_masked", "sse_visible", "ss_masked", "n_masked", "n_visible")
MAE_STATE_VERSION = 1


def freeze_deep_supervision_heads(network: torch.nn.Module) -> int:
    """Freeze ``decoder.seg_layers[:-1]`` (used only with deep supervision); returns how many were frozen.

    With deep supervision off they get no gradient, which DDP would report as unused parameters. Networks
    without ``decoder.seg_layers`` are left alone.
    """
    layers = getattr(getattr(network, "decoder", None), "seg_layers", None)
    if layers is None or len(layers) < 2:
        return 0
    for layer in list(layers)[:-1]:
        layer.requires_grad_(False)
    return len(layers) - 1


class nnUNetTrainerPETCTMAE(TrainingSeedMixin, PETCTChannelCheckMixin, CheckedPretrainedWeightsMixin, SafeCheckpointMixin,
                            nnUNetTrainer):
    """MAE pretraining with the paper's defaults (see the module docstring and :class:`MAEConfig`)."""

    mae_config: MAEConfig = MAEConfig()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's exact signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        cfg = self.mae_config
        self.initial_lr = cfg.initial_lr
        self.weight_decay = cfg.weight_decay
        self.oversample_foreground_percent = 0.0  # labels are ignored: no foreground oversampling
        self.probabilistic_oversampling = False
        self.enable_deep_supervision = False  # the reconstruction head is the final output
        # fails here, before anything is built, when the patch cannot hold the blocks
        self._mae_block_warning: str | None = None
        self.mae_block_size = self._resolve_mae_block_size()
        self._mae_generator: torch.Generator | None = None
        self._mae_val_generator: torch.Generator | None = None
        self._mae_augment_generator: torch.Generator | None = None
        self._val_batch_index = 0
        self._val_loss_ema: float | None = None
        self._best_val_loss_ema: float | None = None
        self._last_val_stats: dict | None = None
        self._preview_example = None
        self._data_summary: dict = {}

    # ------------------------------------------------------------------ set-up

    def _resolve_mae_block_size(self) -> tuple[int, ...]:
        """Block size in voxels, in the plans' axis order: ``mae_config.block_size`` (voxels) or the automatic
        rule, or ``mae_config.block_size_mm`` (given z, y, x; re-ordered with the plans' ``transpose_forward``)
        at the configuration's spacing. With mm, a block other than the paper's 12x16x16 voxels sets
        ``_mae_block_warning`` (printed to the training log by ``initialize``)."""
        cfg = self.mae_config
        patch = list(self.configuration_manager.patch_size)
        if cfg.block_size_mm is None:
            return resolve_block_size(patch, cfg.block_size)
        n = len(patch)
        axes = list(self.plans_manager.transpose_forward)[-n:]  # data axis i is original axis axes[i]
        block_mm = [cfg.block_size_mm[a] for a in axes]
        spacing = list(self.configuration_manager.spacing)
        block = resolve_block_size(patch, resolve_block_size_mm(patch, spacing, block_mm))
        paper = tuple(PAPER_BLOCK_SIZE[a] for a in axes)
        if block != paper:
            got_mm = [round(b * s, 2) for b, s in zip(block, spacing)]
            self._mae_block_warning = (
                f"WARNING: MAE blocks of {list(block_mm)} mm resolve to {list(block)} voxels ({got_mm} mm) at spacing "
                f"{spacing} mm with patch {patch}; the paper used {list(paper)} voxels (36x32x32 mm at 3x2x2 mm, patch "
                f"96x128x128). For the paper's set-up use plans from nnUNetv2_petct_paper_plans.")
        return block

    def initialize(self):
        if self.was_initialized:
            return super().initialize()  # nnU-Net raises: initialized twice
        if self.is_cascaded:
            raise RuntimeError(f"{self.__class__.__name__}: MAE pretraining on a cascade configuration "
                               f"({self.configuration_name}) is not supported; use 3d_fullres")
        n = len(self.mae_config.input_channels)
        build_cls = type(self).build_network_architecture

        # nnU-Net builds the network with (dataset channels, segmentation heads); the MAE network takes and
        # outputs the reconstructed channels, without deep supervision.
        def build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                  enable_deep_supervision=True):
            network = build_cls(plans_manager, configuration_manager, n, n, False)
            freeze_deep_supervision_heads(network)
            return network

        self.build_network_architecture = build
        try:
            super().initialize()  # channel check first (PETCTChannelCheckMixin), then nnU-Net's
        finally:
            del self.build_network_architecture
        self.num_input_channels = n
        n_dataset = len(self.dataset_json["channel_names"])
        if max(self.mae_config.input_channels) >= n_dataset:
            raise ValueError(f"MAE config uses channels {list(self.mae_config.input_channels)} but the dataset has "
                             f"{n_dataset}")
        self._mae_generator = torch.Generator(device=self.device)
        self._mae_val_generator = torch.Generator(device=self.device)
        self._mae_augment_generator = torch.Generator()  # CPU: parameters only (see augment_on_device)
        self.print_to_log_file("MAE pretraining config:", json.dumps(self.mae_config.to_dict()),
                               f"| block size {list(self.mae_block_size)} over patch "
                               f"{list(self.configuration_manager.patch_size)} | network channels in/out {n} "
                               f"({', '.join(self.network_channel_names())})")
        if self._mae_block_warning:
            self.print_to_log_file(self._mae_block_warning)

    def network_channel_names(self) -> list[str]:
        """dataset.json names of the channels the network takes and reconstructs."""
        return [self.dataset_json["channel_names"][str(c)] for c in self.mae_config.input_channels]

    def _build_loss(self):
        """None: nnU-Net's segmentation loss has no use here (``self.loss`` is read only by the ``train_step``
        and ``validation_step`` this trainer replaces, which compute ``masked_reconstruction_loss``)."""
        return None

    def configure_optimizers(self):
        cfg = self.mae_config
        params = [p for p in self.network.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=cfg.momentum, nesterov=True)
        if cfg.lr_schedule == "cosine":
            scheduler = CosineWarmupLR(optimizer, self.initial_lr, self.num_epochs, cfg.warmup_epochs)
        else:
            scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
        return optimizer, scheduler

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """No rotation; mirroring along all axes (``mirror``); the loader's crop size: the patch plus the zoom
        margin (``zoom_margin_patch_size``) when augmenting on the device, nnU-Net's ``get_patch_size`` for the
        CPU pipeline (``spatial_augment_on="cpu"``, as before)."""
        cfg = self.mae_config
        patch_size = self.configuration_manager.patch_size
        dim = len(patch_size)
        no_rotation = (0.0, 0.0)
        mirror_axes = tuple(range(dim)) if cfg.mirror else None
        if cfg.spatial_augment_on == "device":
            zoom = tuple(cfg.zoom_range) if cfg.p_zoom > 0 else (1.0, 1.0)
            initial_patch_size = np.array(zoom_margin_patch_size(patch_size, zoom))
        else:
            initial_patch_size = get_patch_size(patch_size, no_rotation, no_rotation, no_rotation,
                                                tuple(cfg.zoom_range))
        self.inference_allowed_mirroring_axes = mirror_axes
        return no_rotation, False, initial_patch_size, mirror_axes

    @classmethod
    def training_loader_class(cls) -> type:
        """The data loader class of this trainer's pipeline: :class:`MAEPatchLoader` (image-only crops) with
        the augmentation on the device, nnU-Net's ``nnUNetDataLoader`` for the CPU pipeline."""
        return MAEPatchLoader if cls.mae_config.spatial_augment_on == "device" else nnUNetDataLoader

    def get_dataloaders(self):
        """nnU-Net's ``get_dataloaders`` (datasets, workers, augmenters), with :meth:`training_loader_class` as
        the loader class. nnU-Net offers no hook for the class: the name its trainer module uses is bound to
        ours for the duration of this call only (same constructor; the loader falls back to nnU-Net's batch
        whenever a transform, oversampling or 2D data needs it)."""
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

        loader_class = self.training_loader_class()
        if loader_class is nnUNetDataLoader:
            return super().get_dataloaders()
        if getattr(trainer_module, "nnUNetDataLoader", None) is not nnUNetDataLoader:
            raise RuntimeError("nnU-Net's trainer module no longer creates its loaders as nnUNetDataLoader; "
                               "the MAE loader cannot be installed")
        trainer_module.nnUNetDataLoader = loader_class
        try:
            loaders = super().get_dataloaders()
        finally:
            trainer_module.nnUNetDataLoader = nnUNetDataLoader
        self.print_to_log_file(f"MAE training loader: {loader_class.__name__} (image-only crops, augmentation on "
                               f"{self.device})")
        return loaders

    @classmethod
    def get_training_transforms(cls, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        """Spatial-only augmentation: random zoom (``p_zoom``, ``zoom_range``) and mirroring. See module doc.

        With ``spatial_augment_on="device"`` the loader applies nothing but nnU-Net's image masking (when the
        plans normalise inside a mask): the zoom and the mirroring run in ``train_step``, the label is unused.
        """
        cfg = cls.mae_config
        if cfg.spatial_augment_on == "device":
            transforms = []
            if use_mask_for_norm is not None and any(use_mask_for_norm):
                transforms.append(MaskImageTransform(
                    apply_to_channels=[i for i in range(len(use_mask_for_norm)) if use_mask_for_norm[i]],
                    channel_idx_in_seg=0, set_outside_to=0))
            return ComposeTransforms(transforms)
        transforms = [SpatialTransform(
            patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0, p_rotation=0,
            p_scaling=cfg.p_zoom, scaling=tuple(cfg.zoom_range), p_synchronize_scaling_across_axes=1,
            bg_style_seg_sampling=False, border_mode_seg="constant", padding_value_seg=-1)]
        if mirror_axes is not None and len(mirror_axes) > 0:
            transforms.append(MirrorTransform(allowed_axes=mirror_axes))
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            transforms.append(MaskImageTransform(
                apply_to_channels=[i for i in range(len(use_mask_for_norm)) if use_mask_for_norm[i]],
                channel_idx_in_seg=0, set_outside_to=0))
        transforms.append(RemoveLabelTansform(-1, 0))
        return ComposeTransforms(transforms)

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        tr, val = list(dataset_tr.identifiers), list(dataset_val.identifiers)
        self._pretraining_cases = (tr, val)
        self._data_summary = {
            "dataset_name": self.plans_manager.dataset_name,
            "num_training_cases": len(tr),
            "num_validation_cases": len(val),
            "validation_held_out": not (set(tr) & set(val)),
            "fold": str(self.fold),
        }
        return dataset_tr, dataset_val

    def on_train_start(self):
        check_writable_folder(self.output_folder)
        super().on_train_start()
        s = self._data_summary
        self.print_to_log_file(f"MAE data: {s.get('num_training_cases')} training / "
                               f"{s.get('num_validation_cases')} validation cases"
                               + ("" if s.get("validation_held_out", True) else
                                  " (validation cases are training cases: fold 'all')"))

    # ------------------------------------------------------------------ training and validation

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        seed = seed_for(self.mae_config.seed, self.local_rank, self.current_epoch)
        self._mae_generator.manual_seed(seed)
        self._mae_augment_generator.manual_seed(augment_seed(seed))

    def augment_on_device(self, data: torch.Tensor) -> torch.Tensor:
        """Zoom and mirror a training batch (B, C, *source patch) on its device to the plans' patch
        (``spatial_augment_on="device"``; the batch unchanged otherwise). Parameters from the CPU generator
        re-seeded per epoch and rank."""
        cfg = self.mae_config
        if cfg.spatial_augment_on != "device":
            return data
        patch = [int(p) for p in self.configuration_manager.patch_size]
        mirror_axes = tuple(range(len(patch))) if cfg.mirror else None
        params = sample_spatial_params(data.shape[0], len(patch), tuple(cfg.zoom_range), cfg.p_zoom, mirror_axes,
                                       self._mae_augment_generator)
        with torch.no_grad():
            return apply_spatial_augmentation(data, params, patch)

    def train_step(self, batch: dict) -> dict:
        data = self.augment_on_device(batch["data"].to(self.device, non_blocking=True))
        return mae_train_step(self.network, self.optimizer, data, self.mae_config, self.mae_block_size,
                              self._mae_generator, self.grad_scaler)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._mae_val_generator.manual_seed(seed_for(self.mae_config.val_seed, self.local_rank, 0))
        self._val_batch_index = 0

    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        keep = self._val_batch_index == 0 and self.local_rank == 0
        out = mae_eval_step(self.network, data, self.mae_config, self.mae_block_size, self._mae_val_generator,
                            keep_first=keep)
        self._val_batch_index += 1
        if keep:
            self._preview_example = out.pop("example")
        return out

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        losses = [float(o["loss"]) for o in val_outputs]
        sums = {k: np.sum([o[k] for o in val_outputs], axis=0) for k in STAT_KEYS}
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (losses, sums))
            losses = [v for g in gathered for v in g[0]]
            sums = {k: np.sum([g[1][k] for g in gathered], axis=0) for k in STAT_KEYS}
        loss = float(np.mean(losses))
        r2 = masked_r2(sums["sse_masked"], sums["ss_masked"])
        finite = [v for v in r2 if np.isfinite(v)]
        self.logger.log("mean_fg_dice", float(np.mean(finite)) if finite else float("nan"), self.current_epoch)
        self.logger.log("dice_per_class_or_region", r2, self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)
        self._val_loss_ema = loss if self._val_loss_ema is None else 0.9 * self._val_loss_ema + 0.1 * loss
        n_m, n_v = np.maximum(sums["n_masked"], 1), np.maximum(sums["n_visible"], 1)
        self._last_val_stats = {
            "loss": loss,
            "masked_mse": dict(zip(self.network_channel_names(), (sums["sse_masked"] / n_m).tolist())),
            "visible_mse": dict(zip(self.network_channel_names(), (sums["sse_visible"] / n_v).tolist())),
            "masked_r2_vs_zero": dict(zip(self.network_channel_names(), r2)),
        }

    def on_epoch_end(self):
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        get = self.logger.get_value
        self.print_to_log_file("train_loss", np.round(get("train_losses", step=-1), decimals=4))
        self.print_to_log_file("val_loss", np.round(get("val_losses", step=-1), decimals=4),
                               f"(EMA {self._val_loss_ema:.4f})")
        if self._last_val_stats:
            self.print_to_log_file("masked R2 vs zero imputation",
                                   {k: round(float(v), 4) for k, v in self._last_val_stats["masked_r2_vs_zero"].items()})
        self.print_to_log_file(f"Epoch time: {np.round(get('epoch_end_timestamps', step=-1) - get('epoch_start_timestamps', step=-1), decimals=2)} s")

        epoch = self.current_epoch
        last = epoch == self.num_epochs - 1
        if (epoch + 1) % self.save_every == 0 and not last:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        ema = self._val_loss_ema
        if ema is not None and np.isfinite(ema) and (self._best_val_loss_ema is None or ema < self._best_val_loss_ema):
            self._best_val_loss_ema = float(ema)
            self.print_to_log_file(f"New best EMA validation loss: {np.round(ema, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
            self.write_foundation_checkpoint("foundation_best.pth", epoch)
        every = self.mae_config.preview_every or self.save_every
        if (epoch + 1) % every == 0 or last:
            self.write_preview(f"epoch_{epoch:04d}")
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def on_train_end(self):
        super().on_train_end()  # checkpoint_final.pth, data loaders shut down
        self.write_foundation_checkpoint("foundation_final.pth", self.current_epoch - 1)

    # ------------------------------------------------------------------ checkpoints

    def mae_state(self) -> dict:
        """What ``--c`` needs beyond nnU-Net's checkpoint (masks are reseeded from seed, rank and epoch)."""
        return {
            "version": MAE_STATE_VERSION,
            "config": self.mae_config.to_dict(),
            "block_size": list(self.mae_block_size),
            "val_loss_ema": self._val_loss_ema,
            "best_val_loss_ema": self._best_val_loss_ema,
            "data_summary": dict(self._data_summary),
        }

    def checkpoint_payload(self) -> dict:
        """nnU-Net's checkpoint plus ``mae_state`` (saved atomically and weights-only safe by
        :class:`~nnunetv2_petct.nnunet.trainers.base.SafeCheckpointMixin`)."""
        return {**super().checkpoint_payload(), "mae_state": self.mae_state()}

    def on_checkpoint_loaded(self, checkpoint: dict) -> None:
        """Restore the MAE state after nnU-Net's (``load_checkpoint``: weights-only, falls back when corrupt)."""
        state = checkpoint.get("mae_state")
        if state is None:
            self.print_to_log_file("WARNING: checkpoint has no MAE state (not written by an MAE trainer); "
                                   "starting the validation-loss tracking afresh")
            return
        saved = state.get("config", {})
        if saved != self.mae_config.to_dict():
            self.print_to_log_file(f"WARNING: the checkpoint's MAE config {saved} differs from this trainer's "
                                   f"{self.mae_config.to_dict()}; continuing with this trainer's")
        self._val_loss_ema = state.get("val_loss_ema")
        self._best_val_loss_ema = state.get("best_val_loss_ema")
        self._data_summary = dict(state.get("data_summary") or {})
        self.print_to_log_file(f"resumed MAE state: epoch {self.current_epoch}, best EMA val loss "
                               f"{self._best_val_loss_ema}")

    def foundation_metadata(self, epoch: int) -> dict:
        """``petct_metadata`` of the foundation checkpoints."""
        import importlib.metadata

        import nnunetv2_petct

        def last(key):
            values = self.logger.get_value(key, step=None)
            return float(values[-1]) if len(values) else None

        cfg = self.mae_config
        try:
            nnunet_version = importlib.metadata.version("nnunetv2")
        except importlib.metadata.PackageNotFoundError:
            nnunet_version = None
        return {
            "channel_order": self.network_channel_names(),
            "dataset_channel_names": dict(self.dataset_json["channel_names"]),
            "input_channels": list(cfg.input_channels),
            "masking": {"block_size": list(self.mae_block_size), "mask_ratio": cfg.mask_ratio,
                        "per_channel": cfg.per_channel, "visible_weight": cfg.visible_weight,
                        "imputation": "zero (mean of z-scored intensities)",
                        "patch_size": list(self.configuration_manager.patch_size)},
            "mae_config": cfg.to_dict(),
            "data": dict(self._data_summary, dataset_name=self.plans_manager.dataset_name,
                         configuration=self.configuration_name, plans_name=self.plans_manager.plans_name),
            "pretraining_data": [self.pretraining_data()],
            "schedule": {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                         "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
                         "batch_size": self.configuration_manager.batch_size,
                         "world_size": dist.get_world_size() if self.is_ddp else 1},
            "trainer_name": self.__class__.__name__,
            "package_version": nnunetv2_petct.__version__,
            "nnunetv2_version": nnunet_version,
            "torch_version": torch.__version__,
            "epoch": int(epoch),
            "epochs_completed": int(epoch) + 1,
            "train_loss": last("train_losses"),
            "val_loss": last("val_losses"),
            "val_loss_ema": self._val_loss_ema,
            "best_val_loss_ema": self._best_val_loss_ema,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def pretraining_data(self) -> dict:
        """Which cases this run pretrained on, with their source identities (leakage guard; see
        :mod:`nnunetv2_petct.transfer.leakage`): the pretraining dataset's ``manifest.jsonl`` from
        ``$nnUNet_raw/<dataset>`` or the preprocessed dataset folder, else case ids only."""
        import os

        from nnunetv2_petct.transfer.leakage import pretraining_data_record, read_manifest_records

        cases = getattr(self, "_pretraining_cases", None)
        if cases is None:
            cases = tuple(list(k) for k in self.do_split())
        name = self.plans_manager.dataset_name
        records = None
        raw = os.environ.get("nnUNet_raw")
        for folder in ([os.path.join(raw, name)] if raw else []) + [self.preprocessed_dataset_folder_base]:
            records = read_manifest_records(folder) if folder else None
            if records is not None:
                break
        return pretraining_data_record(name, cases[0], cases[1], records, self.fold)

    def write_foundation_checkpoint(self, name: str, epoch: int) -> str | None:
        """Write ``name`` (e.g. ``foundation_final.pth``) to the fold folder (rank 0 only); returns its path."""
        if self.local_rank != 0:
            return None
        ckpt = build_foundation_checkpoint(
            unwrap_network(self.network).state_dict(), self.plans_manager.plans, self.configuration_name,
            len(self.mae_config.input_channels), self.foundation_metadata(epoch), self.network_channel_names())
        path = save_foundation_checkpoint(ckpt, join(self.output_folder, name))
        self.print_to_log_file(f"foundation checkpoint written: {path}")
        return str(path)

    # ------------------------------------------------------------------ previews and final validation

    def write_preview(self, tag: str, example=None) -> str | None:
        """``preview_<tag>.png`` and ``preview_latest.png`` from a validation example (rank 0; never raises)."""
        example = example if example is not None else self._preview_example
        if self.local_rank != 0 or example is None:
            return None
        from nnunetv2_petct.pretraining.previews import render_reconstruction_preview

        target, masked, pred, _ = (t.numpy() for t in example)
        spacing = list(self.configuration_manager.spacing)
        if target.ndim == 3:  # 2D configuration (C, Y, X): show the slice itself
            target, masked, pred = (a[:, :, None, :] for a in (target, masked, pred))
            spacing = [spacing[0], 1.0, spacing[1]]
        path = join(self.output_folder, f"preview_{tag}.png")
        try:
            render_reconstruction_preview(target, masked, pred, path, self.network_channel_names(), spacing,
                                          title=f"{self.__class__.__name__} {tag}")
            with atomic_write(join(self.output_folder, "preview_latest.png")) as tmp:
                shutil.copyfile(path, tmp)
        except Exception as e:  # a preview must never stop a long pretraining run
            self.print_to_log_file(f"WARNING: could not write preview {path}: {e!r}")
            return None
        return path

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Reconstruct the centre patch of up to ``final_val_max_cases`` validation cases with fixed masks.

        Writes ``validation_reconstruction.json`` (per-case and mean losses, masked / visible MSE and masked
        R² per channel) and ``preview_final.png`` (first case) to the fold folder. Replaces nnU-Net's
        segmentation export, which means nothing for a reconstruction network. Rank 0 only.
        """
        if self.local_rank != 0:
            return
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        network = unwrap_network(self.network)
        network.eval()
        cfg = self.mae_config
        _, val_keys = self.do_split()
        keys = sorted(val_keys)[: max(0, int(cfg.final_val_max_cases))]
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        generator = torch.Generator(device=self.device)
        names = self.network_channel_names()
        cases, example = [], None
        for i, key in enumerate(keys):
            data = np.asarray(dataset.load_case(key)[0][:], dtype=np.float32)
            x = torch.from_numpy(center_patch(data, self.configuration_manager.patch_size)[None]).to(self.device)
            generator.manual_seed(seed_for(cfg.val_seed, 0, i))
            out = mae_eval_step(network, x, cfg, self.mae_block_size, generator, keep_first=(i == 0))
            if i == 0:
                example = out.pop("example")
            n_m = np.maximum(out["n_masked"], 1)
            n_v = np.maximum(out["n_visible"], 1)
            cases.append({
                "case": key, "loss": out["loss"],
                "masked_mse": dict(zip(names, (np.asarray(out["sse_masked"]) / n_m).tolist())),
                "visible_mse": dict(zip(names, (np.asarray(out["sse_visible"]) / n_v).tolist())),
                "masked_r2_vs_zero": dict(zip(names, masked_r2(out["sse_masked"], out["ss_masked"]))),
            })
        summary = {
            "trainer": self.__class__.__name__,
            "epochs_completed": int(self.current_epoch),
            "what": "reconstruction of the centre patch of each validation case, fixed masks (val_seed)",
            "num_cases": len(cases),
            "mean_loss": float(np.mean([c["loss"] for c in cases])) if cases else None,
            "mean_masked_r2_vs_zero": {n: float(np.nanmean([c["masked_r2_vs_zero"][n] for c in cases]))
                                       for n in names} if cases else None,
            "last_epoch_val_loss": (float(self.logger.get_value("val_losses", step=-1))
                                    if len(self.logger.get_value("val_losses", step=None)) else None),
            "best_val_loss_ema": self._best_val_loss_ema,
            "mae_config": cfg.to_dict(),
            "block_size": list(self.mae_block_size),
            "cases": cases,
        }
        path = join(self.output_folder, "validation_reconstruction.json")
        write_json_atomic(summary, path)
        if example is not None:
            self.write_preview("final", example)
        self.print_to_log_file(f"MAE validation: mean reconstruction loss {summary['mean_loss']} over "
                               f"{len(cases)} case(s); written to {path}")


class nnUNetTrainerPETCTMAE_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE):
    """:class:`nnUNetTrainerPETCTMAE` with the tiny schedule (2 epochs x 2 iterations, 1 validation iteration)."""


class nnUNetTrainerPETCTMAE_CPUAugment(nnUNetTrainerPETCTMAE):
    """The pipeline before issue 22: zoom and mirroring per patch in the loader workers (batchgeneratorsv2's
    ``SpatialTransform`` + ``MirrorTransform``) from nnU-Net's initial patch; for comparisons and benchmarks."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(spatial_augment_on="cpu")


class nnUNetTrainerPETCTMAE_CPUAugment_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_CPUAugment):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_JointMask(nnUNetTrainerPETCTMAE):
    """Ablation: one mask shared by CT and PET (no cross-modal filling-in)."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(per_channel=False)


class nnUNetTrainerPETCTMAE_JointMask_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_JointMask):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_Ratio75(nnUNetTrainerPETCTMAE):
    """Ablation: 75 % of blocks masked."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(mask_ratio=0.75)


class nnUNetTrainerPETCTMAE_Ratio75_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_Ratio75):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_Ratio25(nnUNetTrainerPETCTMAE):
    """Ablation: 25 % of blocks masked."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(mask_ratio=0.25)


class nnUNetTrainerPETCTMAE_Ratio25_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_Ratio25):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_CTOnly(nnUNetTrainerPETCTMAE):
    """Separated-modality ablation: the network takes and reconstructs CT only (1 in, 1 out channel).

    The dataset keeps both channels; PET is not read into the network. Its foundation checkpoint has a
    1-channel input projection: it loads into a 1-channel network (e.g. for linear probing), not into a
    2-channel fine-tuning network through stock ``-pretrained_weights``.
    """

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(input_channels=(0,))


class nnUNetTrainerPETCTMAE_CTOnly_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_CTOnly):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_PETOnly(nnUNetTrainerPETCTMAE):
    """Separated-modality ablation: PET only (1 in, 1 out channel); see :class:`nnUNetTrainerPETCTMAE_CTOnly`."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(input_channels=(1,))


class nnUNetTrainerPETCTMAE_PETOnly_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_PETOnly):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_SGDPoly(nnUNetTrainerPETCTMAE):
    """nnU-Net's optimisation instead of the paper's: SGD (Nesterov, momentum 0.99) lr 1e-2, wd 3e-5, poly
    schedule, grad-norm clip 12."""

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(optimizer="sgd", initial_lr=1e-2, weight_decay=3e-5,
                                                          momentum=0.99, lr_schedule="poly", grad_clip=12.0)


class nnUNetTrainerPETCTMAE_SGDPoly_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_SGDPoly):
    """Tiny schedule."""


class nnUNetTrainerPETCTMAE_paper(nnUNetTrainerPETCTMAE):
    """The paper's pretraining recipe (Liu et al. 2026, SPEC §1), for plans from ``nnUNetv2_petct_paper_plans``
    (its U-Net, 96x128x128 at 3x2x2 mm, batch 16):

    - blocks of 36x32x32 mm (z, y, x), i.e. the paper's 12x16x16 voxels at 3x2x2 mm; other plans get the
      nearest block in voxels and a WARNING in the training log;
    - batch size from the plans (the paper's 16; the log notes another one: lr 5e-4 was chosen for 16);
    - 250 epochs x 250 iterations = 62,500 iterations (the paper: 200 passes over 4,997 scans at batch 16);
      10 validation iterations per epoch;
    - AdamW lr 5e-4, weight decay 1e-5, linear warm-up over the first 5 epochs (1,250 iterations), then cosine
      to 0; grad-norm clip 1; mixed precision on CUDA (nnU-Net's autocast + GradScaler);
    - masking, loss and augmentation as :class:`nnUNetTrainerPETCTMAE` (ratio 0.5 per channel, zero
      imputation, MSE(masked) + 0.2 MSE(visible), zoom 0.9-1.1, mirroring).
    """

    mae_config = nnUNetTrainerPETCTMAE.mae_config.replace(block_size_mm=PAPER_BLOCK_SIZE_MM, warmup_epochs=5)
    paper_num_epochs = 250
    paper_iterations_per_epoch = 250
    paper_val_iterations_per_epoch = 10
    paper_batch_size = 16

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's exact signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.paper_num_epochs
        self.num_iterations_per_epoch = self.paper_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.paper_val_iterations_per_epoch

    def on_train_start(self):
        super().on_train_start()
        batch = self.configuration_manager.batch_size
        self.print_to_log_file(
            f"paper recipe: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations = "
            f"{self.num_epochs * self.num_iterations_per_epoch} iterations at batch {batch}"
            + ("" if batch == self.paper_batch_size else
               f" (NOTE: the paper used batch {self.paper_batch_size}; lr {self.initial_lr} was chosen for it)"))


class nnUNetTrainerPETCTMAE_paper_tiny(TinyScheduleMixin, nnUNetTrainerPETCTMAE_paper):
    """:class:`nnUNetTrainerPETCTMAE_paper` with the tiny schedule (for tests)."""


MAE_TRAINERS = tuple(
    cls for name, cls in sorted(globals().items())
    if name.startswith("nnUNetTrainerPETCTMAE") and isinstance(cls, type)
)
