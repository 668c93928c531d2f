"""DEEP-PSMA, FDG part: ``<root>/train_XXXX/FDG/{CT,PET,TTB}.nii.gz`` (+ ``threshold.json``,
``totseg_24.nii.gz``, ``rigid.tfm``).

PET is in SUV; the label is the total tumour burden mask ``TTB.nii.gz``. The ``PSMA/`` sibling of
each ``FDG/`` folder is ignored, and so are ``totseg_24.nii.gz`` (TotalSegmentator organs) and
``rigid.tfm`` (the PSMA<->FDG registration). ``threshold.json`` (the SUV threshold the challenge
used to draw TTB) is copied into the manifest record.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from nnunetv2_petct.conversion.core import (
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    read_image,
    sanitize_id,
    walk_files,
)

FDG_FILES = ("CT.nii.gz", "PET.nii.gz", "TTB.nii.gz")


def load_deep_psma_case(fdg_dir: str) -> LoadedCase:
    """Load ``<case>/FDG/``.

    Raises:
        ConversionError: CT, PET or TTB missing or unreadable; unreadable ``threshold.json``.
    """
    d = Path(fdg_dir)
    for name in FDG_FILES:
        if not (d / name).is_file():
            raise ConversionError(f"{name} missing in {d}")
    meta = {
        "pet_units": "SUVbw", "ct_units": "HU", "tracer": "FDG", "label_source": "TTB.nii.gz",
        "source_files": {"ct": "CT.nii.gz", "pet": "PET.nii.gz", "label": "TTB.nii.gz"},
        "assumptions": ["PET.nii.gz is in SUV (DEEP-PSMA documentation)"],
    }
    thr = d / "threshold.json"
    if thr.is_file():
        try:
            meta["threshold"] = json.loads(thr.read_text())
        except (OSError, ValueError) as e:
            raise ConversionError(f"cannot read {thr}: {e}") from None
        meta["source_files"]["threshold"] = "threshold.json"
    return LoadedCase(ct=read_image(d / "CT.nii.gz"), pet=read_image(d / "PET.nii.gz"),
                      label=read_image(d / "TTB.nii.gz"), meta=meta)


def discover_deep_psma(source: Path) -> Discovery:
    """Cases under ``source``: every folder named ``FDG`` (any depth) holding CT/PET/TTB files.

    The case id is the name of the FDG folder's parent (``train_0001``); each case is its own
    patient (DEEP-PSMA has one FDG study per patient).

    Raises:
        LayoutError: no ``*/FDG/`` folder with DEEP-PSMA files.
    """
    root = Path(source)
    fdg_dirs = sorted({p.parent for p in walk_files(root) if p.parent.name == "FDG" and p.name in FDG_FILES})
    if root.name == "FDG" and any((root / n).is_file() for n in FDG_FILES):
        fdg_dirs = [root]
    if not fdg_dirs:
        raise LayoutError(f"no DEEP-PSMA case (train_XXXX/FDG/{{CT,PET,TTB}}.nii.gz) under {root}. "
                          f"Found: {describe_tree(root)}")
    n_psma = sum(1 for d in fdg_dirs if (d.parent / "PSMA").is_dir())
    sources = []
    for d in fdg_dirs:
        case_id = sanitize_id(d.parent.name)
        sources.append(CaseSource(
            case_id=case_id, patient_id=case_id, cohort="deep-psma", source_path=str(d),
            load=partial(load_deep_psma_case, str(d)), info={"case_folder": d.parent.name},
        ))
    notes = [f"ignored {n_psma} PSMA/ folder(s) (FDG part only)"] if n_psma else []
    return Discovery(sources=sources, labeled=True, pet_units="SUVbw", notes=notes)
