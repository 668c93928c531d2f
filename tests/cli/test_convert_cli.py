"""nnUNetv2_petct_convert / _pretraining_dataset / _splits as subprocesses: outputs and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout, write_spade_layout


def _run(module, args, env, expect):
    proc = subprocess.run([sys.executable, "-m", f"nnunetv2_petct.cli.{module}", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def cases():
    from nnunetv2_petct.phantoms import make_cohort

    return make_cohort(6, seed=11, size="tiny", lesion_free_fraction=0.5, prefix="cli", n_patients=5)


@pytest.fixture()
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    e.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"), PYTHONUNBUFFERED="1")
    return e


def test_convert_exit_codes(cases, tmp_path, env):
    src = write_autopet_layout(cases[:3], tmp_path / "autopet")
    out = _run("convert", ["--help"], env, 0)
    assert "vimed-pet" in out and "--pet-normalization" in out and "zscore-both" in out
    out = _run("convert", ["autopet", src, "-d", 221, "-q"], env, 0)
    assert "3 converted" in out
    out = _run("convert", ["autopet", src, "-d", 221, "-q"], env, 0)
    assert "0 converted, 3 already done" in out  # idempotent re-run
    # a truncated file in one more study: that case fails with its reason, exit 1, the rest is kept
    write_autopet_layout(cases[3:4], src)
    ids = autopet_ids(cases[3])
    seg = src / ids["patient_folder"] / ids["study_folder"] / "SEG.nii.gz"
    seg.write_bytes(seg.read_bytes()[:40])
    out = _run("convert", ["autopet", src, "-d", 221, "-q"], env, 1)
    assert f"FAILED {ids['case_id']}" in out and "SEG.nii.gz" in out
    dj = json.loads((tmp_path / "raw" / "Dataset221_AutoPET" / "dataset.json").read_text())
    assert dj["numTraining"] == 3


def test_convert_bad_input_exits_2(cases, tmp_path, env):
    src = write_autopet_layout(cases[:1], tmp_path / "autopet")
    no_raw = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    assert "nnUNet_raw" in _run("convert", ["autopet", src, "-d", 221], no_raw, 2)
    _run("convert", ["autopet", src, "-d", 221, "-o", tmp_path / "elsewhere", "-q"], no_raw, 0)  # -o overrides
    assert "does not exist" in _run("convert", ["autopet", tmp_path / "nope", "-d", 221], env, 2)
    assert "no DEEP-PSMA case" in _run("convert", ["deep-psma", src, "-d", 222], env, 2)
    assert "do not apply" in _run("convert", ["autopet", src, "-d", 221, "--spacing", 1, 1, 1], env, 2)
    assert "invalid choice" in _run("convert", ["nocohort", src, "-d", 221], env, 2)
    assert "contradicts" in _run("convert", ["autopet", src, "-d", 221, "--normalization", "zscore-both",
                                             "--pet-normalization", "global"], env, 2)


def test_convert_normalization_choice_is_recorded(cases, tmp_path, env):
    src = write_autopet_layout(cases[:1], tmp_path / "autopet")
    _run("convert", ["autopet", src, "-d", 221, "-q", "--normalization", "zscore-both"], env, 0)
    dj = json.loads((tmp_path / "raw" / "Dataset221_AutoPET" / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT_zscore", "1": "PET"}
    assert dj["petct_normalization"]["choice"] == "zscore-both"
    _run("convert", ["autopet", src, "-d", 222, "-q", "--pet-normalization", "global"], env, 0)  # older spelling
    dj = json.loads((tmp_path / "raw" / "Dataset222_AutoPET" / "dataset.json").read_text())
    assert dj["petct_normalization"]["choice"] == "pet-global" and dj["channel_names"]["1"] == "ct"


def test_pretraining_and_splits_clis(cases, tmp_path, env):
    _run("convert", ["autopet", write_autopet_layout(cases, tmp_path / "autopet"), "-d", 221, "-q"], env, 0)
    spacing = [float(s) for s in reversed(cases[0].pet.GetSpacing())]
    _run("convert", ["spade", write_spade_layout(cases[:2], tmp_path / "spade"), "-d", 224, "-q",
                     "--spacing", *spacing, "-np", 2], env, 0)
    out = _run("pretraining_dataset", ["-d", 300, "--from", 221, 224, "-q"], env, 0)
    assert "| autopet | 6 | 0 | 0 | 6 | 0 |" in out and "| spade | 2 | 0 | 0 | 2 | 0 |" in out
    assert "numTraining = 8" in out
    assert "Dataset299" in _run("pretraining_dataset", ["-d", 301, "--from", 299], env, 2)

    out = _run("splits", ["kfold", "-d", 221, "--folds", 5], env, 0)
    splits = json.loads((tmp_path / "pre" / "Dataset221_AutoPET" / "splits_final.json").read_text())
    assert len(splits) == 5 and sorted(c for s in splits for c in s["val"]) == sorted(
        autopet_ids(c)["case_id"] for c in cases)
    assert "not in the dataset" in _run("splits", ["paper", "-d", 221, "--fraction", 10], env, 2)
    custom = tmp_path / "my_splits.json"
    _run("splits", ["subset", "-d", 221, "--shots", 2, "--lesion-positive-only", "--repeats", 2, "-o", custom],
         env, 0)
    sub = json.loads(custom.read_text())
    lesion = {autopet_ids(c)["case_id"] for c in cases if not c.lesion_free}
    assert len(sub) == 2 and all(len(s["train"]) == 2 and set(s["train"]) <= lesion for s in sub)
    no_pre = {k: v for k, v in env.items() if k != "nnUNet_preprocessed"}
    assert "nnUNet_preprocessed" in _run("splits", ["kfold", "-d", 221], no_pre, 2)
