"""Fixtures for the clinical path: phantom DICOM studies and predictors that return known masks."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import tree_fingerprint  # noqa: F401 - re-exported for this folder's tests

SPHERE_SUV = 6.0
HOT_SUV = 10.0
BODY_SUV = 1.0
SPHERE_RADIUS_MM = 15.5  # no voxel centre of the (8, 6, 6) mm grid at exactly this distance
# voxel (z, y, x) of the tiny PET grid (32 x 40 x 40, spacing 8 x 6 x 6 mm) at the sphere's centre: in the body
SPHERE_CENTRE_ZYX = (18, 20, 14)


def sphere_mask(image, centre_xyz_mm, radius_mm: float) -> np.ndarray:
    """(z, y, x) uint8: voxels of ``image``'s grid whose centres lie within the sphere."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    pts = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in idx])
    inside = np.linalg.norm(pts - np.asarray(centre_xyz_mm), axis=1) <= radius_mm
    return inside.reshape(size).transpose(2, 1, 0).astype(np.uint8)


def painted_case(seed: int = 1, patient_id: str = "PAINT"):
    """A tiny phantom whose PET is replaced by a hand-made SUV map: 0 outside the body, BODY_SUV inside,
    a sphere of SPHERE_SUV (radius SPHERE_RADIUS_MM) at voxel SPHERE_CENTRE_ZYX whose centre voxel is HOT_SUV."""
    from nnunetv2_petct.phantoms import make_phantom

    case = make_phantom(seed, "tiny", lesion_free=True, patient_id=patient_id)
    body = sitk.GetArrayFromImage(case.organs) > 0
    suv = np.where(body, BODY_SUV, 0.0).astype(np.float32)
    z, y, x = SPHERE_CENTRE_ZYX
    centre = case.pet.TransformIndexToPhysicalPoint((x, y, z))
    sph = sphere_mask(case.pet, centre, SPHERE_RADIUS_MM) > 0
    suv[sph] = SPHERE_SUV
    suv[z, y, x] = HOT_SUV
    pet = sitk.GetImageFromArray(suv)
    pet.CopyInformation(case.pet)
    label = sitk.GetImageFromArray(sph.astype(np.uint8))
    label.CopyInformation(case.pet)
    c = copy.copy(case)
    c.pet, c.label = pet, label
    return c, centre, sph


class MaskPredictor:
    """A stand-in for nnU-Net: the mask of each case is ``make_mask(pet_image)`` (forced into the pipeline)."""

    def __init__(self, make_mask, fail_for: tuple[str, ...] = ()):
        self.make_mask = make_mask
        self.fail_for = fail_for
        self.calls: list[list[str]] = []

    def identification(self) -> dict:
        return {"name": "MaskPredictor", "version": "test", "parameters": {"model": "painted", "folds": "0"},
                "trainer": "MaskPredictor", "folds": ["0"]}

    def predict(self, cases, output_dir) -> None:
        self.calls.append(sorted(cases))
        bad = [n for n in cases if n in self.fail_for]
        if bad:
            raise RuntimeError(f"cannot predict {bad[0]}")
        for name, (ct_file, pet_file) in cases.items():
            ct, pet = sitk.ReadImage(str(ct_file)), sitk.ReadImage(str(pet_file))
            assert ct.GetSize() == pet.GetSize()  # the network input: CT on the PET grid
            out = sitk.GetImageFromArray(self.make_mask(pet).astype(np.uint8))
            out.CopyInformation(pet)
            sitk.WriteImage(out, str(Path(output_dir) / f"{name}.nii.gz"), True)


@pytest.fixture(scope="module")
def lesion_case():
    """Tiny phantom with lesions (seed 1: two lesions)."""
    from nnunetv2_petct.phantoms import make_phantom

    return make_phantom(1, "tiny", lesion_free=False)
