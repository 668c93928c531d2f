"""The autoPET IV (Task 1) container layout: one study in, one mask out (``nnUNetv2_petct_predict --autopet-iv``).

Facts of the challenge's interface (lab-midas/autoPETCTIV, Task 1 baselines):

- input: ``<in>/images/ct/<uuid>.mha`` (CT, HU, on the PET grid), ``<in>/images/pet/<uuid>.mha`` (PET in
  SUVbw) and ``<in>/lesion-clicks.json`` (any ``*.json`` at the top level), grand-challenge's
  "Multiple points" format ``{"points": [{"name": "tumor"|"background", "point": [x, y, z]}, ...]}`` with
  voxel indices of the PET image (up to 10 of each kind); the plain ``{"tumor": [...], "background": [...]}``
  format is accepted too;
- output: ``<out>/images/tumor-lesion-segmentation/<uuid>.mha`` (uint8 mask, the PET's geometry), where
  ``<uuid>`` is the CT file's name without ``.mha``, as the challenge's baselines name it.

A CT on another grid than the PET is resampled onto the PET grid (linear, -1024 HU outside), as the
converters do. No click file means no clicks (the model's non-interactive result).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from nnunetv2_petct.interactive.clicks import ClickFileError, Clicks, read_clicks

logger = logging.getLogger(__name__)

OUTPUT_INTERFACE = "images/tumor-lesion-segmentation"
CLICK_FILE = "lesion-clicks.json"


class ContainerLayoutError(ValueError):
    """The input folder is not the autoPET IV container layout; the message says what is missing."""


def find_container_inputs(input_dir: str | os.PathLike) -> tuple[Path, Path, Path | None, str]:
    """``(ct_file, pet_file, click_file or None, uuid)`` of an autoPET IV input folder.

    Raises:
        ContainerLayoutError: no ``images/ct`` / ``images/pet`` folder, not exactly one ``.mha`` in each,
            several click files.
    """
    root = Path(input_dir)
    found = {}
    for kind in ("ct", "pet"):
        folder = root / "images" / kind
        files = sorted(folder.glob("*.mha")) if folder.is_dir() else []
        if len(files) != 1:
            what = "no folder" if not folder.is_dir() else f"{len(files)} .mha files"
            raise ContainerLayoutError(f"{folder}: {what}; the autoPET IV layout has exactly one "
                                       f"images/{kind}/<uuid>.mha (see --help)")
        found[kind] = files[0]
    click = root / CLICK_FILE
    if not click.is_file():
        others = sorted(root.glob("*.json"))
        if len(others) > 1:
            raise ContainerLayoutError(f"{root}: no {CLICK_FILE} and several .json files "
                                       f"({', '.join(p.name for p in others)}): which holds the clicks?")
        click = others[0] if others else None
    return found["ct"], found["pet"], click, found["ct"].name[: -len(".mha")]


def _ct_on_pet_grid(ct_file: Path, pet_file: Path, tmp_dir: Path) -> Path:
    import SimpleITK as sitk

    ct, pet = sitk.ReadImage(str(ct_file)), sitk.ReadImage(str(pet_file))
    for img, f in ((ct, ct_file), (pet, pet_file)):
        if img.GetDimension() != 3:
            raise ContainerLayoutError(f"{f}: {img.GetDimension()}D image, a 3D volume is needed")
    same = (ct.GetSize() == pet.GetSize()
            and all(abs(a - b) < 1e-4 for a, b in zip(ct.GetSpacing(), pet.GetSpacing()))
            and all(abs(a - b) < 1e-3 for a, b in zip(ct.GetOrigin(), pet.GetOrigin()))
            and all(abs(a - b) < 1e-5 for a, b in zip(ct.GetDirection(), pet.GetDirection())))
    if same:
        return ct_file
    logger.info("CT %s is not on the PET grid: resampled onto it (linear, -1024 HU outside)", ct_file)
    out = tmp_dir / "ct_on_pet.nii.gz"
    sitk.WriteImage(sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32), str(out))
    return out


def predict_autopet_iv(input_dir: str | os.PathLike, output_dir: str | os.PathLike, predictor) -> Path:
    """Predict the container's study with its clicks and write ``<out>/images/tumor-lesion-segmentation/<uuid>.mha``.

    Args:
        predictor: an :class:`~nnunetv2_petct.nnunet.interactive_predictor.InteractiveLesionPredictor`.

    Returns:
        The written mask file.

    Raises:
        ContainerLayoutError: the input layout (see :func:`find_container_inputs`).
        ClickFileError: a bad click file, or a click outside the PET image (the click named).
    """
    from nnunetv2_petct.io import probe_writable_dir

    ct_file, pet_file, click_file, uuid = find_container_inputs(input_dir)
    clicks = read_clicks(click_file) if click_file is not None else Clicks()
    out_dir = probe_writable_dir(Path(output_dir) / OUTPUT_INTERFACE)
    with tempfile.TemporaryDirectory(prefix="autopet_iv_") as tmp:
        ct_input = _ct_on_pet_grid(ct_file, pet_file, Path(tmp))
        session = predictor.session([ct_input, pet_file])
        mask = session.predict(clicks)
        out = session.write(mask, out_dir / f"{uuid}.mha")
    logger.info("%s: %d tumor / %d background clicks -> %s", uuid, clicks.n_tumor, clicks.n_background, out)
    return out


__all__ = ["CLICK_FILE", "ClickFileError", "ContainerLayoutError", "OUTPUT_INTERFACE", "find_container_inputs",
           "predict_autopet_iv"]
