"""Batched spatial augmentation of MAE pretraining patches on the training device. Pure torch.

The MAE augmentation (SPEC §1: random zoom 0.9-1.1; mirroring) used to run per patch in nnU-Net's data
loader workers as batchgeneratorsv2's ``SpatialTransform`` (zoom only: no rotation, no elastic deformation,
one factor for all axes) followed by ``MirrorTransform``. Here it runs on a whole batch wherever the batch
is (the GPU in training, the CPU in tests and the demo), in two steps (batchgeneratorsv2 / TorchIO style):

1. :func:`sample_spatial_params` draws the parameters from an explicit ``torch.Generator`` (a CPU generator:
   the draws do not depend on the training device and need no device synchronisation);
2. :func:`apply_spatial_augmentation` applies them deterministically.

Distribution (the same as the CPU transforms with the MAE trainer's settings)
    Per patch, independently: with probability ``p_zoom`` a zoom factor ``s ~ U(zoom_range)``, the same on
    every axis (``p_synchronize_scaling_across_axes=1``), else no zoom; then each axis in ``mirror_axes``
    flipped with probability 0.5, independently (``MirrorTransform``). Zoom first, then mirroring.

Geometry (batchgeneratorsv2's convention, verified in its source)
    The loader delivers a source patch of ``S`` voxels per axis (the final patch ``P`` plus the zoom margin,
    :func:`zoom_margin_patch_size`). Output voxel ``k`` (0..P-1) of a zoomed patch samples the source at
    index ``(S - 1) / 2 + s * (k - (P - 1) / 2)``: the grid is centred on the source patch and scaled by
    ``s``, so ``s > 1`` samples a larger region (objects get smaller) and ``s < 1`` a smaller one. Trilinear
    interpolation (``grid_sample``, ``align_corners=False``); points outside the source read 0, the mean of
    the z-scored data (``padding_mode_image="zeros"``). A patch without zoom is an exact crop starting at
    ``S // 2 - P // 2`` (``crop_tensor`` around ``floor(S / 2)``), no interpolation, as in ``SpatialTransform``.

Margin (:func:`zoom_margin_patch_size`)
    With the largest sampling scale ``m = max(1, zoom_range[1])`` the sample indices of a zoomed patch span
    ``(S - 1) / 2 +- m (P - 1) / 2``. They stay inside ``[0, S - 1]`` (trilinear interpolation then never
    reads outside the source) iff ``S - 1 >= m (P - 1)``, so the smallest source patch is
    ``S = ceil(m (P - 1)) + 1``; factors below 1 need no margin. At the paper's patch 96x128x128 and zoom
    up to 1.1: ``ceil(104.5) + 1 = 106`` and ``ceil(139.7) + 1 = 141``, i.e. 106x141x141 (nnU-Net's
    ``get_patch_size(patch, 0, 0, 0, (0.9, 1.1))`` gives 106x142x142 because it divides by the *smallest*
    factor, ``P / 0.9``; for a range such as (1.0, 1.3) it would give no margin at all). No rotation
    margin: the MAE pipeline never rotates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: XOR-ed into the per-epoch seed so the augmentation stream differs from the mask stream of the same seed.
AUGMENT_SEED_SALT = 0x5A7E_A06D


def zoom_margin_patch_size(patch_size: Sequence[int], zoom_range: Sequence[float]) -> tuple[int, ...]:
    """The smallest source patch from which every zoom in ``zoom_range`` of a ``patch_size`` output reads
    only real voxels: ``ceil(max(1, zoom_range[1]) * (P - 1)) + 1`` per axis (see the module doc)."""
    lo, hi = float(zoom_range[0]), float(zoom_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"zoom_range must satisfy 0 < low <= high, got {tuple(zoom_range)}")
    m = max(1.0, hi)
    # the 1e-9 keeps an exact product (e.g. 1.5 * 10) from being rounded up by float error
    return tuple(int(p) if m == 1.0 else int(math.ceil(m * (int(p) - 1) - 1e-9)) + 1 for p in patch_size)


@dataclass(frozen=True)
class SpatialParams:
    """Sampled parameters for a batch: ``scale`` (B,) float (1.0 = no zoom) and ``mirror`` (B, dim) bool."""

    scale: torch.Tensor
    mirror: torch.Tensor

    @property
    def zoomed(self) -> torch.Tensor:
        return self.scale != 1.0


def sample_spatial_params(batch_size: int, dim: int, zoom_range: Sequence[float], p_zoom: float,
                          mirror_axes: Sequence[int] | None, generator: torch.Generator | None = None
                          ) -> SpatialParams:
    """Draw zoom factors and mirror flags for ``batch_size`` patches of ``dim`` spatial axes (on the CPU).

    Zoom: ``U(0, 1) < p_zoom`` then ``s ~ U(zoom_range)`` (one factor for all axes); mirroring: each axis of
    ``mirror_axes`` (spatial axis indices, None or empty = none) with probability 0.5.
    """
    if not 0.0 <= float(p_zoom) <= 1.0:
        raise ValueError(f"p_zoom must be in [0, 1], got {p_zoom}")
    lo, hi = float(zoom_range[0]), float(zoom_range[1])
    axes = [int(a) for a in (mirror_axes or ())]
    if any(a < 0 or a >= dim for a in axes):
        raise ValueError(f"mirror_axes {axes} out of range for {dim} spatial axes")
    # fixed draw order per batch: zoom decisions, zoom factors, mirror coins (all drawn even when unused,
    # so one patch's parameters never shift the next patch's stream)
    do_zoom = torch.rand(batch_size, generator=generator, dtype=torch.float64) < float(p_zoom)
    factors = lo + (hi - lo) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
    coins = torch.rand(batch_size, dim, generator=generator, dtype=torch.float64) < 0.5
    scale = torch.where(do_zoom, factors, torch.ones_like(factors))
    allowed = torch.zeros(dim, dtype=torch.bool)
    allowed[axes] = True
    return SpatialParams(scale=scale, mirror=coins & allowed)


def center_crop_start(source: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Start of the un-zoomed crop: ``S // 2 - P // 2`` per axis (batchgeneratorsv2's ``crop_tensor``)."""
    return tuple(int(s) // 2 - int(p) // 2 for s, p in zip(source, patch))


def zoom_grid(scale: torch.Tensor, source: Sequence[int], patch: Sequence[int], device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``grid_sample`` grid (B, *patch, dim), last axis in x, y(, z) order, for zoom factors ``scale`` (B,).

    With ``align_corners=False`` source index ``i`` is the normalised coordinate ``(2 i + 1) / S - 1``; for
    ``i = (S - 1) / 2 + s (k - (P - 1) / 2)`` that is ``s (2 k - (P - 1)) / S``.
    """
    dim = len(patch)
    b = scale.shape[0]
    scale = scale.to(device=device, dtype=dtype)
    axes = []
    for d, (s_d, p_d) in enumerate(zip(source, patch)):
        k = torch.arange(int(p_d), device=device, dtype=dtype)
        base = (2 * k - (int(p_d) - 1)) / float(s_d)  # (P_d,)
        shape = [b] + [1] * dim
        shape[1 + d] = int(p_d)
        axes.append((scale.view(b, *[1] * dim) * base.view(*shape[1:])[None]).expand(b, *[int(p) for p in patch]))
    return torch.stack(axes[::-1], dim=-1)  # grid_sample wants (x, y, z): the last spatial axis first


def apply_spatial_augmentation(x: torch.Tensor, params: SpatialParams, patch_size: Sequence[int]) -> torch.Tensor:
    """Zoom (zoomed patches) or crop (the others) ``x`` (B, C, *S) to ``patch_size``, then mirror.

    Deterministic given ``params``; runs on ``x.device`` in ``x.dtype`` (floating point). Returns a new
    (B, C, *patch_size) tensor.
    """
    dim = len(patch_size)
    if x.ndim != dim + 2:
        raise ValueError(f"expected (B, C, {dim} spatial axes), got shape {tuple(x.shape)}")
    b = x.shape[0]
    if params.scale.shape != (b,) or params.mirror.shape != (b, dim):
        raise ValueError(f"parameters for {tuple(params.scale.shape)} patches / {tuple(params.mirror.shape)} "
                         f"mirror flags do not fit a batch of {b} with {dim} axes")
    source = [int(s) for s in x.shape[2:]]
    patch = [int(p) for p in patch_size]
    if any(s < p for s, p in zip(source, patch)):
        raise ValueError(f"source patch {source} smaller than the output patch {patch}")
    start = center_crop_start(source, patch)
    out = x[(slice(None), slice(None), *(slice(st, st + p) for st, p in zip(start, patch)))].clone()
    zoomed = params.zoomed.tolist()  # CPU tensor: no device synchronisation
    idx = [i for i, z in enumerate(zoomed) if z]
    if idx:
        grid = zoom_grid(params.scale[idx], source, patch, device=x.device, dtype=x.dtype)
        out[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flips = params.mirror.tolist()
    for i in range(b):
        axes = [1 + a for a in range(dim) if flips[i][a]]  # spatial axis a of one patch (C, *P)
        if axes:
            out[i] = torch.flip(out[i], axes)
    return out


def augment_batch(x: torch.Tensor, patch_size: Sequence[int], zoom_range: Sequence[float], p_zoom: float,
                  mirror_axes: Sequence[int] | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`sample_spatial_params` then :func:`apply_spatial_augmentation` for a batch ``x`` (B, C, *S)."""
    params = sample_spatial_params(x.shape[0], len(patch_size), zoom_range, p_zoom, mirror_axes, generator)
    return apply_spatial_augmentation(x, params, patch_size)


def augment_seed(seed: int) -> int:
    """The augmentation generator's seed derived from a per-epoch (mask) seed: a different stream."""
    return int(seed) ^ AUGMENT_SEED_SALT
