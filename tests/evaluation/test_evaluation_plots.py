"""Plot helpers: Dice-vs-fraction curves and the coronal PET MIP with contours."""

from __future__ import annotations

import numpy as np
import pytest

from nnunetv2_petct.evaluation import (
    coronal_mip,
    dice_curves,
    plot_dice_vs_fraction,
    plot_pet_mip_with_contours,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_dice_curves_group_average_and_order():
    rows = [
        {"fraction": 1.0, "method": "scratch", "dice": 0.70, "dice_std": 0.02},
        {"fraction": 0.1, "method": "scratch", "dice": 0.40, "dice_std": 0.05},
        {"fraction": 0.1, "method": "pretrained", "dice": 0.50},
        {"fraction": 0.1, "method": "pretrained", "dice": 0.70},  # second seed at the same fraction
        {"fraction": 1.0, "method": "pretrained", "dice": 0.75},
        {"fraction": 0.1, "method": "probe", "dice": 0.30},
        {"fraction": 0.1, "method": "another", "dice": 0.20},
    ]
    curves = dice_curves(rows)
    assert list(curves) == ["pretrained", "scratch", "probe", "another"]
    pre = curves["pretrained"]
    assert pre["fraction"].tolist() == [0.1, 1.0]
    # two runs at 10%: mean (0.5 + 0.7)/2 = 0.6, population std 0.1
    assert pre["dice"] == pytest.approx([0.6, 0.75])
    assert pre["dice_std"][0] == pytest.approx(0.1) and np.isnan(pre["dice_std"][1])
    # one run keeps its own std; sorted by fraction
    assert curves["scratch"]["dice"] == pytest.approx([0.40, 0.70])
    assert curves["scratch"]["dice_std"] == pytest.approx([0.05, 0.02])


def test_dice_curves_reject_bad_rows():
    with pytest.raises(ValueError, match="dice"):
        dice_curves([{"fraction": 0.1, "method": "scratch"}])
    with pytest.raises(ValueError):
        dice_curves([])


def test_plot_dice_vs_fraction_writes_png(tmp_path):
    rows = [{"fraction": f, "method": m, "dice": d, "dice_std": 0.03}
            for m, ds in (("pretrained", (0.55, 0.65, 0.72)), ("scratch", (0.40, 0.58, 0.70)))
            for f, d in zip((0.1, 0.3, 1.0), ds)]
    out = plot_dice_vs_fraction(rows, tmp_path / "fig" / "dice.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000


def test_plot_draws_the_error_bars(tmp_path):
    import matplotlib.image as mpimg

    rows = [{"fraction": f, "method": "pretrained", "dice": 0.6, "dice_std": 0.0} for f in (0.1, 1.0)]
    flat = plot_dice_vs_fraction(rows, tmp_path / "flat.png")
    bars = plot_dice_vs_fraction([dict(r, dice_std=0.15) for r in rows], tmp_path / "bars.png")
    a, b = mpimg.imread(flat), mpimg.imread(bars)
    assert a.shape == b.shape
    # only the error bars differ: the changed pixels lie in the columns of the two points, above and below
    diff = np.abs(a - b).sum(axis=2) > 0.1
    assert diff.any()
    rows_changed = np.flatnonzero(diff.any(axis=1))
    assert rows_changed.max() - rows_changed.min() > 0.1 * a.shape[0]  # vertical bars of +-0.15 Dice


def test_coronal_mip_and_extent():
    v = np.zeros((10, 7, 20), np.float32)
    v[2, 5, 3] = 9.0
    v[2, 1, 3] = 4.0
    mip, extent = coronal_mip(v, (4.0, 2.0, 1.0))
    assert mip.shape == (10, 20) and mip[2, 3] == 9.0  # max over y (anterior-posterior)
    # x: 20 voxels x 1 mm, z: 10 voxels x 4 mm -> the display is twice as tall as wide
    assert extent == (0.0, 20.0, 0.0, 40.0)


def test_mip_with_contours_shows_inverted_grey_and_both_colours(tmp_path):
    import matplotlib.image as mpimg

    shape = (60, 30, 40)
    pet = np.zeros(shape, np.float32)
    pet[20:40, 10:20, 10:20] = 10.0  # hot block: dark in inverted grey
    gt = np.zeros(shape, np.uint8)
    gt[20:40, 10:20, 10:20] = 1
    pred = np.zeros(shape, np.uint8)
    pred[45:55, 5:10, 25:35] = 1  # a separate predicted region, so both contours are visible
    out = plot_pet_mip_with_contours(pet, gt, pred, (3.0, 2.0, 2.0), tmp_path / "mip.png", title="case")
    img = mpimg.imread(out)[..., :3]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert np.any((r > 0.8) & (g < 0.25) & (b < 0.25)), "no red (prediction) contour pixels"
    assert np.any((g > 0.6) & (r < 0.4) & (b < 0.4)), "no green (ground-truth) contour pixels"
    assert np.any((r < 0.1) & (g < 0.1) & (b < 0.1)), "hot PET should be dark (inverted grey)"
    with pytest.raises(ValueError, match="shape"):
        plot_pet_mip_with_contours(pet, gt[:-1], None, (3.0, 2.0, 2.0), tmp_path / "bad.png")


def test_sagittal_mip_and_extent_in_patient_coordinates():
    from nnunetv2_petct.evaluation.plots import mip

    v = np.zeros((10, 7, 20), np.float32)
    v[2, 5, 3] = 9.0
    v[2, 5, 8] = 4.0
    sag, extent = mip(v, (4.0, 2.0, 1.0), "sagittal", origin_mm_zyx=(100.0, -30.0, 5.0))
    assert sag.shape == (10, 7) and sag[2, 5] == 9.0  # max over x (left-right)
    # y edges: -30 - 1 .. -31 + 7 * 2 = -17; z edges: 100 - 2 .. 98 + 10 * 4 = 138
    assert extent == (-31.0, -17.0, 98.0, 138.0)
    with pytest.raises(ValueError, match="unknown view"):
        mip(v, (4.0, 2.0, 1.0), "axial")


def test_pet_mip_png_draws_the_lesion_outline_and_the_no_ct_band():
    import io

    import matplotlib.image as mpimg

    from nnunetv2_petct.evaluation.plots import pet_mip_png

    pet = np.full((40, 30, 30), 0.05, np.float32)  # nearly white (grey scale 0..1 SUV)
    mask = np.zeros(pet.shape, np.uint8)
    mask[20:26, 10:16, 10:16] = 1
    png = pet_mip_png(pet, mask, (3.0, 2.0, 2.0), "coronal", labels=[((23, 13, 13), "1")],
                      z_bands_mm=[(0.0, 30.0, "no CT")])
    assert png[:8] == PNG_MAGIC
    img = mpimg.imread(io.BytesIO(png))[..., :3]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert np.any((r > 0.8) & (g < 0.25) & (b < 0.25)), "no red lesion outline"
    assert np.any((r > 0.9) & (g > 0.6) & (g < 0.95) & (b < 0.8)), "no orange no-CT band"
