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
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
# the real CT channel "CT"); dataset.json["petct_normalization"] records the choice explicitly.
PET_NORMALIZATION_CHANNEL_NAMES = {
    "zscore": {"0": "CT", "1": "PET"},
    "global": {"0": "CT", "1": "ct"},
}
PET_NORMALIZATION_SCHEMES = {
    "zscore": {"0": "CTNormalization", "1": "ZScoreNormalization"},
    "global": {"0": "CTNormalization", "1": "CTNormalization"},
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
        pet_normalization: ``"zscore"`` (nnU-Net per-image z-score for PET) or ``"global"``
            (CT-style dataset-wide normalization for PET too); only affects ``dataset.json``.
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


def _partial_path(dataset_dir: Path, final: Path) -> Path:
    # Temporary files live in <dataset>/.partial (same file system as the final place, so os.replace
    # is atomic) rather than next to the final file: nnU-Net lists every *.nii.gz in imagesTr, and a
    # leftover of a killed run must never look like a case.
    tmp_dir = Path(dataset_dir) / PARTIAL_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir / f"{os.getpid()}_{uuid.uuid4().hex[:8]}_{final.name}"


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}_{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}_{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit_images(dataset_dir: Path, images: Mapping[str, Any], final_paths: Mapping[str, Path]) -> None:
    """Write SimpleITK images into ``.partial/`` and move all of them into place (:func:`os.replace`)."""
    import SimpleITK as sitk

    staged: list[tuple[Path, Path]] = []
    try:
        for key, img in images.items():
            final = Path(final_paths[key])
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _partial_path(dataset_dir, final)
            sitk.WriteImage(img, str(tmp), True)
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def clean_partial(dataset_dir: Path) -> int:
    """Remove leftovers of killed runs (``.partial/``); returns how many files were removed."""
    tmp_dir = Path(dataset_dir) / PARTIAL_DIR
    if not tmp_dir.is_dir():
        return 0
    n = sum(1 for p in tmp_dir.iterdir() if p.is_file())
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return n


# ------------------------------------------------------------------------------------ harmonization


def _geometry(img) -> dict:
    return {
        "spacing_mm": [round(float(s), 6) for s in reversed(img.GetSpacing())],
        "shape_zyx": [int(s) for s in reversed(img.GetSize())],
        "origin_mm_xyz": [round(float(o), 4) for o in img.GetOrigin()],
        "direction": [round(float(d), 6) for d in img.GetDirection()],
    }


def overlap_fractions_xyz(moving, reference) -> tuple[float, float, float]:
    """Per-axis fraction of ``reference``'s field of view covered by ``moving``'s, along the reference
    index axes (x, y, z), each in 0..1.

    Both fields of view are boxes in physical space (voxel edges, i.e. index -0.5 .. size-0.5); the
    corners of ``moving`` are mapped into ``reference``'s continuous index space and their axis-aligned
    bounding box is intersected with the reference box. Exact for images sharing orientation, an
    upper bound otherwise.
    """
    size_m = moving.GetSize()
    size_r = np.asarray(reference.GetSize(), float)
    corners = []
    for cx in (-0.5, size_m[0] - 0.5):
        for cy in (-0.5, size_m[1] - 0.5):
            for cz in (-0.5, size_m[2] - 0.5):
                p = moving.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))
                corners.append(reference.TransformPhysicalPointToContinuousIndex(p))
    c = np.asarray(corners)
    lo = np.maximum(c.min(axis=0), -0.5)
    hi = np.minimum(c.max(axis=0), size_r - 0.5)
    frac = np.clip(hi - lo, 0.0, None) / np.maximum(size_r, 1)
    return tuple(float(f) for f in frac)


def overlap_fraction(moving, reference) -> float:
    """Fraction of ``reference``'s field-of-view volume covered by ``moving`` (product of the per-axis
    fractions of :func:`overlap_fractions_xyz`)."""
    return float(np.prod(overlap_fractions_xyz(moving, reference)))


def _check_volume(img, what: str) -> None:
    if img.GetDimension() != 3:
        raise ConversionError(f"{what} is {img.GetDimension()}D, expected 3D")
    if min(img.GetSize()) == 0:
        raise ConversionError(f"{what} is empty (size {tuple(img.GetSize())})")


def harmonize(loaded: LoadedCase, options: ConversionOptions) -> tuple[dict, dict]:
    """Put CT, PET and label on the PET grid, check them, crop if asked.

    Returns ``(images, facts)``: ``images`` maps ``"ct"``, ``"pet"``, ``"label"`` to SimpleITK images
    (int16 HU, float32, uint8) on one grid; ``facts`` are manifest entries.

    Raises:
        ConversionError: empty or non-3D volume; non-finite PET/CT voxels; PET all zero; CT covering
            less than ``options.min_overlap_fraction`` of the PET's z extent; CT with no voxel below -500 HU
            (not in HU, e.g. an unset offset) or none above (no body); labeled cohort without a label;
            empty body mask when cropping or writing a body pseudo-label.
    """
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.geometry import (
        body_mask,
        mask_bbox_zyx,
        resample_to_reference,
        same_geometry,
    )

    pet, ct, label = loaded.pet, loaded.ct, loaded.label
    _check_volume(pet, "PET")
    _check_volume(ct, "CT")
    warnings = list(loaded.meta.get("warnings", []))
    facts: dict[str, Any] = {
        "original_pet": _geometry(pet),
        "original_ct": {k: v for k, v in _geometry(ct).items() if k in ("spacing_mm", "shape_zyx")},
    }

    if pet.GetPixelID() != sitk.sitkFloat32:
        pet = sitk.Cast(pet, sitk.sitkFloat32)
    pet_arr = sitk.GetArrayViewFromImage(pet)
    n_bad = int(pet_arr.size - np.count_nonzero(np.isfinite(pet_arr)))
    if n_bad:
        raise ConversionError(f"PET has {n_bad} non-finite (NaN/inf) voxel(s)")
    pet_max = float(pet_arr.max())
    if pet_max <= 0:
        raise ConversionError(f"PET is empty (maximum {pet_max:g})")
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
        raise ConversionError(
            f"CT covers only {100 * fz:.1f} % of the PET's axial (z) extent "
            f"(minimum {100 * options.min_overlap_fraction:.0f} %)"
        )
    if fz < 0.99:
        warnings.append(f"CT covers {100 * fz:.1f} % of the PET's axial extent; the rest is filled with "
                        f"{CT_FILL_HU:g} HU")

    ct_view = sitk.GetArrayViewFromImage(ct)
    if ct_view.dtype.kind == "f" and not np.all(np.isfinite(ct_view)):
        raise ConversionError("CT has non-finite (NaN/inf) voxels")
    src_min, src_max = float(ct_view.min()), float(ct_view.max())
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
        box = mask_bbox_zyx(mask, options.body_margin_vox)
        if box is None:
            raise ConversionError("empty body mask: cannot crop to the body")
        sz, sy, sx = box
        images = {k: v[sx.start:sx.stop, sy.start:sy.stop, sz.start:sz.stop] for k, v in images.items()}
        facts["cropped"] = True
        facts["crop_box_zyx"] = [[s.start, s.stop] for s in box]
        lab_arr = lab_arr[sz, sy, sx]
    n_fg = int(np.count_nonzero(lab_arr))
    voxel_ml = float(np.prod(images["pet"].GetSpacing())) / 1000.0
    label_info.update({"foreground_voxels": n_fg, "foreground_ml": round(n_fg * voxel_ml, 3)})
    facts["label"] = label_info
    facts["pet_max"] = round(pet_max, 4)
    facts["ct_range_hu"] = [ct_min, ct_max]
    facts["warnings"] = warnings
    facts.update(_geometry(images["pet"]))
    return images, facts


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


def run_parallel(func: Callable, tasks: Sequence[tuple], num_processes: int = 1, desc: str = "",
                 quiet: bool = False, on_crash: Callable[[tuple, BaseException], Any] | None = None) -> Iterator:
    """Yield ``func(*task)`` for each task, in completion order, with a tqdm progress bar on stderr.

    ``num_processes > 1`` uses a ``spawn`` process pool (``func`` and the tasks must be picklable).
    When a worker dies (out of memory, segfault) or a task cannot be pickled, ``on_crash(task, exc)``
    provides the result instead (re-raised when ``on_crash`` is None).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, disable=quiet, file=sys.stderr, unit="case", dynamic_ncols=True)
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield func(*task)
                bar.update(1)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(num_processes, len(tasks)), mp_context=ctx) as pool:
            futures = {pool.submit(func, *task): task for task in tasks}
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except Exception as e:  # noqa: BLE001 - a broken worker must not lose the other results
                    if on_crash is None:
                        raise
                    result = on_crash(futures[fut], e)
                yield result
                bar.update(1)
    finally:
        bar.close()


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
            "schemes": PET_NORMALIZATION_SCHEMES[pet_normalization],
            "note": "nnU-Net 2.8.1 chooses normalization by channel name (case-insensitive): 'CT'/'ct' -> "
                    "CTNormalization, other names -> ZScoreNormalization. Pretraining and fine-tuning "
                    "datasets must agree (transfer the plans).",
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


def jsonable(obj: Any) -> Any:
    """``obj`` with every value JSON-serializable (unknown types become their ``str``)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def sanitize_id(text: str) -> str:
    """A case-id-safe version of ``text``: runs of characters other than ``[A-Za-z0-9.-]`` become ``_``."""
    import re

    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")
    return out or "case"


def read_id_list(path: Path) -> list[str]:
    """Identifiers from a text file: one per line, blank lines and ``#`` comments ignored.

    Raises:
        BadInputError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"exclusion list {path} not found")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
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


def check_nifti_gz_complete(path: Path) -> None:
    """Raise :class:`ConversionError` if a ``.nii.gz`` file is truncated or its gzip stream is corrupt.

    Needed because ITK's NIfTI reader accepts a truncated ``.nii.gz`` without error (the missing voxels
    come back as garbage or zeros), a common result of an interrupted download. Cheap check first:
    the gzip trailer (last 4 bytes, uncompressed size mod 2**32) must equal the size the NIfTI header
    implies (``vox_offset`` + voxels x bytes per voxel); only when it does not (e.g. a multi-member
    gzip) is the whole stream decompressed to be sure. Files that are not NIfTI-1/2 are left alone.
    """
    import gzip
    import struct
    import zlib

    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(544)
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
    except (OSError, EOFError, zlib.error) as e:
        raise ConversionError(f"cannot read {path}: corrupt gzip ({e})") from None
    expected = None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        n = 1
        for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
            n *= max(int(d), 1)
        expected = int(vox_offset) + n * max(int(bitpix), 8) // 8
        break
    if expected is None or isize == expected % 2**32:
        return
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ConversionError(f"cannot read {path}: truncated or corrupt gzip ({e})") from None
    if total < expected:
        raise ConversionError(f"cannot read {path}: truncated ({total} of {expected} bytes)")


def read_image(path: Path):
    """``sitk.ReadImage`` with a :class:`ConversionError` naming the file on failure.

    ``.nii.gz`` files are first checked for truncation (:func:`check_nifti_gz_complete`). Note that
    ITK's NIfTI reader turns NaN voxels into 0, so NaNs in NIfTI files cannot be detected here.
    """
    import SimpleITK as sitk

    if str(path).lower().endswith(".nii.gz"):
        check_nifti_gz_complete(Path(path))
    try:
        return sitk.ReadImage(str(path))
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with a long ITK message
        first = str(e).strip().splitlines()
        msg = next((ln for ln in first if "ERROR" in ln or "Exception" in ln or "rror" in ln), first[0] if first else "")
        raise ConversionError(f"cannot read {path}: {msg.strip()[:200]}") from None
