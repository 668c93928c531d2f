"""Device-side MAE augmentation (``nnunetv2_petct.pretraining.augment``) against batchgeneratorsv2's CPU
transforms, its sampling frequencies, the zoom margin and determinism. Fast: small patches, no nnU-Net."""

from __future__ import annotations

import math

import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

from nnunetv2_petct.pretraining.augment import (
    SpatialParams,
    apply_spatial_augmentation,
    augment_batch,
    augment_seed,
    sample_spatial_params,
    zoom_margin_patch_size,
)

#: Largest |difference| accepted between our trilinear zoom and SpatialTransform's on N(0, 1) data: both
#: interpolate the same points with grid_sample; only the float32 rounding of the grid coordinates
#: (~1e-7 relative, times gradients of order 1-10 per voxel) differs.
TOLERANCE = 1e-4


def cpu_reference(x: torch.Tensor, patch, scale: float | None, mirror_axes) -> torch.Tensor:
    """batchgeneratorsv2's pipeline as the CPU-augmenting MAE trainer configures it, with fixed parameters:
    scaling range (s, s) with p 1 (no zoom: p 0), then MirrorTransform's flip along ``mirror_axes``."""
    out = []
    for img in x:
        st = SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                              p_rotation=0, p_scaling=0 if scale is None else 1,
                              scaling=(1, 1) if scale is None else (scale, scale),
                              p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False)
        seg = torch.zeros((1, *img.shape[1:]), dtype=torch.int16)
        y = st(image=img.clone(), segmentation=seg)["image"]
        y = MirrorTransform(allowed_axes=tuple(range(len(patch))))._apply_to_image(y, axes=list(mirror_axes))
        out.append(y)
    return torch.stack(out)


def test_zoom_margin_by_hand():
    # S = ceil(max(1, zoom_max) * (P - 1)) + 1
    assert zoom_margin_patch_size((96, 128, 128), (0.9, 1.1)) == (106, 141, 141)  # ceil(104.5), ceil(139.7)
    assert zoom_margin_patch_size((64, 64, 64), (0.9, 1.1)) == (71, 71, 71)  # ceil(69.3) + 1
    assert zoom_margin_patch_size((11,), (1.0, 1.5)) == (16,)  # 1.5 * 10 = 15 exactly: no rounding up
    assert zoom_margin_patch_size((20, 30), (0.7, 0.9)) == (20, 30)  # zooming in needs no margin
    assert zoom_margin_patch_size((20, 30), (1.0, 1.0)) == (20, 30)
    with pytest.raises(ValueError):
        zoom_margin_patch_size((20,), (1.1, 0.9))


@pytest.mark.parametrize("patch", [(12, 16, 16), (9, 12, 15)])  # even and odd margins
def test_margin_is_exactly_enough_for_the_largest_zoom(patch):
    """On a source of ones the largest zoom reads only real voxels (all outputs 1); one voxel less per axis
    and the corners read the zero padding."""
    source = zoom_margin_patch_size(patch, (0.9, 1.1))
    params = SpatialParams(scale=torch.tensor([1.1], dtype=torch.float64), mirror=torch.zeros(1, 3, dtype=torch.bool))
    out = apply_spatial_augmentation(torch.ones(1, 1, *source), params, patch)
    assert out.shape == (1, 1, *patch)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    small = apply_spatial_augmentation(torch.ones(1, 1, *[s - 1 for s in source]), params, patch)
    assert small.min() < 0.99


@pytest.mark.parametrize("patch", [(12, 16, 16), (9, 12, 15)])
@pytest.mark.parametrize("scale,mirror", [(None, ()), (None, (0, 2)), (0.9, ()), (0.93, (1,)), (1.04, (0, 1, 2)),
                                          (1.1, (2,))])
def test_matches_the_cpu_spatial_and_mirror_transforms(patch, scale, mirror):
    torch.manual_seed(0)
    source = zoom_margin_patch_size(patch, (0.9, 1.1))
    x = torch.randn(2, 2, *source)
    ref = cpu_reference(x, patch, scale, mirror)
    flags = torch.zeros(2, 3, dtype=torch.bool)
    flags[:, list(mirror)] = True
    params = SpatialParams(scale=torch.full((2,), 1.0 if scale is None else scale, dtype=torch.float64), mirror=flags)
    out = apply_spatial_augmentation(x, params, patch)
    assert out.shape == ref.shape == (2, 2, *patch)
    if scale is None:
        assert torch.equal(out, ref)  # no zoom: both are the same exact crop (+ flips)
    else:
        assert (out - ref).abs().max().item() <= TOLERANCE
        assert not torch.equal(out, apply_spatial_augmentation(
            x, SpatialParams(scale=torch.ones(2, dtype=torch.float64), mirror=flags), patch))  # the zoom did something


def test_matches_the_cpu_transforms_in_2d():
    torch.manual_seed(1)
    patch = (16, 20)
    x = torch.randn(1, 2, *zoom_margin_patch_size(patch, (0.9, 1.1)))
    st = SpatialTransform(patch, 0, False, p_elastic_deform=0, p_rotation=0, p_scaling=1, scaling=(1.07, 1.07),
                          p_synchronize_scaling_across_axes=1)
    ref = st(image=x[0].clone(), segmentation=torch.zeros((1, *x.shape[2:]), dtype=torch.int16))["image"]
    params = SpatialParams(scale=torch.tensor([1.07], dtype=torch.float64), mirror=torch.zeros(1, 2, dtype=torch.bool))
    assert (apply_spatial_augmentation(x, params, patch)[0] - ref).abs().max().item() <= TOLERANCE


def test_a_batch_mixes_zoomed_cropped_and_mirrored_patches():
    """Each patch of a batch gets its own parameters, as the per-patch CPU transforms do."""
    torch.manual_seed(2)
    patch = (8, 10, 12)
    x = torch.randn(3, 1, *zoom_margin_patch_size(patch, (0.9, 1.1)))
    cases = [(None, ()), (0.95, (0,)), (1.08, (1, 2))]
    params = SpatialParams(scale=torch.tensor([1.0, 0.95, 1.08], dtype=torch.float64),
                           mirror=torch.tensor([[False] * 3, [True, False, False], [False, True, True]]))
    out = apply_spatial_augmentation(x, params, patch)
    for i, (scale, mirror) in enumerate(cases):
        ref = cpu_reference(x[i:i + 1], patch, scale, mirror)
        assert (out[i:i + 1] - ref).abs().max().item() <= TOLERANCE, i


def test_sampled_frequencies_match_the_configuration():
    n = 20_000
    g = torch.Generator().manual_seed(123)
    p = sample_spatial_params(n, 3, (0.9, 1.1), 0.2, (0, 1, 2), g)
    zoomed = p.zoomed
    # binomial standard error sqrt(0.2 * 0.8 / n) = 0.0028: 4 sigma
    assert abs(zoomed.double().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    s = p.scale[zoomed]
    assert s.min() >= 0.9 and s.max() <= 1.1
    # uniform on [0.9, 1.1]: each of 10 bins holds 10 % of the zoomed patches (+- 4 sigma)
    counts = torch.histc(s.float(), bins=10, min=0.9, max=1.1)
    k = zoomed.sum().item()
    assert (counts / k - 0.1).abs().max().item() < 4 * math.sqrt(0.1 * 0.9 / k)
    assert torch.all(p.scale[~zoomed] == 1.0)
    # mirroring: each axis with p 0.5, independently of the others and of the zoom
    sd = 4 * math.sqrt(0.25 / n)
    for a in range(3):
        assert abs(p.mirror[:, a].double().mean().item() - 0.5) < sd
        assert abs(p.mirror[zoomed, a].double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / k)
    both = (p.mirror[:, 0] & p.mirror[:, 2]).double().mean().item()
    assert abs(both - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_mirror_axes_and_probabilities_are_honoured():
    g = torch.Generator().manual_seed(5)
    p = sample_spatial_params(4000, 3, (0.9, 1.1), 0.0, (1,), g)
    assert not p.zoomed.any()  # p_zoom 0
    assert not p.mirror[:, 0].any() and not p.mirror[:, 2].any()  # only axis 1 may flip
    assert 0.45 < p.mirror[:, 1].double().mean().item() < 0.55
    assert not sample_spatial_params(100, 3, (0.9, 1.1), 1.0, None, g).mirror.any()
    assert sample_spatial_params(100, 3, (0.9, 1.1), 1.0, None, g).zoomed.all()  # p_zoom 1
    with pytest.raises(ValueError):
        sample_spatial_params(2, 3, (0.9, 1.1), 1.5, None, g)
    with pytest.raises(ValueError):
        sample_spatial_params(2, 3, (0.9, 1.1), 0.2, (3,), g)


def test_deterministic_under_the_generator_seed():
    patch = (6, 8, 8)
    x = torch.randn(8, 2, *zoom_margin_patch_size(patch, (0.9, 1.1)))

    def draw(seed):
        return augment_batch(x, patch, (0.9, 1.1), 0.5, (0, 1, 2), torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert augment_seed(7) != 7 and augment_seed(7) == augment_seed(7)


def test_shape_errors():
    params = SpatialParams(scale=torch.ones(2, dtype=torch.float64), mirror=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="smaller"):
        apply_spatial_augmentation(torch.zeros(2, 1, 4, 4, 4), params, (5, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        apply_spatial_augmentation(torch.zeros(3, 1, 4, 4, 4), params, (4, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    patch = (12, 16, 16)
    x = torch.randn(4, 2, *zoom_margin_patch_size(patch, (0.9, 1.1)))
    params = sample_spatial_params(4, 3, (0.9, 1.1), 0.5, (0, 1, 2), torch.Generator().manual_seed(3))
    cpu = apply_spatial_augmentation(x, params, patch)
    gpu = apply_spatial_augmentation(x.cuda(), params, patch).cpu()
    assert (cpu - gpu).abs().max().item() <= TOLERANCE
