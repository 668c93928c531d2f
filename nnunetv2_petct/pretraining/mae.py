"""Masked-autoencoder (MAE) pretraining objective for 2-channel CT+PET patches (SPEC §1). Pure torch.

The method of Liu et al. 2026, as far as it is known:

- the patch is cut into blocks (12x16x16 voxels of a 96x128x128 patch: an 8x8x8 grid); each block is
  masked with probability ``mask_ratio`` (0.5), **independently per channel** (a CT block can be hidden
  while the PET block at the same place is visible);
- masked voxels are set to 0 (*zero-mean imputation*: inputs are z-score normalized by nnU-Net, so 0 is
  the mean; there is no learnable mask token);
- the U-Net reconstructs every channel everywhere; the loss is
  ``MSE(masked voxels) + visible_weight * MSE(visible voxels)`` (each term a mean over its own voxels,
  all channels together; ``visible_weight`` = 0.2).

This module has no nnU-Net import: the trainer (``nnunetv2_petct.nnunet.trainers.mae``) and the
benchmark call :func:`mae_train_step` / :func:`mae_eval_step` with a plain network and optimizer.
Shapes are ``(B, C, Z, Y, X)`` (3D) or ``(B, C, Y, X)`` (2D); block sizes have one entry per spatial axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: The paper's block size in voxels (z, y, x) and its block grid over a 96x128x128 patch.
PAPER_BLOCK_SIZE: tuple[int, int, int] = (12, 16, 16)
PAPER_BLOCK_GRID: tuple[int, int, int] = (8, 8, 8)
#: The paper's block in mm (z, y, x): 12x16x16 voxels at its 3x2x2 mm spacing.
PAPER_BLOCK_SIZE_MM: tuple[float, float, float] = (36.0, 32.0, 32.0)


@dataclass(frozen=True)
class MAEConfig:
    """Every knob of MAE pretraining, in one place (logged at start, saved in checkpoints).

    Masking and loss:
      - ``block_size``: block edge in voxels per spatial axis, or None for the automatic rule of
        :func:`resolve_block_size` (an 8x8x8 grid over the patch when the patch divides by 8, else the
        paper's 12x16x16 clipped to the patch);
      - ``block_size_mm``: block edge in mm per spatial axis (z, y, x) instead, converted to voxels at the
        plans' spacing by :func:`resolve_block_size_mm` (the paper's 36x32x32 mm is 12x16x16 voxels at
        3x2x2 mm); not together with ``block_size``;
      - ``mask_ratio``: probability that a block is masked (Bernoulli per block, as in the paper);
      - ``per_channel``: independent masks per channel (paper) or one mask shared by all channels
        ("joint masking" ablation);
      - ``visible_weight``: weight of the visible-voxel MSE term;
      - ``input_channels``: dataset channels the network sees and reconstructs: ``(0, 1)`` = CT+PET
        (joint), ``(0,)`` = CT only, ``(1,)`` = PET only ("separated-modality" ablation).

    Optimisation (the paper: AdamW 5e-4, wd 1e-5, cosine, grad-norm clip 1.0):
      - ``optimizer``: ``"adamw"`` or ``"sgd"`` (nnU-Net's SGD, Nesterov momentum ``momentum``);
      - ``lr_schedule``: ``"cosine"`` (to 0 at the last epoch, after ``warmup_epochs`` of linear warm-up)
        or ``"poly"`` (nnU-Net's ``(1 - epoch/epochs)**0.9``); stepped once per epoch like nnU-Net's;
      - ``grad_clip``: max gradient norm (None: no clipping).

    Augmentation (spatial only; see the trainer for why there is no intensity augmentation):
      ``zoom_range`` with probability ``p_zoom``, and random mirroring along all axes when ``mirror``;
      ``spatial_augment_on``: ``"device"`` (batched on the training device inside the training step,
      :mod:`nnunetv2_petct.pretraining.augment`; the loader workers only read and crop) or ``"cpu"``
      (batchgeneratorsv2's ``SpatialTransform`` + ``MirrorTransform`` per patch in the loader workers, the
      pipeline before issue 22; same distribution, kept for comparison).

    Reproducibility and outputs: ``seed`` seeds the training mask generator, re-seeded every epoch with
    :func:`seed_for` (seed, DDP rank, epoch: ranks draw different masks and a resumed run draws the same
    ones); ``val_seed`` seeds the validation masks (same seed every validation epoch, so epochs compare);
    ``final_val_max_cases`` caps the end-of-training reconstruction report; ``preview_every`` (epochs;
    None = at nnU-Net's ``save_every``) sets how often a preview PNG is written.
    """

    block_size: tuple[int, ...] | None = None
    block_size_mm: tuple[float, ...] | None = None
    mask_ratio: float = 0.5
    per_channel: bool = True
    visible_weight: float = 0.2
    input_channels: tuple[int, ...] = (0, 1)
    optimizer: str = "adamw"
    initial_lr: float = 5e-4
    weight_decay: float = 1e-5
    momentum: float = 0.99
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    grad_clip: float | None = 1.0
    zoom_range: tuple[float, float] = (0.9, 1.1)
    p_zoom: float = 0.2
    mirror: bool = True
    spatial_augment_on: str = "device"
    seed: int = 12345
    val_seed: int = 4242
    final_val_max_cases: int = 20
    preview_every: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.mask_ratio) <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if float(self.visible_weight) < 0:
            raise ValueError(f"visible_weight must be >= 0, got {self.visible_weight}")
        chans = tuple(int(c) for c in self.input_channels)
        if not chans or len(set(chans)) != len(chans) or min(chans) < 0:
            raise ValueError(f"input_channels must be distinct channel indices, got {self.input_channels}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "poly"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'poly', got {self.lr_schedule!r}")
        if self.block_size is not None and any(int(b) < 1 for b in self.block_size):
            raise ValueError(f"block_size entries must be >= 1, got {self.block_size}")
        if self.block_size_mm is not None:
            if self.block_size is not None:
                raise ValueError("give block_size (voxels) or block_size_mm, not both")
            if any(not float(b) > 0 for b in self.block_size_mm):
                raise ValueError(f"block_size_mm entries must be > 0, got {self.block_size_mm}")
        if self.spatial_augment_on not in ("device", "cpu"):
            raise ValueError(f"spatial_augment_on must be 'device' or 'cpu', got {self.spatial_augment_on!r}")
        if not 0.0 <= float(self.p_zoom) <= 1.0:
            raise ValueError(f"p_zoom must be in [0, 1], got {self.p_zoom}")
        lo, hi = self.zoom_range
        if not 0 < lo <= hi:
            raise ValueError(f"zoom_range must satisfy 0 < low <= high, got {self.zoom_range}")

    def replace(self, **changes) -> MAEConfig:
        """A copy with ``changes`` (the variant trainers use this)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (lists, numbers, str, bool, None): JSON- and ``torch.load(weights_only=True)``-safe."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise TypeError, so a typo never passes silently)."""
        kw = dict(d)
        for k in ("block_size", "block_size_mm", "input_channels", "zoom_range"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


def resolve_block_size(patch_size: Sequence[int], block_size: Sequence[int] | None = None,
                       grid: Sequence[int] | None = None) -> tuple[int, ...]:
    """The block size (voxels per spatial axis) used to mask a patch of ``patch_size``.

    Rule when ``block_size`` is None:
      1. if every patch axis is divisible by the grid (default 8 per axis, the paper's 8x8x8 grid), the
         block is ``patch // grid`` — the paper's 96x128x128 patch gives exactly its 12x16x16 block;
      2. otherwise the paper's block (12x16x16; last axes for 2D) clipped to the patch.
    An explicit ``block_size`` is used as given.

    Raises ValueError when the dimensions disagree, a block entry is < 1, or a block is larger than the
    patch along an axis (the whole axis would be one block: every mask would be all-or-nothing there).
    A patch that is not a multiple of the block is allowed: the far-edge blocks are cropped (see
    :func:`sample_block_mask`); a log message says so.
    """
    patch = tuple(int(p) for p in patch_size)
    n = len(patch)
    if block_size is None:
        grid = tuple(int(g) for g in (grid if grid is not None else PAPER_BLOCK_GRID[-n:]))
        if len(grid) != n:
            raise ValueError(f"grid {grid} has {len(grid)} axes, patch {patch} has {n}")
        if all(p % g == 0 and p >= g for p, g in zip(patch, grid)):
            block = tuple(p // g for p, g in zip(patch, grid))
        else:
            block = tuple(min(b, p) for b, p in zip(PAPER_BLOCK_SIZE[-n:], patch))
    else:
        block = tuple(int(b) for b in block_size)
    if len(block) != n:
        raise ValueError(f"block size {block} has {len(block)} axes, patch {patch} has {n}")
    if any(b < 1 for b in block):
        raise ValueError(f"block size entries must be >= 1, got {block}")
    too_big = [i for i, (b, p) in enumerate(zip(block, patch)) if b > p]
    if too_big:
        raise ValueError(f"block size {block} is larger than the patch {patch} along axis/axes {too_big}: "
                         f"choose a block that fits the patch (MAEConfig.block_size) or a larger patch")
    if any(p % b for p, b in zip(patch, block)):
        logger.info("patch %s is not a multiple of block %s: blocks at the far edge are cropped", patch, block)
    return block


def resolve_block_size_mm(patch_size: Sequence[int], spacing_mm: Sequence[float],
                          block_size_mm: Sequence[float]) -> tuple[int, ...]:
    """The block size in voxels for a block given in mm: ``round(block_mm / spacing_mm)`` per axis (halves round
    up, at least 1 voxel), clipped to the patch.

    All three sequences are in the same axis order. Examples: 36x32x32 mm at 3x2x2 mm -> 12x16x16 voxels (the
    paper); at 8x6x6 mm -> 5x5x5; clipped to a 4-voxel patch axis -> 4. Raises ValueError when the lengths
    differ or a spacing is not positive.
    """
    patch = tuple(int(p) for p in patch_size)
    spacing = tuple(float(s) for s in spacing_mm)
    block_mm = tuple(float(b) for b in block_size_mm)
    if not len(patch) == len(spacing) == len(block_mm):
        raise ValueError(f"patch {patch}, spacing {spacing} and block {block_mm} mm must have the same number of axes")
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    block = tuple(max(1, math.floor(b / s + 0.5)) for b, s in zip(block_mm, spacing))
    clipped = tuple(min(b, p) for b, p in zip(block, patch))
    if clipped != block:
        logger.info("block %s voxels (%s mm) clipped to the patch %s: %s", block, block_mm, patch, clipped)
    return clipped


def block_grid_shape(spatial_shape: Sequence[int], block_size: Sequence[int]) -> tuple[int, ...]:
    """Number of blocks per axis: ``ceil(shape / block)`` (the last block of an axis may be partial)."""
    return tuple(math.ceil(int(s) / int(b)) for s, b in zip(spatial_shape, block_size))


def sample_block_mask(shape: Sequence[int], block_size: Sequence[int], mask_ratio: float, per_channel: bool = True,
                      generator: torch.Generator | None = None, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A block mask for a batch of shape ``(B, C, *spatial)``: 1 where masked, 0 where visible.

    - Each block of ``block_size`` voxels is masked with probability ``mask_ratio`` (independent Bernoulli
      draws, so *about* that fraction of blocks is masked; 0 and 1 give no / full masking).
    - ``per_channel=True``: independent draws per channel; ``False``: one draw per block shared by all
      channels (identical masks across channels).
    - Shapes that are not multiples of the block: the block grid is ``ceil(shape / block)`` per axis,
      anchored at voxel 0; the last block of an axis is cropped at the far edge (it counts as one block).
    - Efficient: draws ``B x C x grid`` uniforms on the target device, then expands each axis with
      ``repeat_interleave`` and crops.
    - Device: the mask is created on ``device``; when None, on ``generator.device`` (or the CPU without a
      generator). A generator must live on that same device (torch draws on the generator's device), e.g.
      ``torch.Generator(device=x.device).manual_seed(s)``; a mismatch raises ValueError.
    - Same generator state -> same mask.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise ValueError(f"shape must be (B, C, *spatial), got {shape}")
    spatial = shape[2:]
    block = tuple(int(b) for b in block_size)
    if len(block) != len(spatial):
        raise ValueError(f"block size {block} has {len(block)} axes, spatial shape {spatial} has {len(spatial)}")
    if any(b < 1 for b in block):
        raise ValueError(f"block size entries must be >= 1, got {block}")
    if not 0.0 <= float(mask_ratio) <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the mask is requested on {device}: create the "
                         f"generator with torch.Generator(device={str(device)!r})")
    grid = block_grid_shape(spatial, block)
    n_ch = shape[1] if per_channel else 1
    draws = torch.rand((shape[0], n_ch, *grid), generator=generator, device=device) < float(mask_ratio)
    m = draws.to(dtype)
    for axis, b in enumerate(block):
        if b > 1:
            m = m.repeat_interleave(b, dim=2 + axis)
    m = m[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
    if not per_channel:
        m = m.expand(shape[0], shape[1], *spatial)
    return m.contiguous()


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with masked voxels (``mask`` > 0) set to 0: zero-mean imputation (inputs are z-scored).

    Returns a new tensor; ``x`` is unchanged. ``mask`` must broadcast to ``x``.
    """
    return x.masked_fill(mask.to(torch.bool), 0.0)


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               visible_weight: float = 0.2) -> torch.Tensor:
    """``MSE over masked voxels + visible_weight * MSE over visible voxels`` (a 0-dim tensor).

    Each MSE is the mean over its own voxels of all channels and batch items together (not a mean of
    per-channel means). Edge cases: when no voxel is masked (or none is visible) that term is 0, not NaN,
    so the loss stays finite and differentiable. Computed in float32 (also under autocast).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    m = mask.to(torch.float32).expand_as(pred)
    sq = (pred.float() - target.float()) ** 2
    n_masked = m.sum()
    n_visible = m.numel() - n_masked
    masked = (sq * m).sum() / n_masked.clamp(min=1.0)
    visible = (sq * (1.0 - m)).sum() / n_visible.clamp(min=1.0)
    return masked + float(visible_weight) * visible


class CosineWarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up for ``warmup_steps`` then cosine decay from ``initial_lr`` to ``min_lr`` at ``max_steps``.

    Like nnU-Net's ``PolyLRScheduler`` it is stepped with the epoch number (``step(epoch)``) and sets the
    learning rate directly, so resuming only needs the epoch. Step ``s`` (0-based):
    ``s < W``: ``initial_lr * (s + 1) / (W + 1)``; else
    ``min_lr + (initial_lr - min_lr) * 0.5 * (1 + cos(pi * (s - W) / max(1, max_steps - W)))``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, current_step: int | None = None):
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.max_steps = int(max_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.initial_lr * (step + 1) / (w + 1)
        t = min(1.0, (step - w) / max(1, self.max_steps - w))
        return self.min_lr + (self.initial_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 (nnU-Net's calling convention)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(int(current_step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr for _ in self.optimizer.param_groups]


# ----------------------------------------------------------------------------------------------------------
# The training / evaluation step (used by the trainer and by the benchmark)


def _autocast(device: torch.device, enabled: bool):
    # nnU-Net's rule: autocast only on CUDA (slow on CPU, unsupported on MPS).
    if enabled and device.type == "cuda":
        return torch.autocast(device.type, enabled=True)
    return contextlib.nullcontext()


def select_channels(data: torch.Tensor, input_channels: Sequence[int]) -> torch.Tensor:
    """The channels the network sees (``data[:, input_channels]``); a view when they are all channels."""
    chans = [int(c) for c in input_channels]
    if data.shape[1] <= max(chans):
        raise ValueError(f"batch has {data.shape[1]} channel(s), the MAE config needs channels {chans}")
    if chans == list(range(data.shape[1])):
        return data
    return data[:, chans]


def mae_forward(network: nn.Module, data: torch.Tensor, config: MAEConfig, block_size: Sequence[int],
                generator: torch.Generator | None = None, use_amp: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask, reconstruct and score one batch: returns ``(loss, prediction, target, mask)``.

    ``data`` holds all dataset channels ``(B, C_dataset, ...)`` on the network's device; the network sees
    ``config.input_channels`` with masked blocks set to 0 and must output as many channels. The masks are
    drawn on ``data.device`` from ``generator``.
    """
    target = select_channels(data, config.input_channels)
    mask = sample_block_mask(target.shape, block_size, config.mask_ratio, config.per_channel,
                             generator=generator, device=target.device, dtype=target.dtype)
    with _autocast(target.device, use_amp):
        pred = network(apply_mask(target, mask))
        if isinstance(pred, (list, tuple)):  # a network with deep supervision on: full resolution first
            pred = pred[0]
        if pred.shape != target.shape:
            raise ValueError(f"network output {tuple(pred.shape)} does not match the reconstruction target "
                             f"{tuple(target.shape)}: the MAE network needs {target.shape[1]} output channel(s)")
        loss = masked_reconstruction_loss(pred, target, mask, config.visible_weight)
    return loss, pred, target, mask


def mae_train_step(network: nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor, config: MAEConfig,
                   block_size: Sequence[int], generator: torch.Generator | None = None,
                   grad_scaler=None) -> dict:
    """One optimisation step: zero grads, :func:`mae_forward`, backward, clip (``config.grad_clip``), step.

    Mixed precision as nnU-Net does it: autocast on CUDA, and ``grad_scaler`` (or None) for the backward.
    Returns ``{"loss": float}`` (a host sync, as nnU-Net's ``train_step``).
    """
    optimizer.zero_grad(set_to_none=True)
    loss, _, _, _ = mae_forward(network, data, config, block_size, generator)
    params = [p for p in network.parameters() if p.requires_grad]
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        if config.grad_clip is not None:
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
    return {"loss": float(loss.detach().cpu())}


@torch.no_grad()
def reconstruction_stats(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per-channel sums for validation metrics (lists of floats, one entry per channel).

    ``sse_masked`` / ``sse_visible``: sums of squared errors; ``ss_masked``: sum of squared targets over
    masked voxels (the error of the zero-imputation baseline); ``n_masked`` / ``n_visible``: voxel counts.
    """
    m = mask.to(torch.float32).expand_as(pred)
    sq = (pred.float() - target.float()) ** 2
    dims = [0] + list(range(2, pred.ndim))
    return {
        "sse_masked": (sq * m).sum(dims).tolist(),
        "sse_visible": (sq * (1 - m)).sum(dims).tolist(),
        "ss_masked": (target.float() ** 2 * m).sum(dims).tolist(),
        "n_masked": m.sum(dims).tolist(),
        "n_visible": (1 - m).sum(dims).tolist(),
    }


def masked_r2(sse_masked: Sequence[float], ss_masked: Sequence[float]) -> list[float]:
    """Per channel ``1 - SSE / SS`` over masked voxels: the share of the masked signal recovered relative to
    the zero-imputation baseline (0 = no better than filling in the mean, 1 = perfect). NaN when SS is 0."""
    return [float("nan") if ss <= 0 else 1.0 - sse / ss for sse, ss in zip(sse_masked, ss_masked)]


@torch.no_grad()
def mae_eval_step(network: nn.Module, data: torch.Tensor, config: MAEConfig, block_size: Sequence[int],
                  generator: torch.Generator | None = None, keep_first: bool = False) -> dict:
    """Validation: :func:`mae_forward` without gradients; ``{"loss": float, **reconstruction_stats}``.

    With ``keep_first``, also ``"example"``: ``(target, masked input, prediction, mask)`` of the first batch
    item as float32 CPU tensors, for previews.
    """
    loss, pred, target, mask = mae_forward(network, data, config, block_size, generator)
    out = {"loss": float(loss.detach().cpu()), **reconstruction_stats(pred, target, mask)}
    if keep_first:
        t, m, p = target[0].float().cpu(), mask[0].float().cpu(), pred[0].float().cpu()
        out["example"] = (t, apply_mask(t, m), p, m)
    return out


def seed_for(base_seed: int, rank: int = 0, epoch: int = 0) -> int:
    """A generator seed that differs per DDP rank and per epoch (so a resumed run draws the same masks)."""
    return (int(base_seed) * 1_000_003 + int(rank) * 7_919 + int(epoch) * 104_729) % (2**62)


def center_patch(data, patch_size: Sequence[int]):
    """The centred ``patch_size`` window of ``data`` (``(C, *spatial)`` numpy array), zero-padded where smaller.

    Zero is the mean of z-scored intensities, the same value the masking imputes. Returns a new array.
    """
    import numpy as np

    data = np.asarray(data)
    patch = [int(p) for p in patch_size]
    if data.ndim != len(patch) + 1:
        raise ValueError(f"data {data.shape} must be (C, *spatial) with {len(patch)} spatial axes")
    out = np.zeros((data.shape[0], *patch), dtype=data.dtype)
    src, dst = [slice(None)], [slice(None)]
    for size, p in zip(data.shape[1:], patch):
        if size >= p:
            start = (size - p) // 2
            src.append(slice(start, start + p))
            dst.append(slice(0, p))
        else:
            start = (p - size) // 2
            src.append(slice(0, size))
            dst.append(slice(start, start + size))
    out[tuple(dst)] = data[tuple(src)]
    return out
