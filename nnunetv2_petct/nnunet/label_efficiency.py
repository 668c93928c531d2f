"""Label-efficiency grid: pretrained vs from-scratch baselines vs linear probes, repeated over seeds.

Drives the stock nnU-Net commands (``nnUNetv2_train``, ``nnUNetv2_predict``) in subprocesses, scores the
held-out predictions with :func:`nnunetv2_petct.evaluation.evaluate_folders` and compares the methods
with :mod:`nnunetv2_petct.evaluation.statistics`.

Design
------
* **Held-out test set**: either external images + labels (``test_images``/``test_labels``, e.g. an
  ``imagesTs``/``labelsTs`` pair), or case ids of the dataset itself (``test_cases``; those cases and
  every other case of their patients are removed from the pool), or, when neither is given, a seeded
  patient-grouped ``test_fraction`` of the dataset. Test cases are never trained or validated on, and
  the same test cases score every method, fraction and seed (so comparisons are paired).
* **Fixed validation set**: one seeded patient-grouped draw of ``val_fraction`` of the remaining cases
  (at least one case), the *same* for every fraction, method and seed. Its patients never appear in
  training.
* **Training subsets**: from the rest (the *training pool*), patient-grouped (all of a patient's scans
  or none), drawn by :func:`nnunetv2_petct.transfer.splits.subset_cases` with one seed for all fractions, which
  makes the subsets nested (10 % inside 30 % inside 100 %) as far as whole patients allow. ``shots=K``
  adds a K-case subset of K different patients drawn among lesion-positive cases.
* **Seeds** (``seeds=N``): replicate ``k`` (0..N-1) uses seed ``seed + 1000 k`` both for its subset draws
  (N different draws of every fraction < 1 and of every K-shot subset; the 100 % subset is the whole pool
  each time) and as the training seed of each of its runs (``NNUNETV2_PETCT_SEED``, read by our trainers
  in ``initialize``, see :class:`nnunetv2_petct.nnunet.trainers.base.TrainingSeedMixin`, and recorded in
  the fold's ``training_seed.json``). Replicate 0 is the single-seed design of earlier versions.
* **One nnU-Net fold per (subset, replicate)**: every subset becomes an entry ``{"train": subset, "val":
  val}`` of ``splits_final.json`` in the preprocessed dataset folder, so each run is the stock
  ``nnUNetv2_train DATASET CONFIG FOLD`` (two subsets with identical cases *in one replicate*, e.g. a
  K-shot draw that equals a small fraction, share one fold and one training; identical subsets of
  different replicates, e.g. 100 %, get separate folds because their training seeds differ). Existing
  folds are kept and ours are appended (identical entries are reused, so re-running is idempotent); when
  there is no ``splits_final.json`` yet, folds 0-4 are first filled with a patient-grouped 5-fold
  cross-validation of the non-test cases, so fold 0-4 keep their usual meaning. The mapping subset ->
  fold is written to ``label_efficiency_design.json``.
* **Methods** (``finetune.TRANSFER_TRAINERS``, recipes in ``finetune.METHOD_RECIPES``): default
  ``pretrained`` (fine-tuning, lr 1e-3), ``scratch`` (lr 1e-2, same warm-up and length),
  ``nnunet_default`` (stock nnU-Net), ``probe`` (linear probe of the joint model); on request
  ``late_fusion_probe`` (separated-modality probe; needs ``pretrained_ct`` + ``pretrained_pet``, bundled
  into ``late_fusion_checkpoint.pth``), ``scratch_lr1e3``, ``frozen_encoder``, ``probe_random_init``.
  ``trainer_suffix`` (``_tiny``, ``_demo``) picks those variants.
* **Leakage guard**: the test cases are compared with the cases the foundation checkpoint(s) were
  pretrained on (``petct_metadata.pretraining_data``, :mod:`nnunetv2_petct.transfer.leakage`); an overlap
  stops the runner unless ``allow_test_overlap`` (then it is recorded loudly); a checkpoint that does not
  list its pretraining cases is used with a warning and recorded as unverified.
* **Outputs** (``out_dir``): ``label_efficiency.csv`` (per test case: one row per case x method x subset
  x seed), ``label_efficiency_runs.csv`` (per run: means over the test cases), ``label_efficiency_summary.csv``
  (subset x method: mean, sd and n over seeds), ``label_efficiency_paired.csv`` (paired comparisons),
  ``label_efficiency.md`` (the tables, each column's recipe, the leakage check),
  ``label_efficiency_dice.png`` (Dice vs fraction, error bars = sd over seeds), ``commands.sh``,
  ``label_efficiency_design.json``, ``predictions/<method>/<run>/``, ``evaluation/<method>/<run>/``
  (per-case CSVs), ``logs/``; ``<run>`` is the subset name for replicate 0, ``<subset>_seed<k>`` for k >= 1.

Statistics (:mod:`nnunetv2_petct.evaluation.statistics`): a cell is the mean ± sd (ddof 1) over the N
seeds of each run's mean over the test cases (Dice and FNV over the cases with non-empty ground truth,
autoPET rule), with n = number of seeds. Paired comparisons, method A vs B on the same test cases: the
paired unit is a test case, each method's value of a case being its mean over that method's seeds; only
cases where both are defined are paired (n reported); mean difference A - B with a seeded percentile
bootstrap 95 % CI over test cases and a two-sided Wilcoxon signed-rank p. Compared: ``pretrained`` vs each
from-scratch baseline in every subset; ``probe`` vs ``late_fusion_probe`` / ``probe_random_init`` in every
subset; and (the paper's first claim) ``pretrained`` at each fraction < 1 vs each from-scratch baseline at
fraction 1.

Steps
-----
:func:`label_efficiency` is a short composition of steps over one :class:`Design` (each takes the design and
what the previous step produced), so that a new axis or baseline is one step or one field:

1. **design** :func:`make_design` (the arguments) -> :class:`Design`: validates every argument, picks the test
   set, draws the subsets (:func:`design_subsets`), checks the checkpoints and the leakage guard. Nothing of
   the grid is written yet (only the late-fusion bundle, which those checks read), so bad input (say
   ``--fractions 0 1.5``) is refused before ``test_images``/``test_labels`` or the splits exist.
2. **folds** :func:`make_folds` (design) -> design: folds (:func:`assign_folds`), ``splits_final.json``, the
   in-dataset test folders, ``label_efficiency_design.json`` (:meth:`Design.record`).
3. **runs** :func:`plan_runs` (design) -> ``list[Run]`` (subset x method, stock commands;
   :func:`predict_command`), :func:`write_commands` (design, runs) -> ``commands.sh``; a dry run stops here.
4. **train** :func:`train_run` (design, run) -> ``checkpoint_final.pth`` (resumes; checks the seed).
5. **predict** a :data:`Predictor` (design, run) -> ``list[Prediction]``; default :func:`predict_run` (one
   plain prediction of the test set).
6. **evaluate** :func:`evaluate_prediction` (design, prediction) -> (run row, per-case rows);
   :func:`execute_runs` does 4-6 run by run (as before: a run is trained, predicted and evaluated before the
   next one starts).
7. **tabulate** :func:`tabulate` (design, run rows, per-case rows) -> the CSVs, the report, the plot.

Extension seams. A caller with extra inputs plugs into steps 5 and 6 without copying the runner: its
predictor returns several :class:`Prediction` variants of one run, each with its own ``pred_dir``/``eval_dir``
and ``columns`` (extra values copied into that variant's run and per-case rows). An interactive *clicks* axis,
for instance, is ``execute_runs(design, plan_runs(design), predictor=clicks_predictor)`` where
``clicks_predictor(design, run)`` (a closure over the per-case click lists) predicts the test set at 0..10
clicks into ``run.pred_dir / f"clicks{k}"`` and returns ``Prediction(run, that_dir, run.eval_dir /
f"clicks{k}", {"clicks": k})`` for each ``k``; :func:`evaluate_prediction` scores each unchanged. Its table
would group by ``clicks`` too (the summaries and CSV columns of :func:`write_table` know the standard
columns only: a click table is :func:`summarize_runs` keyed by one more field). A new baseline is one
entry of ``finetune.TRANSFER_TRAINERS`` (a method) and, when it needs an input such as a checkpoint, one
:class:`Design` field that :func:`plan_runs` passes to its training command.

A run whose ``checkpoint_final.pth`` exists is not trained again (resume after an interruption; delete
the fold folder to retrain); its ``training_seed.json`` must match the design's seed. ``dry_run`` writes
the splits and ``commands.sh`` and prints the commands (for a cluster); ``skip_training`` then predicts
and evaluates finished runs.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nnunetv2_petct.io import csv_text, fmt_number, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("pretrained", "scratch", "nnunet_default", "probe")
DESIGN_FILE = "label_efficiency_design.json"
TABLE_CSV = "label_efficiency.csv"
RUNS_CSV = "label_efficiency_runs.csv"
SUMMARY_CSV = "label_efficiency_summary.csv"
PAIRED_CSV = "label_efficiency_paired.csv"
TABLE_MD = "label_efficiency.md"
PLOT_PNG = "label_efficiency_dice.png"
LATE_FUSION_FILE = "late_fusion_checkpoint.pth"
METRICS = ("dice", "fpv_ml", "fnv_ml")
METRIC_LABELS = {"dice": "Dice", "fpv_ml": "FPV (ml)", "fnv_ml": "FNV (ml)"}
RUN_COLUMNS = ("subset", "replicate", "seed", "fraction", "fraction_actual", "shots", "n_train_cases", "method",
               "trainer", "fold", "dice", "fpv_ml", "fnv_ml", "n_cases", "n_cases_dice")
CASE_ROW_COLUMNS = ("subset", "replicate", "seed", "fraction", "fraction_actual", "shots", "n_train_cases", "method",
                    "trainer", "fold", "case", "dice", "fpv_ml", "fnv_ml")
SUMMARY_COLUMNS = ("subset", "fraction", "shots", "method", "trainer", "n_seeds", "n_train_cases",
                   *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd", "n")))
PAIRED_COLUMNS = ("claim", "metric", "method_a", "subset_a", "method_b", "subset_b", "n_cases", "mean_a", "mean_b",
                  "mean_diff", "ci_low", "ci_high", "confidence", "p_wilcoxon", "n_resamples")
REPLICATE_SEED_STEP = 1000
BASELINES_OF = {"pretrained": ("scratch", "nnunet_default", "scratch_lr1e3"),
                "probe": ("late_fusion_probe", "probe_random_init")}
"""Paired comparisons made inside every subset: method -> the methods it is compared against."""
FROM_SCRATCH = ("scratch", "nnunet_default", "scratch_lr1e3")
"""From-scratch baselines compared at fraction 1 with ``pretrained`` at smaller fractions (claim 1)."""


class LabelEfficiencyError(RuntimeError):
    """Bad input (exit code 2 in the CLI); the message names the offending file, case or option."""


class RunFailedError(LabelEfficiencyError):
    """A training or prediction subprocess failed (exit code 1 in the CLI); names the run and its log."""


# ------------------------------------------------------------------------------------------ data model
@dataclass
class Subset:
    """One training subset of one replicate = one nnU-Net fold."""

    name: str
    fold: int
    train: list[str]
    fraction: float  # share of the training pool actually used (cases; whole patients)
    requested_fraction: float | None = None
    shots: int | None = None
    replicate: int = 0
    seed: int = 12345  # subset draw seed = training seed of its runs
    run_name: str = ""  # name for replicate 0, name_seed<k> otherwise


_STEP = {"record": False}
"""Field metadata of :class:`Design`: what the steps need, not part of :meth:`Design.to_dict`."""


@dataclass
class Design:
    """Where every case went, and which fold each subset is; plus what the later steps need.

    Built by :func:`make_design` (folds ``-1``), completed by :func:`make_folds`. The first fields are the
    design proper (:meth:`to_dict`); :meth:`record` adds the provenance written to ``label_efficiency_design.json``.
    A new option of the grid (a baseline's checkpoint, a click budget) is one more field here.
    """

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
    seeds: int = 1
    # ---- for the steps (not in to_dict)
    out_dir: Path = field(default_factory=Path, metadata=_STEP)
    trainers: dict[str, str] = field(default_factory=dict, metadata=_STEP)  # method -> trainer, in method order
    recipes: dict[str, str] = field(default_factory=dict, metadata=_STEP)
    schedules: dict[str, dict | None] = field(default_factory=dict, metadata=_STEP)
    patients_from: str = field(default="", metadata=_STEP)
    leakage_check: dict = field(default_factory=dict, metadata=_STEP)
    pretrained: Path | None = field(default=None, metadata=_STEP)
    late_fusion_file: Path | None = field(default=None, metadata=_STEP)
    test_images: Path | None = field(default=None, metadata=_STEP)  # folder nnUNetv2_predict reads
    test_labels: Path | None = field(default=None, metadata=_STEP)  # folder the evaluation reads
    test_links_from: Path | None = field(default=None, metadata=_STEP)  # raw dataset of in-dataset test cases
    dataset_json: dict = field(default_factory=dict, metadata=_STEP)
    cv_cases: dict[str, str] = field(default_factory=dict, metadata=_STEP)  # non-test case -> patient (CV folds)
    device: str = field(default="cuda", metadata=_STEP)
    disable_tta: bool = field(default=False, metadata=_STEP)
    npp: int | None = field(default=None, metadata=_STEP)
    nps: int | None = field(default=None, metadata=_STEP)

    @property
    def methods(self) -> list[str]:
        return list(self.trainers)

    def to_dict(self) -> dict:
        """The design proper: the cases of pool, validation and test sets, the subsets and their folds."""
        return {f.name: (copy.deepcopy(v) if f.name != "subsets" else [asdict(s) for s in v])
                for f in fields(self) if f.metadata.get("record", True) for v in (getattr(self, f.name),)}

    def record(self) -> dict:
        """What ``label_efficiency_design.json`` holds: :meth:`to_dict`, where the patients came from, the
        replicates' seeds, each method's trainer/recipe/schedule, the leakage check, the late-fusion bundle."""
        d = self.to_dict()
        d["patients_from"] = self.patients_from
        d["replicates"] = [{"replicate": k, "seed": replicate_seed(self.seed, k),
                            "used_for": "subset draws (fractions < 1, K-shot) and training seed (NNUNETV2_PETCT_SEED)"}
                           for k in range(int(self.seeds))]
        d["methods"] = {m: {"trainer": t, "recipe": self.recipes.get(m, ""), "schedule": self.schedules.get(m)}
                        for m, t in self.trainers.items()}
        d["leakage_check"] = self.leakage_check
        d["late_fusion_checkpoint"] = str(self.late_fusion_file) if self.late_fusion_file else None
        return d


@dataclass
class Run:
    """One (subset, replicate, method) training + prediction + evaluation."""

    subset: Subset
    method: str
    trainer: str
    train_cmd: list[str]
    predict_cmd: list[str]
    fold_dir: Path
    pred_dir: Path
    eval_dir: Path
    train_env: dict = field(default_factory=dict)


@dataclass
class Prediction:
    """One prediction folder of a run, to evaluate (a run has one plain prediction, or several variants)."""

    run: Run
    pred_dir: Path
    eval_dir: Path
    columns: dict[str, object] = field(default_factory=dict)
    """Extra values for this variant's rows (e.g. ``{"clicks": 3}``), after the standard columns."""


Predictor = Callable[[Design, Run], Sequence[Prediction]]
"""The predict step's seam: a trained run -> its predictions (:func:`predict_run` is the default)."""


# ----------------------------------------------------------------------------------------- helpers
def _check_checkpoint_weights_only(path: Path) -> None:
    """Refuse (LabelEfficiencyError naming the file) a checkpoint that stock nnUNetv2_predict, which unpickles
    it, should not load: one that is not weights-only readable or is broken."""
    from nnunetv2_petct.nnunet.predictor import ModelSelectionError, read_model_checkpoint

    try:
        read_model_checkpoint(path)
    except ModelSelectionError as e:
        raise LabelEfficiencyError(f"not predicting with it: {e}") from None


def replicate_seed(seed: int, replicate: int) -> int:
    """Seed of replicate ``k``: ``seed + 1000 k`` (subset draws and training); replicate 0 = ``seed``."""
    return int(seed) + REPLICATE_SEED_STEP * int(replicate)


def run_name(subset_name: str, replicate: int) -> str:
    """Folder name of a run: the subset name for replicate 0, ``<subset>_seed<k>`` otherwise."""
    return subset_name if int(replicate) == 0 else f"{subset_name}_seed{int(replicate)}"


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
                   shot_eligible: Sequence[str] | None = None,
                   n_seeds: int = 1) -> tuple[list[str], list[str], list[dict]]:
    """Pool, fixed validation set and training subsets of every replicate (see the module doc). Pure.

    Returns:
        ``(pool, val, subsets)``; each subset ``{"name", "train", "fraction", "requested_fraction", "shots",
        "replicate", "seed", "run_name"}`` (replicate-major order); ``pool`` = training pool (cases neither
        test nor validation nor sharing a patient with them).

    Raises:
        LabelEfficiencyError: bad fractions/shots/seeds, or too few patients for a validation set and a pool.
    """
    from nnunetv2_petct.transfer.splits import SplitError, cases_by_patient, subset_cases

    if int(n_seeds) < 1:
        raise LabelEfficiencyError(f"seeds must be >= 1, got {n_seeds}")
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
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise LabelEfficiencyError(f"fractions must be in (0, 1], got {float(f)}")
    subsets = []
    for k in range(int(n_seeds)):
        rs = replicate_seed(seed, k)
        for f in fractions:
            f = float(f)
            train = pool if f >= 1 else subset_cases(pool_map, fraction=f, seed=rs)
            subsets.append({"name": _fraction_name(f), "train": sorted(train), "fraction": len(train) / len(pool),
                            "requested_fraction": f, "shots": None})
        for n_shots in shots:
            elig = None if shot_eligible is None else [c for c in shot_eligible if c in pool_map]
            try:
                train = subset_cases(pool_map, shots=int(n_shots), seed=rs, eligible=elig)
            except SplitError as e:
                raise LabelEfficiencyError(f"{n_shots} shots: {e}") from e
            subsets.append({"name": f"shots{int(n_shots)}", "train": train, "fraction": len(train) / len(pool),
                            "requested_fraction": None, "shots": int(n_shots)})
        for s in subsets:
            if "replicate" not in s:
                s.update(replicate=k, seed=rs, run_name=run_name(s["name"], k))
    names = [s["name"] for s in subsets if s["replicate"] == 0]
    if len(set(names)) != len(names):
        raise LabelEfficiencyError(f"duplicate subsets: {names}")
    if not subsets:
        raise LabelEfficiencyError("no fraction or shots given")
    return pool, sorted(val), subsets


def assign_folds(existing: list[dict], entries: Sequence[dict], cv_cases: Mapping[str, str] | None,
                 seed: int = 12345) -> tuple[list[dict], list[int]]:
    """Append ``entries`` (``{"train", "val"[, "group"]}``) to nnU-Net splits; reuse identical existing folds.

    Entries with identical cases share one fold when they have the same ``group`` (a replicate: same
    training seed); identical entries of different groups get separate folds (nnU-Net allows duplicate
    folds): the i-th group with given cases takes the i-th existing fold with those cases, else a new one,
    so re-running with the same entries maps to the same folds. ``existing`` empty and ``cv_cases`` given:
    folds 0-4 become a patient-grouped 5-fold CV of ``cv_cases`` first (when there are >= 5 patients).
    Returns ``(splits, fold index per entry)``.
    """
    from nnunetv2_petct.transfer.splits import cases_by_patient, patient_grouped_kfold

    splits = [{"train": list(s["train"]), "val": list(s["val"])} for s in existing]
    if not splits and cv_cases and len(cases_by_patient(cv_cases)) >= 5:
        splits = patient_grouped_kfold(cv_cases, 5, seed)
    occurrences: dict[tuple, list[int]] = {}
    for i, s in enumerate(splits):
        occurrences.setdefault((tuple(sorted(s["train"])), tuple(sorted(s["val"]))), []).append(i)
    taken: dict[tuple, dict] = {}
    folds = []
    for e in entries:
        key = (tuple(sorted(e["train"])), tuple(sorted(e["val"])))
        group = e.get("group", 0)
        by_group = taken.setdefault(key, {})
        if group not in by_group:
            found = occurrences.setdefault(key, [])
            if len(by_group) < len(found):
                by_group[group] = found[len(by_group)]
            else:
                splits.append({"train": list(key[0]), "val": list(key[1])})
                found.append(len(splits) - 1)
                by_group[group] = len(splits) - 1
        folds.append(by_group[group])
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


def _run_logged(cmd: list[str], log_file: Path, what: str, extra_env: Mapping[str, str] | None = None) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(extra_env or {})}
    with open(log_file, "w") as log:
        log.write("$ " + "".join(f"{k}={v} " for k, v in (extra_env or {}).items()) + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def _check_trainers_exist(trainers: Sequence[str]) -> None:
    """Every trainer name must be one of ours (e.g. no ``_demo`` variant of a method that has none)."""
    from nnunetv2_petct.nnunet.registry import all_trainer_classes

    known = all_trainer_classes()
    missing = sorted({t for t in trainers if t not in known})
    if missing:
        raise LabelEfficiencyError(f"trainer(s) {missing} do not exist (is the --trainer-suffix variant defined for "
                                   f"that method?)")


def _check_leakage(checkpoints: Sequence[tuple[str, Path, Mapping]], test: Sequence[str],
                   test_records: Mapping | None, allow_test_overlap: bool) -> dict:
    """The leakage guard over every foundation checkpoint used; returns the design's ``leakage_check``."""
    from nnunetv2_petct.transfer.leakage import OVERRIDE_FLAG, check_checkpoint_leakage

    out = {"rule": "same case id, source case id or AutoPET study key (patient hash + study date); "
                   "see nnunetv2_petct.transfer.leakage",
           "allow_test_overlap": bool(allow_test_overlap), "checkpoints": []}
    for what, path, ckpt in checkpoints:
        rep = check_checkpoint_leakage(ckpt, test, test_records)
        entry = {"checkpoint": what, "file": str(path), **rep.to_dict()}
        if rep.verified:  # the test cases shown absent from this checkpoint's pretraining set
            entry["verified_excluded_test_cases"] = sorted(set(test) - set(rep.overlapping_test_cases))
        out["checkpoints"].append(entry)
        if rep.overlap and not allow_test_overlap:
            raise LabelEfficiencyError(
                f"{len(rep.overlapping_test_cases)} of the {len(set(test))} test case(s) were in the pretraining set "
                f"of {path} ({what}): {rep.describe()}. Exclude them from pretraining "
                f"(nnUNetv2_petct_pretraining_dataset --exclude/--protect-test-cases) and pretrain again, choose "
                f"other test cases, or pass {OVERRIDE_FLAG} to run anyway (recorded in the design and the table).")
        if rep.overlap:
            msg = (f"WARNING: {OVERRIDE_FLAG}: {len(rep.overlapping_test_cases)} test case(s) were in the pretraining "
                   f"set of {path}: {rep.describe()}. Results on them are NOT held out from pretraining.")
            logger.warning(msg)
            print(f"[nnunetv2_petct] {msg}", file=sys.stderr)
        elif not rep.verified:
            logger.warning("could not verify that the test cases are absent from the pretraining set of %s: %s",
                           path, rep.reason)
    return out


def _merged_checkpoint(ckpt: Mapping) -> bool:
    meta = ckpt.get("petct_metadata") if isinstance(ckpt.get("petct_metadata"), Mapping) else {}
    return any(isinstance(a, Mapping) and a.get("operation") == "merge_single_channel_checkpoints"
               for a in meta.get("adaptations", []) or [])


# ------------------------------------------------------------------------------------------- steps
def make_design(
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
    seeds: int = 1,
    pretrained_ct: str | os.PathLike | None = None,
    pretrained_pet: str | os.PathLike | None = None,
    allow_test_overlap: bool = False,
    device: str = "cuda",
    disable_tta: bool = False,
    npp: int | None = None,
    nps: int | None = None,
) -> Design:
    """Step 1, *design*: validate every argument, pick the test set, draw the subsets, check the checkpoints.

    Reads the dataset and the checkpoints; writes nothing in ``out_dir`` except, when late-fusion methods are
    asked for, ``late_fusion_checkpoint.pth`` (the bundle that the compatibility and leakage checks read),
    which is written only after every argument has been validated. The subsets have no fold yet
    (``fold = -1``): :func:`make_folds` assigns them.

    Raises:
        LabelEfficiencyError: as :func:`label_efficiency`.
    """
    from nnunetv2_petct.nnunet.trainers.finetune import NEEDS_PRETRAINED, NEEDS_SEPARATED, TRANSFER_TRAINERS
    from nnunetv2_petct.transfer.leakage import read_manifest_records

    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in TRANSFER_TRAINERS]
    if unknown:
        raise LabelEfficiencyError(f"unknown method(s) {unknown}; choose from {sorted(TRANSFER_TRAINERS)}")
    if not methods:
        raise LabelEfficiencyError("no method given")
    if int(seeds) < 1:
        raise LabelEfficiencyError(f"--seeds must be >= 1, got {seeds}")
    need_weights = [m for m in methods if m in NEEDS_PRETRAINED]
    if need_weights and pretrained is None:
        raise LabelEfficiencyError(f"method(s) {need_weights} need --pretrained foundation_final.pth")
    need_pair = [m for m in methods if m in NEEDS_SEPARATED]
    if need_pair and (pretrained_ct is None or pretrained_pet is None):
        raise LabelEfficiencyError(f"method(s) {need_pair} need --pretrained-ct and --pretrained-pet (the CT-only and "
                                   f"PET-only foundation checkpoints)")
    paths = {}
    for what, p in (("pretrained", pretrained), ("pretrained CT", pretrained_ct), ("pretrained PET", pretrained_pet)):
        if p is not None:
            paths[what] = Path(p).resolve()
            if not paths[what].is_file():
                raise LabelEfficiencyError(f"{what} checkpoint not found: {paths[what]}")
    pretrained_path = paths.get("pretrained")
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
    trainers = {m: TRANSFER_TRAINERS[m] + trainer_suffix for m in methods}
    _check_trainers_exist(list(trainers.values()))
    out = Path(out_dir).resolve()

    # held-out test set (in-dataset test cases: their folders of links are written by make_folds)
    test_links_from = None
    if test_images is not None:
        img_dir, lab_dir = Path(test_images).resolve(), Path(test_labels).resolve()  # type: ignore[arg-type]
        for d in (img_dir, lab_dir):
            if not d.is_dir():
                raise LabelEfficiencyError(f"test folder not found: {d}")
        test = sorted(p.name[: -len(".nii.gz")] for p in lab_dir.glob("*.nii.gz"))
        if not test:
            raise LabelEfficiencyError(f"no labels (*.nii.gz) in {lab_dir}")
        overlap = sorted(set(test) & set(cases))
        if overlap:
            raise LabelEfficiencyError(f"external test case(s) also in the training dataset: {overlap[:5]}")
        test_source = f"external: {img_dir}"
        test_records = read_manifest_records(lab_dir.parent)
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
        test_records = next((r for r in map(read_manifest_records, dirs) if r is not None), None)
        _check_test_cases_on_disk(test, raw_dir)
        img_dir, lab_dir, test_links_from = out / "test_images", out / "test_labels", raw_dir

    # shots draw among lesion-positive cases
    eligible = None
    if shots:
        labels_dir = raw_dir / "labelsTr" if raw_dir is not None else None
        eligible = lesion_positive([c for c in cases if c not in set(test)], dirs, labels_dir)

    pool, val, subsets = design_subsets(c2p, test, fractions, shots, val_fraction, seed, eligible, int(seeds))

    # checkpoints: compatibility with this dataset's network and the leakage guard, before the folds are written
    checked, late_fusion_file = _check_checkpoints(
        plans_dict, dataset_json, dataset_name, plans, configuration, pretrained_path if need_weights else None,
        need_weights, (paths["pretrained CT"], paths["pretrained PET"]) if need_pair else None, out)
    leakage = _check_leakage(checked, test, test_records, allow_test_overlap)

    schedules = {m: _schedule(trainers[m]) for m in methods}
    return Design(
        dataset_name, configuration, plans, seed, pool, val, list(test), test_source,
        [Subset(s["name"], -1, s["train"], s["fraction"], s["requested_fraction"], s["shots"], s["replicate"],
                s["seed"], s["run_name"]) for s in subsets],
        str(pre_dir / "splits_final.json"), int(seeds),
        out_dir=out, trainers=trainers, patients_from=patient_source,
        recipes={m: _recipe(m, trainers[m], schedules[m]) for m in methods}, schedules=schedules,
        leakage_check=leakage, pretrained=pretrained_path, late_fusion_file=late_fusion_file,
        test_images=img_dir, test_labels=lab_dir, test_links_from=test_links_from, dataset_json=dataset_json,
        cv_cases={c: p for c, p in c2p.items() if c not in set(test)}, device=device, disable_tta=disable_tta,
        npp=npp, nps=nps)


def _check_test_cases_on_disk(test: Sequence[str], raw_dir: Path) -> None:
    """Every in-dataset test case has its images and label in ``raw_dir`` (before anything is written)."""
    with open(raw_dir / "dataset.json") as f:
        ending = json.load(f).get("file_ending", ".nii.gz")
    for c in test:
        imgs = sorted((raw_dir / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"))
        if not imgs or not (raw_dir / "labelsTr" / f"{c}{ending}").is_file():
            raise LabelEfficiencyError(f"test case {c}: images or label not found in {raw_dir}")


def _check_checkpoints(plans_dict: dict, dataset_json: dict, dataset_name: str, plans: str, configuration: str,
                       pretrained: Path | None, need_weights: Sequence[str], separated: tuple[Path, Path] | None,
                       out: Path) -> tuple[list[tuple[str, Path, Mapping]], Path | None]:
    """Load the foundation checkpoint(s) and check them against this dataset's network; writes the late-fusion
    bundle (``separated`` = CT-only, PET-only checkpoints) into ``out``. Returns what the leakage guard checks
    and the bundle's path."""
    from nnunetv2_petct.nnunet.trainers.finetune import network_from_plans
    from nnunetv2_petct.transfer.weights import (
        IncompatibleCheckpointError,
        check_compatibility,
        load_checkpoint,
    )

    checked: list[tuple[str, Path, Mapping]] = []
    if pretrained is not None:
        ckpt = load_checkpoint(pretrained)
        if _merged_checkpoint(ckpt) and any(m != "pretrained" for m in need_weights):
            raise LabelEfficiencyError(
                f"{pretrained} merges two single-modality checkpoints (nnUNetv2_petct_adapt_checkpoint --ct/--pet): "
                f"it only initialises fine-tuning (method 'pretrained'); a merged network computes neither model's "
                f"features, so do not probe it — use method late_fusion_probe with --pretrained-ct/--pretrained-pet")
        net = network_from_plans(plans_dict, configuration, dataset_json=dataset_json)
        try:
            rep = check_compatibility(ckpt, net)
        except IncompatibleCheckpointError as e:
            raise LabelEfficiencyError(str(e)) from e
        if not rep.ok:
            raise LabelEfficiencyError(f"{pretrained} does not fit {dataset_name} ({plans}, {configuration}):\n"
                                       + rep.message())
        checked.append(("joint CT+PET foundation (--pretrained)", pretrained, ckpt))
    late_fusion_file = None
    if separated is not None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunetv2_petct.nnunet.trainers.late_fusion import build_late_fusion_network
        from nnunetv2_petct.transfer.late_fusion import LateFusionError, write_late_fusion_checkpoint

        out.mkdir(parents=True, exist_ok=True)
        late_fusion_file = out / LATE_FUSION_FILE
        try:
            bundle = write_late_fusion_checkpoint(separated[0], separated[1], late_fusion_file)
        except (IncompatibleCheckpointError, LateFusionError) as e:
            raise LabelEfficiencyError(f"late-fusion checkpoint: {e}") from e
        pm = PlansManager(plans_dict)
        net = build_late_fusion_network(pm, pm.get_configuration(configuration), len(dataset_json["channel_names"]),
                                        pm.get_label_manager(dataset_json).num_segmentation_heads)
        rep = check_compatibility(bundle, net)
        if not rep.ok:
            raise LabelEfficiencyError(f"the CT-only/PET-only checkpoints do not fit {dataset_name} ({plans}, "
                                       f"{configuration}):\n" + rep.message())
        checked.append(("separated CT-only + PET-only foundations (--pretrained-ct/--pretrained-pet)", late_fusion_file,
                        bundle))
    return checked, late_fusion_file


def make_folds(design: Design) -> Design:
    """Step 2, *folds*: give every subset its nnU-Net fold (:func:`assign_folds`), write ``splits_final.json``
    (when it changes), the in-dataset test folders and ``label_efficiency_design.json``. Updates and returns
    ``design``."""
    from nnunetv2_petct.transfer.splits import write_splits

    out = design.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if design.test_links_from is not None:
        _prepare_test_folders(design.test, design.test_links_from, out)
    splits_file = Path(design.splits_file)
    existing = json.loads(splits_file.read_text()) if splits_file.is_file() else []
    splits, folds = assign_folds(existing, [{"train": s.train, "val": design.val, "group": s.replicate}
                                            for s in design.subsets], design.cv_cases, design.seed)
    if splits != existing:
        write_splits(splits, splits_file)
    for s, f in zip(design.subsets, folds):
        s.fold = f
    write_json_atomic(design.record(), out / DESIGN_FILE)
    return design


def plan_runs(design: Design) -> list[Run]:
    """Step 3a: one :class:`Run` per subset x method (subset-major), with its stock train and predict commands."""
    from nnunetv2_petct.nnunet.trainers.base import SEED_ENV
    from nnunetv2_petct.nnunet.trainers.finetune import NEEDS_PRETRAINED, NEEDS_SEPARATED

    d, out = design, design.out_dir
    runs: list[Run] = []
    for s in d.subsets:
        for m, trainer in d.trainers.items():
            train_cmd = ["nnUNetv2_train", d.dataset_name, d.configuration, str(s.fold), "-tr", trainer, "-p", d.plans,
                         "-device", d.device]
            if m in NEEDS_PRETRAINED:
                train_cmd += ["-pretrained_weights", str(d.pretrained)]
            if m in NEEDS_SEPARATED:
                train_cmd += ["-pretrained_weights", str(d.late_fusion_file)]
            pred_dir = out / "predictions" / m / s.run_name
            runs.append(Run(s, m, trainer, train_cmd, predict_command(d, s.fold, trainer, pred_dir),
                            _fold_dir(d.dataset_name, trainer, d.plans, d.configuration, s.fold), pred_dir,
                            out / "evaluation" / m / s.run_name, {SEED_ENV: str(s.seed)}))
    return runs


def predict_command(design: Design, fold: int, trainer: str, pred_dir: Path,
                    test_images: Path | None = None) -> list[str]:
    """The stock ``nnUNetv2_predict`` command of one run (``test_images``: default the design's test images)."""
    d = design
    cmd = ["nnUNetv2_predict", "-i", str(test_images or d.test_images), "-o", str(pred_dir), "-d", d.dataset_name,
           "-p", d.plans, "-c", d.configuration, "-f", str(fold), "-tr", trainer, "-chk", "checkpoint_final.pth",
           "-device", d.device]
    if d.disable_tta:
        cmd.append("--disable_tta")
    if d.npp is not None:
        cmd += ["-npp", str(d.npp)]
    if d.nps is not None:
        cmd += ["-nps", str(d.nps)]
    return cmd


def write_commands(design: Design, runs: Sequence[Run]) -> list[str]:
    """Step 3b: ``commands.sh`` (training, prediction, then the evaluation command); returns its lines."""
    from nnunetv2_petct.nnunet.trainers.base import SEED_ENV

    def train_line(r: Run) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in r.train_env.items()) + " " + shlex.join(r.train_cmd)

    out = design.out_dir
    script = ["#!/usr/bin/env bash", "# label-efficiency grid; generated by nnUNetv2_petct_label_efficiency",
              f"# dataset {design.dataset_name}; splits: {design.splits_file}; design: {out / DESIGN_FILE}",
              "set -euo pipefail",
              f"# 1) training (independent runs: distribute them over a cluster); {SEED_ENV} = the run's seed"]
    script += list(dict.fromkeys(train_line(r) for r in runs))  # identical subsets of a replicate share a fold
    script += ["# 2) prediction of the held-out test set (after training)"]
    script += [shlex.join(r.predict_cmd) for r in runs]
    script += ["# 3) evaluation and table:",
               f"# nnUNetv2_petct_label_efficiency -d {design.dataset_name} ... --skip-training -o {out}"]
    write_text_atomic("\n".join(script) + "\n", out / "commands.sh")
    return script


def train_run(design: Design, run: Run, skip_training: bool = False) -> Path:
    """Step 4, *train*: ``nnUNetv2_train`` for ``run`` unless its ``checkpoint_final.pth`` exists (then its
    recorded seed must be the design's); returns the checkpoint.

    Raises:
        LabelEfficiencyError: a seed mismatch, or ``skip_training`` without a checkpoint.
        RunFailedError: the training failed.
    """
    from nnunetv2_petct.nnunet.trainers.base import read_training_seed

    r = run
    ckpt = r.fold_dir / "checkpoint_final.pth"
    if ckpt.is_file():
        rec = read_training_seed(r.fold_dir)
        if rec is None:
            logger.warning("%s: no training_seed.json (trained outside this runner?): its seed is unknown", r.fold_dir)
        elif rec.get("seed") != r.subset.seed:
            raise LabelEfficiencyError(
                f"{r.fold_dir} was trained with seed {rec.get('seed')}, this design expects {r.subset.seed} "
                f"(replicate {r.subset.replicate}); delete that fold folder to retrain, or use the same --seed")
        logger.info("%s fold %d: checkpoint_final.pth exists, not training again", r.trainer, r.subset.fold)
    elif skip_training:
        raise LabelEfficiencyError(f"--skip-training but {ckpt} does not exist (run the training first)")
    else:
        _run_logged([_script(r.train_cmd[0]), *r.train_cmd[1:]],
                    design.out_dir / "logs" / f"{r.method}_{r.subset.run_name}_train.log",
                    f"training {r.trainer} fold {r.subset.fold} ({r.subset.run_name})", r.train_env)
    return ckpt


def predict_run(design: Design, run: Run) -> list[Prediction]:
    """Step 5, *predict* (the default :data:`Predictor`): the stock ``nnUNetv2_predict`` of the test set into
    ``run.pred_dir`` (emptied first); one plain :class:`Prediction`. The run's checkpoint is read weights-only
    first: stock ``nnUNetv2_predict`` unpickles it."""
    r = run
    _check_checkpoint_weights_only(r.fold_dir / "checkpoint_final.pth")
    if r.pred_dir.exists():
        shutil.rmtree(r.pred_dir)
    _run_logged([_script(r.predict_cmd[0]), *r.predict_cmd[1:]],
                design.out_dir / "logs" / f"{r.method}_{r.subset.run_name}_predict.log",
                f"prediction {r.trainer} fold {r.subset.fold} ({r.subset.run_name})")
    return [Prediction(r, r.pred_dir, r.eval_dir)]


def evaluate_prediction(design: Design, prediction: Prediction) -> tuple[dict, list[dict]]:
    """Step 6, *evaluate*: autoPET metrics of one prediction folder against the design's test labels (PET
    channel for the volumes when the dataset has one). Returns ``(run row, per-case rows)``; both carry the
    run's columns (:data:`RUN_COLUMNS` / :data:`CASE_ROW_COLUMNS`) then ``prediction.columns``."""
    from nnunetv2_petct.conversion.channels import channel_kind
    from nnunetv2_petct.evaluation import evaluate_folders
    from nnunetv2_petct.evaluation.folders import PER_CASE_CSV

    p, r = prediction, prediction.run
    names = design.dataset_json.get("channel_names", {})
    pet_dir = design.test_images if len(names) > 1 and channel_kind(str(names.get("1", ""))) == "PET" else None
    summary = evaluate_folders(design.test_labels, p.pred_dir, p.eval_dir, pet_dir=pet_dir, quiet=True)
    mean = summary["mean"]
    s = r.subset
    base = {
        "subset": s.name,
        "replicate": s.replicate,
        "seed": s.seed,
        "fraction": s.requested_fraction if s.requested_fraction is not None else s.fraction,
        "fraction_actual": s.fraction,
        "shots": s.shots,
        "n_train_cases": len(s.train),
        "method": r.method,
        "trainer": r.trainer,
        "fold": s.fold,
    }
    run_row = {**base, "dice": mean.get("dice"), "fpv_ml": mean.get("fpv_ml"), "fnv_ml": mean.get("fnv_ml"),
               "n_cases": summary["n_cases"], "n_cases_dice": summary["n_used"].get("dice"), **p.columns}
    with open(p.eval_dir / PER_CASE_CSV, newline="") as f:
        per_case = [{**base, "case": row["case"], **{m: _num(row[m]) for m in METRICS}, **p.columns}
                    for row in csv.DictReader(f)]
    return run_row, per_case


def execute_runs(design: Design, runs: Sequence[Run], skip_training: bool = False, quiet: bool = False,
                 predictor: Predictor | None = None) -> tuple[list[dict], list[dict]]:
    """Steps 4-6 run by run (train, predict, evaluate each run before the next one starts, so a failure
    stops the grid early): returns ``(run rows, per-case rows)``. ``predictor`` (default
    :func:`predict_run`) returns the prediction variants of a run; each is evaluated into its own rows."""
    from tqdm import tqdm

    predictor = predictor or predict_run
    run_rows: list[dict] = []
    case_rows: list[dict] = []
    bar = tqdm(runs, desc="label efficiency", unit="run", disable=quiet)
    for r in bar:
        bar.set_postfix_str(f"{r.method} {r.subset.run_name}")
        train_run(design, r, skip_training)
        for p in predictor(design, r):
            run_row, per_case = evaluate_prediction(design, p)
            run_rows.append(run_row)
            case_rows.extend(per_case)
    bar.close()
    return run_rows, case_rows


def tabulate(design: Design, run_rows: Sequence[Mapping], case_rows: Sequence[Mapping],
             n_resamples: int = 10_000) -> dict[str, Path]:
    """Step 7, *tabulate*: :func:`write_table` into the design's output folder; returns the files' paths."""
    return write_table(run_rows, case_rows, design.out_dir, design.record(), n_resamples=n_resamples)


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
    seeds: int = 1,
    pretrained_ct: str | os.PathLike | None = None,
    pretrained_pet: str | os.PathLike | None = None,
    allow_test_overlap: bool = False,
    n_resamples: int = 10_000,
    device: str = "cuda",
    disable_tta: bool = False,
    npp: int | None = None,
    nps: int | None = None,
    dry_run: bool = False,
    skip_training: bool = False,
    quiet: bool = False,
) -> list[dict]:
    """Run (or, with ``dry_run``, plan) the grid; returns the per-run rows (empty for a dry run).

    See the module doc for the design and the steps this composes. Every argument is validated, and the
    foundation checkpoint(s) are checked against the target network and against the test set (leakage
    guard), before the folds, the test folders or anything else of the grid is written or run.

    Raises:
        LabelEfficiencyError: bad input (named), an incompatible checkpoint (with the tensor list and
            the fix), test cases in the pretraining set (unless ``allow_test_overlap``), or a failed run
            (:class:`RunFailedError`, with its log file).
    """
    design = make_design(
        dataset, out_dir, fractions=fractions, shots=shots, pretrained=pretrained, methods=methods,
        trainer_suffix=trainer_suffix, configuration=configuration, plans=plans, test_cases=test_cases,
        test_images=test_images, test_labels=test_labels, test_fraction=test_fraction, val_fraction=val_fraction,
        seed=seed, seeds=seeds, pretrained_ct=pretrained_ct, pretrained_pet=pretrained_pet,
        allow_test_overlap=allow_test_overlap, device=device, disable_tta=disable_tta, npp=npp, nps=nps)
    make_folds(design)
    runs = plan_runs(design)
    script = write_commands(design, runs)
    if dry_run:
        print("\n".join(script[4:]))
        return []
    run_rows, case_rows = execute_runs(design, runs, skip_training=skip_training, quiet=quiet)
    tabulate(design, run_rows, case_rows, n_resamples=n_resamples)
    return run_rows


def _schedule(trainer: str) -> dict | None:
    """What ``trainer`` really trains with (peak lr, warm-up, epochs x iterations), None if it is not ours."""
    from nnunetv2_petct.nnunet.registry import find_trainer_class
    from nnunetv2_petct.nnunet.trainers.finetune import trainer_schedule

    cls = find_trainer_class(trainer)
    return trainer_schedule(cls) if cls is not None else None


def _recipe(method: str, trainer: str, schedule: dict | None) -> str:
    """The method's recipe (``METHOD_RECIPES``: the full-length one and why) and ``schedule`` (:func:`_schedule`),
    what this grid's trainer really ran (short variants such as ``_cpu1h`` differ from the full recipe)."""
    from nnunetv2_petct.nnunet.trainers.finetune import METHOD_RECIPES

    text = METHOD_RECIPES.get(method, "")
    s = schedule
    if s is None:
        return text
    ran = (f"as run by `{trainer}`: peak lr {s['peak_lr']:g}, warm-up {s['warmup_epochs']} epoch(s), "
           f"{s['epochs']} x {s['iterations_per_epoch']} it.")
    return f"{text}; **{ran}**" if text else ran


def _num(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


# ------------------------------------------------------------------------------------- statistics
def summarize_runs(run_rows: Sequence[Mapping]) -> list[dict]:
    """Subset x method: mean, sd (ddof 1) and n over the seeds of each run's mean over the test cases."""
    from nnunetv2_petct.evaluation.statistics import mean_sd

    groups: dict[tuple, list[Mapping]] = {}
    for r in run_rows:
        groups.setdefault((r["subset"], r["method"]), []).append(r)
    out = []
    for (subset, method), rows in groups.items():
        first = rows[0]
        n_train = sorted({int(r["n_train_cases"]) for r in rows})
        row = {"subset": subset, "fraction": first["fraction"], "shots": first["shots"], "method": method,
               "trainer": first["trainer"], "n_seeds": len(rows),
               "n_train_cases": str(n_train[0]) if len(n_train) == 1 else f"{n_train[0]}-{n_train[-1]}"}
        for m in METRICS:
            st = mean_sd(r.get(m) for r in rows)
            row.update({f"{m}_mean": st["mean"], f"{m}_sd": st["sd"], f"{m}_n": st["n"]})
        out.append(row)
    return out


def comparison_pairs(subset_rows: Sequence[Mapping], methods: Sequence[str]) -> list[dict]:
    """Which paired comparisons to make (module doc): ``{"claim", "method_a", "subset_a", "method_b", "subset_b"}``.

    ``subset_rows``: ``{"subset", "fraction", "shots"}`` per subset (fraction = requested fraction)."""
    subsets = list(dict.fromkeys(r["subset"] for r in subset_rows))
    info = {r["subset"]: r for r in subset_rows}
    pairs = []
    for s in subsets:
        for a, baselines in BASELINES_OF.items():
            if a not in methods:
                continue
            for b in baselines:
                if b in methods:
                    claim = "claim 2" if (a, b) == ("probe", "late_fusion_probe") else ""
                    pairs.append({"claim": claim, "method_a": a, "subset_a": s, "method_b": b, "subset_b": s})
    full = [s for s in subsets if info[s].get("shots") in (None, "") and _num(info[s]["fraction"]) >= 1.0]
    if "pretrained" in methods and full:
        for s in subsets:
            if info[s].get("shots") in (None, "") and _num(info[s]["fraction"]) < 1.0:
                for b in FROM_SCRATCH:
                    if b in methods:
                        pairs.append({"claim": "claim 1", "method_a": "pretrained", "subset_a": s, "method_b": b,
                                      "subset_b": full[0]})
    return pairs


def paired_comparisons(case_rows: Sequence[Mapping], pairs: Sequence[Mapping], n_resamples: int = 10_000,
                       seed: int = 0, metrics: Sequence[str] = METRICS) -> list[dict]:
    """Each pair x metric: :func:`nnunetv2_petct.evaluation.statistics.paired_comparison` on the per-case
    values averaged over seeds (:func:`~nnunetv2_petct.evaluation.statistics.per_case_seed_means`)."""
    from nnunetv2_petct.evaluation.statistics import paired_comparison, per_case_seed_means

    values: dict[tuple, dict] = {}
    for r in case_rows:
        for m in metrics:
            values.setdefault((r["method"], r["subset"], m), {}).setdefault(r["replicate"], {})[r["case"]] = r[m]
    out = []
    for p in pairs:
        for m in metrics:
            a = per_case_seed_means(values.get((p["method_a"], p["subset_a"], m), {}))
            b = per_case_seed_means(values.get((p["method_b"], p["subset_b"], m), {}))
            res = paired_comparison(a, b, n_resamples=n_resamples, seed=seed)
            out.append({**p, "metric": m, "n_cases": res["n"], **{k: res[k] for k in (
                "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "confidence", "p_wilcoxon", "n_resamples")}})
    return out


# -------------------------------------------------------------------------------------------- table
def _cell(row: Mapping | None, metric: str, digits: int) -> str:
    from nnunetv2_petct.evaluation.statistics import fmt_mean_sd

    if row is None:
        return "-"
    text = fmt_mean_sd({"mean": row[f"{metric}_mean"], "sd": row[f"{metric}_sd"]}, digits)
    return f"{text} (n={row[f'{metric}_n']})" if text != "-" else "-"


def _signed(v) -> str:
    v = _num(v)
    return f"{v:+.3f}" if math.isfinite(v) else "-"


def _p(v) -> str:
    v = _num(v)
    if not math.isfinite(v):
        return "-"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def table_markdown(summary_rows: Sequence[Mapping], paired_rows: Sequence[Mapping], design: Mapping | None = None,
                   run_rows: Sequence[Mapping] = ()) -> str:
    """The Markdown report: one table per metric (subset x method, mean ± sd over seeds, n), the paired
    comparisons, each column's recipe and the leakage check."""
    methods = list(dict.fromkeys(r["method"] for r in summary_rows))
    subsets = list(dict.fromkeys(r["subset"] for r in summary_rows))
    by = {(r["subset"], r["method"]): r for r in summary_rows}
    lines = ["# Label efficiency", ""]
    if design is not None:
        seeds = design.get("seeds", 1)
        reps = ", ".join(str(r["seed"]) for r in design.get("replicates", [])) or str(design.get("seed"))
        lines += [f"Dataset {design['dataset_name']} ({design['plans']}, {design['configuration']}); training pool "
                  f"{len(design['pool'])} cases, fixed validation set {len(design['val'])}, held-out test set "
                  f"{len(design['test'])} ({design['test_source']}); {seeds} seed(s): {reps} (subset draws and "
                  f"training seeds).", ""]
    if run_rows:
        n_cases = sorted({int(r["n_cases"]) for r in run_rows})
        n_dice = sorted({int(r["n_cases_dice"]) for r in run_rows if r.get("n_cases_dice") is not None})
        lines += [f"Each run's value is its mean over the test cases ({', '.join(map(str, n_cases))} cases; Dice and FNV "
                  f"over the {', '.join(map(str, n_dice))} with non-empty ground truth, autoPET rule). Cells: mean ± sd "
                  "over seeds (sd with ddof 1; none for one seed), n = number of seeds.", ""]
    for metric in METRICS:
        digits = 3 if metric == "dice" else 2
        lines += [f"## {METRIC_LABELS[metric]}", ""]
        lines.append("| subset | fraction | train cases | " + " | ".join(methods) + " |")
        lines.append("|---|---|---|" + "---|" * len(methods))
        for s in subsets:
            first = next(r for r in summary_rows if r["subset"] == s)
            frac = "-" if first["shots"] not in (None, "") else f"{_num(first['fraction']):.3g}"
            lines.append(f"| {s} | {frac} | {first['n_train_cases']} | "
                         + " | ".join(_cell(by.get((s, m)), metric, digits) for m in methods) + " |")
        lines.append("")
    dice_pairs = [r for r in paired_rows if r["metric"] == "dice"]
    lines += ["## Paired comparisons (Dice)", ""]
    if dice_pairs:
        conf = _num(dice_pairs[0]["confidence"])
        lines += [
            "Paired unit: one test case; each method's Dice of a case is first averaged over that method's seeds; "
            "only cases where both methods have a Dice are paired (n). Difference = A - B; "
            f"{conf * 100:g} % CI: percentile bootstrap over test cases ({int(dice_pairs[0]['n_resamples'])} resamples, "
            "seeded); p: two-sided Wilcoxon signed-rank (zero differences dropped; p = 1 when all are zero; with n "
            "cases the smallest possible p is 2/2^n). Claim 1 (paper): pretrained with few labels ≈ from scratch with "
            "all labels — read the CI against your equivalence margin. Claim 2: joint probe > separated-modality "
            "(late-fusion) probe. FPV and FNV comparisons: label_efficiency_paired.csv.", "",
            "| claim | A | B | n cases | mean A | mean B | A - B | 95 % CI | Wilcoxon p |",
            "|---|---|---|---|---|---|---|---|---|"]
        for r in dice_pairs:
            lines.append(
                f"| {r['claim'] or '-'} | {r['method_a']} @ {r['subset_a']} | {r['method_b']} @ {r['subset_b']} | "
                f"{r['n_cases']} | {fmt_number(r['mean_a'])} | {fmt_number(r['mean_b'])} | "
                f"{_signed(r['mean_diff'])} | "
                f"[{fmt_number(r['ci_low'])}, {fmt_number(r['ci_high'])}] | {_p(r['p_wilcoxon'])} |")
    else:
        lines.append("No pair of methods to compare (run pretrained with a baseline, or probe with late_fusion_probe).")
    lines.append("")
    if design is not None and design.get("methods"):
        lines += ["## Columns", "", "| method | trainer | recipe |", "|---|---|---|"]
        lines += [f"| {m} | `{v['trainer']}` | {v['recipe']} |" for m, v in design["methods"].items()]
        lines.append("")
    if design is not None and "leakage_check" in design:
        lines += ["## Leakage check (test cases vs pretraining cases)", ""]
        lc = design["leakage_check"]
        if not lc["checkpoints"]:
            lines.append("No foundation checkpoint used: nothing to check.")
        for c in lc["checkpoints"]:
            if c["verified"] and not c["overlap"]:
                lines.append(f"- {c['checkpoint']} (`{c['file']}`): all {c['n_test_cases']} test cases verified "
                             f"absent from its {c['n_pretraining_cases']} pretraining cases "
                             f"({', '.join(c['pretraining_datasets'])}).")
            elif c["verified"]:
                lines.append(f"- **{c['checkpoint']} (`{c['file']}`): {len(c['overlapping_test_cases'])} test case(s) "
                             f"WERE in its pretraining set ({', '.join(c['overlapping_test_cases'][:10])}); run with "
                             f"--allow-test-overlap: results on them are not held out from pretraining.**")
            else:
                lines.append(f"- {c['checkpoint']} (`{c['file']}`): NOT verified — {c['reason']}.")
        lines += ["", f"Matching rule: {lc['rule']}.", ""]
    return "\n".join(lines) + "\n"


def write_table(run_rows: Sequence[Mapping], case_rows: Sequence[Mapping], out_dir: str | os.PathLike,
                design: Mapping | None = None, n_resamples: int = 10_000) -> dict[str, Path]:
    """Write the CSVs, ``label_efficiency.md`` and the Dice-vs-fraction plot (error bars: sd over seeds);
    returns their paths."""
    from nnunetv2_petct.evaluation import plot_dice_vs_fraction

    out = Path(out_dir)
    summary = summarize_runs(run_rows)
    subset_rows = [{"subset": r["subset"], "fraction": r["fraction"], "shots": r["shots"]} for r in summary]
    pairs = comparison_pairs(subset_rows, list(dict.fromkeys(r["method"] for r in summary)))
    paired = paired_comparisons(case_rows, pairs, n_resamples=n_resamples,
                                seed=int(design.get("seed", 0)) if design else 0)
    paths = {"csv": out / TABLE_CSV, "runs": out / RUNS_CSV, "summary": out / SUMMARY_CSV, "paired": out / PAIRED_CSV,
             "md": out / TABLE_MD}
    write_text_atomic(csv_text(case_rows, CASE_ROW_COLUMNS), paths["csv"])
    write_text_atomic(csv_text(run_rows, RUN_COLUMNS), paths["runs"])
    write_text_atomic(csv_text(summary, SUMMARY_COLUMNS), paths["summary"])
    write_text_atomic(csv_text(paired, PAIRED_COLUMNS), paths["paired"])
    write_text_atomic(table_markdown(summary, paired, design, run_rows), paths["md"])
    # shots subsets stay in the table only: their effective fraction could coincide with a fraction subset
    plottable = [{"fraction": r["fraction"], "method": r["method"], "dice": r["dice_mean"], "dice_std": r["dice_sd"]}
                 for r in summary if math.isfinite(_num(r["dice_mean"])) and r.get("shots") in (None, "")]
    if plottable:
        n_seeds = max(int(r["n_seeds"]) for r in summary)
        paths["png"] = plot_dice_vs_fraction(
            plottable, out / PLOT_PNG,
            title=f"mean over {n_seeds} seeds; error bars: sd over seeds" if n_seeds > 1 else "one seed (no error bars)")
    elif all(r.get("shots") not in (None, "") for r in summary):
        logger.info("only K-shot subsets: no Dice-vs-fraction plot")
    else:
        logger.warning("no Dice value (all test cases have empty ground truth?): no plot")
    return paths
