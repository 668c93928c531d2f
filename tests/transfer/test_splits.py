"""Patient-grouped splits, the paper's AutoPET protocol and label-efficiency subsets."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from nnunetv2_petct.transfer import splits as S

# SHA-256 of the reference CSVs (tests/data/paper_splits/README.md): the package ships the files themselves.
REFERENCE_SUMS = Path(__file__).resolve().parents[1] / "data" / "paper_splits" / "SHA256SUMS"


def _c2p(group_sizes):
    """Patients P0, P1, ... with the given number of cases each (case ids P<i>_s<j>)."""
    return {f"P{i}_s{j}": f"P{i}" for i, n in enumerate(group_sizes) for j in range(n)}


def _assert_partition(splits, c2p):
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(c2p)  # every case validated exactly once
    for s in splits:
        assert sorted(s["train"] + s["val"]) == sorted(c2p)
    S.check_patient_disjoint(splits, c2p)


def test_kfold_singletons_give_equal_folds():
    c2p = _c2p([1] * 10)
    splits = S.patient_grouped_kfold(c2p, 5, seed=1)
    _assert_partition(splits, c2p)
    assert [len(s["val"]) for s in splits] == [2, 2, 2, 2, 2]


def test_kfold_keeps_patients_together_and_balances():
    sizes = [5, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]  # 24 cases, 13 patients
    c2p = _c2p(sizes)
    splits = S.patient_grouped_kfold(c2p, 5, seed=3)
    _assert_partition(splits, c2p)
    n_val = [len(s["val"]) for s in splits]
    # greedy largest-first onto the smallest fold: 24 cases -> folds of 5 or 4 (5 = the big patient)
    assert sorted(n_val) == [4, 5, 5, 5, 5]
    assert S.patient_grouped_kfold(c2p, 5, seed=3) == splits  # deterministic
    with pytest.raises(S.SplitError):
        S.patient_grouped_kfold(_c2p([1, 1]), 5)


def test_subset_fraction_takes_whole_patients_and_exact_count():
    c2p = _c2p([3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # 20 cases
    for seed in range(10):
        sub = S.subset_cases(c2p, fraction=0.2, seed=seed)
        assert len(sub) == 4  # round(0.2 * 20); always reachable with the single-case patients
        patients = {c2p[c] for c in sub}
        assert all(c in sub for c, p in c2p.items() if p in patients)  # whole patients
    assert S.subset_cases(c2p, fraction=0.2, seed=1) == S.subset_cases(c2p, fraction=0.2, seed=1)
    assert len({tuple(S.subset_cases(c2p, fraction=0.2, seed=s)) for s in range(10)}) > 1


def test_subset_shots_one_case_per_patient():
    c2p = _c2p([3, 3, 2, 1])
    sub = S.subset_cases(c2p, shots=3, seed=0)
    assert len(sub) == 3 and len({c2p[c] for c in sub}) == 3
    with pytest.raises(S.SplitError, match="patients"):
        S.subset_cases(c2p, shots=5)
    with pytest.raises(S.SplitError):
        S.subset_cases(c2p, shots=2, fraction=0.5)


def test_subset_splits_respect_holdout_eligibility_and_patients():
    c2p = _c2p([2, 2, 1, 1, 1, 1, 1, 1])  # 10 cases
    holdout = {"P2_s0", "P3_s0"}
    eligible = ["P0_s0", "P0_s1", "P4_s0", "P5_s0", "P6_s0"]  # e.g. lesion-positive
    splits = S.subset_splits(c2p, shots=2, seed=5, repeats=3, eligible=eligible, holdout=holdout)
    assert len(splits) == 3
    S.check_patient_disjoint(splits, c2p)
    for s in splits:
        assert len(s["train"]) == 2 and set(s["train"]) <= set(eligible)
        assert not (set(s["train"]) | set(s["val"])) & holdout
        # validation = every non-holdout case of the other patients
        train_p = {c2p[c] for c in s["train"]}
        assert s["val"] == sorted(c for c, p in c2p.items() if c not in holdout and p not in train_p)
    capped = S.subset_splits(c2p, shots=1, seed=0, max_val=3)
    assert len(capped[0]["val"]) <= 3


def test_lesion_positive_cases_from_manifest():
    recs = [{"case_id": "a", "label": {"kind": "lesion", "foreground_voxels": 0}},
            {"case_id": "b", "label": {"kind": "lesion", "foreground_voxels": 12}}]
    assert S.lesion_positive_cases(recs) == ["b"]
    with pytest.raises(S.SplitError, match="lesion labels"):
        S.lesion_positive_cases([{"case_id": "c", "label": {"kind": "body_mask", "foreground_voxels": 9}}])


# ------------------------------------------------------------------------------------------ paper protocol


def test_study_key_parsing():
    assert S.study_key("./01.Dataset_AutoPET2025_FDG/fdg_0011f3deaf_03-23-2003-NA-PET-CT Ganzkoerper") == \
        ("0011f3deaf", "03-23-2003")
    assert S.study_key("fdg_0410759456_2scans/08-22-2003-NA-PET-CT x") == ("0410759456", "08-22-2003")
    assert S.study_key("fdg_0011f3deaf_03-23-2003") == ("0011f3deaf", "03-23-2003")
    assert S.study_key("PETCT_0011f3deaf/03-23-2003-NA-x") == ("0011f3deaf", "03-23-2003")
    assert S.study_key("train_0001") is None


def test_packaged_csvs_are_the_reference_files():
    sums = dict(reversed(line.split()) for line in REFERENCE_SUMS.read_text().splitlines() if line.strip())
    assert sorted(sums) == sorted(f"autopet_seg_split_{pct}pct.csv" for pct in S.PAPER_FRACTIONS)
    for name, digest in sums.items():
        assert hashlib.sha256((S.paper_splits_dir() / name).read_bytes()).hexdigest() == digest, name


def _records_from_csv():
    """Manifest-like records for all 1,014 studies as the converter names them."""
    with open(S.paper_splits_dir() / "autopet_seg_split_100pct.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    recs = []
    for r in rows:
        h, d = S.study_key(r["scan_rel_path"])
        recs.append({"case_id": f"fdg_{h}_{d}", "patient_id": f"PETCT_{h}", "source_keys": {}})
    return recs


def test_paper_protocol_on_all_studies():
    recs = _records_from_csv()
    c2p = S.case_to_patient_from_records(recs)
    pools = {}
    for pct, n_pool in ((10, 70), (30, 210), (100, 700)):  # counts of split == "train" in the CSVs
        ps = S.paper_protocol(recs, pct)
        assert len(ps.train_pool) == n_pool and len(ps.test) == 200 and ps.missing == []
        assert len(ps.not_in_csv) == 0
        assert len(ps.splits) == 6
        for fold in ps.splits[:5]:  # CV inside the pool only
            assert set(fold["train"]) | set(fold["val"]) == set(ps.train_pool)
        S.check_patient_disjoint(ps.splits, c2p)
        assert ps.splits[5] == {"train": ps.train_pool, "val": ps.test}
        pools[pct] = set(ps.train_pool)
        test = set(ps.test)
    assert pools[10] < pools[30] < pools[100] and not pools[100] & test


def test_paper_protocol_end_to_end_on_phantoms(tmp_path):
    """Phantoms named like three real AutoPET studies (one in the 10 % pool, one test, one unused)."""
    from nnunetv2_petct.conversion.core import read_manifest
    from nnunetv2_petct.conversion.registry import convert_cohort
    from nnunetv2_petct.phantoms import make_phantom
    from nnunetv2_petct.phantoms.layouts import write_autopet_layout

    rows = S.read_paper_split(10)
    picks = {}
    for row in rows:
        kind = "pool" if row["split"] == "train" else ("test" if row["is_test"] else "unused")
        picks.setdefault(kind, row)
    cases = []
    for i, (kind, row) in enumerate(sorted(picks.items())):
        h, mdy = row["key"]
        date = mdy[6:10] + mdy[0:2] + mdy[3:5]
        cases.append((kind, make_phantom(10 + i, patient_id=h, study_date=date, case_id=kind)))
    convert_cohort("autopet", write_autopet_layout([c for _, c in cases], tmp_path / "src"), 221,
                   tmp_path / "raw", quiet=True)
    recs = read_manifest(tmp_path / "raw" / "Dataset221_AutoPET")
    with pytest.raises(S.SplitError, match="not in the dataset"):
        S.paper_protocol(recs, 10)
    ps = S.paper_protocol(recs, 10, allow_missing=True)
    by_kind = {kind: f"fdg_{row['key'][0]}_{row['key'][1]}" for kind, row in picks.items()}
    assert ps.train_pool == [by_kind["pool"]] and ps.test == [by_kind["test"]]
    assert ps.splits[-1] == {"train": [by_kind["pool"]], "val": [by_kind["test"]]}


def test_write_splits_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    path = S.default_splits_path("Dataset221_AutoPET")
    assert path == tmp_path / "pre" / "Dataset221_AutoPET" / "splits_final.json"
    S.write_splits([{"train": ["a"], "val": ["b"]}], path)
    assert json.loads(path.read_text()) == [{"train": ["a"], "val": ["b"]}]
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(S.SplitError, match="nnUNet_preprocessed"):
        S.default_splits_path("Dataset221_AutoPET")
