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

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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
    FATAL_WRITE_ERRNOS,
    IncompleteFileError,
    WriteError,
    atomic_write_many,
    check_nifti_gz_complete,
    describe_itk_error,
    disk_space_problem,
    jsonable,
    probe_writable_dir,
    read_json,
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
#: The marker of a dataset folder this package wrote (who, which version, cohorts, options).
MARKER_FILE = ".nnunetv2_petct.json"
MARKER_FORMAT_VERSION = 1

#: What to do with NaN/inf voxels in a source image: refuse the case, or set them to 0 (recorded).
NONFINITE_POLICIES = ("error", "zero")
#: Plausibility bounds (absolute values) of source intensities; anything beyond is a broken scale
#: factor or uninitialised memory, never a measurement. SUV: the hottest lesions and the bladder reach
#: SUV 50-100 and injection-site artefacts a few hundred, so 1e4 is 100x beyond any real voxel. Other
#: PET units (Bq/ml, counts): the injected activity itself (~4e8 Bq, a few ml in the syringe) stays
#: below 1e9 Bq/ml, so 1e10 is beyond any activity concentration. CT: HU span -1024 (air) to ~3000
#: (bone, contrast) and up to ~30000 on extended scales for metal; padding values reach -32768; 1e5 is
#: beyond all of them.
PET_PLAUSIBLE_ABS_MAX = {"SUV": 1e4, "other": 1e10}
CT_PLAUSIBLE_ABS_MAX_HU = 1e5

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


class NonFiniteImageError(ConversionError):
    """An image holds NaN/inf voxels under the ``"error"`` policy. ``finding`` says what was found (without a
    hint, e.g. "PET has 3 non-finite voxel(s) (3 NaN) of 1000"); the message adds the converter's hint
    (``--nonfinite zero``), which callers without that option (prediction) replace."""

    def __init__(self, message: str, finding: str):
        super().__init__(message)
        self.finding = finding


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
        files: the source files of the case, when ``source_path`` is a folder shared with other cases
            (e.g. one ``imagesTr``); empty: every file under ``source_path`` belongs to the case. Used
            for the source fingerprint (:func:`source_fingerprint`).
    """

    case_id: str
    patient_id: str
    cohort: str
    source_path: str
    load: Callable[[], LoadedCase]
    info: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()


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
        nonfinite: NaN/inf voxels in the source images: ``"error"`` (the case fails, default) or
            ``"zero"`` (set to 0; counts and policy recorded in the manifest and warned about).
    """

    labeled: bool
    crop_to_body: bool = False
    body_margin_vox: int = 3
    body_threshold_hu: float = BODY_THRESHOLD_HU
    min_overlap_fraction: float = 0.5
    pet_normalization: str = "zscore"
    nonfinite: str = "error"


@dataclass
class CaseResult:
    case_id: str
    status: str  # "converted" | "existing" | "failed"
    source_path: str = ""
    reason: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    fatal: bool = False  # the output folder itself failed (disk full, read-only): stop the run


@dataclass
class ConversionReport:
    """Outcome of :func:`convert_cases` (also written as ``conversion_report.json``)."""

    dataset_dir: Path
    converted: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reconverted: list[dict] = field(default_factory=list)  # finished before, redone: {"case_id", "why"}
    removed: list[str] = field(default_factory=list)  # cases removed by --overwrite (not in the source)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    num_training: int = 0
    seconds: float = 0.0
    wrote_nothing: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.dataset_dir}: {len(self.converted)} converted, {len(self.existing)} already done, "
            f"{len(self.failed)} failed, {len(self.excluded)} excluded; numTraining = {self.num_training} "
            f"({self.seconds:.1f} s)"
        ]
        if self.reconverted:
            whys: dict[str, int] = {}
            for r in self.reconverted:
                whys[r["why"]] = whys.get(r["why"], 0) + 1
            lines.append("  redone: " + "; ".join(f"{n} case(s): {why}" for why, n in sorted(whys.items())))
        if self.removed:
            lines.append(f"  removed {len(self.removed)} case(s) that are not in the source (--overwrite), e.g. "
                         f"{self.removed[0]}")
        if self.warnings:
            n = sum(len(w) for w in self.warnings.values())
            lines.append(f"  {n} warning(s) in {len(self.warnings)} case(s) (listed in {MANIFEST_FILE})")
        if self.wrote_nothing:
            lines.append("  nothing to do: every case is converted and up to date; nothing was written")
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
            "reconverted": self.reconverted, "removed": self.removed, "warnings": self.warnings,
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
        ConversionError: empty or non-3D volume; non-finite PET/CT/label voxels (unless
            ``options.nonfinite == "zero"``); PET or CT values beyond the plausibility bounds
            (:data:`PET_PLAUSIBLE_ABS_MAX`, :data:`CT_PLAUSIBLE_ABS_MAX_HU`); PET all zero; CT covering
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

    nonfinite: dict[str, Any] = {}
    pet = _apply_nonfinite_policy(pet, "PET", options.nonfinite, warnings, nonfinite)
    _check_plausible_pet(pet, str(loaded.meta.get("pet_units", "unknown")))
    if pet.GetPixelID() != sitk.sitkFloat32:
        pet = sitk.Cast(pet, sitk.sitkFloat32)
    pet_arr = sitk.GetArrayViewFromImage(pet)
    pet_max = float(pet_arr.max())
    if pet_max <= 0:
        zeroed = nonfinite.get("pet", {}).get("total", 0)
        if zeroed == pet_arr.size:
            raise ConversionError(f"PET is empty: all {zeroed} voxels were non-finite (NaN/inf) in the source "
                                  f"and were set to 0 (--nonfinite zero)")
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

    ct = _apply_nonfinite_policy(ct, "CT", options.nonfinite, warnings, nonfinite)
    ct_view = sitk.GetArrayViewFromImage(ct)
    src_min, src_max = float(ct_view.min()), float(ct_view.max())
    source_values["ct"]["range_hu"] = [src_min, src_max]
    del ct_view
    if max(abs(src_min), abs(src_max)) > CT_PLAUSIBLE_ABS_MAX_HU:
        raise ConversionError(f"CT has implausible values (range {src_min:g}..{src_max:g} HU; plausible: within "
                              f"+-{CT_PLAUSIBLE_ABS_MAX_HU:g} HU): a broken scale factor or uninitialised data")
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
        label = _apply_nonfinite_policy(label, "label", options.nonfinite, warnings, nonfinite)
        lab_arr = sitk.GetArrayFromImage(label)
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
    facts["nonfinite"] = {"policy": options.nonfinite, **nonfinite}
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


def _apply_nonfinite_policy(img, what: str, policy: str, warnings: list[str], found: dict):
    """``img`` after the non-finite policy: unchanged when every voxel is finite (or it is an integer
    image); else the case fails (``"error"``) or NaN/inf become 0 (``"zero"``: counted into
    ``found[what.lower()]`` and warned about).

    NIfTI files keep their NaN/inf up to here because :func:`read_image` restores what ITK zeroes.
    """
    import SimpleITK as sitk

    view = sitk.GetArrayViewFromImage(img)
    if view.dtype.kind not in "fc":
        return img
    finite = np.isfinite(view)
    n_bad = int(view.size - np.count_nonzero(finite))
    if not n_bad:
        return img
    vals = view[~finite]
    n_nan = int(np.count_nonzero(np.isnan(vals)))
    n_pos = int(np.count_nonzero(vals > 0)) if vals.dtype.kind == "f" else 0
    counts = {"nan": n_nan, "posinf": n_pos, "neginf": n_bad - n_nan - n_pos, "total": n_bad}
    desc = ", ".join(f"{counts[k]} {name}" for k, name in (("nan", "NaN"), ("posinf", "+inf"), ("neginf", "-inf"))
                     if counts[k])
    if policy != "zero":
        if n_bad == view.size:
            raise ConversionError(f"{what} holds no finite value: all {n_bad} voxels are non-finite ({desc})")
        finding = f"{what} has {n_bad} non-finite voxel(s) ({desc}) of {view.size}"
        raise NonFiniteImageError(f"{finding}; to set them to 0 instead, convert with --nonfinite zero", finding)
    arr = sitk.GetArrayFromImage(img)
    arr[~finite] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    found[what.lower()] = counts
    warnings.append(f"{what}: {n_bad} non-finite voxel(s) ({desc}) set to 0 (--nonfinite zero)")
    return out


def _check_plausible_pet(pet, units: str) -> None:
    """Refuse PET intensities beyond :data:`PET_PLAUSIBLE_ABS_MAX` for ``units`` (SUV* or other)."""
    import SimpleITK as sitk

    view = sitk.GetArrayViewFromImage(pet)
    lo, hi = float(view.min()), float(view.max())
    kind = "SUV" if units.upper().startswith("SUV") else "other"
    bound = PET_PLAUSIBLE_ABS_MAX[kind]
    if max(abs(lo), abs(hi)) > bound:
        raise ConversionError(
            f"PET has implausible values (range {lo:g}..{hi:g} {units}; plausible: within +-{bound:g} for "
            f"{'SUV' if kind == 'SUV' else 'Bq/ml or counts'}): a broken scale factor or uninitialised data"
        )


# ------------------------------------------------------------------------------------ one case


def convert_one(source: CaseSource, dataset_dir: str, options: ConversionOptions, overwrite: bool,
                fingerprint: Mapping[str, Any] | None = None) -> CaseResult:
    """Convert one case (runs in a worker process). Never raises: failures come back as results.

    A finished case is reused (status ``"existing"``) unless ``overwrite`` or its record's source
    fingerprint or options differ (:func:`reuse_problem`). ``fingerprint``: the source's
    :func:`source_fingerprint` when the caller computed it already.
    """
    t0 = time.perf_counter()
    dataset_dir_p = Path(dataset_dir)
    paths = case_paths(dataset_dir_p, source.case_id)
    fingerprint = dict(fingerprint) if fingerprint is not None else source_fingerprint(source)
    if not overwrite and reuse_problem(dataset_dir_p, source.case_id, fingerprint, options) is None:
        return CaseResult(source.case_id, "existing", source.source_path)
    try:
        if paths["record"].exists():
            paths["record"].unlink()  # the case counts as unfinished until it is rewritten
        loaded = source.load()
        images, facts = harmonize(loaded, options)
        commit_images(dataset_dir_p, images, paths)
        record = _make_record(source, loaded.meta, facts, options, paths, dataset_dir_p)
        record["source_fingerprint"] = fingerprint
        record["conversion_options"] = options_key(options)
        write_json_atomic(record, paths["record"])
    except Exception as e:  # noqa: BLE001 - a bad case must never stop the others
        reason = str(e) if isinstance(e, (ConversionError, WriteError)) else f"{type(e).__name__}: {e}"
        if not isinstance(e, ConversionError):
            logger.debug("case %s failed:\n%s", source.case_id, traceback.format_exc())
        for key in ("record", "ct", "pet", "label"):  # a failed case leaves nothing behind (old files too)
            if paths[key].exists():
                paths[key].unlink()
        fatal = output_failure_reason(e, dataset_dir_p)
        if fatal:
            reason = fatal
        return CaseResult(source.case_id, "failed", source.source_path, reason.strip() or type(e).__name__,
                          time.perf_counter() - t0, fatal=bool(fatal))
    return CaseResult(source.case_id, "converted", source.source_path, "", time.perf_counter() - t0,
                      warnings=list(record.get("warnings") or []))


def output_failure_reason(exc: BaseException, dataset_dir: Path) -> str | None:
    """The reason when ``exc`` means the output folder itself cannot take files (every further case
    would fail the same way): an OS error such as a full disk, a read-only file system or missing
    permission, or a full disk seen afterwards (writers that do not report it). None otherwise."""
    if isinstance(exc, OSError) and exc.errno in FATAL_WRITE_ERRNOS:
        return f"cannot write into {dataset_dir}: {exc}"
    problem = disk_space_problem(dataset_dir)
    if problem:
        return f"cannot write into {dataset_dir}: {problem} ({type(exc).__name__}: {exc})"
    return None


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


# ------------------------------------------------------------------------------------ source trees


def walk_tree(root: str | os.PathLike) -> Iterator[tuple[Path, list[str]]]:
    """``(folder, file names)`` for every folder under ``root``, sorted, following symbolic links to
    folders; a folder reached twice (a link loop, or two links to one folder) is visited once. Broken
    links are not files and are left out (:func:`source_tree_links` reports them)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield Path(dirpath), sorted(f for f in filenames if os.path.isfile(os.path.join(dirpath, f)))


def walk_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every regular file under ``root`` (see :func:`walk_tree`: folder links followed, loops cut)."""
    for folder, names in walk_tree(root):
        for name in names:
            yield folder / name


def source_tree_links(root: str | os.PathLike, max_items: int = 3) -> list[str]:
    """Notes on symbolic links under ``root``: folder links followed, links that loop back or reach a
    folder already seen (visited once), broken links. Empty when there are none."""
    followed, again, broken = [], [], []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        real = os.path.realpath(dirpath)
        if real in seen:
            again.append(dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        if os.path.islink(dirpath) and os.path.abspath(dirpath) != os.path.abspath(root):
            followed.append(dirpath)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full) and not os.path.exists(full):
                broken.append(full)
    notes = []
    for items, text in ((followed, "folder link(s) followed"),
                        (again, "folder link(s) skipped: they lead to a folder visited already (a loop or a "
                                "second link)"),
                        (broken, "broken link(s) ignored")):
        if items:
            shown = ", ".join(f"{p} -> {os.readlink(p)}" if os.path.islink(p) else p for p in items[:max_items])
            notes.append(f"{len(items)} {text} under {root}: {shown}" + (" ..." if len(items) > max_items else ""))
    return notes


# ------------------------------------------------------------------------------- fingerprints, reuse


def source_fingerprint(source: CaseSource) -> dict:
    """What a finished case was converted from: ``{"path", "n_files", "bytes", "digest"}``; the digest is
    a SHA-1 over the relative path, size and modification time (ns) of every source file
    (``source.files``, else every file under ``source.source_path``, links followed). Contents are not
    read. A missing source gives ``n_files`` 0."""
    root = Path(source.source_path)
    if source.files:
        files = [Path(f) for f in source.files]
    elif root.is_file():
        files = [root]
    elif root.is_dir():
        files = list(walk_files(root))
    else:
        files = []
    return files_fingerprint(files, root if root.is_dir() else root.parent, str(source.source_path))


def files_fingerprint(files: Iterable[str | os.PathLike], base: str | os.PathLike, label: str) -> dict:
    """``{"path": label, "n_files", "bytes", "digest"}`` over the paths (relative to ``base``), sizes and
    modification times of ``files`` (a missing file counts in the digest as missing)."""
    h = hashlib.sha1()
    n = total = 0
    for f in sorted(Path(x) for x in files):
        try:
            st = f.stat()
        except OSError:
            h.update(f"{f}|missing\n".encode())
            continue
        h.update(f"{os.path.relpath(f, base)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        n += 1
        total += st.st_size
    return {"path": label, "n_files": n, "bytes": total, "digest": h.hexdigest()}


def options_key(options: ConversionOptions) -> dict:
    """The options that change the converted files (PET normalization only renames a channel)."""
    d = asdict(options)
    d.pop("pet_normalization", None)
    return d


def reuse_problem(dataset_dir: Path, case_id: str, fingerprint: Mapping[str, Any],
                  options: ConversionOptions | None = None) -> str | None:
    """None when the finished case ``case_id`` can be reused; else why it must be (re)converted:
    not finished, its record unreadable, converted without a fingerprint (older version), from a source
    that changed (path, file sizes or times), or with other ``options`` (None: not compared, e.g. when the
    fingerprint holds them, as for pretraining cases)."""
    dataset_dir = Path(dataset_dir)
    if not is_case_done(dataset_dir, case_id):
        return "not converted yet"
    try:
        record = read_json(case_paths(dataset_dir, case_id)["record"], "manifest record")
    except IncompleteFileError:
        return "its manifest record is unreadable"
    old = record.get("source_fingerprint")
    if not isinstance(old, Mapping):
        return "converted without a source fingerprint (older version)"
    if old.get("path") != fingerprint.get("path"):
        return "the source path changed"
    if old != dict(fingerprint):
        return "the source files changed (size or modification time)"
    if options is not None and record.get("conversion_options") != options_key(options):
        return "converted with other options"
    return None


# ------------------------------------------------------------------------------------ folder marker


def read_marker(dataset_dir: Path) -> dict | None:
    """The marker of a folder this package wrote (:data:`MARKER_FILE`), or None when it has none."""
    path = Path(dataset_dir) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = read_json(path, "dataset marker")
    except IncompleteFileError as e:
        raise BadInputError(f"{e}; delete the marker only if you are sure the folder was written by nnunetv2_petct") from None
    return marker if isinstance(marker, dict) else {}


def _holds_files(folder: Path) -> list[str]:
    """Up to 5 relative paths of regular files in ``folder`` (leftovers in ``.partial`` do not count)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == folder and d == PARTIAL_DIR))
        out += [str(Path(dirpath, f).relative_to(folder)) for f in sorted(filenames)]
        if len(out) >= 5:
            break
    return out[:5]


def check_dataset_folder(dataset_dir: Path, kind: str, writer: str) -> dict | None:
    """Refuse an existing folder that this package did not write (or wrote as another kind of dataset).

    Ours: it has a :data:`MARKER_FILE` of ``kind`` (``"converted"`` or ``"pretraining"``), or it is a
    folder an older version wrote (``manifest/`` plus a ``dataset.json`` released by nnunetv2_petct). A
    missing folder, or one without files, is fine.

    Returns:
        The marker (``{}`` for an older folder without one), or None when there is none.

    Raises:
        BadInputError: the folder is a file, holds files of someone else, or is another kind of dataset;
            the message names the folder and says what to do.
    """
    d = Path(dataset_dir)
    if not d.exists():
        return None
    if not d.is_dir():
        raise BadInputError(f"{d} is a file, not a dataset folder; move it away or choose another dataset id")
    marker = read_marker(d)
    if marker is not None:
        if marker.get("kind") != kind:
            raise BadInputError(f"{d} was written by {marker.get('writer', 'another command')} (a "
                                f"{marker.get('kind', 'different')} dataset), not by {writer}; choose another "
                                f"dataset id or name")
        return marker
    files = _holds_files(d)
    if not files:
        return None
    try:
        dj = json.loads((d / "dataset.json").read_text())
    except (OSError, ValueError):
        dj = {}
    if isinstance(dj, dict) and str(dj.get("release", "")).startswith("nnunetv2_petct") and (d / RECORDS_DIR).is_dir():
        old_kind = "pretraining" if "petct_sources" in dj else "converted"
        if old_kind == kind:
            return {}
    raise BadInputError(
        f"{d} already exists and was not written by {writer} (it has no {MARKER_FILE} marker and holds e.g. "
        f"{', '.join(files)}). Writing into it would mix its files with the new cases. Move or delete that "
        f"folder, or choose another dataset id (-d) or --name; --overwrite never deletes a folder this tool "
        f"did not write."
    )


def marker_payload(kind: str, writer: str, cohorts: Iterable[str], options: Mapping[str, Any]) -> dict:
    """What :data:`MARKER_FILE` records (without the dates)."""
    from nnunetv2_petct import __version__

    return {"tool": "nnunetv2_petct", "format_version": MARKER_FORMAT_VERSION, "version": __version__,
            "writer": writer, "kind": kind, "cohorts": sorted(set(cohorts)), "options": dict(options)}


def write_marker(dataset_dir: Path, old: Mapping[str, Any] | None, payload: Mapping[str, Any]) -> bool:
    """Write the marker when it is missing or ``payload`` differs from ``old``; returns whether it wrote."""
    old = dict(old or {})
    created = old.pop("created_utc", None)
    old.pop("updated_utc", None)
    if old == dict(payload) and created:
        return False
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic({**payload, "created_utc": created or now, "updated_utc": now}, Path(dataset_dir) / MARKER_FILE)
    return True


def _write_text_if_changed(text: str, path: Path) -> bool:
    """Write ``text`` atomically unless ``path`` holds exactly it already (a no-op run writes nothing)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(text, path)
    return True


def remove_case(dataset_dir: Path, case_id: str) -> None:
    """Remove a case: its record first (it stops counting as finished), then its images and label."""
    paths = case_paths(Path(dataset_dir), case_id)
    for key in ("record", "ct", "pet", "label"):
        if paths[key].exists():
            paths[key].unlink()


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
    :func:`orphan_files`. Files whose content would not change are not rewritten (a re-run with
    nothing to do writes nothing, also into a read-only folder).
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
    _write_text_if_changed("".join(json.dumps(r, sort_keys=False) + "\n" for r in records), dataset_dir / MANIFEST_FILE)
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
    _write_text_if_changed(json.dumps(jsonable(dataset_json), indent=2) + "\n", dataset_dir / "dataset.json")
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


def print_above_progress(message: str) -> None:
    """A line on stderr that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def finished_case_ids(dataset_dir: Path) -> list[str]:
    """Ids of the finished cases on disk (record plus every file), sorted."""
    rec_dir = Path(dataset_dir) / RECORDS_DIR
    if not rec_dir.is_dir():
        return []
    ids = (p.name[: -len(".json")] for p in rec_dir.glob("*.json"))
    return sorted(c for c in ids if is_case_done(Path(dataset_dir), c))


def convert_cases(sources: Sequence[CaseSource], dataset_dir: Path, options: ConversionOptions, *,
                  name: str, description: str = "", num_processes: int = 1, overwrite: bool = False,
                  quiet: bool = False, excluded: Iterable[dict] = (), notes: Iterable[str] = (),
                  writer: str = "nnUNetv2_petct_convert") -> ConversionReport:
    """Convert ``sources`` into the nnU-Net raw dataset folder ``dataset_dir``.

    - The folder must be new, empty, or written by this package as a converted dataset (its
      :data:`MARKER_FILE`, which records the tool version, cohorts and options; :func:`check_dataset_folder`).
    - A finished case is reused only when its manifest record's source fingerprint (path, sizes and
      modification times of the source files) and options equal the current ones; otherwise it is
      reconverted (:func:`reuse_problem`; the reasons are in ``report.reconverted``).
    - ``overwrite``: every case is reconverted, and finished cases that are not among ``sources``, and
      files in ``imagesTr``/``labelsTr`` that belong to no case, are removed: the folder then holds
      exactly this run's cases.
    - The folder is checked for writing once, before any case (:func:`nnunetv2_petct.io.probe_writable_dir`);
      a run with nothing to do writes nothing (it also works in a read-only folder).
    - Failures are collected (never raised) and written to ``conversion_failures.json``; a case whose
      files cannot be written because of the output folder itself (disk full, read-only, no permission)
      stops the run instead. ``dataset.json``, ``manifest.jsonl`` and ``conversion_report.json`` are
      rebuilt at the end from what is on disk. Case warnings go to stderr (unless ``quiet``) and into
      the manifest.

    Raises:
        BadInputError: two sources share a case id, an unknown non-finite policy, or a folder that this
            package did not write (message names it and says what to do).
        WriteError: the output folder cannot be written (up front, or a run stopped by a full disk);
            finished cases stay, the message says how far the run got.
    """
    t0 = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    if options.nonfinite not in NONFINITE_POLICIES:
        raise BadInputError(f"non-finite policy must be one of {', '.join(NONFINITE_POLICIES)}, got {options.nonfinite!r}")
    seen: dict[str, str] = {}
    for s in sources:
        if s.case_id in seen:
            raise BadInputError(f"case id {s.case_id!r} is used twice: {seen[s.case_id]} and {s.source_path}")
        seen[s.case_id] = s.source_path
    marker = check_dataset_folder(dataset_dir, "converted", writer)
    report = ConversionReport(dataset_dir=dataset_dir, excluded=list(excluded), notes=list(notes))

    # plan: which cases need work (reuse is decided here, from the manifest records and the source files)
    done_before = set(finished_case_ids(dataset_dir)) if dataset_dir.is_dir() else set()
    fingerprints = {s.case_id: source_fingerprint(s) for s in sources}
    todo = []
    for s in sources:
        why = "--overwrite" if overwrite else reuse_problem(dataset_dir, s.case_id, fingerprints[s.case_id], options)
        if why is None:
            report.existing.append(s.case_id)
            continue
        if s.case_id in done_before:
            report.reconverted.append({"case_id": s.case_id, "why": why})
        todo.append(s)
    stale = sorted(done_before - set(seen))
    cohorts = {s.cohort for s in sources} | (set() if overwrite else set((marker or {}).get("cohorts", [])))
    payload = marker_payload("converted", writer, cohorts,
                             {**options_key(options), "pet_normalization": options.pet_normalization})
    old_marker = {k: v for k, v in (marker or {}).items() if k not in ("created_utc", "updated_utc")}
    must_write = bool(todo) or (overwrite and bool(stale or orphan_files(dataset_dir))) or old_marker != payload \
        or (dataset_dir / PARTIAL_DIR).exists()

    if must_write:
        probe_writable_dir(dataset_dir, "dataset folder")
        write_marker(dataset_dir, marker, payload)
        for sub in ("imagesTr", "labelsTr", RECORDS_DIR):
            (dataset_dir / sub).mkdir(parents=True, exist_ok=True)
        n_stale = clean_partial(dataset_dir)
        if n_stale:
            report.notes.append(f"removed {n_stale} partial file(s) left by an interrupted run")

    def crashed(task: tuple, exc: BaseException) -> CaseResult:
        src = task[0]
        return CaseResult(src.case_id, "failed", src.source_path, f"worker crashed: {type(exc).__name__}: {exc}")

    tasks = [(s, str(dataset_dir), options, True, fingerprints[s.case_id]) for s in todo]
    stopped: CaseResult | None = None
    finished: set[str] = set()
    results = run_parallel(convert_one, tasks, num_processes, desc=f"convert {dataset_dir.name}", quiet=quiet,
                           on_crash=crashed)
    try:
        for res in results:
            finished.add(res.case_id)
            if res.status == "converted":
                report.converted.append(res.case_id)
                if res.warnings:
                    report.warnings[res.case_id] = list(res.warnings)
                    if not quiet:
                        for w in res.warnings:
                            print_above_progress(f"[nnunetv2_petct] WARNING {res.case_id}: {w}")
            elif res.status == "existing":
                report.existing.append(res.case_id)
            else:
                report.failed.append({"case_id": res.case_id, "source_path": res.source_path, "reason": res.reason})
                print_above_progress(f"[nnunetv2_petct] FAILED {res.case_id}: {res.reason}")
                if res.fatal:
                    stopped = res
                    break
    finally:
        results.close()  # stops the workers at once when the run was stopped
    if must_write:
        clean_partial(dataset_dir)
    not_attempted = [s.case_id for s in todo if s.case_id not in finished]
    if stopped is None and overwrite:
        for case_id in stale:
            remove_case(dataset_dir, case_id)
        report.removed = stale
        for rel in orphan_files(dataset_dir):
            (dataset_dir / rel).unlink()
    elif stale:
        report.notes.append(f"{len(stale)} finished case(s) are not among this run's sources and were kept (e.g. "
                            f"{stale[0]}); --overwrite removes them")
    for lst in (report.converted, report.existing):
        lst.sort()
    report.failed.sort(key=lambda f: f["case_id"])
    if dataset_dir.is_dir():
        dataset_json = finalize_dataset(dataset_dir, name=name, description=description, labeled=options.labeled,
                                        pet_normalization=options.pet_normalization)
        report.num_training = dataset_json["numTraining"]
    orphans = orphan_files(dataset_dir) if dataset_dir.is_dir() else []
    if orphans:
        report.notes.append(f"{len(orphans)} file(s) in imagesTr/labelsTr belong to no finished case "
                            f"(e.g. {orphans[0]}); nnU-Net will complain: rerun with --overwrite to remove them")
    report.seconds = time.perf_counter() - t0
    if must_write:
        write_json_atomic(report.failed, dataset_dir / FAILURES_FILE)
        write_json_atomic(report.to_dict(), dataset_dir / "conversion_report.json")
    else:
        report.wrote_nothing = True
    if stopped is not None:
        err = WriteError(f"{stopped.reason}. The run stopped: {len(report.converted)} case(s) converted, "
                         f"{len(not_attempted)} not attempted (finished cases are kept); fix the output folder "
                         f"and rerun to convert the rest")
        err.errno = getattr(stopped, "errno", None)
        raise err
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


def _as_3d_volume(image, path: Path):
    """``image`` as a 3D volume, or a :class:`ConversionError` that says what the file holds.

    A 4D image with a single volume (NIfTI ``dim[4] = 1``) is taken as its one 3D volume; a 2D image, a 4D
    image with several volumes (a dynamic or gated series) and other dimensionalities are refused.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    size = list(image.GetSize())
    shape = "x".join(str(s) for s in size)
    if dim == 3:
        return image
    if dim == 4 and size[3] == 1:
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    if dim == 2:
        raise ConversionError(f"cannot use {path}: 2D image ({shape}): a 3D volume is needed")
    if dim == 4:
        raise ConversionError(f"cannot use {path}: 4D image with {size[3]} volumes ({shape}): pass one frame "
                              "(a 3D volume, e.g. the static whole-body frame)")
    raise ConversionError(f"cannot use {path}: {dim}D image ({shape}): a 3D volume is needed")


def read_image(path: Path):
    """``sitk.ReadImage`` with a :class:`ConversionError` that names the file and says why, in words.

    NIfTI files (``.nii``, ``.nii.gz``) are first checked here, before ITK sees them: a truncated or
    corrupt gzip (:func:`nnunetv2_petct.io.check_nifti_gz_complete`), a header that is not NIfTI, and
    complex or RGB voxels (not intensities) are refused; so are 2D images and 4D images with more than one
    volume (:func:`_as_3d_volume`; a 4D image of one volume is read as that volume). ITK's NIfTI reader turns NaN/inf voxels into 0;
    floating-point files are therefore scanned for them in the file's own data
    (:mod:`nnunetv2_petct.conversion.nifti`) and the returned image holds them again, so that the
    converter's non-finite policy (:class:`ConversionOptions` ``nonfinite``) sees them.
    """
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.nifti import (
        NON_INTENSITY_DATATYPES,
        NiftiError,
        read_nifti_header,
        restore_nonfinite,
        scan_nonfinite,
    )

    path = Path(path)
    low = path.name.lower()
    header = None
    if low.endswith((".nii", ".nii.gz")):
        try:
            if low.endswith(".gz"):
                check_nifti_gz_complete(path)
            header = read_nifti_header(path)
        except (IncompleteFileError, NiftiError) as e:
            text = str(e)
            raise ConversionError(text if text.startswith("cannot read") else f"cannot read {path}: {text}") from None
        if header.datatype in NON_INTENSITY_DATATYPES:
            raise ConversionError(f"cannot use {path}: it stores {header.datatype_name} voxels, not image "
                                  f"intensities")
    try:
        image = sitk.ReadImage(str(path))
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with a long ITK message
        raise ConversionError(f"cannot read {path}: {describe_itk_error(e)}") from None
    image = _as_3d_volume(image, path)
    if header is not None and header.can_hold_nonfinite:
        try:
            if scan_nonfinite(path, header).total:
                arr = sitk.GetArrayFromImage(image)
                if arr.dtype.kind != "f":
                    arr = arr.astype(np.float32)
                restore_nonfinite(arr, path, header)
                restored = sitk.GetImageFromArray(arr, isVector=image.GetNumberOfComponentsPerPixel() > 1)
                restored.CopyInformation(image)
                image = restored
        except NiftiError as e:
            raise ConversionError(f"cannot read {path}: {e}") from None
    return image
