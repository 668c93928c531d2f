"""ViMed-PET (NeurIPS 2025): layout not confirmed, so everything that matters is an option.

A *study* is any folder (any depth) that holds exactly one PET file and one CT file, matched by
``pet_glob`` / ``ct_glob`` (case-insensitive shell patterns on file names; defaults ``*pet*`` and
``*ct*``, a file matching both counts as PET). Supported files: ``.npy``/``.npz`` arrays (no
geometry: ``spacing`` (z, y, x) is required and the axis order is ``array_axes``) and volumes with
headers (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``; geometry from the header, ``spacing``
is then ignored).

Units: the CT is stored in a non-standard integer range; HU = raw * ``ct_slope`` + ``ct_offset``
(e.g. ``ct_offset=-1024`` for HU + 1024 stored as uint16). A converted CT with no air (nothing
below -500 HU) fails with a hint about these options. PET units are recorded as ``pet_units``
(default ``"unknown"``; the cohort is said to hold raw counts). Unlabeled; each study is treated as
its own patient. JSON files next to the arrays are copied into the manifest record for audit.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from nnunetv2_petct.conversion.arrays import AXIS_ORDERS, array_to_image, file_kind, load_array, load_volume
from nnunetv2_petct.conversion.core import (
    BadInputError,
    CaseSource,
    ConversionError,
    Discovery,
    LayoutError,
    LoadedCase,
    describe_tree,
    sanitize_id,
    walk_tree,
)
from nnunetv2_petct.io import read_case_list

DEFAULT_PET_GLOB = "*pet*"
DEFAULT_CT_GLOB = "*ct*"


def _match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name.lower(), pattern.lower())


def _sidecars(d: Path) -> dict:
    out = {}
    for p in sorted(d.glob("*.json")):
        if p.stat().st_size <= 64 * 1024:
            try:
                out[p.name] = json.loads(p.read_text())
            except ValueError:
                out[p.name] = "unreadable JSON"
    return out


def load_vimed_study(pet_path: str, ct_path: str, spacing_mm: Sequence[float] | None, pet_units: str,
                     ct_offset: float, ct_slope: float, array_axes: str) -> LoadedCase:
    """Load one study; CT converted to HU with ``raw * ct_slope + ct_offset``.

    Raises:
        ConversionError: unreadable file; arrays without ``spacing_mm``; arrays of different shapes;
            an array paired with a volume file.
    """
    kinds = {file_kind(pet_path), file_kind(ct_path)}
    assumptions = []
    if kinds == {"volume"}:
        pet, ct = load_volume(pet_path), load_volume(ct_path)
        geometry = "image headers"
    elif kinds == {"array"}:
        if spacing_mm is None:
            raise ConversionError("array input has no geometry: pass --spacing Z Y X (mm)")
        pet_arr, ct_arr = load_array(pet_path, "pet"), load_array(ct_path, "ct")
        if np.shape(pet_arr) != np.shape(ct_arr):
            raise ConversionError(f"PET {np.shape(pet_arr)} and CT {np.shape(ct_arr)} arrays differ in shape; "
                                  f"without geometry they cannot be aligned")
        pet = array_to_image(pet_arr, spacing_mm, array_axes, np.float32)
        ct = array_to_image(ct_arr, spacing_mm, array_axes, np.float32)
        sp = " x ".join(f"{s:g}" for s in spacing_mm)
        geometry = f"spacing (z,y,x) {sp} mm given by the user"
        assumptions += [f"spacing (z,y,x) = {sp} mm (given by the user; not stored in the source)",
                        f"array axes stored as {array_axes}; origin (0,0,0), identity direction",
                        "CT and PET assumed on the same grid (same array shape)"]
    else:
        raise ConversionError(f"cannot pair an array with a volume file: {pet_path}, {ct_path}")
    if ct_slope != 1.0 or ct_offset != 0.0:
        import SimpleITK as sitk

        ct = sitk.Cast(ct, sitk.sitkFloat32) * float(ct_slope) + float(ct_offset)
        assumptions.append(f"CT converted to HU as raw * {ct_slope:g} + {ct_offset:g}")
    else:
        assumptions.append("CT assumed in HU (no --ct-offset/--ct-slope given)")
    assumptions.append(f"PET units: {pet_units}")
    meta = {
        "pet_units": pet_units, "ct_units": "HU", "tracer": "FDG",
        "source_files": {"pet": Path(pet_path).name, "ct": Path(ct_path).name},
        "assumptions": assumptions, "geometry_source": geometry,
        "ct_raw_to_hu": {"slope": ct_slope, "offset": ct_offset},
    }
    side = _sidecars(Path(pet_path).parent)
    if side:
        meta["sidecar_json"] = side
    return LoadedCase(ct=ct, pet=pet, label=None, meta=meta)


def discover_vimed(source: Path, pet_glob: str | None = None, ct_glob: str | None = None,
                   spacing: Sequence[float] | None = None, pet_units: str = "unknown", ct_offset: float = 0.0,
                   ct_slope: float = 1.0, array_axes: str = "zyx", exclude: Path | None = None) -> Discovery:
    """Studies under ``source`` (see the module docstring for the matching rules).

    A folder with several PET (or CT) candidates becomes a failing case that names them, so the
    user can narrow the patterns; a folder with only one of the two is reported the same way.

    Raises:
        LayoutError: no file under ``source`` matches the patterns with a supported extension (the
            message lists what is there). BadInputError: bad spacing or axis order; array input
            without ``spacing``.
    """
    root = Path(source)
    pet_glob = pet_glob or DEFAULT_PET_GLOB
    ct_glob = ct_glob or DEFAULT_CT_GLOB
    if array_axes not in AXIS_ORDERS:
        raise BadInputError(f"array axes must be one of {AXIS_ORDERS}, got {array_axes!r}")
    spacing_mm = None
    if spacing is not None:
        spacing_mm = tuple(float(s) for s in spacing)
        if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
            raise BadInputError(f"spacing must be three positive numbers (z y x), got {spacing}")
    user_excl = set(read_case_list(exclude)) if exclude else set()

    studies: list[tuple[Path, list[str], list[str]]] = []
    for dirpath, filenames in walk_tree(root):  # folder links followed, loops cut
        supported = sorted(f for f in filenames if file_kind(f))
        pets = [f for f in supported if _match(f, pet_glob)]
        cts = [f for f in supported if _match(f, ct_glob) and f not in pets]
        if pets or cts:
            studies.append((Path(dirpath), pets, cts))
    if not studies:
        raise LayoutError(
            f"no ViMed-PET study under {root}: no file matching --pet-glob {pet_glob!r} or --ct-glob {ct_glob!r} with a "
            f"supported extension (.npy, .npz, .nii.gz, .nii, .nrrd, .mha, .mhd). Found: {describe_tree(root)}. "
            f"Set --pet-glob/--ct-glob to the file name patterns of the release."
        )
    sources, excluded = [], []
    need_spacing = []
    for d, pets, cts in studies:
        rel = d.relative_to(root).as_posix()
        case_id = sanitize_id(rel if rel != "." else root.name)
        if rel in user_excl or case_id in user_excl:
            excluded.append({"case_id": case_id, "source_path": str(d), "reason": f"listed in {exclude}"})
            continue
        if len(pets) == 1 and len(cts) == 1:
            if file_kind(pets[0]) == "array" and spacing_mm is None:
                need_spacing.append(str(d / pets[0]))
            load = partial(load_vimed_study, str(d / pets[0]), str(d / cts[0]), spacing_mm, pet_units,
                           float(ct_offset), float(ct_slope), array_axes)
        else:
            reason = (f"expected one PET and one CT file in {d}; found PET candidates {pets or 'none'} "
                      f"(--pet-glob {pet_glob!r}) and CT candidates {cts or 'none'} (--ct-glob {ct_glob!r})")
            load = partial(_fail, reason)
        sources.append(CaseSource(case_id=case_id, patient_id=case_id, cohort="vimed-pet", source_path=str(d),
                                  load=load, info={"study_folder": rel, "pet_file": pets, "ct_file": cts},
                                  files=tuple(str(d / f) for f in pets + cts)))
    if need_spacing:
        raise BadInputError(
            f"{len(need_spacing)} study(ies) are stored as arrays without geometry (e.g. {need_spacing[0]}): "
            f"pass --spacing Z Y X (mm)"
        )
    notes = ["each ViMed-PET study is treated as its own patient (no patient id in the layout)"]
    return Discovery(sources=sources, labeled=False, pet_units=pet_units, excluded=excluded, notes=notes)


def _fail(reason: str) -> LoadedCase:
    raise ConversionError(reason)
