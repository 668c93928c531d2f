"""SPADE (Stanford): ``<root>/<patient>/<scan>/{pet.npy, ct.npy}``, unlabeled.

No spacing, orientation or units are stored. What the converter assumes (and writes into every
manifest record):

- spacing (z, y, x) = 3.0 x 3.5 x 3.5 mm, the dataset authors' assumption (``--spacing`` overrides);
- the arrays are (z, y, x) (``--array-axes`` overrides), origin 0, identity direction;
- CT in HU; PET units unknown (``--pet-units`` sets what is recorded);
- CT and PET arrays share one grid (a case whose arrays differ in shape fails).

The 11 scans the authors list as bad are excluded, plus any ``patient/scan`` (or case id) listed in
an exclusion file.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from nnunetv2_petct.conversion.arrays import array_to_image, load_array
from nnunetv2_petct.conversion.core import (
    BadInputError,
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    sanitize_id,
    walk_files,
)
from nnunetv2_petct.io import read_case_list

DEFAULT_SPACING_MM = (3.0, 3.5, 3.5)
KNOWN_BAD_SCANS = (
    "LDca4f40/LDca5687", "LDca56d5/LDca5e13", "LDca4eed/LDca54ed", "LDca519f/LDca5602",
    "LDca56da/LDca5d8b", "LDca58c7/LDca5c77", "LDca58c3/LDca5c6f", "LDca4f3f/LDca5507",
    "LDca58c2/LDca5c6e", "LDca5163/LDca5581", "LDca56d2/LDca5d2b",
)


def spade_case_id(patient: str, scan: str) -> str:
    return f"{sanitize_id(patient)}_{sanitize_id(scan)}"


def load_spade_scan(scan_dir: str, spacing_mm: Sequence[float], spacing_source: str, pet_units: str,
                    array_axes: str = "zyx") -> LoadedCase:
    """Load ``pet.npy`` and ``ct.npy`` of one scan onto one assumed grid.

    Raises:
        ConversionError: a file missing or unreadable, not 3D, or CT and PET shapes differ.
    """
    d = Path(scan_dir)
    for name in ("pet.npy", "ct.npy"):
        if not (d / name).is_file():
            raise ConversionError(f"{name} missing in {d}")
    pet = load_array(d / "pet.npy")
    ct = load_array(d / "ct.npy")
    if np.shape(pet) != np.shape(ct):
        raise ConversionError(f"pet.npy {np.shape(pet)} and ct.npy {np.shape(ct)} differ in shape; without "
                              f"geometry they cannot be aligned")
    pet_img = array_to_image(pet, spacing_mm, array_axes, np.float32)
    ct_img = array_to_image(ct, spacing_mm, array_axes, np.float32)
    sp = " x ".join(f"{s:g}" for s in spacing_mm)
    return LoadedCase(ct=ct_img, pet=pet_img, label=None, meta={
        "pet_units": pet_units, "ct_units": "HU", "tracer": "FDG",
        "source_files": {"ct": "ct.npy", "pet": "pet.npy"},
        "assumptions": [
            f"spacing (z,y,x) = {sp} mm ({spacing_source}; not stored in the source)",
            f"array axes stored as {array_axes}; origin (0,0,0) and identity direction (no orientation stored)",
            "CT assumed in HU", f"PET units: {pet_units}",
            "CT and PET assumed on the same grid (same array shape)",
        ],
        "spacing_source": spacing_source,
    })


def discover_spade(source: Path, spacing: Sequence[float] | None = None, pet_units: str = "unknown",
                   exclude: Path | None = None, array_axes: str = "zyx") -> Discovery:
    """Scans under ``source`` (``<patient>/<scan>/`` folders holding ``pet.npy`` or ``ct.npy``).

    Args:
        spacing: (z, y, x) mm; default the authors' 3 x 3.5 x 3.5.
        pet_units: recorded PET units (default ``"unknown"``).
        exclude: text file of ``patient/scan`` pairs or case ids to leave out (on top of the 11
            known-bad scans).
        array_axes: axis order of the stored arrays.

    Raises:
        LayoutError: no scan folder found. BadInputError: bad spacing or exclusion file.
    """
    root = Path(source)
    if spacing is None:
        spacing_mm, spacing_source = DEFAULT_SPACING_MM, "the SPADE authors' assumption"
    else:
        spacing_mm, spacing_source = tuple(float(s) for s in spacing), "given by the user"
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise BadInputError(f"spacing must be three positive numbers (z y x), got {spacing}")
    scan_dirs = sorted({p.parent for p in walk_files(root) if p.name in ("pet.npy", "ct.npy")})
    if not scan_dirs:
        raise LayoutError(f"no SPADE scan (<patient>/<scan>/pet.npy, ct.npy) under {root}. Found: {describe_tree(root)}")
    user_excl = set(read_case_list(exclude)) if exclude else set()
    known_bad = set(KNOWN_BAD_SCANS)
    sources, excluded = [], []
    for d in scan_dirs:
        patient, scan = d.parent.name, d.name
        pair = f"{patient}/{scan}"
        case_id = spade_case_id(patient, scan)
        if pair in known_bad:
            excluded.append({"case_id": case_id, "source_path": str(d), "reason": "known-bad SPADE scan (SPEC §2)"})
            continue
        if pair in user_excl or case_id in user_excl or scan in user_excl:
            excluded.append({"case_id": case_id, "source_path": str(d), "reason": f"listed in {exclude}"})
            continue
        sources.append(CaseSource(
            case_id=case_id, patient_id=sanitize_id(patient), cohort="spade", source_path=str(d),
            load=partial(load_spade_scan, str(d), spacing_mm, spacing_source, pet_units, array_axes),
            info={"patient": patient, "scan": scan},
        ))
    return Discovery(sources=sources, labeled=False, pet_units=pet_units, excluded=excluded)
