"""The conversion framework shared by every cohort (pure library: no nnunetv2 import).

A cohort module *discovers* studies and returns :class:`CaseSource` objects; each one knows how to
load its study into a :class:`LoadedCase` (CT, PET, optional label as SimpleITK images, plus
metadata). :func:`convert_cases` does the rest, the same way for every cohort (SPEC §3):

1. CT resampled onto the PET grid (linear, fill -1024 HU) unless it is already on it; stored as
   int16 HU. PET kept on its own grid, stored as float32. Labels nearest-neighbour onto the PET
   grid, binarized (> 0), uint8.
2. Sanity checks; a failing case is reported with its reason and the others go on: unreadable file,
   empty volume, non-finite voxels, CT and PET that do not overlap, a CT that is not in HU.
3. Optional crop to the body (CT > -500 HU, largest component, margin), recorded in the manifest.
   Labeled cohorts are not cropped by default so predictions map back onto the original PET grid.
4. Files written atomically: first into ``<dataset>/.partial/`` (same file system), then moved into
   place with :func:`os.replace`; the per-case manifest record is written last and marks the case as
   finished. A killed run leaves no half-written file under ``imagesTr``/``labelsTr`` and the case
   is redone on the next run; finished cases are skipped unless ``overwrite``.
5. At the end ``manifest.jsonl`` (one JSON record per case) and ``dataset.json`` are rebuilt from
   what is on disk, so ``numTraining`` always matches the files.

Work runs in worker processes (``spawn`` start method, so it is safe with threads and on macOS);
the ``load`` callables of :class:`CaseSource` must therefore be picklable (module-level functions or
:func:`functools.partial` of them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_petct.conversion.channels import NORMALIZATION_SCHEMES
from nnunetv2_petct.conversion.geometry import (
    body_mask,
    crop_to_mask_bbox,
    geometry_record,
    overlap_fraction,
    overlap_fractions_xyz,
    resample_to_reference,
    same_geometry,
)
from nnunetv2_petct.io import (
    IncompleteFileError,
    atomic_write_many,
    check_nifti_gz_complete,
    run_parallel,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

CT_FILL_HU = -1024.0
BODY_THRESHOLD_HU = -500.0
FILE_ENDING = ".nii.gz"
PARTIAL_DIR = ".partial"
RECORDS_DIR = "manifest"
MANIFEST_FILE = "manifest.jsonl"
FAILURES_FILE = "conversion_failures.json"

# nnU-Net 2.8.1 picks the normalization of a channel from its name, case-insensitively
# (nnunetv2/preprocessing/normalization/map_channel_name_to_normalization.py): "ct" ->
# CTNormalization (dataset-wide percentile clip + z-score with foreground statistics), "nonorm",
# "zscore", "rescale_to_0_1", "rgb_to_0_1" -> their schemes, anything else -> ZScoreNormalization
# (per image). The only names that give CT-style *global* normalization are the case variants of
# "ct", so "global" PET normalization names the PET channel "ct" (lower case, to tell it apart from
# the real CT channel "CT"), and "zscore-both" names the CT channel "CT_zscore" (a CT name for this
# package, channels.channel_kind, but not "ct" for nnU-Net: per-image z-score, no clipping);
# dataset.json["petct_normalization"] records the choice explicitly. The keys are the historical values
# of ConversionOptions.pet_normalization; channels.NORMALIZATION_SCHEMES names the choices for users
# (nnunet / pet-global / zscore-both), PET_NORMALIZATION_BY_CHOICE maps between the two.
PET_NORMALIZATION_CHANNEL_NAMES = {
    "zscore": {"0": "CT", "1": "PET"},
    "global": {"0": "CT", "1": "ct"},
    "zscore-both": {"0": "CT_zscore", "1": "PET"},
}
PET_NORMALIZATION_BY_CHOICE = {"nnunet": "zscore", "pet-global": "global", "zscore-both": "zscore-both"}
CHOICE_BY_PET_NORMALIZATION = {v: k for k, v in PET_NORMALIZATION_BY_CHOICE.items()}
PET_NORMALIZATION_SCHEMES = {
    value: dict(zip(("0", "1"), NORMALIZATION_SCHEMES[choice])) for choice, value in PET_NORMALIZATION_BY_CHOICE.items()
}


class BadInputError(ValueError):
    """Bad user input (missing folder, unknown cohort, layout mismatch): the CLI exits with code 2."""


class LayoutError(BadInputError):
    """The source folder does not look like the cohort's layout; the message lists what was found."""


class ConversionError(RuntimeError):
    """One case cannot be converted; the message is the reason shown to the user."""


@dataclass
class LoadedCase:
    """One study in memory, before harmonization.

    Attributes:
        ct: CT in HU on any grid that overlaps the PET (SimpleITK image, any pixel type).
        pet: PET on its native grid; units in ``meta["pet_units"]`` (``"SUVbw"`` where known).
        label: lesion mask (any grid; resampled nearest-neighbour onto the PET grid), or None.
        meta: JSON-serializable facts merged into the manifest record: ``pet_units``, ``ct_units``,
            ``source_files`` (dict), ``assumptions`` (list of str), ``warnings`` (list of str),
            ``tracer`` and anything cohort specific.
    """

    ct: Any
    pet: Any
    label: Any = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CaseSource:
    """One study of a cohort and how to load it.

    Attributes:
        case_id: nnU-Net case identifier (letters, digits, ``_``, ``-``, ``.``).
        patient_id: patient identifier (splits keep a patient's studies together).
        cohort: cohort name (``"autopet"``, ``"spade"``, ...).
        source_path: folder or file the study comes from (recorded in the manifest).
        load: picklable callable returning a :class:`LoadedCase`; raises :class:`ConversionError`
            (or any exception) for a bad case.
        info: JSON-serializable identifiers recorded as ``source_keys`` (study date, folder names).
    """

    case_id: str
    patient_id: str
    cohort: str
    source_path: str
    load: Callable[[], LoadedCase]
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Discovery:
    """What a cohort's discover function found.

    Attributes:
        sources: the cases to convert.
        excluded: cases left out on purpose (known-bad scans, user exclusion list, other tracers),
            each ``{"case_id": ..., "source_path": ..., "reason": ...}``.
        notes: layout-level remarks shown to the user (e.g. ignored ``PSMA/`` folders).
        labeled: whether the cases carry lesion labels.
        pet_units: units of the PET channel for ``dataset.json`` (``"SUVbw"``, ``"unknown"``, ...).
    """

    sources: list[CaseSource]
    labeled: bool
    pet_units: str = "SUVbw"
    excluded: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConversionOptions:
    """How cases are harmonized.

    Attributes:
        labeled: lesion labels are expected (a case without one fails); otherwise a body mask
            (CT > ``body_threshold_hu``) is written as pseudo-label so nnU-Net planning works.
        crop_to_body: crop CT, PET and label to the body bounding box plus ``body_margin_vox``.
        min_overlap_fraction: a case fails when the CT covers less than this fraction of the PET's
            axial (z) extent (no overlap at all always fails).
        pet_normalization: ``"zscore"`` (nnU-Net's defaults: CT clip + dataset-wide z-score, PET per-image
            z-score), ``"global"`` (CT-style dataset-wide normalization for PET too) or ``"zscore-both"``
            (both channels z-scored per image, as the paper's authors); only affects the channel names in
            ``dataset.json`` (see :data:`PET_NORMALIZATION_CHANNEL_NAMES`).
    """

    labeled: bool
    crop_to_body: bool = False
    body_margin_vox: int = 3
    body_threshold_hu: float = BODY_THRESHOLD_HU
    min_overlap_fraction: float = 0.5
    pet_normalization: str = "zscore"


@dataclass
class CaseResult:
    case_id: str
    status: str  # "converted" | "existing" | "failed"
    source_path: str = ""
    reason: str = ""
    seconds: float = 0.0


@dataclass
class ConversionReport:
    """Outcome of :func:`convert_cases` (also written as ``conversion_report.json``)."""

    dataset_dir: Path
    converted: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    num_training: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.dataset_dir}: {len(self.converted)} converted, {len(self.existing)} already done, "
            f"{len(self.failed)} failed, {len(self.excluded)} excluded; numTraining = {self.num_training} "
            f"({self.seconds:.1f} s)"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        for f in self.failed:
            lines.append(f"  FAILED {f['case_id']}: {f['reason']} [{f['source_path']}]")
        if self.excluded:
            by_reason: dict[str, int] = {}
            for e in self.excluded:
                by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + 1
            for reason, n in sorted(by_reason.items()):
                lines.append(f"  excluded {n}: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "dataset_dir": str(self.dataset_dir), "converted": self.converted, "existing": self.existing,
            "failed": self.failed, "excluded": self.excluded, "notes": self.notes,
            "num_training": self.num_training, "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------------------------- paths


def case_paths(dataset_dir: Path, case_id: str) -> dict[str, Path]:
    """Final paths of one case: ``ct``, ``pet``, ``label``, ``record`` (manifest record)."""
    d = Path(dataset_dir)
    return {
        "ct": d / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
        "pet": d / "imagesTr" / f"{case_id}_0001{FILE_ENDING}",
        "label": d / "labelsTr" / f"{case_id}{FILE_ENDING}",
        "record": d / RECORDS_DIR / f"{case_id}.json",
    }


def is_case_done(dataset_dir: Path, case_id: str) -> bool:
    """True when all files of the case and its manifest record (written last) exist."""
    return all(p.is_file() for p in case_paths(dataset_dir, case_id).values())


def _partial_dir(dataset_dir: Path) -> Path:
    # Temporary files live in <dataset>/.partial (same file system as the final place, so os.replace
    # is atomic) rather than next to the final file: nnU-Net lists every *.nii.gz in imagesTr, and a
    # leftover of a killed run must never look like a case.
    return Path(dataset_dir) / PARTIAL_DIR


def commit_images(dataset_dir: Path, images: Mapping[str, Any], final_paths: Mapping[str, Path]) -> None:
    """Write SimpleITK images through ``.partial/``, each verified and then moved into place
    (:func:`nnunetv2_petct.io.atomic_write`); all of them are written and verified before any is moved.

    Raises:
        WriteError: a file could not be written completely (disk full, permission); nothing was moved.
    """
    import SimpleITK as sitk

    keys = list(images)
    with atomic_write_many([final_paths[k] for k in keys], tmp_dir=_partial_dir(dataset_dir)) as tmps:
        for key, tmp in zip(keys, tmps):
            sitk.WriteImage(images[key], str(tmp), True)


def clean_partial(dataset_dir: Path) -> int:
    """Remove leftovers of killed runs (``.partial/``); returns how many files were removed."""
    tmp_dir = Path(dataset_dir) / PARTIAL_DIR
    if not tmp_dir.is_dir():
        return 0
    n = sum(1 for p in tmp_dir.iterdir() if p.is_file())
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return n


# ------------------------------------------------------------------------------------ harmonization


def _check_volume(img, what: str) -> None:
    if img.GetDimension() != 3:
        raise ConversionError(f"{what} is {img.GetDimension()}D, expected 3D")
    if min(img.GetSize()) == 0:
        raise ConversionError(f"{what} is empty (size {tuple(img.GetSize())})")


def harmonize(loaded: LoadedCase, options: ConversionOptions) -> tuple[dict, dict]:
    """Put CT, PET and label on the PET grid, check them, crop if asked.

    Returns ``(images, facts)``: ``images`` maps ``"ct"``, ``"pet"``, ``"label"`` to SimpleITK images
    (int16 HU, float32, uint8) on one grid; ``facts`` are manifest entries. Every statistic at the top
    level of ``facts`` describes the images as returned (= as written: after resampling and cropping):
    ``spacing_mm``/``shape_zyx``/``origin_mm_xyz``/``direction``, ``pet_max``/``pet_mean``/``pet_min``,
    ``ct_range_hu``/``ct_mean_hu`` (:func:`written_image_stats`), ``label`` foreground; the source images'
    grids and values are under ``source_values`` (``pet``: grid, ``max``, ``mean``; ``ct``: grid,
    ``range_hu`` on the CT's own grid).

    Partial CT coverage: ``ct_pet_z_overlap_fraction`` is the fraction of the PET's axial extent that
    the CT covers; below ``options.min_overlap_fraction`` the case fails with a message naming
    ``--min-overlap`` (and the value that would pass); above it the rest of the CT channel is filled
    with -1024 HU (air) and a warning says how much.

    Raises:
        ConversionError: empty or non-3D volume; non-finite PET/CT voxels; PET all zero; CT covering
            less than ``options.min_overlap_fraction`` of the PET's z extent; CT with no voxel below -500 HU
            (not in HU, e.g. an unset offset) or none above (no body); labeled cohort without a label;
            empty body mask when cropping or writing a body pseudo-label.
    """
    import SimpleITK as sitk

    pet, ct, label = loaded.pet, loaded.ct, loaded.label
    _check_volume(pet, "PET")
    _check_volume(ct, "CT")
    warnings = list(loaded.meta.get("warnings", []))
    # what the source looked like, before resampling and cropping (the top-level statistics describe
    # the written files)
    source_values: dict[str, Any] = {
        "pet": geometry_record(pet),
        "ct": {k: v for k, v in geometry_record(ct).items() if k in ("spacing_mm", "shape_zyx", "origin_mm_xyz")},
    }
    facts: dict[str, Any] = {"source_values": source_values}

    if pet.GetPixelID() != sitk.sitkFloat32:
        pet = sitk.Cast(pet, sitk.sitkFloat32)
    pet_arr = sitk.GetArrayViewFromImage(pet)
    n_bad = int(pet_arr.size - np.count_nonzero(np.isfinite(pet_arr)))
    if n_bad:
        raise ConversionError(f"PET has {n_bad} non-finite (NaN/inf) voxel(s)")
    pet_max = float(pet_arr.max())
    if pet_max <= 0:
        raise ConversionError(f"PET is empty (maximum {pet_max:g})")
    source_values["pet"].update(max=pet_max, mean=float(pet_arr.mean(dtype=np.float64)))
    if float(pet_arr.min()) < 0:
        warnings.append(f"PET has negative values (min {float(pet_arr.min()):g}); kept as is")

    # A PET field of view is often wider in-plane than the CT's (e.g. 815 vs 500 mm), with the body
    # inside both, so only the axial (z) coverage is held against min_overlap_fraction.
    fx, fy, fz = overlap_fractions_xyz(ct, pet)
    facts["ct_pet_overlap_fraction"] = round(fx * fy * fz, 4)
    facts["ct_pet_z_overlap_fraction"] = round(fz, 4)
    if fx * fy * fz <= 0:
        raise ConversionError("CT and PET do not overlap in physical space (check the image headers)")
    if fz < options.min_overlap_fraction:
        # suggest the largest threshold (2 decimals) that this case passes
        suggest = math.floor(fz * 100) / 100
        raise ConversionError(
            f"CT covers only {100 * fz:.1f} % of the PET's axial (z) extent (minimum "
            f"{100 * options.min_overlap_fraction:g} %, --min-overlap {options.min_overlap_fraction:g}); to convert "
            f"it anyway pass --min-overlap {suggest:.2f} (library: min_overlap_fraction): the PET outside the CT then "
            f"gets {CT_FILL_HU:g} HU (air) in the CT channel"
        )
    if fz < 0.99:
        warnings.append(f"CT covers {100 * fz:.1f} % of the PET's axial extent; the rest is filled with "
                        f"{CT_FILL_HU:g} HU")

    ct_view = sitk.GetArrayViewFromImage(ct)
    if ct_view.dtype.kind == "f" and not np.all(np.isfinite(ct_view)):
        raise ConversionError("CT has non-finite (NaN/inf) voxels")
    src_min, src_max = float(ct_view.min()), float(ct_view.max())
    source_values["ct"]["range_hu"] = [src_min, src_max]
    del ct_view
    if src_min > options.body_threshold_hu:  # judged on the source grid: resampling adds -1024 fill
        raise ConversionError(
            f"CT has no voxel below {options.body_threshold_hu:g} HU (range {src_min:g}..{src_max:g}): it is not "
            f"in HU (missing offset/slope?)"
        )
    if same_geometry(ct, pet):
        ct_on_pet = ct if ct.GetPixelID() == sitk.sitkInt16 else sitk.Cast(ct, sitk.sitkFloat32)
        facts["ct_resampled"] = False
    else:
        ct_on_pet = resample_to_reference(sitk.Cast(ct, sitk.sitkFloat32), pet, "linear", CT_FILL_HU)
        facts["ct_resampled"] = True
    ct_arr = sitk.GetArrayFromImage(ct_on_pet)
    del ct_on_pet
    if ct_arr.dtype != np.int16:  # round and clip in place (whole-body CTs are large: no temporaries)
        np.rint(ct_arr, out=ct_arr)
        np.clip(ct_arr, -32768, 32767, out=ct_arr)
        ct_arr = ct_arr.astype(np.int16)
    ct_min, ct_max = int(ct_arr.min()), int(ct_arr.max())
    if ct_max <= options.body_threshold_hu:
        raise ConversionError(f"CT has no voxel above {options.body_threshold_hu:g} HU inside the PET field of "
                              f"view (range {ct_min}..{ct_max}): no body in the image")
    ct_img = sitk.GetImageFromArray(ct_arr)
    ct_img.CopyInformation(pet)

    label_info: dict[str, Any]
    mask = None
    if options.labeled:
        if label is None:
            raise ConversionError("no label for a labeled cohort")
        _check_volume(label, "label")
        if not same_geometry(label, pet):
            if overlap_fraction(label, pet) < 0.999:
                warnings.append("label grid does not cover the PET grid; missing part set to 0")
            label = resample_to_reference(label, pet, "nearest", 0)
            warnings.append("label was not on the PET grid: resampled (nearest neighbour)")
        lab_arr = sitk.GetArrayFromImage(label)
        if lab_arr.dtype.kind == "f" and not np.all(np.isfinite(lab_arr)):
            raise ConversionError("label has non-finite voxels")
        values = np.unique(lab_arr)
        binarized = bool(np.any((values != 0) & (values != 1)))
        if binarized:
            warnings.append(f"label values {values[:10].tolist()} binarized (> 0 -> 1)")
        lab_arr = (lab_arr > 0).astype(np.uint8)
        label_info = {"kind": "lesion", "source": loaded.meta.get("label_source"), "binarized": binarized}
    else:
        mask = body_mask(ct_arr, options.body_threshold_hu)
        if not mask.any():
            raise ConversionError("empty body mask (no CT voxel above -500 HU connected to the body)")
        lab_arr = mask.astype(np.uint8)
        label_info = {"kind": "body_mask", "source": f"CT > {options.body_threshold_hu:g} HU, largest component"}
    lab_img = sitk.GetImageFromArray(lab_arr)
    lab_img.CopyInformation(pet)

    images = {"ct": ct_img, "pet": pet, "label": lab_img}
    facts["cropped"] = False
    facts["crop_box_zyx"] = None
    if options.crop_to_body:
        if mask is None:
            mask = body_mask(ct_arr, options.body_threshold_hu)
        cropped, box = crop_to_mask_bbox(list(images.values()), mask, options.body_margin_vox)
        if box is None:
            raise ConversionError("empty body mask: cannot crop to the body")
        images = dict(zip(images, cropped))
        facts["cropped"] = True
        facts["crop_box_zyx"] = [[s.start, s.stop] for s in box]
        lab_arr = lab_arr[box]
    n_fg = int(np.count_nonzero(lab_arr))
    voxel_ml = float(np.prod(images["pet"].GetSpacing())) / 1000.0
    label_info.update({"foreground_voxels": n_fg, "foreground_ml": round(n_fg * voxel_ml, 3)})
    facts["label"] = label_info
    facts.update(written_image_stats(images["pet"], images["ct"]))
    facts["warnings"] = warnings
    facts.update(geometry_record(images["pet"]))
    return images, facts


def written_image_stats(pet: Any, ct: Any) -> dict:
    """Statistics of the images as written (after resampling and cropping), for the manifest:
    ``pet_max``, ``pet_mean``, ``pet_min`` (float32 values as Python floats; mean in float64) and
    ``ct_range_hu`` ([min, max]), ``ct_mean_hu`` of the CT channel."""
    import SimpleITK as sitk

    p = sitk.GetArrayViewFromImage(pet)
    c = sitk.GetArrayViewFromImage(ct)
    return {"pet_max": float(p.max()), "pet_mean": float(p.mean(dtype=np.float64)), "pet_min": float(p.min()),
            "ct_range_hu": [int(c.min()), int(c.max())], "ct_mean_hu": float(c.mean(dtype=np.float64))}


# ------------------------------------------------------------------------------------ one case


def convert_one(source: CaseSource, dataset_dir: str, options: ConversionOptions, overwrite: bool) -> CaseResult:
    """Convert one case (runs in a worker process). Never raises: failures come back as results."""
    t0 = time.perf_counter()
    dataset_dir_p = Path(dataset_dir)
    paths = case_paths(dataset_dir_p, source.case_id)
    if not overwrite and is_case_done(dataset_dir_p, source.case_id):
        return CaseResult(source.case_id, "existing", source.source_path)
    try:
        if overwrite and paths["record"].exists():
            paths["record"].unlink()  # the case counts as unfinished until it is rewritten
        loaded = source.load()
        images, facts = harmonize(loaded, options)
        commit_images(dataset_dir_p, images, paths)
        record = _make_record(source, loaded.meta, facts, options, paths, dataset_dir_p)
        write_json_atomic(record, paths["record"])
    except Exception as e:  # noqa: BLE001 - a bad case must never stop the others
        reason = str(e) if isinstance(e, ConversionError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, ConversionError):
            logger.debug("case %s failed:\n%s", source.case_id, traceback.format_exc())
        for key in ("record", "ct", "pet", "label"):  # a failed case leaves nothing behind (old files too)
            if paths[key].exists():
                paths[key].unlink()
        return CaseResult(source.case_id, "failed", source.source_path, reason.strip() or type(e).__name__,
                          time.perf_counter() - t0)
    return CaseResult(source.case_id, "converted", source.source_path, "", time.perf_counter() - t0)


def _make_record(source: CaseSource, meta: Mapping, facts: dict, options: ConversionOptions,
                 paths: Mapping[str, Path], dataset_dir: Path) -> dict:
    from nnunetv2_petct import __version__

    names = PET_NORMALIZATION_CHANNEL_NAMES[options.pet_normalization]
    rel = {k: str(Path(p).relative_to(dataset_dir)) for k, p in paths.items()}
    label = dict(facts.pop("label"))
    label["file"] = rel["label"]
    return {
        "case_id": source.case_id,
        "patient_id": source.patient_id,
        "cohort": source.cohort,
        "source_path": str(source.source_path),
        "source_files": dict(meta.get("source_files", {})),
        "source_keys": dict(source.info),
        "tracer": meta.get("tracer", "FDG"),
        "channels": {
            "0": {"name": names["0"], "modality": "CT", "units": meta.get("ct_units", "HU"), "dtype": "int16",
                  "file": rel["ct"]},
            "1": {"name": names["1"], "modality": "PET", "units": meta.get("pet_units", "SUVbw"),
                  "dtype": "float32", "file": rel["pet"]},
        },
        "label": label,
        **facts,
        "assumptions": list(meta.get("assumptions", [])),
        "extra": {k: v for k, v in meta.items()
                  if k not in ("source_files", "assumptions", "warnings", "pet_units", "ct_units", "tracer",
                               "label_source")},
        "converter": f"nnunetv2_petct {__version__}",
    }


# ------------------------------------------------------------------------------------ parallel map


# ------------------------------------------------------------------------------------ dataset level


def read_records(dataset_dir: Path) -> list[dict]:
    """Manifest records of the finished cases (those with every file on disk), sorted by case id."""
    dataset_dir = Path(dataset_dir)
    rec_dir = dataset_dir / RECORDS_DIR
    records = []
    if rec_dir.is_dir():
        for p in sorted(rec_dir.glob("*.json")):
            case_id = p.name[: -len(".json")]
            if not is_case_done(dataset_dir, case_id):
                continue
            with open(p) as f:
                records.append(json.load(f))
    return records


def read_manifest(dataset_dir: Path) -> list[dict]:
    """Records from ``manifest.jsonl`` of a converted dataset.

    Raises:
        FileNotFoundError: no manifest (not converted by this package).
    """
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: was {Path(dataset_dir).name} converted with nnUNetv2_petct_convert?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def finalize_dataset(dataset_dir: Path, *, name: str, description: str, labeled: bool,
                     pet_normalization: str = "zscore", extra: Mapping[str, Any] | None = None) -> dict:
    """Rebuild ``manifest.jsonl`` and ``dataset.json`` from the cases on disk; returns dataset.json.

    ``numTraining`` is the number of finished cases (all files plus record present). Images in
    ``imagesTr`` without a finished record are left out of the count and reported by
    :func:`orphan_files`.
    """
    from nnunetv2_petct import __version__

    if pet_normalization not in PET_NORMALIZATION_CHANNEL_NAMES:
        raise BadInputError(f"pet_normalization must be one of {sorted(PET_NORMALIZATION_CHANNEL_NAMES)}")
    dataset_dir = Path(dataset_dir)
    records = read_records(dataset_dir)
    names = PET_NORMALIZATION_CHANNEL_NAMES[pet_normalization]
    for r in records:  # keep records in line with the dataset's channel names
        for k in ("0", "1"):
            r["channels"][k]["name"] = names[k]
    write_text_atomic("".join(json.dumps(r, sort_keys=False) + "\n" for r in records), dataset_dir / MANIFEST_FILE)
    pet_units = sorted({r["channels"]["1"]["units"] for r in records}) or ["unknown"]
    cohorts = sorted({r["cohort"] for r in records})
    dataset_json = {
        "channel_names": dict(names),
        "labels": {"background": 0, "lesion": 1} if labeled else {"background": 0, "body": 1},
        "numTraining": len(records),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": description,
        "release": f"nnunetv2_petct {__version__}",
        "petct_channels": {"0": {"modality": "CT", "units": "HU"},
                           "1": {"modality": "PET", "units": pet_units[0] if len(pet_units) == 1 else "mixed"}},
        "petct_normalization": {
            "pet": pet_normalization,
            "choice": CHOICE_BY_PET_NORMALIZATION[pet_normalization],
            "schemes": PET_NORMALIZATION_SCHEMES[pet_normalization],
            "note": "nnU-Net 2.8.1 chooses normalization by channel name (case-insensitive) when it plans: "
                    "'CT'/'ct' -> CTNormalization, other names -> ZScoreNormalization; afterwards the plans' "
                    "normalization_schemes decide. Pretraining and fine-tuning datasets must agree (transfer "
                    "the plans).",
        },
        "petct_label_kind": "lesion" if labeled else "body_mask",
        "petct_cohorts": cohorts,
        "petct_manifest": MANIFEST_FILE,
    }
    if extra:
        dataset_json.update(extra)
    write_json_atomic(dataset_json, dataset_dir / "dataset.json")
    return dataset_json


def orphan_files(dataset_dir: Path) -> list[str]:
    """Files in imagesTr/labelsTr that belong to no finished case (e.g. from an older run)."""
    dataset_dir = Path(dataset_dir)
    done = {r["case_id"] for r in read_records(dataset_dir)}
    out = []
    for sub in ("imagesTr", "labelsTr"):
        d = dataset_dir / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            stem = p.name[: -len(FILE_ENDING)] if p.name.endswith(FILE_ENDING) else p.name
            case = stem[:-5] if sub == "imagesTr" and len(stem) > 5 and stem[-5] == "_" else stem
            if case not in done:
                out.append(str(p.relative_to(dataset_dir)))
    return sorted(out)


def convert_cases(sources: Sequence[CaseSource], dataset_dir: Path, options: ConversionOptions, *,
                  name: str, description: str = "", num_processes: int = 1, overwrite: bool = False,
                  quiet: bool = False, excluded: Iterable[dict] = (), notes: Iterable[str] = ()) -> ConversionReport:
    """Convert ``sources`` into the nnU-Net raw dataset folder ``dataset_dir``.

    Finished cases are skipped unless ``overwrite``. Failures are collected (never raised) and
    written to ``conversion_failures.json``; ``dataset.json``, ``manifest.jsonl`` and
    ``conversion_report.json`` are rewritten at the end from what is on disk.

    Raises:
        BadInputError: two sources share a case id.
    """
    t0 = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    seen: dict[str, str] = {}
    for s in sources:
        if s.case_id in seen:
            raise BadInputError(f"case id {s.case_id!r} is used twice: {seen[s.case_id]} and {s.source_path}")
        seen[s.case_id] = s.source_path
    for sub in ("imagesTr", "labelsTr", RECORDS_DIR):
        (dataset_dir / sub).mkdir(parents=True, exist_ok=True)
    n_stale = clean_partial(dataset_dir)
    report = ConversionReport(dataset_dir=dataset_dir, excluded=list(excluded), notes=list(notes))
    if n_stale:
        report.notes.append(f"removed {n_stale} partial file(s) left by an interrupted run")

    def crashed(task: tuple, exc: BaseException) -> CaseResult:
        src = task[0]
        return CaseResult(src.case_id, "failed", src.source_path, f"worker crashed: {type(exc).__name__}: {exc}")

    tasks = [(s, str(dataset_dir), options, overwrite) for s in sources]
    for res in run_parallel(convert_one, tasks, num_processes, desc=f"convert {dataset_dir.name}", quiet=quiet,
                            on_crash=crashed):
        if res.status == "converted":
            report.converted.append(res.case_id)
        elif res.status == "existing":
            report.existing.append(res.case_id)
        else:
            report.failed.append({"case_id": res.case_id, "source_path": res.source_path, "reason": res.reason})
            print(f"[nnunetv2_petct] FAILED {res.case_id}: {res.reason}", file=sys.stderr)
    clean_partial(dataset_dir)
    for lst in (report.converted, report.existing):
        lst.sort()
    report.failed.sort(key=lambda f: f["case_id"])
    dataset_json = finalize_dataset(dataset_dir, name=name, description=description, labeled=options.labeled,
                                    pet_normalization=options.pet_normalization)
    report.num_training = dataset_json["numTraining"]
    orphans = orphan_files(dataset_dir)
    if orphans:
        report.notes.append(f"{len(orphans)} file(s) in imagesTr/labelsTr belong to no finished case "
                            f"(e.g. {orphans[0]}); nnU-Net will complain: remove them or rerun with --overwrite")
    report.seconds = time.perf_counter() - t0
    write_json_atomic(report.failed, dataset_dir / FAILURES_FILE)
    write_json_atomic(report.to_dict(), dataset_dir / "conversion_report.json")
    return report


# ------------------------------------------------------------------------------------ small helpers


def sanitize_id(text: str) -> str:
    """A case-id-safe version of ``text``: runs of characters other than ``[A-Za-z0-9.-]`` become ``_``."""
    import re

    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")
    return out or "case"


def unique_case_id(case_id: str, used: set[str]) -> str:
    """``case_id``, or ``case_id_2``, ``case_id_3``, ... when taken (two studies that map onto one id are
    both kept, deterministically in discovery order); the result is added to ``used``."""
    out, i = case_id, 2
    while out in used:
        out = f"{case_id}_{i}"
        i += 1
    used.add(out)
    return out


def describe_tree(root: Path, max_files: int = 12, max_scan: int = 20000) -> str:
    """A short description of what is under ``root`` (for layout error messages); stops counting after
    ``max_scan`` files so a huge tree does not make the error slow."""
    root = Path(root)
    if not root.exists():
        return f"{root} does not exist"
    if root.is_file():
        return f"{root} is a file, not a folder"
    ext_counts: dict[str, int] = {}
    examples: list[str] = []
    n_dirs = n_files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        n_dirs += len(dirnames)
        n_files += len(filenames)
        if n_files > max_scan:
            break
        for fn in sorted(filenames):
            low = fn.lower()
            ext = ".nii.gz" if low.endswith(".nii.gz") else (os.path.splitext(low)[1] or "(no extension)")
            ext_counts[ext] = ext_counts.get(ext, 0) + 1
            if len(examples) < max_files:
                examples.append(str(Path(dirpath, fn).relative_to(root)))
    if not ext_counts:
        return f"{root} holds {n_dirs} folder(s) and no files"
    exts = ", ".join(f"{n} x {e}" for e, n in sorted(ext_counts.items(), key=lambda kv: -kv[1]))
    more = f" (counting stopped after {max_scan} files)" if n_files > max_scan else ""
    return f"{root} holds {n_dirs} folder(s) and files: {exts}{more}; e.g. " + ", ".join(examples)


def read_image(path: Path):
    """``sitk.ReadImage`` with a :class:`ConversionError` naming the file on failure.

    ``.nii.gz`` files are first checked for truncation (:func:`nnunetv2_petct.io.check_nifti_gz_complete`). Note that
    ITK's NIfTI reader turns NaN voxels into 0, so NaNs in NIfTI files cannot be detected here.
    """
    import SimpleITK as sitk

    if str(path).lower().endswith(".nii.gz"):
        try:
            check_nifti_gz_complete(Path(path))
        except IncompleteFileError as e:
            raise ConversionError(str(e)) from None
    try:
        return sitk.ReadImage(str(path))
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with a long ITK message
        first = str(e).strip().splitlines()
        msg = next((ln for ln in first if "ERROR" in ln or "Exception" in ln or "rror" in ln), first[0] if first else "")
        raise ConversionError(f"cannot read {path}: {msg.strip()[:200]}") from None
