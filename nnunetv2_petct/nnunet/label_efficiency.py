"""Label-efficiency grid: fine-tuned vs scratch vs linear probe at several label fractions.

Drives the stock nnU-Net commands (``nnUNetv2_train``, ``nnUNetv2_predict``) in subprocesses and
scores the held-out predictions with :func:`nnunetv2_petct.evaluation.evaluate_folders`.

Design
------
* **Held-out test set**: either external images + labels (``test_images``/``test_labels``, e.g. an
  ``imagesTs``/``labelsTs`` pair), or case ids of the dataset itself (``test_cases``; those cases and
  every other case of their patients are removed from the pool), or, when neither is given, a seeded
  patient-grouped ``test_fraction`` of the dataset. Test cases are never trained or validated on.
* **Fixed validation set**: one seeded patient-grouped draw of ``val_fraction`` of the remaining cases
  (at least one case), the *same* for every fraction and method, so checkpoints are chosen and
  nnU-Net's final validation is computed on identical cases. Its patients never appear in training.
* **Training subsets**: from the rest (the *training pool*), patient-grouped (all of a patient's scans
  or none), drawn by :func:`nnunetv2_petct.transfer.splits.subset_cases` with one seed for all fractions, which
  makes the subsets nested (10 % inside 30 % inside 100 %) as far as whole patients allow. ``shots=K``
  adds a K-case subset of K different patients drawn among lesion-positive cases.
* **One nnU-Net fold per subset**: every subset becomes an entry ``{"train": subset, "val": val}`` of
  ``splits_final.json`` in the preprocessed dataset folder, so each run is the stock
  ``nnUNetv2_train DATASET CONFIG FOLD`` (two subsets with identical cases, e.g. a K-shot draw that
  equals a small fraction, share one fold and one training). Existing folds are kept and ours are appended (an identical
  entry is reused, so re-running is idempotent); when there is no ``splits_final.json`` yet, folds 0-4 are
  first filled with a patient-grouped 5-fold cross-validation of the non-test cases, so fold 0-4 keep
  their usual meaning. The mapping subset -> fold is written to ``label_efficiency_design.json``.
* **Methods** (``finetune.TRANSFER_TRAINERS``): ``pretrained`` = ``nnUNetTrainerPETCTFinetune``,
  ``scratch`` = ``nnUNetTrainerPETCTScratch``, ``probe`` = ``nnUNetTrainerPETCTLinearProbe`` (plus
  ``frozen_encoder``, ``probe_random_init``, ``nnunet_default`` on request); ``trainer_suffix``
  (``_tiny``) picks the tiny variants.
* **Outputs** (``out_dir``): ``label_efficiency.csv`` / ``.md`` (fraction x method: Dice, FPV, FNV,
  number of test cases), ``label_efficiency_dice.png`` (Dice vs fraction), ``commands.sh``,
  ``label_efficiency_design.json``, ``predictions/<method>/<subset>/``,
  ``evaluation/<method>/<subset>/`` (per-case CSVs from the evaluation library), ``logs/``.

A run whose ``checkpoint_final.pth`` exists is not trained again (resume after an interruption; delete
the fold folder to retrain). ``dry_run`` writes the splits and ``commands.sh`` and prints the commands
(for a cluster); ``skip_training`` then predicts and evaluates finished runs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunetv2_petct.io import fmt_number, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("pretrained", "scratch", "probe")
DESIGN_FILE = "label_efficiency_design.json"
TABLE_CSV = "label_efficiency.csv"
TABLE_MD = "label_efficiency.md"
PLOT_PNG = "label_efficiency_dice.png"
TABLE_COLUMNS = ("subset", "fraction", "fraction_actual", "shots", "n_train_cases", "method", "trainer", "fold", "dice",
                 "fpv_ml", "fnv_ml", "n_cases", "n_cases_dice")


class LabelEfficiencyError(RuntimeError):
    """Bad input (exit code 2 in the CLI); the message names the offending file, case or option."""


class RunFailedError(LabelEfficiencyError):
    """A training or prediction subprocess failed (exit code 1 in the CLI); names the run and its log."""


# ------------------------------------------------------------------------------------------ data model
@dataclass
class Subset:
    """One training subset = one nnU-Net fold."""

    name: str
    fold: int
    train: list[str]
    fraction: float  # share of the training pool actually used (cases; whole patients)
    requested_fraction: float | None = None
    shots: int | None = None


@dataclass
class Design:
    """Where every case went, and which fold each subset is."""

    dataset_name: str
    configuration: str
    plans: str
    seed: int
    pool: list[str]
    val: list[str]
    test: list[str]
    test_source: str
    subsets: list[Subset] = field(default_factory=list)
    splits_file: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    """One (subset, method) training + prediction + evaluation."""

    subset: Subset
    method: str
    trainer: str
    train_cmd: list[str]
    predict_cmd: list[str]
    fold_dir: Path
    pred_dir: Path
    eval_dir: Path


# ----------------------------------------------------------------------------------------- helpers
def _fraction_name(f: float) -> str:
    return f"frac{float(f):g}"


def resolve_dataset(dataset: str) -> str:
    """``DatasetXXX_Name`` for an id or name (nnU-Net's own lookup over raw/preprocessed/results)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    except RuntimeError as e:
        raise LabelEfficiencyError(str(e)) from e


def _env_dir(name: str) -> Path:
    v = os.environ.get(name)
    if not v:
        raise LabelEfficiencyError(f"{name} is not set (nnU-Net's folders must be configured)")
    return Path(v)


def preprocessed_cases(preprocessed_dataset_dir: Path, plans: dict, configuration: str) -> list[str]:
    """Case ids preprocessed for ``configuration`` (what ``nnUNetv2_train`` can use)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if configuration not in plans.get("configurations", {}):
        raise LabelEfficiencyError(f"configuration {configuration!r} not in the plans")
    folder = preprocessed_dataset_dir / plans["configurations"][configuration]["data_identifier"]
    if not folder.is_dir():
        raise LabelEfficiencyError(f"{folder} not found: run nnUNetv2_preprocess for {configuration} first")
    ids = sorted(infer_dataset_class(str(folder)).get_identifiers(str(folder)))
    if not ids:
        raise LabelEfficiencyError(f"no preprocessed cases in {folder}")
    return ids


def case_patients(cases: Sequence[str], dataset_dirs: Sequence[Path]) -> tuple[dict[str, str], str]:
    """Case -> patient, and where it came from.

    Looks in each of ``dataset_dirs`` (raw, then preprocessed dataset folder) for ``manifest.jsonl``
    (our converters) or ``phantom_cases.json`` (phantoms); else parses AutoPET ids
    (:func:`nnunetv2_petct.transfer.splits.study_key`); else every case is its own patient (stated in the design).
    """
    from nnunetv2_petct.transfer.splits import study_key

    for d in dataset_dirs:
        for name in ("manifest.jsonl", "phantom_cases.json"):
            f = Path(d) / name
            if not f.is_file():
                continue
            text = f.read_text()
            records = ([json.loads(line) for line in text.splitlines() if line.strip()]
                       if name.endswith(".jsonl") else json.loads(text))
            m = {str(r["case_id"]): str(r["patient_id"]) for r in records if "case_id" in r and "patient_id" in r}
            if all(c in m for c in cases):
                return {c: m[c] for c in cases}, str(f)
            logger.warning("%s does not list every case; ignoring it", f)
    keys = {c: study_key(c) for c in cases}
    if all(k is not None for k in keys.values()):
        return {c: k[0] for c, k in keys.items()}, "patient hash parsed from the AutoPET case ids"
    return {c: c for c in cases}, "no patient information found: every case is its own patient"


def lesion_positive(cases: Sequence[str], dataset_dirs: Sequence[Path], labels_dir: Path | None) -> list[str]:
    """Cases with foreground in their label: from ``manifest.jsonl`` label statistics when present, else
    by reading ``labels_dir/<case>.nii.gz`` (cost: one label read per case)."""
    for d in dataset_dirs:
        f = Path(d) / "manifest.jsonl"
        if f.is_file():
            recs = {r.get("case_id"): r for r in map(json.loads, filter(str.strip, f.read_text().splitlines()))}
            if all(c in recs and "foreground_voxels" in (recs[c].get("label") or {}) for c in cases):
                return sorted(c for c in cases if recs[c]["label"]["foreground_voxels"] > 0)
    if labels_dir is None or not labels_dir.is_dir():
        raise LabelEfficiencyError("cannot tell lesion-positive cases for --shots: no manifest.jsonl with label "
                                   "statistics and no labelsTr folder")
    import SimpleITK as sitk

    out = []
    for c in cases:
        p = labels_dir / f"{c}.nii.gz"
        if not p.is_file():
            raise LabelEfficiencyError(f"label of case {c} not found: {p}")
        if sitk.GetArrayViewFromImage(sitk.ReadImage(str(p))).any():
            out.append(c)
    return sorted(out)


# ------------------------------------------------------------------------------------------- design
def design_subsets(case_to_patient: Mapping[str, str], test: Sequence[str], fractions: Sequence[float],
                   shots: Sequence[int] = (), val_fraction: float = 0.1, seed: int = 12345,
                   shot_eligible: Sequence[str] | None = None) -> tuple[list[str], list[str], list[dict]]:
    """Pool, fixed validation set and training subsets (see the module doc). Pure.

    Returns:
        ``(pool, val, subsets)``; each subset ``{"name", "train", "fraction", "requested_fraction", "shots"}``;
        ``pool`` = training pool (cases neither test nor validation nor sharing a patient with them).

    Raises:
        LabelEfficiencyError: bad fractions/shots, or too few patients for a validation set and a pool.
    """
    from nnunetv2_petct.transfer.splits import SplitError, cases_by_patient, subset_cases

    test_set = set(test)
    test_patients = {case_to_patient[c] for c in test if c in case_to_patient}
    usable = {c: p for c, p in case_to_patient.items() if c not in test_set and p not in test_patients}
    groups = cases_by_patient(usable)
    if len(groups) < 2:
        raise LabelEfficiencyError(f"{len(groups)} patient(s) outside the test set: need >= 2 (validation + training)")
    if not 0 < val_fraction < 1:
        raise LabelEfficiencyError(f"val_fraction must be in (0, 1), got {val_fraction}")
    try:
        val = subset_cases(usable, fraction=val_fraction, seed=seed + 1)
    except SplitError as e:
        raise LabelEfficiencyError(f"validation set: {e}") from e
    val_patients = {usable[c] for c in val}
    if len(val_patients) == len(groups):  # never leave the pool empty
        raise LabelEfficiencyError("the validation set would take every patient; lower val_fraction")
    pool_map = {c: p for c, p in usable.items() if p not in val_patients}
    pool = sorted(pool_map)
    subsets = []
    for f in fractions:
        f = float(f)
        if not 0 < f <= 1:
            raise LabelEfficiencyError(f"fractions must be in (0, 1], got {f}")
        train = pool if f >= 1 else subset_cases(pool_map, fraction=f, seed=seed)
        subsets.append({"name": _fraction_name(f), "train": sorted(train), "fraction": len(train) / len(pool),
                        "requested_fraction": f, "shots": None})
    for k in shots:
        elig = None if shot_eligible is None else [c for c in shot_eligible if c in pool_map]
        try:
            train = subset_cases(pool_map, shots=int(k), seed=seed, eligible=elig)
        except SplitError as e:
            raise LabelEfficiencyError(f"{k} shots: {e}") from e
        subsets.append({"name": f"shots{int(k)}", "train": train, "fraction": len(train) / len(pool),
                        "requested_fraction": None, "shots": int(k)})
    names = [s["name"] for s in subsets]
    if len(set(names)) != len(names):
        raise LabelEfficiencyError(f"duplicate subsets: {names}")
    if not subsets:
        raise LabelEfficiencyError("no fraction or shots given")
    return pool, sorted(val), subsets


def assign_folds(existing: list[dict], entries: Sequence[dict], cv_cases: Mapping[str, str] | None,
                 seed: int = 12345) -> tuple[list[dict], list[int]]:
    """Append ``entries`` (``{"train", "val"}``) to nnU-Net splits; reuse identical existing folds.

    ``existing`` empty and ``cv_cases`` given: folds 0-4 become a patient-grouped 5-fold CV of
    ``cv_cases`` first (when there are >= 5 patients). Returns ``(splits, fold index per entry)``.
    """
    from nnunetv2_petct.transfer.splits import cases_by_patient, patient_grouped_kfold

    splits = [{"train": list(s["train"]), "val": list(s["val"])} for s in existing]
    if not splits and cv_cases and len(cases_by_patient(cv_cases)) >= 5:
        splits = patient_grouped_kfold(cv_cases, 5, seed)
    folds = []
    for e in entries:
        key = (sorted(e["train"]), sorted(e["val"]))
        idx = next((i for i, s in enumerate(splits) if (sorted(s["train"]), sorted(s["val"])) == key), None)
        if idx is None:
            splits.append({"train": sorted(e["train"]), "val": sorted(e["val"])})
            idx = len(splits) - 1
        folds.append(idx)
    return splits, folds


# ------------------------------------------------------------------------------------------- runner
def _script(name: str) -> str:
    """The console script ``name`` next to this interpreter, else on PATH, else the bare name."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name) or name


def _fold_dir(dataset_name: str, trainer: str, plans: str, configuration: str, fold: int) -> Path:
    """nnU-Net's ``get_output_folder`` (it reads ``nnUNet_results`` when called)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    _env_dir("nnUNet_results")  # our error message when it is not set
    return Path(get_output_folder(dataset_name, trainer, plans, configuration, fold))


def _run_logged(cmd: list[str], log_file: Path, what: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RunFailedError(f"{what} failed (exit {proc.returncode}); log: {log_file}\n{tail}")


def _prepare_test_folders(test: Sequence[str], raw_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Folders of links to the test cases' raw images and labels (nnUNetv2_predict reads a whole folder)."""
    img_dir, lab_dir = out_dir / "test_images", out_dir / "test_labels"
    for d in (img_dir, lab_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    with open(raw_dir / "dataset.json") as f:
        ending = json.load(f).get("file_ending", ".nii.gz")
    for c in test:
        imgs = sorted((raw_dir / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"))
        lab = raw_dir / "labelsTr" / f"{c}{ending}"
        if not imgs or not lab.is_file():
            raise LabelEfficiencyError(f"test case {c}: images or label not found in {raw_dir}")
        for src in [*imgs, lab]:
            dst = (img_dir if src in imgs else lab_dir) / src.name
            try:
                os.symlink(src.resolve(), dst)
            except OSError:
                shutil.copy2(src, dst)
    return img_dir, lab_dir


def label_efficiency(
    dataset: str,
    out_dir: str | os.PathLike,
    fractions: Sequence[float] = (0.1, 0.3, 1.0),
    shots: Sequence[int] = (),
    pretrained: str | os.PathLike | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    trainer_suffix: str = "",
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    test_cases: Sequence[str] | None = None,
    test_images: str | os.PathLike | None = None,
    test_labels: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 12345,
    device: str = "cuda",
    disable_tta: bool = False,
    npp: int | None = None,
    nps: int | None = None,
    dry_run: bool = False,
    skip_training: bool = False,
    quiet: bool = False,
) -> list[dict]:
    """Run (or, with ``dry_run``, plan) the grid; returns the table rows (empty for a dry run).

    See the module doc for the design. ``pretrained`` is checked against the target network before
    anything runs (:func:`nnunetv2_petct.transfer.weights.check_compatibility`).

    Raises:
        LabelEfficiencyError: bad input (named), an incompatible checkpoint (with the tensor list and
            the fix), or a failed run (with its log file).
    """
    from tqdm import tqdm

    from nnunetv2_petct.nnunet.trainers.finetune import (
        NEEDS_PRETRAINED,
        TRANSFER_TRAINERS,
        network_from_plans,
    )
    from nnunetv2_petct.transfer.splits import write_splits
    from nnunetv2_petct.transfer.weights import IncompatibleCheckpointError, check_compatibility

    unknown = [m for m in methods if m not in TRANSFER_TRAINERS]
    if unknown:
        raise LabelEfficiencyError(f"unknown method(s) {unknown}; choose from {sorted(TRANSFER_TRAINERS)}")
    if not methods:
        raise LabelEfficiencyError("no method given")
    need_weights = [m for m in methods if m in NEEDS_PRETRAINED]
    if need_weights and pretrained is None:
        raise LabelEfficiencyError(f"method(s) {need_weights} need --pretrained foundation_final.pth")
    if pretrained is not None:
        pretrained = Path(pretrained).resolve()
        if not pretrained.is_file():
            raise LabelEfficiencyError(f"pretrained checkpoint not found: {pretrained}")
    if (test_images is None) != (test_labels is None):
        raise LabelEfficiencyError("give both test_images and test_labels, or neither")
    if test_images is not None and test_cases is not None:
        raise LabelEfficiencyError("give either test_cases or test_images/test_labels, not both")

    dataset_name = resolve_dataset(dataset)
    pre_dir = _env_dir("nnUNet_preprocessed") / dataset_name
    raw_dir = Path(os.environ.get("nnUNet_raw", "")) / dataset_name if os.environ.get("nnUNet_raw") else None
    plans_file = pre_dir / f"{plans}.json"
    if not plans_file.is_file():
        raise LabelEfficiencyError(f"plans not found: {plans_file}")
    plans_dict = json.loads(plans_file.read_text())
    dataset_json = json.loads((pre_dir / "dataset.json").read_text())
    cases = preprocessed_cases(pre_dir, plans_dict, configuration)
    dirs = [d for d in (raw_dir, pre_dir) if d is not None and d.is_dir()]
    c2p, patient_source = case_patients(cases, dirs)

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    # held-out test set
    if test_images is not None:
        test_images, test_labels = Path(test_images).resolve(), Path(test_labels).resolve()
        for d in (test_images, test_labels):
            if not d.is_dir():
                raise LabelEfficiencyError(f"test folder not found: {d}")
        test = sorted(p.name[: -len(".nii.gz")] for p in test_labels.glob("*.nii.gz"))
        if not test:
            raise LabelEfficiencyError(f"no labels (*.nii.gz) in {test_labels}")
        overlap = sorted(set(test) & set(cases))
        if overlap:
            raise LabelEfficiencyError(f"external test case(s) also in the training dataset: {overlap[:5]}")
        test_source = f"external: {test_images}"
    else:
        if test_cases is None:
            from nnunetv2_petct.transfer.splits import subset_cases

            test = subset_cases(c2p, fraction=test_fraction, seed=seed + 2)
            test_source = f"seeded patient-grouped {test_fraction:g} of the dataset"
        else:
            test = sorted(test_cases)
            missing = [c for c in test if c not in c2p]
            if missing:
                raise LabelEfficiencyError(f"test case(s) not in the preprocessed dataset: {missing[:5]}")
            test_source = "case list"
        if raw_dir is None or not (raw_dir / "imagesTr").is_dir():
            raise LabelEfficiencyError("in-dataset test cases need the raw dataset ($nnUNet_raw/<dataset>/imagesTr)")
        test_images, test_labels = _prepare_test_folders(test, raw_dir, out)

    # shots draw among lesion-positive cases
    eligible = None
    if shots:
        labels_dir = raw_dir / "labelsTr" if raw_dir is not None else None
        eligible = lesion_positive([c for c in cases if c not in set(test)], dirs, labels_dir)

    pool, val, subsets = design_subsets(c2p, test, fractions, shots, val_fraction, seed, eligible)
    splits_file = pre_dir / "splits_final.json"
    existing = json.loads(splits_file.read_text()) if splits_file.is_file() else []
    cv_cases = {c: p for c, p in c2p.items() if c not in set(test)}
    splits, folds = assign_folds(existing, [{"train": s["train"], "val": val} for s in subsets], cv_cases, seed)
    if splits != existing:
        write_splits(splits, splits_file)
    design = Design(dataset_name, configuration, plans, seed, pool, val, list(test), test_source,
                    [Subset(s["name"], f, s["train"], s["fraction"], s["requested_fraction"], s["shots"])
                     for s, f in zip(subsets, folds)], str(splits_file))
    d = design.to_dict()
    d["patients_from"] = patient_source
    write_text_atomic(json.dumps(d, indent=2) + "\n", out / DESIGN_FILE)

    # compatibility of the foundation checkpoint with this dataset's network, before any run
    if pretrained is not None and any(m in NEEDS_PRETRAINED for m in methods):
        net = network_from_plans(plans_dict, configuration, dataset_json=dataset_json)
        try:
            rep = check_compatibility(pretrained, net)
        except IncompatibleCheckpointError as e:
            raise LabelEfficiencyError(str(e)) from e
        if not rep.ok:
            raise LabelEfficiencyError(f"{pretrained} does not fit {dataset_name} ({plans}, {configuration}):\n"
                                       + rep.message())

    runs: list[Run] = []
    for s in design.subsets:
        for m in methods:
            trainer = TRANSFER_TRAINERS[m] + trainer_suffix
            train_cmd = ["nnUNetv2_train", dataset_name, configuration, str(s.fold), "-tr", trainer, "-p", plans,
                         "-device", device]
            if m in NEEDS_PRETRAINED:
                train_cmd += ["-pretrained_weights", str(pretrained)]
            pred_dir = out / "predictions" / m / s.name
            predict_cmd = ["nnUNetv2_predict", "-i", str(test_images), "-o", str(pred_dir), "-d", dataset_name,
                           "-p", plans, "-c", configuration, "-f", str(s.fold), "-tr", trainer,
                           "-chk", "checkpoint_final.pth", "-device", device]
            if disable_tta:
                predict_cmd.append("--disable_tta")
            if npp is not None:
                predict_cmd += ["-npp", str(npp)]
            if nps is not None:
                predict_cmd += ["-nps", str(nps)]
            runs.append(Run(s, m, trainer, train_cmd, predict_cmd,
                            _fold_dir(dataset_name, trainer, plans, configuration, s.fold), pred_dir,
                            out / "evaluation" / m / s.name))

    script = ["#!/usr/bin/env bash", "# label-efficiency grid; generated by nnUNetv2_petct_label_efficiency",
              f"# dataset {dataset_name}; splits: {splits_file}; design: {out / DESIGN_FILE}", "set -euo pipefail",
              "# 1) training (independent runs: distribute them over a cluster)"]
    script += list(dict.fromkeys(shlex.join(r.train_cmd) for r in runs))  # identical subsets share a fold
    script += ["# 2) prediction of the held-out test set (after training)"]
    script += [shlex.join(r.predict_cmd) for r in runs]
    script += ["# 3) evaluation and table:",
               f"# nnUNetv2_petct_label_efficiency -d {dataset_name} ... --skip-training -o {out}"]
    write_text_atomic("\n".join(script) + "\n", out / "commands.sh")
    if dry_run:
        print("\n".join(script[4:]))
        return []

    rows = []
    bar = tqdm(runs, desc="label efficiency", unit="run", disable=quiet)
    for r in bar:
        bar.set_postfix_str(f"{r.method} {r.subset.name}")
        ckpt = r.fold_dir / "checkpoint_final.pth"
        if ckpt.is_file():
            logger.info("%s fold %d: checkpoint_final.pth exists, not training again", r.trainer, r.subset.fold)
        elif skip_training:
            raise LabelEfficiencyError(f"--skip-training but {ckpt} does not exist (run the training first)")
        else:
            _run_logged([_script(r.train_cmd[0]), *r.train_cmd[1:]], out / "logs" / f"{r.method}_{r.subset.name}_train.log",
                        f"training {r.trainer} fold {r.subset.fold} ({r.subset.name})")
        if r.pred_dir.exists():
            shutil.rmtree(r.pred_dir)
        _run_logged([_script(r.predict_cmd[0]), *r.predict_cmd[1:]],
                    out / "logs" / f"{r.method}_{r.subset.name}_predict.log",
                    f"prediction {r.trainer} fold {r.subset.fold} ({r.subset.name})")
        rows.append(_evaluate(r, Path(test_labels), Path(test_images), dataset_json))
    bar.close()
    write_table(rows, out, design)
    return rows


def _evaluate(r: Run, test_labels: Path, test_images: Path, dataset_json: dict) -> dict:
    from nnunetv2_petct.conversion.channels import channel_kind
    from nnunetv2_petct.evaluation import evaluate_folders

    names = dataset_json.get("channel_names", {})
    pet_dir = test_images if len(names) > 1 and channel_kind(str(names.get("1", ""))) == "PET" else None
    summary = evaluate_folders(test_labels, r.pred_dir, r.eval_dir, pet_dir=pet_dir, quiet=True)
    mean = summary["mean"]
    return {
        "subset": r.subset.name,
        "fraction": r.subset.requested_fraction if r.subset.requested_fraction is not None else r.subset.fraction,
        "fraction_actual": r.subset.fraction,
        "shots": r.subset.shots,
        "n_train_cases": len(r.subset.train),
        "method": r.method,
        "trainer": r.trainer,
        "fold": r.subset.fold,
        "dice": mean.get("dice"),
        "fpv_ml": mean.get("fpv_ml"),
        "fnv_ml": mean.get("fnv_ml"),
        "n_cases": summary["n_cases"],
        "n_cases_dice": summary["n_used"].get("dice"),
    }


# -------------------------------------------------------------------------------------------- table
def table_markdown(rows: Sequence[Mapping], design: Design | None = None) -> str:
    """Markdown: one line per subset, one column per method with ``Dice / FPV / FNV`` (ml)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    by = {(r["subset"], r["method"]): r for r in rows}
    lines = ["# Label efficiency", ""]
    if design is not None:
        lines += [f"Dataset {design.dataset_name} ({design.plans}, {design.configuration}); training pool "
                  f"{len(design.pool)} cases, fixed validation set {len(design.val)}, held-out test set "
                  f"{len(design.test)} ({design.test_source}); seed {design.seed}.", ""]
    n_cases = sorted({r["n_cases"] for r in rows})
    lines += ["Cells: Dice / FPV (ml) / FNV (ml), means over the test cases (Dice and FNV leave cases with empty "
              f"ground truth out, autoPET rule); test cases per run: {', '.join(map(str, n_cases))}.", ""]
    lines.append("| subset | fraction (actual) | train cases | " + " | ".join(methods) + " |")
    lines.append("|---|---|---|" + "---|" * len(methods))
    for s in subsets:
        first = next(r for r in rows if r["subset"] == s)
        cells = []
        for m in methods:
            r = by.get((s, m))
            cells.append("-" if r is None else f"{fmt_number(r['dice'])} / {fmt_number(r['fpv_ml'], 2)} / {fmt_number(r['fnv_ml'], 2)}")
        lines.append(f"| {s} | {first['fraction']:.3g} ({first['fraction_actual']:.3g}) | {first['n_train_cases']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping], out_dir: str | os.PathLike, design: Design | None = None) -> dict[str, Path]:
    """Write ``label_efficiency.csv``, ``.md`` and the Dice-vs-fraction plot; returns their paths."""
    from nnunetv2_petct.evaluation import plot_dice_vs_fraction

    out = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in TABLE_COLUMNS])
    paths = {"csv": out / TABLE_CSV, "md": out / TABLE_MD}
    write_text_atomic(buf.getvalue(), paths["csv"])
    write_text_atomic(table_markdown(rows, design), paths["md"])
    # shots subsets stay in the table only: their effective fraction could coincide with a fraction subset
    plottable = [{"fraction": r["fraction"], "method": r["method"], "dice": r["dice"]} for r in rows
                 if r.get("dice") is not None and r.get("shots") in (None, "")]
    if plottable:
        paths["png"] = plot_dice_vs_fraction(plottable, out / PLOT_PNG)
    else:
        logger.warning("no Dice value (all test cases have empty ground truth?): no plot")
    return paths
