"""Click heatmaps: the two extra input channels of a click-guided model, and where a click lands in nnU-Net's
preprocessed grid.

A click channel is the maximum over its clicks of a 3D Gaussian ``exp(-d^2 / (2 sigma^2))`` with ``d`` the
distance to the click in mm (anisotropic voxels handled through ``spacing_mm``): exactly 1 at a click voxel,
0 everywhere without clicks (the autoPET IV nnU-Net baseline feeds such heatmaps as extra channels). Values
beyond 4 sigma along any axis are set to 0 (below 3.4e-4: a box of +-ceil(4 sigma / spacing) voxels per axis
is computed per click). Arrays are numpy (z, y, x); points are (n, 3) arrays in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Gaussian sigma of the click heatmaps in mm: about the radius of a small lesion (1 ml sphere: 6.2 mm), so
#: one click marks a lesion-sized blob.
DEFAULT_SIGMA_MM = 5.0
TRUNCATE_SIGMAS = 4.0
#: The heatmap is never narrower than this many voxels of the coarsest axis (a click on a coarse grid is
#: then a blob the network can see, not a one-voxel speck).
MIN_SIGMA_VOXELS = 1.5


def effective_sigma_mm(sigma_mm: float, spacing_mm: Sequence[float]) -> float:
    """The sigma used on a grid: ``max(sigma_mm, MIN_SIGMA_VOXELS * max(spacing_mm))``. At autoPET's
    2-4 mm voxels that is 5-6 mm; on the 6-8 mm grids of the CPU phantoms 9-12 mm. Training and
    prediction both apply it on the network's grid (the plans' spacing), so they always agree."""
    return max(float(sigma_mm), MIN_SIGMA_VOXELS * max(float(s) for s in spacing_mm))


def _check(spacing_mm: Sequence[float], sigma_mm: float) -> tuple[tuple[float, float, float], float]:
    sp = tuple(float(s) for s in spacing_mm)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_mm must be three positive numbers (z, y, x), got {spacing_mm!r}")
    if not (math.isfinite(float(sigma_mm)) and sigma_mm > 0):
        raise ValueError(f"sigma_mm must be > 0, got {sigma_mm!r}")
    return sp, float(sigma_mm)  # type: ignore[return-value]


def _radii(spacing: Sequence[float], sigma_mm: float) -> tuple[int, int, int]:
    return tuple(int(math.ceil(TRUNCATE_SIGMAS * sigma_mm / s)) for s in spacing)  # type: ignore[return-value]


def points_inside(points_zyx: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """Boolean per point: all three indices within ``0 .. shape-1``."""
    p = np.asarray(points_zyx).reshape(-1, 3)
    shape = np.asarray(shape_zyx).reshape(1, 3)
    return np.all((p >= 0) & (p < shape), axis=1)


def click_heatmap(points_zyx, shape_zyx: Sequence[int], spacing_mm: Sequence[float],
                  sigma_mm: float = DEFAULT_SIGMA_MM) -> np.ndarray:
    """One click channel (float32, ``shape_zyx``): the maximum of the clicks' Gaussians (module doc).

    Points outside the array are ignored (their Gaussians are not drawn); no points -> all zeros.
    Points may be float (a Gaussian centred between voxels then peaks below 1).
    """
    sp, sigma = _check(spacing_mm, sigma_mm)
    shape = tuple(int(s) for s in shape_zyx)
    out = np.zeros(shape, np.float32)
    pts = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return out
    pts = pts[points_inside(np.round(pts), shape)]
    radii = _radii(sp, sigma)
    for p in pts:
        sl, g = [], []
        for axis in range(3):
            c = int(round(p[axis]))
            lo, hi = max(c - radii[axis], 0), min(c + radii[axis] + 1, shape[axis])
            idx = np.arange(lo, hi, dtype=np.float64)
            g.append(np.exp(-((idx - p[axis]) * sp[axis]) ** 2 / (2 * sigma * sigma)))
            sl.append(slice(lo, hi))
        blob = (g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]).astype(np.float32)
        view = out[tuple(sl)]
        np.maximum(view, blob, out=view)
    return out


def click_channels(tumor_zyx, background_zyx, shape_zyx: Sequence[int], spacing_mm: Sequence[float],
                   sigma_mm: float = DEFAULT_SIGMA_MM) -> np.ndarray:
    """The two click channels ``(2, z, y, x)``: tumor heatmap, background heatmap."""
    return np.stack([click_heatmap(tumor_zyx, shape_zyx, spacing_mm, sigma_mm),
                     click_heatmap(background_zyx, shape_zyx, spacing_mm, sigma_mm)])


def render_click_channels_torch(tumor_list: Sequence, background_list: Sequence, shape_zyx: Sequence[int],
                                spacing_mm: Sequence[float], sigma_mm: float = DEFAULT_SIGMA_MM, device=None):
    """Batched :func:`click_channels` in torch, on ``device`` (the training device).

    Args:
        tumor_list, background_list: length-B lists of (n, 3) point arrays or tensors (z, y, x; n may be 0).
    Returns:
        A float32 tensor ``(B, 2, z, y, x)``, equal to :func:`click_channels` per sample (same truncation)
        up to float rounding. Each Gaussian is separable: a product of three 1D Gaussians per click.
    """
    import torch

    sp, sigma = _check(spacing_mm, sigma_mm)
    shape = tuple(int(s) for s in shape_zyx)
    if len(tumor_list) != len(background_list):
        raise ValueError("tumor_list and background_list must have one entry per sample")
    radii = _radii(sp, sigma)
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in shape]
    out = torch.zeros((len(tumor_list), 2, *shape), device=device, dtype=torch.float32)
    for b, kinds in enumerate(zip(tumor_list, background_list)):
        for k, pts in enumerate(kinds):
            p = torch.as_tensor(np.asarray(pts.cpu() if hasattr(pts, "cpu") else pts, dtype=np.float32).reshape(-1, 3),
                                device=device)
            if p.shape[0] == 0:
                continue
            r = torch.round(p)
            inside = ((r >= 0) & (r < torch.tensor(shape, device=device, dtype=torch.float32))).all(dim=1)
            p, r = p[inside], r[inside]
            if p.shape[0] == 0:
                continue
            g = []
            for axis in range(3):
                d = axes[axis][None, :] - p[:, axis:axis + 1]
                ga = torch.exp(-(d * sp[axis]) ** 2 / (2 * sigma * sigma))
                keep = (axes[axis][None, :] - r[:, axis:axis + 1]).abs() <= radii[axis]
                g.append(ga * keep)
            blobs = torch.einsum("nz,ny,nx->nzyx", g[0], g[1], g[2])
            out[b, k] = blobs.amax(dim=0)
    return out


def map_points_to_preprocessed(points_zyx, *, transpose_forward: Sequence[int], bbox: Sequence[Sequence[int]],
                               shape_after_crop: Sequence[int], shape_after_resample: Sequence[int]) -> np.ndarray:
    """Voxel indices of the original image -> indices in nnU-Net's preprocessed array.

    nnU-Net's default preprocessor (``DefaultPreprocessor.run_case_npy``) first transposes the axes by
    ``transpose_forward`` (new axis i = old axis ``transpose_forward[i]``), then crops to the nonzero region
    (``bbox`` = ``properties["bbox_used_for_cropping"]``: ``[start, stop]`` per axis, in transposed order),
    then resamples to the target spacing (``shape_after_crop`` -> ``shape_after_resample``). A point follows
    the same steps; resampling maps voxel centres: ``new = (old + 0.5) * new_shape / old_shape - 0.5``.
    The result is rounded and clipped into the array (a point in a cropped-away all-zero margin lands on the
    nearest border voxel).

    Args:
        points_zyx: (n, 3) indices in the original array order (z, y, x as read by SimpleITK).
    Returns:
        (n, 3) int64 indices into the preprocessed array (without the channel axis).
    """
    p = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0:
        return np.zeros((0, 3), np.int64)
    t = [int(a) for a in transpose_forward]
    p = p[:, t]
    start = np.asarray([int(b[0]) for b in bbox], dtype=np.float64)
    old = np.asarray(shape_after_crop, dtype=np.float64)
    new = np.asarray(shape_after_resample, dtype=np.float64)
    q = (p - start[None] + 0.5) * (new / old)[None] - 0.5
    q = np.clip(np.round(q), 0, new[None] - 1)
    return q.astype(np.int64)


__all__ = ["DEFAULT_SIGMA_MM", "MIN_SIGMA_VOXELS", "TRUNCATE_SIGMAS", "click_channels", "effective_sigma_mm", "click_heatmap", "map_points_to_preprocessed",
           "points_inside", "render_click_channels_torch"]
