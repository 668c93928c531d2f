"""Fixtures for the evaluation tests: the real autoPET III masks from tests/data/autopet3_masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

AUTOPET3_DIR = Path(__file__).resolve().parents[1] / "data" / "autopet3_masks"
CASE = "psma_95b833d46f153cd2_2018-04-16"


@pytest.fixture(scope="session")
def autopet3_masks() -> dict:
    """``{"gt", "pred_datacentric", "pred_nnunet"}`` arrays (z, y, x) and ``spacing_mm`` (z, y, x)."""
    if not AUTOPET3_DIR.is_dir():
        pytest.fail(f"real autoPET III masks not found at {AUTOPET3_DIR}")
    import SimpleITK as sitk

    out: dict = {}
    for key in ("gt", "pred_datacentric", "pred_nnunet"):
        img = sitk.ReadImage(str(AUTOPET3_DIR / f"{key}_{CASE}.nii.gz"))
        out[key] = sitk.GetArrayFromImage(img)
        if key == "gt":
            out["spacing_mm"] = tuple(reversed(img.GetSpacing()))  # SimpleITK (x, y, z) -> (z, y, x)
    # the README states 200x200x448 voxels at 4.07x4.07x2 mm (x, y, z)
    assert out["gt"].shape == (448, 200, 200)
    assert np.allclose(out["spacing_mm"], (2.0, 4.0728, 4.0728), atol=1e-3)
    return out
