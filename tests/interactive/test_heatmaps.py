"""Click heatmaps (hand-derived values), the torch renderer against numpy, and the mapping of clicks into
nnU-Net's preprocessed grid (hand example with transpose, crop and resampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunetv2_petct.interactive.heatmaps import (
    click_channels,
    click_heatmap,
    map_points_to_preprocessed,
    render_click_channels_torch,
)


def test_gaussian_values_by_hand_with_anisotropic_spacing():
    h = click_heatmap([[5, 5, 5]], (11, 11, 11), spacing_mm=(3.0, 1.0, 1.0), sigma_mm=2.0)
    assert h[5, 5, 5] == 1.0
    # one voxel along z is 3 mm: exp(-9 / 8); one voxel along x is 1 mm: exp(-1 / 8)
    assert h[6, 5, 5] == pytest.approx(math.exp(-9 / 8), rel=1e-6)
    assert h[5, 5, 6] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert h[6, 6, 5] == pytest.approx(math.exp(-(9 + 1) / 8), rel=1e-6)
    # truncation: beyond ceil(4 sigma / spacing) voxels on an axis -> 0 (x: 8 voxels, z: 3 voxels)
    assert h[5, 5, 5 - 8] > 0 and h[5, 5, 5 + 5] > 0
    assert h[5 + 3, 5, 5] > 0 and h[5 - 4, 5, 5] == 0
    assert h.dtype == np.float32 and h.max() == 1.0


def test_max_not_sum_and_empty():
    h = click_heatmap([[2, 2, 2], [2, 2, 3]], (5, 5, 6), (1, 1, 1), 1.0)
    assert h[2, 2, 2] == 1.0 and h[2, 2, 3] == 1.0  # two clicks overlap: the maximum, never above 1
    assert h.max() == 1.0
    assert not click_heatmap(np.zeros((0, 3)), (4, 4, 4), (1, 1, 1), 1.0).any()
    assert not click_heatmap([[10, 0, 0]], (4, 4, 4), (1, 1, 1), 1.0).any()  # outside: not drawn
    ch = click_channels([[1, 1, 1]], [], (3, 3, 3), (1, 1, 1), 1.0)
    assert ch.shape == (2, 3, 3, 3) and ch[0, 1, 1, 1] == 1 and not ch[1].any()


def test_torch_renderer_equals_numpy():
    rng = np.random.default_rng(0)
    shape, spacing, sigma = (12, 14, 16), (2.5, 1.5, 1.0), 3.0
    tumor = [rng.integers(0, shape, size=(3, 3)), np.zeros((0, 3), int)]
    background = [rng.integers(0, shape, size=(1, 3)), rng.integers(0, shape, size=(4, 3))]
    got = render_click_channels_torch([torch.as_tensor(t) for t in tumor], background, shape, spacing, sigma, "cpu")
    assert got.shape == (2, 2, *shape)
    for b in range(2):
        want = click_channels(tumor[b], background[b], shape, spacing, sigma)
        assert np.abs(got[b].numpy() - want).max() < 1e-6


def test_mapping_through_transpose_crop_and_resampling_by_hand():
    # original (z, y, x) = (10, 20, 30); transpose_forward (2, 0, 1): transposed axes are (x, z, y) of size
    # (30, 10, 20); crop starts (5, 2, 0) -> cropped shape (20, 8, 20); resampled to (30, 4, 20).
    p = np.array([[4, 10, 15]])  # z=4, y=10, x=15
    got = map_points_to_preprocessed(p, transpose_forward=(2, 0, 1), bbox=[[5, 25], [2, 10], [0, 20]],
                                     shape_after_crop=(20, 8, 20), shape_after_resample=(30, 4, 20))
    # transposed (15, 4, 10); minus the crop start -> (10, 2, 10); voxel centres:
    # (10.5 * 30/20 - 0.5, 2.5 * 4/8 - 0.5, 10.5 * 1 - 0.5) = (15.25, 0.75, 10) -> (15, 1, 10)
    assert got.tolist() == [[15, 1, 10]]
    edge = map_points_to_preprocessed(np.array([[0, 0, 0]]), transpose_forward=(0, 1, 2), bbox=[[3, 9], [0, 5], [0, 5]],
                                      shape_after_crop=(6, 5, 5), shape_after_resample=(6, 5, 5))
    assert edge.tolist() == [[0, 0, 0]]  # cropped away: clipped to the border
    assert map_points_to_preprocessed(np.zeros((0, 3)), transpose_forward=(0, 1, 2), bbox=[[0, 1]] * 3,
                                      shape_after_crop=(1, 1, 1), shape_after_resample=(1, 1, 1)).shape == (0, 3)


def test_effective_sigma_is_never_below_one_and_a_half_voxels():
    from nnunetv2_petct.interactive.heatmaps import effective_sigma_mm

    assert effective_sigma_mm(5.0, (3.0, 2.0, 2.0)) == 5.0   # autoPET-like grid: 1.5 * 3 = 4.5 < 5
    assert effective_sigma_mm(5.0, (8.0, 6.0, 6.0)) == 12.0  # the CPU phantoms: 1.5 * 8
