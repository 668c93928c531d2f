"""Write phantom cases in the native layouts of the public cohorts ("raw downloads"), so every
converter can be tested end to end and the demo can start from the same kind of folder a user
downloads (pure library: no nnunetv2 import).

Each writer is ``write_<cohort>_layout(cases, root, ...) -> Path`` (returns ``root``) and takes
:class:`~nnunetv2_petct.phantoms.PhantomCase` objects. The layouts (SPEC §2):

- :func:`write_autopet_layout`: ``PETCT_<hash>/<MM-DD-YYYY>-NA-PET-CT Ganzkoerper  primaer mit KM-<nr>/``
  with ``CT.nii.gz`` (CT grid), ``CTres.nii.gz`` (CT on the PET grid), ``PET.nii.gz`` (Bq/ml),
  ``SUV.nii.gz``, ``SEG.nii.gz``;
- :func:`write_autopet_nnunet_layout`: ``imagesTr/<fdg|psma>_<hash>_<MM-DD-YYYY>_000{0,1}.nii.gz``
  (CTres, SUV) and ``labelsTr/``;
- :func:`write_deep_psma_layout`: ``train_XXXX/FDG/{CT,PET,TTB}.nii.gz, threshold.json,
  totseg_24.nii.gz, rigid.tfm`` plus a ``PSMA/`` sibling;
- :func:`write_spade_layout`: ``<patient>/<scan>/{pet.npy,ct.npy}`` on the PET grid, no geometry;
  optionally one extra scan under a known-bad SPADE id;
- :func:`write_vimed_layout`: our stand-in for the unconfirmed ViMed-PET layout: ``<study>/pet.npy``
  (float32 "counts" = SUV x ``counts_per_suv``), ``ct.npy`` (uint16 = HU + ``ct_offset``) and
  ``meta.json`` (spacing, storage conventions).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# Bq/ml per SUV unit for the phantom PET.nii.gz: injected dose / body weight = 350 MBq / 75 kg
# (decay ignored: the file only has to be in plausible Bq/ml units, the converter reads SUV.nii.gz).
BQML_PER_SUV = 350e6 / 75e3
SPADE_KNOWN_BAD_EXAMPLE = ("LDca4f40", "LDca5687")


def _write(img, path: Path) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _mdy(study_date: str) -> str:
    """``YYYYMMDD`` -> ``MM-DD-YYYY`` (TCIA folder-name style)."""
    d = str(study_date)
    if not re.fullmatch(r"\d{8}", d):
        raise ValueError(f"study_date must be YYYYMMDD, got {study_date!r}")
    return f"{d[4:6]}-{d[6:8]}-{d[0:4]}"


def autopet_patient_key(patient_id: str) -> str:
    """The 10-hex-digit AutoPET-style patient hash of a phantom patient id (the id itself when it is
    already 10 lowercase hex digits, else the first 10 hex digits of its SHA-1)."""
    if re.fullmatch(r"[0-9a-f]{10}", patient_id):
        return patient_id
    return hashlib.sha1(patient_id.encode()).hexdigest()[:10]


def autopet_ids(case) -> dict[str, str]:
    """Names a phantom case gets in the AutoPET layouts: ``patient_folder``, ``study_folder``,
    ``case_id`` (the autoPET III release id, also the id the converters give it) and ``patient_id``."""
    key = autopet_patient_key(case.patient_id)
    mdy = _mdy(case.study_date)
    nr = zlib.crc32(case.case_id.encode()) % 100000
    return {
        "patient_folder": f"PETCT_{key}",
        "study_folder": f"{mdy}-NA-PET-CT Ganzkoerper  primaer mit KM-{nr:05d}",
        "case_id": f"fdg_{key}_{mdy}",
        "patient_id": f"PETCT_{key}",
    }


def write_autopet_layout(cases: Iterable, root: Path) -> Path:
    """The per-study NIfTI release of AutoPET FDG-PET-CT-Lesions (see the module docstring)."""
    import SimpleITK as sitk

    root = Path(root)
    for case in cases:
        ids = autopet_ids(case)
        d = root / ids["patient_folder"] / ids["study_folder"]
        _write(case.ct, d / "CT.nii.gz")
        _write(case.ct_on_pet_grid(), d / "CTres.nii.gz")
        _write(case.pet, d / "SUV.nii.gz")
        _write(sitk.Cast(case.pet, sitk.sitkFloat32) * BQML_PER_SUV, d / "PET.nii.gz")
        _write(case.label, d / "SEG.nii.gz")
    return root


def write_autopet_nnunet_layout(cases: Iterable, root: Path, psma_case_ids: Sequence[str] = ()) -> Path:
    """The autoPET III/IV nnU-Net release; cases whose ``case_id`` is in ``psma_case_ids`` are written
    as ``psma_*`` cases (to test that they are left out by default)."""
    root = Path(root)
    psma = set(psma_case_ids)
    n = 0
    for case in cases:
        ids = autopet_ids(case)
        rid = ids["case_id"] if case.case_id not in psma else "psma_" + ids["case_id"][len("fdg_"):]
        _write(case.ct_on_pet_grid(), root / "imagesTr" / f"{rid}_0000.nii.gz")
        _write(case.pet, root / "imagesTr" / f"{rid}_0001.nii.gz")
        _write(case.label, root / "labelsTr" / f"{rid}.nii.gz")
        n += 1
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "tumor": 1},
        "numTraining": n, "file_ending": ".nii.gz"}, indent=2))
    return root


def write_deep_psma_layout(cases: Iterable, root: Path, suv_threshold: float = 3.0) -> Path:
    """DEEP-PSMA: case i (0-based) goes to ``train_{i+1:04d}/FDG/``; ``PSMA/`` gets a copy of the PET
    and CT (a stand-in for the PSMA study the converter must ignore)."""
    import SimpleITK as sitk

    root = Path(root)
    for i, case in enumerate(cases):
        d = root / f"train_{i + 1:04d}"
        fdg = d / "FDG"
        _write(case.ct, fdg / "CT.nii.gz")
        _write(case.pet, fdg / "PET.nii.gz")
        _write(case.label, fdg / "TTB.nii.gz")
        if case.organs is not None:
            _write(case.organs, fdg / "totseg_24.nii.gz")
        (fdg / "threshold.json").write_text(json.dumps({"suv_threshold": suv_threshold}))
        sitk.WriteTransform(sitk.Euler3DTransform(), str(fdg / "rigid.tfm"))
        _write(case.pet, d / "PSMA" / "PET.nii.gz")
        _write(case.ct, d / "PSMA" / "CT.nii.gz")
        _write(case.label, d / "PSMA" / "TTB.nii.gz")
    return root


def spade_ids(case) -> tuple[str, str]:
    """(patient folder, scan folder) of a phantom case in the SPADE layout."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9]+", "", s)  # noqa: E731
    return clean(case.patient_id), clean(case.case_id)


def write_spade_layout(cases: Sequence, root: Path, include_known_bad: bool = True) -> Path:
    """SPADE: ``<patient>/<scan>/pet.npy`` (float32 SUV) and ``ct.npy`` (int16 HU), both (z, y, x) on
    the PET grid, no geometry. With ``include_known_bad`` the first case is also written under the
    known-bad id ``LDca4f40/LDca5687`` (the converter must exclude it)."""
    import SimpleITK as sitk

    root = Path(root)
    for i, case in enumerate(cases):
        pet = sitk.GetArrayFromImage(case.pet).astype(np.float32)
        ct = sitk.GetArrayFromImage(case.ct_on_pet_grid()).astype(np.int16)
        targets = [spade_ids(case)]
        if include_known_bad and i == 0:
            targets.append(SPADE_KNOWN_BAD_EXAMPLE)
        for patient, scan in targets:
            d = root / patient / scan
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / "pet.npy", pet)
            np.save(d / "ct.npy", ct)
    return root


def write_vimed_layout(cases: Iterable, root: Path, ct_offset: int = 1024, counts_per_suv: float = 1000.0) -> Path:
    """A ViMed-PET-like layout (ours; the real one is unconfirmed): ``<study>/pet.npy`` float32
    counts (SUV x ``counts_per_suv``), ``ct.npy`` uint16 (HU + ``ct_offset``, clipped to 0..65535),
    ``meta.json``; arrays (z, y, x) on the PET grid. Convert with
    ``--spacing <PET spacing> --ct-offset -<ct_offset>``."""
    import SimpleITK as sitk

    root = Path(root)
    for case in cases:
        d = root / re.sub(r"[^A-Za-z0-9_-]+", "_", case.case_id)
        d.mkdir(parents=True, exist_ok=True)
        pet = sitk.GetArrayFromImage(case.pet).astype(np.float32) * np.float32(counts_per_suv)
        ct = sitk.GetArrayFromImage(case.ct_on_pet_grid()).astype(np.int32) + int(ct_offset)
        np.save(d / "pet.npy", pet)
        np.save(d / "ct.npy", np.clip(ct, 0, 65535).astype(np.uint16))
        (d / "meta.json").write_text(json.dumps({
            "study_id": case.case_id, "patient_id": case.patient_id, "study_date": case.study_date,
            "spacing_mm_zyx": [float(s) for s in reversed(case.pet.GetSpacing())],
            "ct_storage": f"uint16, HU + {int(ct_offset)}", "pet_storage": f"float32 counts, {counts_per_suv:g} per SUV",
        }, indent=2))
    return root
