"""Cohort names -> discover functions, and :func:`convert_cohort` (what ``nnUNetv2_petct_convert`` calls)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunetv2_petct.conversion.core import (
    NONFINITE_POLICIES,
    PET_NORMALIZATION_BY_CHOICE,
    PET_NORMALIZATION_CHANNEL_NAMES,
    BadInputError,
    CaseSource,
    ConversionOptions,
    ConversionReport,
    Discovery,
    LayoutError,
    check_dataset_folder,
    convert_cases,
    source_tree_links,
)
from nnunetv2_petct.io import probe_writable_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortSpec:
    """A cohort the converter knows.

    Attributes:
        module, function: where its discover function lives (imported on first use):
            ``discover(source, **options) -> Discovery``; its keyword parameters are the
            cohort-specific options.
        default_name: dataset name used when ``--name`` is not given.
        crop_default: crop to the body by default (pretraining-only cohorts) or keep the PET grid
            (labeled cohorts, so predictions map back onto the original PET).
        description: one line for ``--help`` and ``dataset.json``.
    """

    module: str
    function: str
    default_name: str
    crop_default: bool
    description: str

    def discover(self, source: Path, **options: Any) -> Discovery:
        return self.discover_function()(source, **options)

    def discover_function(self) -> Callable[..., Discovery]:
        import importlib

        return getattr(importlib.import_module(self.module), self.function)


_M = "nnunetv2_petct.conversion."
COHORTS: dict[str, CohortSpec] = {
    "autopet": CohortSpec(_M + "autopet", "discover_autopet", "AutoPET", False,
                          "AutoPET FDG-PET-CT-Lesions, per-study NIfTI release (SUV, CT, SEG)"),
    "autopet-nnunet": CohortSpec(_M + "autopet", "discover_autopet_nnunet", "AutoPET", False,
                                 "AutoPET, autoPET III/IV nnU-Net release (imagesTr/labelsTr)"),
    "autopet-dicom": CohortSpec(_M + "autopet", "discover_autopet_dicom", "AutoPET", False,
                                "AutoPET, TCIA DICOM release with DICOM-SEG"),
    "deep-psma": CohortSpec(_M + "deep_psma", "discover_deep_psma", "DEEPPSMA_FDG", False,
                            "DEEP-PSMA, FDG part (label: TTB)"),
    "spade": CohortSpec(_M + "spade", "discover_spade", "SPADE", True,
                        "SPADE (Stanford) per-scan pet.npy/ct.npy, unlabeled"),
    "vimed-pet": CohortSpec(_M + "vimed", "discover_vimed", "ViMedPET", True,
                            "ViMed-PET per-study arrays or volumes, unlabeled"),
    "dicom": CohortSpec(_M + "generic_dicom", "discover_dicom", "PETCT", True,
                        "any folder of DICOM PET/CT studies (SUV from the headers), unlabeled"),
}


def cohort_options(cohort: str) -> list[str]:
    """Names of the cohort-specific keyword options of ``cohort``'s discover function."""
    sig = inspect.signature(COHORTS[cohort].discover_function())
    return [n for n, p in list(sig.parameters.items())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]


# ------------------------------------------------------------------------------------ entry point


def resolve_raw_dir(raw_dir: str | os.PathLike | None) -> Path:
    """``raw_dir`` or ``$nnUNet_raw``.

    Raises:
        BadInputError: neither is set.
    """
    value = raw_dir if raw_dir else os.environ.get("nnUNet_raw")
    if not value:
        raise BadInputError("no output folder: set the environment variable nnUNet_raw or pass -o/--raw-dir")
    return Path(value)


def dataset_folder(raw_dir: Path, dataset_id: int, name: str) -> Path:
    """``raw_dir/DatasetXXX_<name>``.

    Raises:
        BadInputError: id outside 1..999, bad name, or another ``DatasetXXX_*`` with the same id.
    """
    if not 1 <= int(dataset_id) <= 999:
        raise BadInputError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name or ""):
        raise BadInputError(f"dataset name {name!r}: use letters, digits, '_' and '-' only")
    folder = Path(raw_dir) / f"Dataset{int(dataset_id):03d}_{name}"
    if Path(raw_dir).is_dir():
        others = [p.name for p in Path(raw_dir).glob(f"Dataset{int(dataset_id):03d}_*") if p != folder and p.is_dir()]
        if others:
            raise BadInputError(f"dataset id {int(dataset_id)} is already used by {others[0]} in {raw_dir}; "
                                f"choose another id (nnU-Net needs ids to be unique)")
    return folder


def find_dataset_dir(raw_dir: Path, dataset: int | str) -> Path:
    """The folder of a dataset given by id (``221``) or full name (``Dataset221_AutoPET``).

    Raises:
        BadInputError: not found or ambiguous.
    """
    raw_dir = Path(raw_dir)
    s = str(dataset)
    if s.isdigit():
        matches = sorted(p for p in raw_dir.glob(f"Dataset{int(s):03d}_*") if p.is_dir())
        if len(matches) != 1:
            raise BadInputError(f"expected one Dataset{int(s):03d}_* folder in {raw_dir}, found {len(matches)}")
        return matches[0]
    p = raw_dir / s
    if not p.is_dir():
        raise BadInputError(f"{p} does not exist")
    return p


def convert_cohort(cohort: str, source: str | os.PathLike, dataset_id: int, raw_dir: str | os.PathLike | None = None,
                   *, name: str | None = None, num_processes: int = 1, overwrite: bool = False, quiet: bool = False,
                   crop: bool | None = None, pet_normalization: str = "zscore",
                   min_overlap_fraction: float = 0.5, body_margin_vox: int = 3, nonfinite: str = "error",
                   **options: Any) -> ConversionReport:
    """Convert one cohort into ``<raw_dir>/DatasetXXX_<name>/`` (nnU-Net raw format).

    Args:
        cohort: a key of :data:`COHORTS`.
        source: the cohort's folder as downloaded (never modified).
        dataset_id: nnU-Net dataset id (1..999).
        raw_dir: output root; default ``$nnUNet_raw``.
        name: dataset name (default the cohort's, e.g. ``AutoPET``).
        num_processes: worker processes.
        overwrite: redo finished cases (otherwise they are skipped).
        crop: crop to the body; default per cohort (labeled cohorts: no; pretraining-only: yes).
        pet_normalization: the normalization choice, by its user-facing name (``"nnunet"``, ``"pet-global"``,
            ``"zscore-both"``; :data:`nnunetv2_petct.conversion.channels.NORMALIZATION_SCHEMES`) or by its
            historical one (``"zscore"`` = nnunet: PET channel named "PET"; ``"global"`` = pet-global: PET
            named "ct", which nnU-Net maps to CTNormalization); recorded in
            ``dataset.json["petct_normalization"]``.
        nonfinite: NaN/inf voxels in a source image: ``"error"`` (the case fails) or ``"zero"`` (set to
            0, recorded in the manifest).
        **options: cohort-specific options (see :func:`cohort_options`), e.g. ``spacing=(3, 3.5, 3.5)``.

    Returns:
        The :class:`ConversionReport` (failed cases are listed, not raised).

    Raises:
        BadInputError: unknown cohort, option not valid for the cohort, missing source, no output
            folder, dataset id clash, a dataset folder this package did not write, or a layout that does
            not match (:class:`LayoutError`).
        WriteError: the dataset folder cannot be written (read-only, not a folder, disk full, no inodes).
    """
    if cohort not in COHORTS:
        raise BadInputError(f"unknown cohort {cohort!r}; choose one of {', '.join(COHORTS)}")
    pet_normalization = PET_NORMALIZATION_BY_CHOICE.get(pet_normalization, pet_normalization)
    if pet_normalization not in PET_NORMALIZATION_CHANNEL_NAMES:
        raise BadInputError(f"--normalization must be one of {sorted(PET_NORMALIZATION_BY_CHOICE)}")
    if nonfinite not in NONFINITE_POLICIES:
        raise BadInputError(f"--nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    spec = COHORTS[cohort]
    allowed = cohort_options(cohort)
    bad = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        raise BadInputError(f"option(s) {flags} do not apply to cohort {cohort!r} (it accepts: "
                            f"{', '.join('--' + a.replace('_', '-') for a in allowed) or 'none'})")
    source = Path(source)
    if not source.exists():
        raise BadInputError(f"source folder {source} does not exist")
    raw = resolve_raw_dir(raw_dir)
    dataset_dir = dataset_folder(raw, dataset_id, name or spec.default_name)
    # before the (possibly long) discovery: a folder this tool did not write, or an output that cannot
    # take a new dataset folder at all (an existing folder is judged after planning: a run with nothing
    # to do must also work read-only)
    check_dataset_folder(dataset_dir, "converted", "nnUNetv2_petct_convert")
    if not dataset_dir.exists():
        probe_writable_dir(raw, "nnU-Net raw folder")
    _check_existing_cohort(dataset_dir, cohort, overwrite)
    discovery = spec.discover(source, **{k: v for k, v in options.items() if v is not None})
    if not discovery.sources:
        raise LayoutError(f"nothing to convert under {source}: every case was excluded "
                          f"({len(discovery.excluded)} excluded)")
    opts = ConversionOptions(
        labeled=discovery.labeled, crop_to_body=spec.crop_default if crop is None else bool(crop),
        body_margin_vox=body_margin_vox, min_overlap_fraction=min_overlap_fraction,
        pet_normalization=pet_normalization, nonfinite=nonfinite,
    )
    notes = list(discovery.notes) + (source_tree_links(source) if source.is_dir() else [])
    return convert_cases(discovery.sources, dataset_dir, opts, name=dataset_dir.name.split("_", 1)[1],
                         description=spec.description, num_processes=num_processes, overwrite=overwrite,
                         quiet=quiet, excluded=discovery.excluded, notes=notes)


def _check_existing_cohort(dataset_dir: Path, cohort: str, overwrite: bool) -> None:
    dj = dataset_dir / "dataset.json"
    if not dj.is_file():
        return
    try:
        existing = json.loads(dj.read_text()).get("petct_cohorts", [])
    except ValueError:
        return
    if existing and cohort not in existing and not overwrite:
        raise BadInputError(f"{dataset_dir} already holds cohort(s) {existing}, not {cohort!r}; use another dataset "
                            f"id (merge cohorts with nnUNetv2_petct_pretraining_dataset) or --overwrite (which "
                            f"replaces its cases with this cohort's)")


__all__ = ["COHORTS", "CohortSpec", "CaseSource", "cohort_options", "convert_cohort", "dataset_folder",
           "find_dataset_dir", "resolve_raw_dir"]
