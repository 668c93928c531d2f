"""Fixtures for the cohort-converter tests: tiny phantom cohorts and their native layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tree_fingerprint  # noqa: F401 - re-exported for this folder's tests


@pytest.fixture(scope="session")
def phantom_cases():
    """4 tiny phantoms, 3 patients (case 3 is patient 0's second study, 90 days later), 1 lesion-free."""
    from nnunetv2_petct.phantoms import make_cohort

    cases = make_cohort(4, seed=7, size="tiny", lesion_free_fraction=0.25, prefix="ph", n_patients=3)
    assert sum(c.lesion_free for c in cases) == 1
    return cases


@pytest.fixture()
def fingerprint():
    """:func:`tree_fingerprint` as a fixture (test modules here are not a package)."""
    return tree_fingerprint


def manifest_describes_files(dataset_dir: Path, record: dict) -> dict:
    """Open the files a manifest record names and check that every image statistic of the record
    describes them (shape, spacing, origin, direction, PET max/mean/min, CT range/mean, dtypes, label
    foreground). Returns the arrays (``ct``, ``pet``, ``label``) and the PET image for further checks."""
    import numpy as np
    import SimpleITK as sitk

    imgs = {k: sitk.ReadImage(str(Path(dataset_dir) / f)) for k, f in
            (("ct", record["channels"]["0"]["file"]), ("pet", record["channels"]["1"]["file"]),
             ("label", record["label"]["file"]))}
    arr = {k: sitk.GetArrayFromImage(v) for k, v in imgs.items()}
    pet, ct, lab = arr["pet"], arr["ct"], arr["label"]
    assert (ct.dtype, pet.dtype, lab.dtype) == (np.int16, np.float32, np.uint8)
    assert record["channels"]["0"]["dtype"] == "int16" and record["channels"]["1"]["dtype"] == "float32"
    assert record["shape_zyx"] == list(pet.shape) == list(ct.shape) == list(lab.shape)
    for img in imgs.values():
        np.testing.assert_allclose(record["spacing_mm"], img.GetSpacing()[::-1], atol=1e-5)
        np.testing.assert_allclose(record["origin_mm_xyz"], img.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(record["direction"], img.GetDirection(), atol=1e-5)
    assert record["pet_max"] == float(pet.max()) and record["pet_min"] == float(pet.min())
    assert record["pet_mean"] == pytest.approx(float(pet.mean(dtype=np.float64)), rel=1e-12)
    assert record["ct_range_hu"] == [int(ct.min()), int(ct.max())]
    assert record["ct_mean_hu"] == pytest.approx(float(ct.mean(dtype=np.float64)), rel=1e-12)
    assert record["label"]["foreground_voxels"] == int(lab.sum())
    voxel_ml = float(np.prod(imgs["pet"].GetSpacing())) / 1000.0
    assert record["label"]["foreground_ml"] == pytest.approx(int(lab.sum()) * voxel_ml, abs=1e-3)
    return {**arr, "pet_image": imgs["pet"]}


@pytest.fixture()
def manifest_check():
    """:func:`manifest_describes_files` as a fixture."""
    return manifest_describes_files
