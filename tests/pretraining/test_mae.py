"""Masking, loss, schedule and step of the MAE objective (nnunetv2_petct.pretraining.mae), on hand-derived cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnunetv2_petct.pretraining.mae import (
    PAPER_BLOCK_SIZE_MM,
    CosineWarmupLR,
    MAEConfig,
    apply_mask,
    block_grid_shape,
    center_patch,
    mae_eval_step,
    mae_forward,
    mae_train_step,
    masked_r2,
    masked_reconstruction_loss,
    resolve_block_size,
    resolve_block_size_mm,
    sample_block_mask,
    seed_for,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- masks


def test_mask_is_constant_inside_each_block_and_has_the_requested_shape():
    # 6x4x4 voxels in blocks of 3x2x2 -> a 2x2x2 grid; every block must be uniform.
    m = sample_block_mask((2, 2, 6, 4, 4), (3, 2, 2), 0.5, True, gen(0))
    assert m.shape == (2, 2, 6, 4, 4) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    blocks = m.reshape(2, 2, 2, 3, 2, 2, 2, 2)  # (B, C, gz, bz, gy, by, gx, bx)
    per_block_max = blocks.amax(dim=(3, 5, 7))
    per_block_min = blocks.amin(dim=(3, 5, 7))
    assert torch.equal(per_block_max, per_block_min)


def test_mask_matches_the_documented_grid_for_a_non_divisible_shape():
    # Contract: grid = ceil(shape / block) anchored at voxel 0, one uniform draw per (batch, channel, block),
    # masked where draw < ratio, last block cropped. 5 voxels in blocks of 2 -> 3 blocks, the last 1 voxel wide.
    assert block_grid_shape((5, 5, 5), (2, 2, 2)) == (3, 3, 3)
    m = sample_block_mask((1, 2, 5, 5, 5), (2, 2, 2), 0.5, True, gen(7))
    u = torch.rand((1, 2, 3, 3, 3), generator=gen(7))
    for c in range(2):
        for z in range(5):
            for y in range(5):
                for x in range(5):
                    assert m[0, c, z, y, x].item() == float(u[0, c, z // 2, y // 2, x // 2] < 0.5)


def test_about_ratio_of_blocks_is_masked():
    # 4 x 2 x 16^3 = 32768 Bernoulli(p) blocks: the fraction has sd sqrt(p(1-p)/32768) <= 0.0028; allow 5 sd.
    for p in (0.25, 0.5, 0.75):
        m = sample_block_mask((4, 2, 64, 64, 64), (4, 4, 4), p, True, gen(1))
        grid = m[:, :, ::4, ::4, ::4]
        assert abs(grid.mean().item() - p) < 0.014, p


def test_channels_are_independent_unless_joint():
    # Independent Bernoulli(p) masks differ in a block with probability 2p(1-p): 0.5 for p = 0.5,
    # 0.375 for p = 0.75; joint masks never differ.
    for p, expected in ((0.5, 0.5), (0.75, 0.375)):
        m = sample_block_mask((8, 2, 32, 32, 32), (2, 2, 2), p, True, gen(2))
        differ = (m[:, 0] != m[:, 1]).float().mean().item()
        assert abs(differ - expected) < 0.01, (p, differ)
    joint = sample_block_mask((8, 2, 32, 32, 32), (2, 2, 2), 0.5, False, gen(2))
    assert torch.equal(joint[:, 0], joint[:, 1])
    assert 0.45 < joint.mean().item() < 0.55
    # batch items are independent too
    assert not torch.equal(joint[0], joint[1])


def test_same_seed_same_mask_other_seed_other_mask():
    a = sample_block_mask((2, 2, 16, 16, 16), (4, 4, 4), 0.5, True, gen(3))
    b = sample_block_mask((2, 2, 16, 16, 16), (4, 4, 4), 0.5, True, gen(3))
    c = sample_block_mask((2, 2, 16, 16, 16), (4, 4, 4), 0.5, True, gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ratio_zero_and_one_and_2d_shapes():
    assert sample_block_mask((1, 2, 4, 4, 4), (2, 2, 2), 0.0, True, gen(0)).sum() == 0
    assert sample_block_mask((1, 2, 4, 4, 4), (2, 2, 2), 1.0, True, gen(0)).min() == 1
    m2 = sample_block_mask((3, 2, 10, 7), (4, 4), 0.5, True, gen(0))  # 2D: grid 3x2, cropped
    assert m2.shape == (3, 2, 10, 7)
    assert torch.equal(m2[:, :, 8:10, :4], m2[:, :, 8:9, :1].expand(3, 2, 2, 4))


def test_mask_argument_errors():
    with pytest.raises(ValueError, match="generator is on cpu"):
        sample_block_mask((1, 1, 4, 4, 4), (2, 2, 2), 0.5, True, gen(0), device="meta")
    with pytest.raises(ValueError, match="block size"):
        sample_block_mask((1, 1, 4, 4, 4), (2, 2), 0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        sample_block_mask((1, 1, 4, 4, 4), (2, 2, 2), 1.5)


def test_apply_mask_sets_masked_voxels_to_zero_and_keeps_input():
    x = torch.tensor([1.0, 2.0, 3.0, -4.0])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert apply_mask(x, m).tolist() == [0.0, 2.0, 0.0, -4.0]
    assert x.tolist() == [1.0, 2.0, 3.0, -4.0]


# ---------------------------------------------------------------------------------------------- block size rule


def test_block_size_rule():
    assert resolve_block_size((96, 128, 128)) == (12, 16, 16)  # the paper: 8x8x8 grid
    assert resolve_block_size((32, 32, 32)) == (4, 4, 4)  # tiny plans
    assert resolve_block_size((80, 160, 100)) == (12, 16, 16)  # 100 % 8 != 0 -> paper block
    assert resolve_block_size((6, 128, 128)) == (6, 16, 16)  # paper block clipped to the patch
    assert resolve_block_size((64, 64), None) == (8, 8)  # 2D: 8x8 grid
    assert resolve_block_size((20, 20, 20), (8, 8, 8)) == (8, 8, 8)  # explicit, cropped edge allowed
    with pytest.raises(ValueError, match="larger than the patch"):
        resolve_block_size((32, 32, 32), (40, 8, 8))
    with pytest.raises(ValueError, match="axes"):
        resolve_block_size((32, 32, 32), (8, 8))


# ---------------------------------------------------------------------------------------------- loss


def test_loss_on_a_hand_computed_tensor():
    # target 0; pred ch0 = [1, 2], ch1 = [3, 4]; mask ch0 = [1, 1], ch1 = [0, 1].
    # masked voxels: 1, 2, 4 -> squared 1, 4, 16 -> mean 21/3 = 7
    # visible voxels: 3 -> squared 9 -> mean 9; loss = 7 + 0.2 * 9 = 8.8
    # (a mean of per-channel means would give (2.5 + 16)/2 + 0.2 * 9 = 11.05: not what we want)
    pred = torch.tensor([[[[[1.0, 2.0]]], [[[3.0, 4.0]]]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[[1.0, 1.0]]], [[[0.0, 1.0]]]]])
    assert masked_reconstruction_loss(pred, target, mask, 0.2).item() == pytest.approx(8.8)
    assert masked_reconstruction_loss(pred, target, mask, 0.0).item() == pytest.approx(7.0)


def test_loss_edge_cases_no_masked_or_no_visible_voxels():
    pred = torch.tensor([[[[[1.0, 3.0]]]]], requires_grad=True)
    target = torch.zeros(1, 1, 1, 1, 2)
    # nothing masked: only 0.2 * mean(1, 9) = 1.0
    none = masked_reconstruction_loss(pred, target, torch.zeros_like(target), 0.2)
    assert none.item() == pytest.approx(1.0)
    # everything masked: mean(1, 9) = 5, visible term 0
    allm = masked_reconstruction_loss(pred, target, torch.ones_like(target), 0.2)
    assert allm.item() == pytest.approx(5.0)
    allm.backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="shape"):
        masked_reconstruction_loss(pred, torch.zeros(1, 2, 1, 1, 2), torch.ones(1, 1, 1, 1, 2))


def test_masked_r2():
    assert masked_r2([0.0, 5.0], [10.0, 10.0]) == [1.0, 0.5]
    assert math.isnan(masked_r2([1.0], [0.0])[0])


# ---------------------------------------------------------------------------------------------- config, schedule


def test_config_round_trip_and_validation():
    cfg = MAEConfig(block_size=(4, 8, 8), input_channels=(1,))
    d = cfg.to_dict()
    json.dumps(d)  # plain types only
    assert d["block_size"] == [4, 8, 8] and d["input_channels"] == [1]
    assert MAEConfig.from_dict(d) == cfg
    assert cfg.replace(mask_ratio=0.75).mask_ratio == 0.75 and cfg.mask_ratio == 0.5
    for bad in ({"mask_ratio": 1.2}, {"visible_weight": -1}, {"input_channels": ()}, {"input_channels": (0, 0)},
                {"optimizer": "adam"}, {"lr_schedule": "step"}, {"zoom_range": (1.1, 0.9)}):
        with pytest.raises(ValueError):
            MAEConfig(**bad)
    with pytest.raises(TypeError):
        MAEConfig.from_dict({**d, "typo": 1})


def test_block_size_in_mm():
    # the paper: 36x32x32 mm at 3x2x2 mm = 12x16x16 voxels (a 96x128x128 patch holds 8x8x8 of them)
    assert resolve_block_size_mm((96, 128, 128), (3.0, 2.0, 2.0), PAPER_BLOCK_SIZE_MM) == (12, 16, 16)
    # 36/8 = 4.5 -> 5 (halves round up), 32/6 = 5.33 -> 5
    assert resolve_block_size_mm((32, 32, 32), (8.0, 6.0, 6.0), PAPER_BLOCK_SIZE_MM) == (5, 5, 5)
    # 36/1 = 36 > the 32-voxel patch axis: clipped; a block never drops below 1 voxel
    assert resolve_block_size_mm((32, 64, 64), (1.0, 1.0, 100.0), PAPER_BLOCK_SIZE_MM) == (32, 32, 1)
    with pytest.raises(ValueError, match="same number of axes"):
        resolve_block_size_mm((32, 32), (3.0, 2.0, 2.0), PAPER_BLOCK_SIZE_MM)
    with pytest.raises(ValueError, match="positive"):
        resolve_block_size_mm((32, 32, 32), (0.0, 2.0, 2.0), PAPER_BLOCK_SIZE_MM)
    cfg = MAEConfig(block_size_mm=(36.0, 32.0, 32.0))
    assert MAEConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["block_size_mm"] == [36.0, 32.0, 32.0]
    with pytest.raises(ValueError, match="not both"):
        MAEConfig(block_size=(4, 4, 4), block_size_mm=(36.0, 32.0, 32.0))
    with pytest.raises(ValueError, match="> 0"):
        MAEConfig(block_size_mm=(36.0, 0.0, 32.0))


def test_cosine_schedule_values():
    # no warm-up: lr(s) = 0.5 (1 + cos(pi s / 10)): s=0 -> 1, s=5 -> 0.5, s=10 -> 0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineWarmupLR(opt, 1.0, max_steps=10)
    for step, lr in ((0, 1.0), (5, 0.5), (10, 0.0)):
        sched.step(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
    # 2 warm-up steps: 1/3, 2/3, then cosine over the remaining 8: s=6 -> halfway -> 0.5
    sched = CosineWarmupLR(opt, 1.0, max_steps=10, warmup_steps=2)
    for step, lr in ((0, 1 / 3), (1, 2 / 3), (2, 1.0), (6, 0.5)):
        sched.step(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)


def test_seed_for_differs_by_rank_and_epoch():
    seeds = {seed_for(1, r, e) for r in range(4) for e in range(50)}
    assert len(seeds) == 200


def test_center_patch_crops_and_pads_with_zero():
    data = np.arange(1 * 5 * 2 * 3, dtype=np.float32).reshape(1, 5, 2, 3) + 1
    out = center_patch(data, (3, 4, 3))
    # axis 1: 5 -> 3, start (5-3)//2 = 1; axis 2: 2 -> 4, padded one row each side; axis 3 unchanged
    assert out.shape == (1, 3, 4, 3)
    assert np.array_equal(out[0, :, 1:3, :], data[0, 1:4])
    assert not out[0, :, 0].any() and not out[0, :, 3].any()


# ---------------------------------------------------------------------------------------------- the step


class Recorder(torch.nn.Module):
    """Identity-like 1x1x1 conv that remembers its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv3d(channels, channels, 1)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.conv(x)


def test_forward_feeds_the_masked_selected_channels():
    data = torch.randn(2, 2, 8, 8, 8) + 5  # no exact zeros in the data
    net = Recorder(1)
    cfg = MAEConfig(input_channels=(1,))
    loss, pred, target, mask = mae_forward(net, data, cfg, (4, 4, 4), gen(0))
    assert torch.equal(target, data[:, 1:2])
    assert torch.equal(net.seen == 0, mask.bool())  # zero exactly where masked
    assert torch.equal(net.seen[mask == 0], data[:, 1:2][mask == 0])
    with pytest.raises(ValueError, match="output channel"):
        mae_forward(torch.nn.Conv3d(1, 2, 1), data, cfg, (4, 4, 4), gen(0))


def test_train_step_learns_and_clips():
    # A learnable target: a constant 3 (plus a little noise) that zero imputation hides in masked blocks; the
    # biases alone can recover it, so 30 AdamW steps must cut the loss substantially.
    torch.manual_seed(0)
    data = 3.0 + 0.01 * torch.randn(2, 2, 8, 8, 8)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.LeakyReLU(),
                              torch.nn.Conv3d(8, 2, 3, padding=1))
    cfg = MAEConfig()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    val = mae_eval_step(net, data, cfg, (2, 2, 2), gen(9))["loss"]
    for _ in range(30):
        mae_train_step(net, opt, data, cfg, (2, 2, 2), gen(1))
    assert mae_eval_step(net, data, cfg, (2, 2, 2), gen(9))["loss"] < 0.5 * val

    # clipping: plain SGD moves the parameters by exactly lr * min(|g|, clip)
    net2 = torch.nn.Conv3d(2, 2, 1)
    before = torch.cat([p.detach().flatten().clone() for p in net2.parameters()])
    opt2 = torch.optim.SGD(net2.parameters(), lr=1.0)
    mae_train_step(net2, opt2, data * 100, cfg.replace(grad_clip=1e-3), (2, 2, 2), gen(1))
    after = torch.cat([p.detach().flatten() for p in net2.parameters()])
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_eval_step_stats_and_example():
    data = torch.randn(2, 2, 8, 8, 8)
    net = Recorder(2)
    out = mae_eval_step(net, data, MAEConfig(), (4, 4, 4), gen(0), keep_first=True)
    t, masked, p, m = out["example"]
    assert t.shape == (2, 8, 8, 8) and torch.equal(masked, apply_mask(t, m))
    total = np.array(out["n_masked"]) + np.array(out["n_visible"])
    assert total.tolist() == [2 * 512, 2 * 512]  # per channel: batch x voxels
