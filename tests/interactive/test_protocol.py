"""The autoPET IV interactive numbers against hand derivations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunetv2_petct.interactive.protocol import (
    click_auc,
    interactive_case_metrics,
    interactive_summary,
    plot_dice_vs_clicks,
    write_interactive_csv,
)


def test_click_auc_is_the_unnormalised_trapezoid():
    assert click_auc([0, 1, 1]) == 1.5          # 0.5 + 1
    assert click_auc([1] * 11) == 10.0           # a perfect case over 0..10 clicks scores 10
    assert click_auc([0.2, 0.4, 0.8, 0.8]) == pytest.approx(0.3 + 0.6 + 0.8)
    assert click_auc([3.0]) == 0.0
    assert math.isnan(click_auc([0.1, float("nan")]))
    with pytest.raises(ValueError):
        click_auc([])


def test_case_numbers_by_hand():
    spacing = (2.0, 2.0, 2.0)  # 8 mm^3 = 0.008 ml per voxel
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:3, 1:3, 1:3] = 1      # lesion A: 8 voxels
    gt[6:8, 6:8, 6:7] = 1      # lesion B: 4 voxels
    p0 = np.zeros_like(gt)     # empty at k = 0
    p1 = np.zeros_like(gt)
    p1[1:3, 1:3, 1:3] = 1      # finds A
    p1[0, 9, 9] = 1            # and one false-positive voxel
    p2 = p1.copy()
    p2[6:8, 6:8, 6:7] = 1      # finds B too
    m = interactive_case_metrics(gt, [p0, p1, p2], spacing)
    # Dice: 0; 2*8/(12+9) = 16/21; 2*12/(12+13) = 24/25
    assert m["dice_per_click"] == pytest.approx([0.0, 16 / 21, 24 / 25])
    # FNV: both lesions missed (12 voxels) -> B missed (4) -> none
    assert m["fnv_per_click"] == pytest.approx([0.096, 0.032, 0.0])
    # FPV: nothing predicted -> the stray voxel -> the stray voxel
    assert m["fpv_per_click"] == pytest.approx([0.0, 0.008, 0.008])
    assert m["dice_auc"] == pytest.approx((0 + 16 / 21) / 2 + (16 / 21 + 24 / 25) / 2)
    assert m["fnv_auc"] == pytest.approx((0.096 + 0.032) / 2 + 0.032 / 2)
    assert m["fpv_auc"] == pytest.approx(0.004 + 0.008)
    assert (m["dice_final"], m["fpv_final"], m["fnv_final"]) == pytest.approx((24 / 25, 0.008, 0.0))


def test_case_without_lesions():
    gt = np.zeros((6, 6, 6), np.uint8)
    p0 = np.zeros_like(gt)
    p0[0:2, 0:2, 0:2] = 1      # 8 false-positive voxels of 1 ml each
    p1 = np.zeros_like(gt)     # a background click removed them
    m = interactive_case_metrics(gt, [p0, p1], (10.0, 10.0, 10.0))
    assert math.isnan(m["dice_auc"]) and math.isnan(m["fnv_auc"]) and math.isnan(m["dice_final"])
    assert m["fpv_per_click"] == [8.0, 0.0] and m["fpv_auc"] == 4.0 and m["fpv_final"] == 0.0


def test_summary_csv_and_plot(tmp_path):
    rows = [{"case": "a", "dice_auc": 1.0, "fpv_auc": 0.0, "fnv_auc": 0.0, "dice_final": 1.0, "fpv_final": 0.0,
             "fnv_final": 0.0, "dice_0": 0.5},
            {"case": "b", "dice_auc": math.nan, "fpv_auc": 2.0, "fnv_auc": math.nan, "dice_final": math.nan,
             "fpv_final": 1.0, "fnv_final": math.nan, "dice_0": math.nan}]
    s = interactive_summary(rows)
    assert s["dice_auc"] == {"mean": 1.0, "n": 1} and s["fpv_auc"] == {"mean": 1.0, "n": 2}
    assert s["dice_0"]["n"] == 1
    path = write_interactive_csv(tmp_path / "i.csv", rows, s)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("case,dice_auc") and lines[-2].startswith("mean,1.0,1.0")
    assert lines[-1].startswith("n,1,2,1") and lines[2].split(",")[1] == ""  # NaN written empty
    png = plot_dice_vs_clicks(tmp_path / "p.png", {"m": np.array([[0.1, 0.5], [0.3, 0.7]])}, "t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_dice_vs_clicks(tmp_path / "q.png", {}) is None
