"""Click simulation: the error-driven rule on hand-made volumes, the pre-simulated list, training clicks'
invariants and frequencies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_petct.interactive.simulation import (
    TrainingClickConfig,
    next_error_driven_clicks,
    presimulated_clicks,
    sample_batch_clicks,
    sample_training_clicks,
)


def _volume():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:9, 2:9, 2:9] = 1        # big lesion (7^3), centre (5, 5, 5)
    gt[12:15, 12:15, 12:15] = 1  # small lesion (3^3), centre (13, 13, 13)
    return gt


def test_error_driven_clicks_at_the_interior_of_the_largest_errors():
    gt = _volume()
    pred = np.zeros_like(gt)
    tumor, background = next_error_driven_clicks(gt, pred, (1.0, 1.0, 1.0))
    assert tumor == (5, 5, 5) and background is None  # largest missed lesion, its centre, as (x, y, z)
    pred[2:9, 2:9, 2:9] = 1                            # the big one found: the small one is next
    pred[15:20, 0:5, 0:5] = 1                          # a false positive (5^3) at the array's corner
    pred[0, 19, 19] = 1                                # and a smaller one (1 voxel)
    tumor, background = next_error_driven_clicks(gt, pred, (1.0, 1.0, 1.0))
    assert tumor == (13, 13, 13)
    # its interior point: the array border counts as outside, so the centre of the cube, not a corner voxel
    assert background == (2, 2, 17)
    assert next_error_driven_clicks(gt, gt, (1, 1, 1)) == (None, None)


def test_error_driven_interior_uses_the_spacing():
    # an L-shaped false negative: with 4 mm voxels along z, the interior is decided by the in-plane extent
    gt = np.zeros((5, 11, 11), np.uint8)
    gt[1:4, 1:10, 1:10] = 1
    tumor, _ = next_error_driven_clicks(gt, np.zeros_like(gt), (4.0, 1.0, 1.0))
    assert tumor == (5, 5, 2)


def test_presimulated_list_cycles_over_lesions_largest_first():
    gt = _volume()
    pet = np.ones(gt.shape, np.float32)
    pet[16:20] = 10.0  # a hot organ outside lesions (20 % of the voxels)
    c = presimulated_clicks(gt, pet, (1, 1, 1), np.random.default_rng(0), n_per_kind=5)
    assert c.n_tumor == 5 and c.n_background == 5
    assert c.tumor[0] == (5, 5, 5) and c.tumor[1] == (13, 13, 13)  # first visits: interior points
    for x, y, z in c.tumor:
        assert gt[z, y, x] == 1
    for x, y, z in c.background:
        assert gt[z, y, x] == 0
    hot = [(x, y, z) for x, y, z in c.background if pet[z, y, x] == 10.0]
    assert len(hot) >= 3  # half rounded up on high uptake
    again = presimulated_clicks(gt, pet, (1, 1, 1), np.random.default_rng(0), n_per_kind=5)
    assert again == c
    none = presimulated_clicks(np.zeros_like(gt), pet, (1, 1, 1), np.random.default_rng(0), n_per_kind=3)
    assert none.n_tumor == 0 and none.n_background == 3


def test_training_clicks_land_where_they_should():
    gt = _volume().astype(np.int16)
    gt[0, 0, :5] = -1  # nnU-Net's ignore label: never clicked
    pet = np.ones(gt.shape, np.float32)
    pet[gt > 0] = 5.0
    rng = np.random.default_rng(1)
    cfg = TrainingClickConfig()
    n_none = 0
    for _ in range(400):
        t, b = sample_training_clicks(gt, pet, (2.0, 2.0, 2.0), rng, cfg)
        assert len(t) <= cfg.max_clicks_per_kind and len(b) <= cfg.max_clicks_per_kind
        assert all(gt[tuple(p)] > 0 for p in t)
        assert all(gt[tuple(p)] == 0 for p in b)
        n_none += int(len(t) == 0 and len(b) == 0)
    # P(no click) = p_no_clicks + (1 - p) * P(0 tumor) * P(0 background) = 0.2 + 0.8 / 121
    p = 0.2 + 0.8 / 121
    sd = np.sqrt(400 * p * (1 - p))
    assert abs(n_none - 400 * p) < 4 * sd
    t, b = sample_training_clicks(np.zeros_like(gt), pet, (1, 1, 1), np.random.default_rng(2),
                                  TrainingClickConfig(p_no_clicks=0.0))
    assert len(t) == 0  # no lesion, no tumor click


def test_tumor_clicks_prefer_the_interior():
    gt = np.zeros((15, 15, 15), np.uint8)
    gt[2:13, 2:13, 2:13] = 1
    rng = np.random.default_rng(3)
    cfg = TrainingClickConfig(p_no_clicks=0.0, interior_power=2.0)
    border = interior = 0
    for _ in range(200):
        t, _ = sample_training_clicks(gt, None, (1, 1, 1), rng, cfg)
        for z, y, x in t:
            d = min(z - 2, 12 - z, y - 2, 12 - y, x - 2, 12 - x)
            border += int(d == 0)
            interior += int(d >= 3)
    # uniform sampling would give border : interior = (11^3 - 9^3) : 5^3 = 602 : 125
    assert interior > border


def test_batch_accepts_torch_and_is_deterministic():
    lab = torch.zeros((2, 1, 8, 8, 8))
    lab[0, 0, 2:5, 2:5, 2:5] = 1
    pet = torch.rand((2, 8, 8, 8))
    a = sample_batch_clicks(lab, pet, (1, 1, 1), np.random.default_rng(5))
    b = sample_batch_clicks(lab.numpy(), pet.numpy(), (1, 1, 1), np.random.default_rng(5))
    assert len(a[0]) == 2 and all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    assert len(a[0][1]) == 0  # sample 1 has no lesion


@pytest.mark.parametrize("p_uptake", [0.0, 1.0])
def test_uptake_share_of_background_clicks(p_uptake):
    gt = np.zeros((10, 10, 10), np.uint8)
    pet = np.zeros(gt.shape, np.float32)
    pet[:2] = 9.0  # the hottest 20 %
    cfg = TrainingClickConfig(p_no_clicks=0.0, p_uptake_background=p_uptake, p_near_lesion=0.0)
    rng = np.random.default_rng(4)
    hot = total = 0
    for _ in range(100):
        _, b = sample_training_clicks(gt, pet, (1, 1, 1), rng, cfg)
        hot += sum(int(pet[tuple(p)] > 0) for p in b)
        total += len(b)
    share = hot / total
    # all on the hot voxels when p = 1 (above the 95th percentile = the hot slab); uniform (20 %) when p = 0
    assert share == 1.0 if p_uptake == 1.0 else abs(share - 0.2) < 0.06
