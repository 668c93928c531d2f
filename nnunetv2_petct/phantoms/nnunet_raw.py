"""Write phantom cases as an nnU-Net v2 raw dataset (pure library: no nnunetv2 import)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_petct.conversion.geometry import body_mask, resample_to_reference, same_geometry
from nnunetv2_petct.phantoms.phantom import PhantomCase

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL_NAMES = {"0": "CT", "1": "PET"}
CT_FILL_HU = -1024.0


def write_nnunet_raw_dataset(
    cases: Sequence[PhantomCase],
    raw_root: Path,
    dataset_id: int,
    name: str,
    channel_names: dict | None = None,
    overwrite: bool = False,
    labels: bool = True,
) -> Path:
    """Write ``raw_root/DatasetXXX_<name>/`` in nnU-Net v2 raw format.

    Per case: ``imagesTr/<case_id>_0000.nii.gz`` = CT resampled onto the PET grid (linear,
    fill -1024 HU, int16), ``imagesTr/<case_id>_0001.nii.gz`` = PET (SUV, float32, unchanged),
    ``labelsTr/<case_id>.nii.gz`` (uint8). Also ``dataset.json`` and ``phantom_cases.json``
    (case_id, patient_id, study_date, seed, lesions; ignored by nnU-Net).

    Args:
        cases: phantom cases with unique ``case_id``.
        raw_root: nnU-Net raw folder (created if missing).
        dataset_id: 1..999.
        name: dataset name (no spaces or path separators).
        channel_names: dataset.json channel names; default ``{"0": "CT", "1": "PET"}`` (channel 0
            is always the CT file, channel 1 the PET file; only the names can change).
        overwrite: replace an existing ``DatasetXXX_<name>`` folder; otherwise refuse.
        labels: True: lesion labels, ``labels = {"background": 0, "lesion": 1}``. False (for
            unlabeled pretraining): body-mask pseudo-labels (largest component of CT > -500 HU on
            the PET grid, holes filled per slice), ``labels = {"background": 0, "body": 1}``.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: the folder exists and ``overwrite`` is False.
        ValueError: bad id/name/channel names, duplicate case ids, or no cases.
    """
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if not name or any(c in name for c in " /\\"):
        raise ValueError(f"invalid dataset name {name!r}")
    if len(cases) == 0:
        raise ValueError("no cases to write")
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    channel_names = dict(DEFAULT_CHANNEL_NAMES if channel_names is None else channel_names)
    if sorted(channel_names) != ["0", "1"]:
        raise ValueError(f"channel_names must have keys '0' (CT) and '1' (PET), got {channel_names}")

    out = Path(raw_root) / f"Dataset{int(dataset_id):03d}_{name}"
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
        shutil.rmtree(out)
    images_dir = out / "imagesTr"
    labels_dir = out / "labelsTr"
    images_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)

    manifest = []
    for case in cases:
        ct = case.ct_on_pet_grid(CT_FILL_HU)
        pet = sitk.Cast(case.pet, sitk.sitkFloat32)
        if labels:
            lab = sitk.Cast(case.label, sitk.sitkUInt8)
        else:
            mask = body_mask(sitk.GetArrayViewFromImage(ct), -500).astype(np.uint8)
            lab = sitk.GetImageFromArray(mask)
            lab.CopyInformation(pet)
        if not same_geometry(lab, pet):
            lab = resample_to_reference(lab, pet, "nearest", 0)
        sitk.WriteImage(ct, str(images_dir / f"{case.case_id}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(pet, str(images_dir / f"{case.case_id}_0001.nii.gz"), useCompression=True)
        sitk.WriteImage(lab, str(labels_dir / f"{case.case_id}.nii.gz"), useCompression=True)
        manifest.append({
            "case_id": case.case_id,
            "patient_id": case.patient_id,
            "study_date": case.study_date,
            "seed": case.seed,
            "lesions": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in les.items()} for les in case.lesions
            ],
        })

    dataset_json = {
        "channel_names": channel_names,
        "labels": {"background": 0, "lesion": 1} if labels else {"background": 0, "body": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": name,
        "description": "synthetic whole-body FDG PET/CT phantoms (nnunetv2_petct.phantoms); "
                       "channel 0 = CT (HU) on the PET grid, channel 1 = PET (SUVbw)",
    }
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (out / "phantom_cases.json").write_text(json.dumps(manifest, indent=2))
    logger.info("wrote %d case(s) to %s", len(cases), out)
    return out
