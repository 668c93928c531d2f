"""Label-efficiency runner: design (pure, in-process) and the CLI end to end on the tiny phantom dataset.

The end-to-end run is the session fixture ``transfer_grid`` of ``test_finetune_trainers`` (fractions 0.5
and 1.0 x pretrained/scratch/probe, _tiny trainers, external held-out test cases).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import cli, run
from tests.nnunet.test_finetune_trainers import (  # noqa: F401 - transfer_grid is a fixture
    COPY_ID,
    make_foundation_checkpoint,
    transfer_grid,
)

# ------------------------------------------------------------------------------------ design (pure)
# 12 patients: P0..P9 with one case, P10 and P11 with two (c10a/c10b, c11a/c11b) -> 14 cases
C2P = {f"c{i}": f"P{i}" for i in range(10)}
C2P.update({"c10a": "P10", "c10b": "P10", "c11a": "P11", "c11b": "P11"})


def test_design_is_patient_grouped_nested_and_keeps_test_and_val_fixed():
    from nnunetv2_petct.nnunet.label_efficiency import design_subsets

    # test = c0 and c10a: the whole patient P10 (c10b too) must leave the pool
    pool, val, subsets = design_subsets(C2P, ["c0", "c10a"], [0.3, 0.6, 1.0], shots=[2], val_fraction=0.2, seed=3)
    assert "c10b" not in pool and "c10b" not in val and "c0" not in pool + val
    assert not set(pool) & set(val)
    assert {C2P[c] for c in pool}.isdisjoint({C2P[c] for c in val})  # patients never split
    # usable: P1..P9 (one case each) + P11 (two) = 10 patients, 11 cases; 0.2 of 11 -> round(2.2) = 2
    assert len(val) == 2 and len(pool) == 9
    by = {s["name"]: s for s in subsets}
    assert set(by) == {"frac0.3", "frac0.6", "frac1", "shots2"}
    assert by["frac1"]["train"] == pool and by["frac1"]["fraction"] == 1.0
    assert set(by["frac0.3"]["train"]) <= set(by["frac0.6"]["train"]) <= set(pool)  # nested
    for s in subsets:  # whole patients only (shots: one case each of K patients)
        pats = {C2P[c] for c in s["train"]}
        if s["shots"] is None:
            assert set(s["train"]) == {c for c in pool if C2P[c] in pats}
    assert len(by["shots2"]["train"]) == 2 and len({C2P[c] for c in by["shots2"]["train"]}) == 2
    # 0.3 of the 9 pool cases -> round(2.7) = 3 cases; 0.6 -> round(5.4) = 5 (whole patients, never more)
    assert len(by["frac0.3"]["train"]) == 3 and len(by["frac0.6"]["train"]) == 5
    # same inputs -> same design (seeded)
    assert design_subsets(C2P, ["c0", "c10a"], [0.3, 0.6, 1.0], shots=[2], val_fraction=0.2, seed=3) == \
        (pool, val, subsets)


def test_design_rejects_bad_input():
    from nnunetv2_petct.nnunet.label_efficiency import LabelEfficiencyError, design_subsets

    with pytest.raises(LabelEfficiencyError, match="fractions must be in"):
        design_subsets(C2P, [], [1.5])
    with pytest.raises(LabelEfficiencyError, match="patient"):
        design_subsets({"a": "P", "b": "P"}, [], [1.0])  # one patient: no validation + training
    with pytest.raises(LabelEfficiencyError, match="shots"):
        design_subsets(C2P, [], [], shots=[50])


def test_assign_folds_appends_after_a_grouped_cv_and_is_idempotent():
    from nnunetv2_petct.nnunet.label_efficiency import assign_folds

    entries = [{"train": ["c1", "c2"], "val": ["c3"]}, {"train": ["c1", "c2", "c4"], "val": ["c3"]}]
    splits, folds = assign_folds([], entries, C2P, seed=1)
    assert folds == [5, 6] and len(splits) == 7  # folds 0-4: 5-fold CV first, then ours
    for s in splits[:5]:
        assert {C2P[c] for c in s["train"]}.isdisjoint({C2P[c] for c in s["val"]})
    again, folds2 = assign_folds(splits, entries, C2P, seed=1)
    assert again == splits and folds2 == [5, 6]  # identical entries reused, nothing appended
    custom = [{"train": ["x"], "val": ["y"]}]
    s3, f3 = assign_folds(custom, entries[:1], C2P)
    assert s3[0] == custom[0] and f3 == [1]  # an existing splits file is kept as is


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_grid_table_plot_and_splits(transfer_grid):  # noqa: F811
    g = transfer_grid
    rows = list(csv.DictReader((g.out / "label_efficiency.csv").open()))
    assert {(r["subset"], r["method"]) for r in rows} == {
        (s, m) for s in ("frac0.5", "frac1") for m in ("pretrained", "scratch", "probe")}
    n_test = len(list(g.test_labels.glob("*.nii.gz")))
    for r in rows:
        assert int(r["n_cases"]) == n_test == 2
        dice = float(r["dice"])  # held-out phantoms all have lesions: Dice is defined for every case
        assert 0.0 <= dice <= 1.0 and int(r["n_cases_dice"]) == 2
        assert float(r["fpv_ml"]) >= 0 and float(r["fnv_ml"]) >= 0
    md = (g.out / "label_efficiency.md").read_text()
    assert "| subset | fraction (actual) | train cases | pretrained | scratch | probe |" in md
    png = g.out / "label_efficiency_dice.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per-case evaluation written by the evaluation library, one folder per run
    assert (g.out / "evaluation" / "probe" / "frac1" / "per_case.csv").is_file()

    # splits: 5 patient-grouped CV folds, then one fold per fraction with the same validation set
    splits = json.loads((Path(g.env["nnUNet_preprocessed"]) / g.dataset_name / "splits_final.json").read_text())
    design = g.design
    folds = {s["name"]: s["fold"] for s in design["subsets"]}
    assert sorted(folds.values()) == [5, 6] and len(splits) == 7
    val = design["val"]
    assert val and all(splits[f]["val"] == val for f in folds.values())
    half, full = splits[folds["frac0.5"]]["train"], splits[folds["frac1"]]["train"]
    assert full == design["pool"] and set(half) < set(full)
    # 8 training phantoms, each its own patient; round(0.1 * 8) = 1 validation case; pool = 7;
    # 0.5 of 7 -> round(3.5) = 4 cases (Python rounds half to even: 4)
    assert len(val) == 1 and len(full) == 7 and len(half) == 4
    assert not {p.name[: -len(".nii.gz")] for p in g.test_labels.glob("*.nii.gz")} & set(full + val)


@pytest.mark.slow
def test_dry_run_reuses_the_folds_and_prints_commands(transfer_grid):  # noqa: F811
    g = transfer_grid
    splits_file = Path(g.env["nnUNet_preprocessed"]) / g.dataset_name / "splits_final.json"
    before = splits_file.read_text()
    out = g.out.parent / "dry"
    proc = run([cli("nnUNetv2_petct_label_efficiency"), "-d", str(COPY_ID), "--pretrained", str(g.foundation),
                "--fractions", "0.5", "1.0", "--trainer-suffix", "_tiny", "--test-images", str(g.test_images),
                "--test-labels", str(g.test_labels), "-device", "cpu", "-o", str(out), "--dry-run"], g.env)
    assert splits_file.read_text() == before  # same design -> same folds, file untouched
    train_lines = [x for x in proc.stdout.splitlines() if x.startswith("nnUNetv2_train ")]
    assert len(train_lines) == 6
    for line in train_lines:
        needs = "Finetune_tiny" in line or "LinearProbe_tiny" in line
        assert ("-pretrained_weights" in line) == needs
        assert line.split()[3] in ("5", "6")  # nnUNetv2_train DATASET CONFIG FOLD ...
    assert sum(x.startswith("nnUNetv2_predict ") for x in proc.stdout.splitlines()) == 6
    assert (out / "commands.sh").read_text().count("nnUNetv2_train ") == 6
    assert not (out / "label_efficiency.csv").exists()


@pytest.mark.slow
def test_bad_input_exits_2_with_a_message(transfer_grid, tmp_path):  # noqa: F811
    g = transfer_grid
    base = [cli("nnUNetv2_petct_label_efficiency"), "-d", str(COPY_ID), "--fractions", "1.0", "-device", "cpu",
            "--test-images", str(g.test_images), "--test-labels", str(g.test_labels), "-o", str(tmp_path / "o"),
            "--dry-run"]
    proc = run(base, g.env, check=False)  # pretrained/probe without a checkpoint
    assert proc.returncode == 2 and "need --pretrained" in proc.stderr
    # a 1-channel checkpoint for this 2-channel dataset: refused before any run, with the fix
    one = make_foundation_checkpoint(Path(g.env["nnUNet_preprocessed"]) / g.dataset_name, tmp_path / "pet.pth",
                                     num_input_channels=1, channel_names=("PET",))
    proc = run(base + ["--pretrained", str(one)], g.env, check=False)
    assert proc.returncode == 2
    assert "Input channels: checkpoint 1, network 2" in proc.stderr
    assert "nnUNetv2_petct_adapt_checkpoint" in proc.stderr
