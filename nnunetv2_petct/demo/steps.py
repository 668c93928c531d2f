"""The steps of the demo pipeline (see :mod:`nnunetv2_petct.demo`). Each one calls real CLIs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from nnunetv2_petct.demo.config import (
    AUTOPET_ID,
    DEEPPSMA_ID,
    DICOM_ID,
    PRETRAIN_ID,
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
    from nnunetv2_petct.phantoms import make_cohort
    from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
    from nnunetv2_petct.phantoms.layouts import (
        write_autopet_layout,
        write_deep_psma_layout,
        write_spade_layout,
        write_vimed_layout,
    )

    p, dl = demo.profile, demo.downloads
    tmp = dl.with_name(dl.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    size = p.phantom_size
    # AutoPET: labeled, about half lesion-free, some patients with two studies (as in AutoPET)
    autopet = make_cohort(p.n_autopet, seed=100, size=size, lesion_free_fraction=0.4, prefix="autopet",
                          n_patients=max(2, p.n_autopet - 3))
    write_autopet_layout(autopet, tmp / "autopet")
    write_deep_psma_layout(make_cohort(p.n_unlabeled, seed=200, size=size, prefix="deeppsma"), tmp / "deep_psma")
    write_spade_layout(make_cohort(p.n_unlabeled, seed=300, size=size, prefix="spade"), tmp / "spade")
    vimed = make_cohort(p.n_unlabeled, seed=400, size=size, prefix="vimed")
    write_vimed_layout(vimed, tmp / "vimed")
    (tmp / "vimed_spacing.json").write_text(json.dumps(_spacing_zyx(vimed[0].pet)))
    for i, case in enumerate(make_cohort(p.n_dicom, seed=500, size=size, prefix="dicom")):
        write_dicom_study(case, tmp / "dicom" / f"study{i}", vendor=("SIEMENS", "GE", "PHILIPS_CNTS")[i % 3], seed=i)
    tmp.rename(dl)


def _spacing_zyx(image) -> list[float]:
    sx, sy, sz = image.GetSpacing()
    return [sz, sy, sx]


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
    test_file.write_text("\n".join(test_case_ids(demo)) + "\n")
    demo.sh(["nnUNetv2_petct_pretraining_dataset", "-d", str(PRETRAIN_ID), "--from",
             *(str(c[2]) for c in COHORTS), "--name", "PETCTPretrainDemo", "--exclude", str(test_file),
             "-np", "2", "-q"])


def plan(demo: Demo) -> None:
    p = demo.profile
    plan_env = {"nnUNet_n_proc_DA": "2"}  # nnU-Net's planner needs this > 0
    demo.sh(["nnUNetv2_plan_and_preprocess", "-d", str(PRETRAIN_ID), "-c", "3d_fullres", "-np", "2",
             "--verify_dataset_integrity"], plan_env)
    demo.sh(["nnUNetv2_petct_tiny_plans", "-d", str(PRETRAIN_ID), "--patch", *(str(x) for x in p.patch),
             "--max-features", str(p.max_features)])
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
    demo.sh(["nnUNetv2_train", str(PRETRAIN_ID), "3d_fullres", "all", "-tr", trainer, "-device", demo.device])


# ---- step 4: label efficiency (fine-tune / scratch / probe), predict, evaluate --------------------
def test_case_ids(demo: Demo) -> list[str]:
    """The held-out AutoPET test studies: the last ``n_test`` patients' studies of the converted set."""
    ds = dataset_dir(demo.raw, AUTOPET_ID)
    cases = sorted(f.name[: -len(".nii.gz")] for f in (ds / "labelsTr").glob("*.nii.gz"))
    patients: dict[str, list[str]] = {}
    for c in cases:  # fdg_<patienthash>_<date>: studies of a patient stay together
        patients.setdefault(c.split("_")[1], []).append(c)
    chosen: list[str] = []
    for key in sorted(patients)[::-1]:
        if len(chosen) >= demo.profile.n_test:
            break
        chosen.extend(patients[key])
    return sorted(chosen)


def finetune_and_evaluate(demo: Demo) -> None:
    test_file = demo.out / "test_cases.txt"
    demo.sh(["nnUNetv2_petct_label_efficiency", "-d", str(AUTOPET_ID), "--pretrained", str(foundation_checkpoint(demo)),
             "--fractions", *(f"{f:g}" for f in demo.profile.fractions), "--trainer-suffix", demo.profile.trainer_suffix,
             "--test-cases", str(test_file), "-device", demo.device, "-npp", "1", "-nps", "1", "--disable-tta",
             "-o", str(demo.out / "label_efficiency"), "-q"], timeout=7200)


# ---- step 5: report -----------------------------------------------------------------------------
def run_demo(demo: Demo) -> Path:
    demo.step("downloads", lambda: make_downloads(demo))
    demo.step("convert", lambda: convert_all(demo))
    demo.step("plan", lambda: plan(demo))
    demo.step("pretrain", lambda: pretrain(demo))
    demo.step("finetune", lambda: finetune_and_evaluate(demo))
    demo.step("evaluate", lambda: evaluate_all(demo))
    return write_report(demo)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
