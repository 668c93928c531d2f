"""The steps of the demo pipeline (see :mod:`nnunetv2_petct.demo`). Each one calls real CLIs."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

from nnunetv2_petct.demo.config import (
    AUTOPET_ID,
    DEEPPSMA_ID,
    DICOM_ID,
    ENV_ASSIGNMENT,
    PRETRAIN_ID,
    PRETRAIN_SEED,
    SPADE_ID,
    VIMED_ID,
    Demo,
    dataset_dir,
    foundation_checkpoint,
)
from nnunetv2_petct.demo.report import evaluate_all, write_report

COHORTS = (  # (cli cohort name, download folder, dataset id, dataset name, extra convert options)
    ("autopet", "autopet", AUTOPET_ID, "AutoPETDemo", []),
    ("deep-psma", "deep_psma", DEEPPSMA_ID, "DEEPPSMADemo", []),
    ("spade", "spade", SPADE_ID, "SPADEDemo", []),
    ("vimed-pet", "vimed", VIMED_ID, "ViMedDemo", ["--ct-offset", "-1024"]),
    ("dicom", "dicom", DICOM_ID, "DICOMDemo", []),
)


# ---- step 1: synthetic downloads --------------------------------------------------------------
def make_downloads(demo: Demo) -> None:
    """``python -m nnunetv2_petct.demo.downloads``: phantom cohorts in the real releases' layouts."""
    if demo.downloads.exists():  # an interrupted run: the downloads are complete (written atomically)
        shutil.rmtree(demo.downloads)
    demo.sh(["python", "-m", "nnunetv2_petct.demo.downloads", "--profile", demo.profile.name, str(demo.downloads)],
            label="synthetic downloads")


# ---- step 2: conversion, pretraining set, planning ----------------------------------------------
def convert_all(demo: Demo) -> None:
    for cohort, folder, did, name, extra in COHORTS:
        if cohort == "vimed-pet":
            spacing = json.loads((demo.downloads / "vimed_spacing.json").read_text())
            extra = [*extra, "--spacing", *(f"{s:g}" for s in spacing)]
        demo.sh(["nnUNetv2_petct_convert", cohort, str(demo.downloads / folder), "-d", str(did), "--name", name,
                 "-np", "2", "-q", *extra])
    # The AutoPET test studies are held out of pretraining too (no test image is ever seen in training).
    test_file = demo.out / "test_cases.txt"
    demo.write_file(test_file, "\n".join(test_case_ids(demo)) + "\n",
                    "held-out AutoPET test studies: whole patients, lesion-positive and lesion-free")
    demo.sh(["nnUNetv2_petct_pretraining_dataset", "-d", str(PRETRAIN_ID), "--from",
             *(str(c[2]) for c in COHORTS), "--name", "PETCTPretrainDemo", "--exclude", str(test_file),
             "-np", "2", "-q"])


def plan(demo: Demo) -> None:
    p = demo.profile
    plan_env = {"nnUNet_n_proc_DA": "2"}  # nnU-Net's planner needs this > 0
    demo.sh(["nnUNetv2_plan_and_preprocess", "-d", str(PRETRAIN_ID), "-c", "3d_fullres", "-np", "2",
             "--verify_dataset_integrity"], plan_env)
    if p.patch is not None:
        demo.sh(["nnUNetv2_petct_tiny_plans", "-d", str(PRETRAIN_ID), "--patch", *(str(x) for x in p.patch),
                 "--stages", str(p.stages), "--base-features", str(p.base_features),
                 "--max-features", str(p.max_features), "--batch-size", str(p.batch_size)])
    # the target dataset gets the pretraining plans (same architecture and CT normalization)
    # fingerprint + dataset.json of the target (its own plans are then replaced by the pretraining plans)
    demo.sh(["nnUNetv2_plan_and_preprocess", "-d", str(AUTOPET_ID), "-c", "3d_fullres", "-np", "2", "--no_pp",
             "--verify_dataset_integrity"], plan_env)
    demo.sh(["nnUNetv2_move_plans_between_datasets", "-s", str(PRETRAIN_ID), "-t", str(AUTOPET_ID),
             "-sp", "nnUNetPlans", "-tp", "nnUNetPlans"])
    demo.sh(["nnUNetv2_preprocess", "-d", str(AUTOPET_ID), "-c", "3d_fullres", "-np", "2"], plan_env)


# ---- step 3: pretraining -----------------------------------------------------------------------
def pretrain(demo: Demo) -> None:
    trainer = f"nnUNetTrainerPETCTMAE{demo.profile.trainer_suffix}"
    # seeded like the segmentation runs (network initialisation and patch sampling repeat; see TrainingSeedMixin)
    demo.sh(["nnUNetv2_train", str(PRETRAIN_ID), "3d_fullres", "all", "-tr", trainer, "-device", demo.device],
            env_extra={"NNUNETV2_PETCT_SEED": str(PRETRAIN_SEED)},
            label="MAE pretraining", total_epochs=trainer_epochs(trainer))


# ---- step 4: label efficiency (fine-tune / scratch / probe), predict, evaluate --------------------
def test_case_ids(demo: Demo) -> list[str]:
    """The held-out AutoPET test studies: whole patients, taken from the end of the sorted patient list
    until at least ``n_test_positive`` lesion-positive and ``n_test_negative`` lesion-free studies are in."""
    from nnunetv2_petct.conversion.core import read_manifest
    from nnunetv2_petct.transfer.splits import lesion_positive_cases

    records = read_manifest(dataset_dir(demo.raw, AUTOPET_ID))
    patients: dict[str, list[str]] = {}
    for r in records:
        patients.setdefault(str(r["patient_id"]), []).append(r["case_id"])
    positive = set(lesion_positive_cases(records))
    chosen: list[str] = []
    for key in sorted(patients)[::-1]:
        n_pos = sum(c in positive for c in chosen)
        if n_pos >= demo.profile.n_test_positive and len(chosen) - n_pos >= demo.profile.n_test_negative:
            break
        studies = patients[key]
        n_new_pos = sum(c in positive for c in studies)
        # take a patient only if it brings a kind of study that is still missing
        if (n_new_pos and n_pos < demo.profile.n_test_positive) or \
                (len(studies) > n_new_pos and len(chosen) - n_pos < demo.profile.n_test_negative):
            chosen.extend(studies)
    return sorted(chosen)


def label_efficiency_args(demo: Demo, folder: str = "label_efficiency") -> list[str]:
    """The ``nnUNetv2_petct_label_efficiency`` call of the demo (without --dry-run / --skip-training), writing
    to ``demo.out / folder``."""
    p = demo.profile
    args = ["nnUNetv2_petct_label_efficiency", "-d", str(AUTOPET_ID), "--pretrained", str(foundation_checkpoint(demo)),
            "--methods", *p.methods, "--trainer-suffix", p.trainer_suffix, "--test-cases", str(demo.out / "test_cases.txt"),
            "-device", demo.device, "-npp", "1", "-nps", "1", "--disable-tta", "-o", str(demo.out / folder),
            "-q"]
    if p.fractions:
        args[3:3] = ["--fractions", *(f"{f:g}" for f in p.fractions)]
    else:
        args[3:3] = ["--fractions"]  # none: only the K-shot subsets
    if p.shots:
        args[3:3] = ["--shots", *(str(k) for k in p.shots)]
    if p.seeds > 1:
        args[3:3] = ["--seeds", str(p.seeds)]
    return args


def training_commands(script: Path) -> list[list[str]]:
    """The ``nnUNetv2_train`` lines of the runner's ``commands.sh`` (its section 1), as argument lists
    (leading ``NAME=value`` environment assignments, e.g. a training seed, kept as words)."""
    out = []
    for line in script.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        words = shlex.split(line)
        i = 0
        while i < len(words) and ENV_ASSIGNMENT.match(words[i]):
            i += 1
        if i < len(words) and words[i] == "nnUNetv2_train":
            out.append(words)
    return out


def _train_arg(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def run_labels(demo: Demo, trainings: list[list[str]]) -> list[str]:
    """Status labels of the grid's training commands: the method (``pretrained``, ``scratch``, ...), plus
    the fold when a method trains more than once."""
    from nnunetv2_petct.nnunet.trainers.finetune import TRANSFER_TRAINERS

    by_trainer = {v + demo.profile.trainer_suffix: k for k, v in TRANSFER_TRAINERS.items()}
    methods = [by_trainer.get(_train_arg(t, "-tr"), _train_arg(t, "-tr")) for t in trainings]
    folds = [t[t.index("nnUNetv2_train") + 3] for t in trainings]
    return [m if methods.count(m) == 1 else f"{m} fold {f}" for m, f in zip(methods, folds)]


def finetune(demo: Demo, folder: str = "label_efficiency") -> None:
    """The label-efficiency grid in three recorded commands: the runner's dry run (splits + commands), its
    training commands (side by side, ``demo.jobs`` at a time, each with live progress; a run whose
    ``checkpoint_final.pth`` exists is not trained again, as in the runner), then the runner again to predict
    the held-out test set and evaluate (``--skip-training``). Outputs in ``demo.out / folder``."""
    args = label_efficiency_args(demo, folder)
    demo.sh([*args, "--dry-run"], label="label-efficiency design")
    trainings = training_commands(demo.out / folder / "commands.sh")
    if not trainings:
        raise RuntimeError("the label-efficiency runner wrote no nnUNetv2_train command")
    labels = run_labels(demo, trainings)
    todo = []
    for t, label in zip(trainings, labels):
        if (training_fold_dir(demo, t) / "checkpoint_final.pth").is_file():
            demo.commands.append(demo.shown(t))
            demo.say(f"{label}: trained before (checkpoint_final.pth exists), not trained again")
        else:
            todo.append((t, label, trainer_epochs(_train_arg(t, "-tr"))))
    run_env = {"OMP_NUM_THREADS": "1"} if demo.device == "cpu" and demo.jobs > 1 else None
    if todo:
        demo.sh_parallel(todo, jobs=demo.jobs, run_env=run_env)
    demo.sh([*args, "--skip-training"], label="predict + evaluate", timeout=7200)


def training_fold_dir(demo: Demo, words: list[str]) -> Path:
    """The fold folder a recorded ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr T [-p PLANS]`` writes to
    (nnU-Net's naming), under the demo's ``nnUNet_results``."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    i = words.index("nnUNetv2_train")
    dataset, configuration, fold = words[i + 1], words[i + 2], words[i + 3]
    plans = _train_arg(words, "-p") if "-p" in words else "nnUNetPlans"
    run = convert_trainer_plans_config_to_identifier(_train_arg(words, "-tr"), plans, configuration)
    name = dataset_dir(demo.preprocessed, int(dataset)).name if dataset.isdigit() else dataset
    return demo.results / name / run / f"fold_{fold}"


def trainer_epochs(trainer: str) -> int | None:
    """``num_epochs`` a trainer of ours sets (its schedule's class attribute), None if unknown."""
    from nnunetv2_petct.nnunet.registry import find_trainer_class

    cls = find_trainer_class(trainer)
    return getattr(cls, "tiny_num_epochs", None) if cls is not None else None


# ---- step 5: report -----------------------------------------------------------------------------
def run_demo(demo: Demo) -> Path:
    demo.step("downloads", lambda: make_downloads(demo))
    demo.step("convert", lambda: convert_all(demo))
    demo.step("plan", lambda: plan(demo))
    demo.step("pretrain", lambda: pretrain(demo))
    demo.step("finetune", lambda: finetune(demo))
    demo.step("evaluate", lambda: evaluate_all(demo))
    return write_report(demo)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
