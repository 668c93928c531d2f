"""Reconstruction preview PNGs (nnunetv2_petct.pretraining.previews)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from nnunetv2_petct.pretraining.previews import render_reconstruction_preview

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def volumes(channels: int):
    rng = np.random.default_rng(0)
    orig = rng.normal(size=(channels, 8, 10, 12)).astype(np.float32)
    mask = rng.random(orig.shape) < 0.5
    return orig, np.where(mask, 0, orig), orig * 0.5


def test_preview_is_a_png_with_a_mip_row_for_pet(tmp_path):
    # CT+PET: a row per channel + a MIP row for PET = 3 rows; CT alone: 1 row; same width (4 panels).
    w2, h2 = png_size(render_reconstruction_preview(*volumes(2), tmp_path / "a.png", ("CT", "PET"), (3, 2, 2)))
    w1, h1 = png_size(render_reconstruction_preview(*volumes(1), tmp_path / "b.png", ("CT",)))
    assert w1 == w2
    assert h2 == pytest.approx(3 * h1, rel=0.05)
    # a PET-only model still gets its MIP row: 2 rows
    _, hp = png_size(render_reconstruction_preview(*volumes(1), tmp_path / "c.png", ("PET",)))
    assert hp == pytest.approx(2 * h1, rel=0.05)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers


def test_preview_rejects_mismatched_inputs(tmp_path):
    orig, masked, rec = volumes(2)
    with pytest.raises(ValueError, match="one shape"):
        render_reconstruction_preview(orig, masked[:, :4], rec, tmp_path / "x.png")
    with pytest.raises(ValueError, match="channel name"):
        render_reconstruction_preview(orig, masked, rec, tmp_path / "x.png", ("CT",))
