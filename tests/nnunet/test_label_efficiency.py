"""Label-efficiency runner: design, seeds and statistics (pure, in-process) and the CLI end to end on the tiny
phantom dataset.

The end-to-end run is the session fixture ``transfer_grid`` of ``test_finetune_trainers`` (fraction 0.5 x
``--seeds 2`` x the default grid + late_fusion_probe, _tiny trainers, external held-out test cases); the
leakage guard and the fold layout of other designs are checked with ``--dry-run`` (no training).
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli, run
from tests.nnunet.test_finetune_trainers import (  # noqa: F401 - transfer_grid is a fixture
    COPY_ID,
    METHODS,
    RUNS,
    make_foundation_checkpoint,
    pretraining_data,
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


def test_seeds_give_different_draws_nested_per_replicate_and_separate_folds():
    from nnunetv2_petct.nnunet.label_efficiency import assign_folds, design_subsets

    pool, val, subsets = design_subsets(C2P, ["c0"], [0.3, 0.6, 1.0], shots=[2], val_fraction=0.2, seed=3,
                                        n_seeds=3)
    assert len(subsets) == 3 * 4
    by = {(s["name"], s["replicate"]): s for s in subsets}
    assert [by["frac0.3", k]["seed"] for k in range(3)] == [3, 1003, 2003]  # seed + 1000 k
    assert [by["frac0.3", k]["run_name"] for k in range(3)] == ["frac0.3", "frac0.3_seed1", "frac0.3_seed2"]
    # replicate 0 is exactly the single-seed design
    assert [s for s in subsets if s["replicate"] == 0] == [
        dict(s, replicate=0, seed=3, run_name=s["name"])
        for s in design_subsets(C2P, ["c0"], [0.3, 0.6, 1.0], shots=[2], val_fraction=0.2, seed=3)[2]]
    for k in range(3):  # nested inside each replicate; 100 % is the pool every time
        assert set(by["frac0.3", k]["train"]) <= set(by["frac0.6", k]["train"]) <= set(pool)
        assert by["frac1", k]["train"] == pool
    draws = {tuple(by["frac0.6", k]["train"]) for k in range(3)} | {tuple(by["shots2", k]["train"]) for k in range(3)}
    assert len(draws) == 6  # three different 60 % draws and three different 2-shot draws
    # folds: identical 100 % subsets of different replicates get separate folds (different training seeds);
    # identical subsets inside one replicate would share one; re-running reuses the same folds
    entries = [{"train": s["train"], "val": val, "group": s["replicate"]} for s in subsets]
    splits, folds = assign_folds([], entries, None)
    full = [folds[i] for i, s in enumerate(subsets) if s["name"] == "frac1"]
    assert len(set(full)) == 3 and all(splits[f]["train"] == pool for f in full)
    assert assign_folds(splits, entries, None) == (splits, folds)
    twin = [{"train": ["c1"], "val": ["c2"], "group": 0}, {"train": ["c1"], "val": ["c2"], "group": 0}]
    assert assign_folds([], twin, None)[1] == [0, 0]


def _case_rows(values):
    """Per-case rows for (method, subset, replicate) -> {case: dice}; FPV/FNV derived so they are not all equal."""
    rows = []
    for (method, subset, rep), per_case in values.items():
        for case, dice in per_case.items():
            rows.append({"method": method, "subset": subset, "replicate": rep, "case": case, "dice": dice,
                         "fpv_ml": 1.0 - dice, "fnv_ml": 2.0 * (1.0 - dice)})
    return rows


def test_comparisons_cover_both_claims_and_use_seed_means_per_case():
    from nnunetv2_petct.nnunet.label_efficiency import comparison_pairs, paired_comparisons

    subsets = [{"subset": "frac0.1", "fraction": 0.1, "shots": None}, {"subset": "frac1", "fraction": 1.0, "shots": None},
               {"subset": "shots5", "fraction": 0.05, "shots": 5}]
    methods = ["pretrained", "scratch", "nnunet_default", "probe", "late_fusion_probe"]
    pairs = comparison_pairs(subsets, methods)
    keys = {(p["claim"], p["method_a"], p["subset_a"], p["method_b"], p["subset_b"]) for p in pairs}
    assert ("claim 1", "pretrained", "frac0.1", "scratch", "frac1") in keys
    assert ("claim 1", "pretrained", "frac0.1", "nnunet_default", "frac1") in keys
    assert ("claim 2", "probe", "shots5", "late_fusion_probe", "shots5") in keys
    assert ("", "pretrained", "frac1", "scratch", "frac1") in keys
    assert not any(p["subset_a"] == "shots5" and p["claim"] == "claim 1" for p in pairs)  # K-shot is not a fraction
    assert len(pairs) == 3 * 3 + 2  # 3 within-subset pairs x 3 subsets + 2 claim-1 pairs

    # two seeds: the paired unit is the case, averaged over its seeds; c3 has no Dice (empty ground truth)
    nan = float("nan")
    rows = _case_rows({
        ("pretrained", "frac0.1", 0): {"c1": 0.8, "c2": 0.5, "c3": nan}, ("pretrained", "frac0.1", 1): {"c1": 0.6, "c2": 0.7, "c3": nan},
        ("scratch", "frac1", 0): {"c1": 0.5, "c2": 0.6, "c3": nan}, ("scratch", "frac1", 1): {"c1": 0.5, "c2": 0.6, "c3": nan},
    })
    (res,) = paired_comparisons(rows, [{"claim": "claim 1", "method_a": "pretrained", "subset_a": "frac0.1",
                                        "method_b": "scratch", "subset_b": "frac1"}], n_resamples=2000, metrics=("dice",))
    # seed means: pretrained c1 0.7, c2 0.6; scratch c1 0.5, c2 0.6 -> differences 0.2 and 0.0, n = 2 (c3 undefined)
    assert res["n_cases"] == 2 and res["mean_a"] == pytest.approx(0.65) and res["mean_b"] == pytest.approx(0.55)
    assert res["mean_diff"] == pytest.approx(0.1)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.0, 0.2))  # 2 values: P(min,min) = 1/4 > 2.5 %
    assert res["p_wilcoxon"] == pytest.approx(1.0)  # the zero is dropped; one positive difference: 2 / 2**1


def test_table_shows_mean_sd_n_the_paired_comparisons_recipes_and_leakage(tmp_path):
    from nnunetv2_petct.nnunet.label_efficiency import write_table

    rows = _case_rows({
        ("pretrained", "frac0.5", 0): {"c1": 0.8, "c2": 0.6}, ("pretrained", "frac0.5", 1): {"c1": 0.7, "c2": 0.5},
        ("scratch", "frac0.5", 0): {"c1": 0.4, "c2": 0.5}, ("scratch", "frac0.5", 1): {"c1": 0.6, "c2": 0.3},
    })
    for r in rows:
        r.update(seed=12345 + 1000 * r["replicate"], fraction=0.5, fraction_actual=0.5, shots=None, n_train_cases=4,
                 trainer=r["method"] + "_T", fold=5 + r["replicate"])
    runs = []
    for key in {(r["method"], r["replicate"]) for r in rows}:
        mine = [r for r in rows if (r["method"], r["replicate"]) == key]
        runs.append({**{k: mine[0][k] for k in ("subset", "replicate", "seed", "fraction", "fraction_actual", "shots",
                                                  "n_train_cases", "method", "trainer", "fold")},
                     "dice": sum(r["dice"] for r in mine) / 2, "fpv_ml": sum(r["fpv_ml"] for r in mine) / 2,
                     "fnv_ml": sum(r["fnv_ml"] for r in mine) / 2, "n_cases": 2, "n_cases_dice": 2})
    runs.sort(key=lambda r: (r["method"] != "pretrained", r["replicate"]))
    design = {"dataset_name": "D", "plans": "P", "configuration": "C", "pool": [1] * 7, "val": [1], "test": ["c1", "c2"],
              "test_source": "external", "seed": 12345, "seeds": 2,
              "replicates": [{"seed": 12345}, {"seed": 13345}],
              "methods": {"pretrained": {"trainer": "T1", "recipe": "fine-tune lr 1e-3"},
                          "scratch": {"trainer": "T2", "recipe": "scratch lr 1e-2"}},
              "leakage_check": {"rule": "R", "checkpoints": [{"checkpoint": "joint", "file": "f.pth", "verified": True,
                                                               "overlap": [], "n_test_cases": 2, "n_pretraining_cases": 9,
                                                               "pretraining_datasets": ["DS"]}]}}
    paths = write_table(runs, rows, tmp_path, design, n_resamples=2000)
    md = paths["md"].read_text()
    # run means: pretrained 0.7, 0.6 -> 0.650 ± 0.071 (sample sd sqrt(0.005)); scratch 0.45, 0.45 -> 0.450 ± 0.000
    assert "| frac0.5 | 0.5 | 4 | 0.650 ± 0.071 (n=2) | 0.450 ± 0.000 (n=2) |" in md
    # paired: case seed means pretrained c1 0.75, c2 0.55; scratch c1 0.5, c2 0.4 -> differences 0.25, 0.15
    assert "| - | pretrained @ frac0.5 | scratch @ frac0.5 | 2 | 0.650 | 0.450 | +0.200 | [0.150, 0.250] | 0.500 |" in md
    assert "| pretrained | `T1` | fine-tune lr 1e-3 |" in md
    assert "all 2 test cases verified absent from its 9 pretraining cases (DS)" in md
    summary = list(csv.DictReader(paths["summary"].open()))
    assert {r["method"]: (float(r["dice_mean"]), int(r["dice_n"])) for r in summary} == {
        "pretrained": (pytest.approx(0.65), 2), "scratch": (pytest.approx(0.45), 2)}
    paired = list(csv.DictReader(paths["paired"].open()))
    assert {r["metric"] for r in paired} == {"dice", "fpv_ml", "fnv_ml"}
    assert len(list(csv.DictReader(paths["csv"].open()))) == 8  # 2 cases x 2 methods x 2 seeds
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- end to end
def _runner(monkeypatch, capsys, env: dict, *args: str) -> subprocess.CompletedProcess:
    """The runner's CLI through its ``main(argv)`` in this interpreter (exit code, stdout, stderr as from the
    console script, without a fresh nnU-Net import per call; each test also runs the real script once)."""
    from nnunetv2_petct.cli.label_efficiency import main

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["nnUNetv2_petct_label_efficiency", *args], code, out.out, out.err)


@pytest.mark.slow
def test_grid_with_two_seeds_writes_mean_sd_paired_statistics_and_error_bars(transfer_grid):  # noqa: F811
    from scipy.stats import wilcoxon

    g = transfer_grid
    n_test = len(list(g.test_labels.glob("*.nii.gz")))
    assert n_test == 2
    # per-case CSV: one row per case x method x subset x seed
    cases = list(csv.DictReader((g.out / "label_efficiency.csv").open()))
    assert len(cases) == n_test * len(METHODS) * 2
    assert {(r["method"], r["replicate"]) for r in cases} == {(m, str(k)) for m in METHODS for k in (0, 1)}
    for r in cases:  # held-out phantoms all have lesions: Dice is defined for every case
        assert 0.0 <= float(r["dice"]) <= 1.0 and float(r["fpv_ml"]) >= 0 and float(r["fnv_ml"]) >= 0
    runs = list(csv.DictReader((g.out / "label_efficiency_runs.csv").open()))
    assert len(runs) == len(METHODS) * 2 and {r["seed"] for r in runs} == {"12345", "13345"}
    for r in runs:
        assert int(r["n_cases"]) == 2 and int(r["n_cases_dice"]) == 2
        mine = [float(c["dice"]) for c in cases if (c["method"], c["replicate"]) == (r["method"], r["replicate"])]
        assert float(r["dice"]) == pytest.approx(sum(mine) / len(mine))
    # summary: mean ± sd over the two seeds, n = 2
    summary = {r["method"]: r for r in csv.DictReader((g.out / "label_efficiency_summary.csv").open())}
    assert set(summary) == set(METHODS)
    for m, r in summary.items():
        d = [float(x["dice"]) for x in runs if x["method"] == m]
        assert int(r["n_seeds"]) == 2 and int(r["dice_n"]) == 2
        assert float(r["dice_mean"]) == pytest.approx(sum(d) / 2)
        assert float(r["dice_sd"]) == pytest.approx(abs(d[0] - d[1]) / 2 ** 0.5)  # sample sd of two values
    # paired comparisons, recomputed here from the per-case CSV: seed means per case, differences A - B
    paired = [r for r in csv.DictReader((g.out / "label_efficiency_paired.csv").open()) if r["metric"] == "dice"]
    assert {(r["method_a"], r["method_b"]) for r in paired} == {
        ("pretrained", "scratch"), ("pretrained", "nnunet_default"), ("probe", "late_fusion_probe")}
    for r in paired:
        def seed_mean(method, case):
            return sum(float(c["dice"]) for c in cases if (c["method"], c["case"]) == (method, case)) / 2
        test_cases = sorted({c["case"] for c in cases})
        diffs = [seed_mean(r["method_a"], c) - seed_mean(r["method_b"], c) for c in test_cases]
        assert int(r["n_cases"]) == 2 and float(r["mean_diff"]) == pytest.approx(sum(diffs) / 2)
        # two cases: every bootstrap resample is one of (d1,d1), (d1,d2), (d2,d1), (d2,d2), each with p = 1/4,
        # so the 95 % percentile interval is exactly [min, max] of the differences
        assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx((min(diffs), max(diffs)), abs=1e-9)
        nonzero = [x for x in diffs if x != 0]
        expected_p = 1.0 if not nonzero else wilcoxon(nonzero).pvalue
        assert float(r["p_wilcoxon"]) == pytest.approx(expected_p)
    claim2 = next(r for r in paired if r["method_b"] == "late_fusion_probe")
    assert claim2["claim"] == "claim 2"
    md = (g.out / "label_efficiency.md").read_text()
    assert "| subset | fraction | train cases | pretrained | scratch | nnunet_default | probe | late_fusion_probe |" in md
    assert md.count(" ± ") >= len(METHODS) and "(n=2)" in md
    assert "## Paired comparisons (Dice)" in md and "| claim 2 | probe @ frac0.5 | late_fusion_probe @ frac0.5 | 2 |" in md
    assert "SGD peak lr 1e-2 (nnU-Net's tuned rate" in md  # each column's recipe
    assert md.count("verified absent from its") == 2  # joint and late-fusion checkpoints
    png = g.out / "label_efficiency_dice.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (g.out / "evaluation" / "probe" / "frac0.5_seed1" / "per_case.csv").is_file()


@pytest.mark.slow
def test_seeds_reach_the_trainers_and_get_their_own_folds(transfer_grid):  # noqa: F811
    from tests.nnunet.test_finetune_trainers import TRAINERS, fold_dir

    g = transfer_grid
    design = g.design
    assert design["seeds"] == 2 and [r["seed"] for r in design["replicates"]] == [12345, 13345]
    subs = {s["run_name"]: s for s in design["subsets"]}
    assert set(subs) == set(RUNS)
    a, b = subs["frac0.5"], subs["frac0.5_seed1"]
    assert a["fold"] != b["fold"] and a["train"] != b["train"]  # two different draws, two folds
    splits = json.loads((Path(g.env["nnUNet_preprocessed"]) / g.dataset_name / "splits_final.json").read_text())
    assert sorted((a["fold"], b["fold"])) == [5, 6]  # right after the patient-grouped 5-fold CV
    for s in (a, b):
        assert splits[s["fold"]] == {"train": s["train"], "val": design["val"]}
        # 8 training phantoms, each its own patient: 1 validation case, pool 7, 0.5 -> round(3.5) = 4 cases
        assert len(s["train"]) == 4 and set(s["train"]) < set(design["pool"])
        for trainer in TRAINERS.values():
            rec = json.loads((fold_dir(g.env, g.dataset_name, trainer, s["fold"]) / "training_seed.json").read_text())
            assert rec["seed"] == s["seed"] and rec["source"] == "NNUNETV2_PETCT_SEED"
    assert not {p.name[: -len(".nii.gz")] for p in g.test_labels.glob("*.nii.gz")} & set(design["pool"] + design["val"])
    leak = design["leakage_check"]["checkpoints"]
    assert [c["verified"] for c in leak] == [True, True] and all(not c["overlap"] for c in leak)
    assert all(c["verified_excluded_test_cases"] == sorted(design["test"]) for c in leak)


@pytest.mark.slow
def test_dry_run_default_grid_seeds_and_nested_folds(transfer_grid, tmp_path, monkeypatch, capsys):  # noqa: F811
    g = transfer_grid
    splits_file = Path(g.env["nnUNet_preprocessed"]) / g.dataset_name / "splits_final.json"
    base = ["-d", str(COPY_ID), "--pretrained", str(g.foundation), "--trainer-suffix", "_tiny", "--test-images",
            str(g.test_images), "--test-labels", str(g.test_labels), "-device", "cpu", "--dry-run", "--seeds", "2"]
    before = splits_file.read_text()
    again = _runner(monkeypatch, capsys, g.env, *base, "--fractions", "0.5", "--methods", *METHODS, "--pretrained-ct",
                    str(g.foundation_ct), "--pretrained-pet", str(g.foundation_pet), "-o", str(tmp_path / "same"))
    assert again.returncode == 0, again.stderr
    assert splits_file.read_text() == before  # same design -> same folds, file untouched
    assert sum(x.startswith("NNUNETV2_PETCT_SEED=") for x in again.stdout.splitlines()) == len(METHODS) * 2

    proc = run([cli("nnUNetv2_petct_label_efficiency"), *base, "--fractions", "0.5", "1.0", "-o", str(tmp_path / "dry")],
               g.env)  # the default grid, through the installed script
    train_lines = [x for x in proc.stdout.splitlines() if " nnUNetv2_train " in x]
    assert len(train_lines) == 2 * 2 * 4  # 2 fractions x 2 seeds x 4 default methods
    trainers = {x.split(" -tr ")[1].split()[0] for x in train_lines}
    assert trainers == {"nnUNetTrainerPETCTFinetune_tiny", "nnUNetTrainerPETCTScratch_tiny", "nnUNetTrainerPETCT_tiny",
                        "nnUNetTrainerPETCTLinearProbe_tiny"}
    for line in train_lines:
        needs = "Finetune_tiny" in line or "LinearProbe_tiny" in line
        assert ("-pretrained_weights" in line) == needs
    design = json.loads((tmp_path / "dry" / "label_efficiency_design.json").read_text())
    subs = {s["run_name"]: s for s in design["subsets"]}
    for k, name in ((0, "frac1"), (1, "frac1_seed1")):  # nested inside each replicate
        half = subs["frac0.5" if k == 0 else "frac0.5_seed1"]
        assert set(half["train"]) < set(subs[name]["train"]) == set(design["pool"])
    assert subs["frac1"]["fold"] != subs["frac1_seed1"]["fold"]  # same cases, different training seeds
    for s in design["subsets"]:  # every training command carries its replicate's seed
        assert any(x.startswith(f"NNUNETV2_PETCT_SEED={s['seed']} ") and f" 3d_fullres {s['fold']} " in x
                   for x in train_lines)
    assert (tmp_path / "dry" / "commands.sh").read_text().count("nnUNetv2_train ") == 16
    assert not (tmp_path / "dry" / "label_efficiency.csv").exists()


@pytest.mark.slow
def test_leakage_guard_refuses_test_cases_that_were_pretrained_on(transfer_grid, tmp_path, monkeypatch,  # noqa: F811
                                                                  capsys):
    g = transfer_grid
    pre = Path(g.env["nnUNet_preprocessed"]) / g.dataset_name
    test_ids = sorted(p.name[: -len(".nii.gz")] for p in g.test_labels.glob("*.nii.gz"))
    leaky = make_foundation_checkpoint(pre, tmp_path / "leaky.pth", metadata={
        "pretraining_data": pretraining_data(["other_case", test_ids[1]], "Dataset900_Pretraining")})
    base = [cli("nnUNetv2_petct_label_efficiency"), "-d", str(COPY_ID), "--pretrained", str(leaky), "--fractions", "1.0",
            "--methods", "pretrained", "--trainer-suffix", "_tiny", "--test-images", str(g.test_images),
            "--test-labels", str(g.test_labels), "-device", "cpu", "--dry-run"]
    proc = run(base + ["-o", str(tmp_path / "refused")], g.env, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "1 of the 2 test case(s) were in the pretraining set" in proc.stderr
    assert test_ids[1] in proc.stderr and "--allow-test-overlap" in proc.stderr
    assert not (tmp_path / "refused" / "label_efficiency_design.json").exists()  # nothing written
    ok = _runner(monkeypatch, capsys, g.env, *base[1:], "-o", str(tmp_path / "allowed"), "--allow-test-overlap")
    assert ok.returncode == 0 and "WARNING: --allow-test-overlap" in ok.stderr and test_ids[1] in ok.stderr
    (check,) = json.loads((tmp_path / "allowed" / "label_efficiency_design.json").read_text())["leakage_check"]["checkpoints"]
    assert check["overlapping_test_cases"] == [test_ids[1]] and check["verified"] is True
    assert check["verified_excluded_test_cases"] == [test_ids[0]]
    # a checkpoint that does not list its pretraining cases runs, recorded as unverified
    unknown = make_foundation_checkpoint(pre, tmp_path / "unknown.pth")
    assert _runner(monkeypatch, capsys, g.env, *base[1:4], str(unknown), *base[5:], "-o",
                   str(tmp_path / "unknown")).returncode == 0
    (check,) = json.loads((tmp_path / "unknown" / "label_efficiency_design.json").read_text())["leakage_check"]["checkpoints"]
    assert check["verified"] is False and "does not list" in check["reason"]


@pytest.mark.slow
def test_bad_input_exits_2_with_a_message(transfer_grid, tmp_path, monkeypatch, capsys):  # noqa: F811
    g = transfer_grid
    base = ["-d", str(COPY_ID), "--fractions", "1.0", "-device", "cpu", "--test-images", str(g.test_images),
            "--test-labels", str(g.test_labels), "-o", str(tmp_path / "o"), "--dry-run"]
    proc = run([cli("nnUNetv2_petct_label_efficiency"), *base], g.env, check=False)  # the default grid, no checkpoint
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "need --pretrained" in proc.stderr

    def le(*args):
        return _runner(monkeypatch, capsys, g.env, *base, *args)

    proc = le("--methods", "late_fusion_probe")
    assert proc.returncode == 2 and "need --pretrained-ct and --pretrained-pet" in proc.stderr
    # a 1-channel checkpoint for this 2-channel dataset: refused before any run, with the fix
    one = make_foundation_checkpoint(Path(g.env["nnUNet_preprocessed"]) / g.dataset_name, tmp_path / "pet.pth",
                                     num_input_channels=1, channel_names=("PET",))
    proc = le("--pretrained", str(one))
    assert proc.returncode == 2
    assert "Input channels: checkpoint 1, network 2" in proc.stderr
    assert "nnUNetv2_petct_adapt_checkpoint" in proc.stderr
    # the late-fusion pair swapped: refused with the reason
    proc = le("--methods", "late_fusion_probe", "--pretrained-ct", str(g.foundation_pet), "--pretrained-pet",
              str(g.foundation_ct))
    assert proc.returncode == 2 and "swap --ct and --pet" in proc.stderr
    # a merged (first-conv) checkpoint initialises fine-tuning but is never probed
    from nnunetv2_petct.transfer.weights import (
        load_checkpoint,
        merge_single_channel_checkpoints,
        save_checkpoint,
    )

    merged = save_checkpoint(merge_single_channel_checkpoints(
        [load_checkpoint(g.foundation_ct), load_checkpoint(g.foundation_pet)], rule="first"), tmp_path / "merged.pth")
    assert le("--methods", "pretrained", "--pretrained", str(merged)).returncode == 0
    proc = le("--methods", "probe", "--pretrained", str(merged))
    assert proc.returncode == 2 and "do not probe it" in proc.stderr and "late_fusion_probe" in proc.stderr
    # a trainer variant that does not exist
    assert le("--methods", "scratch", "--trainer-suffix", "_demo").returncode == 0  # Scratch_demo exists
    proc = le("--methods", "scratch_lr1e3", "--trainer-suffix", "_demo")
    assert proc.returncode == 2 and "nnUNetTrainerPETCTScratchLR1e3_demo" in proc.stderr
