"""Patient-grouped splits for nnU-Net (``splits_final.json``), the paper's AutoPET protocol and
seeded label-efficiency subsets (pure library: no nnunetv2 import).

``splits_final.json`` is nnU-Net's list of folds, ``[{"train": [case ids], "val": [case ids]}, ...]``;
``nnUNetv2_train DATASET CONFIG FOLD`` trains on ``splits[FOLD]``. nnU-Net only creates the file
(a case-level, *not* patient-grouped 5-fold) when it is missing, so writing ours before training
makes nnU-Net use it.

Everything is keyed by the per-case manifest of a converted dataset (``manifest.jsonl``), whose
records carry ``patient_id`` (AutoPET: ``PETCT_<hash>``), ``source_keys`` and label statistics.

The paper's protocol (SPEC §1): 700-scan AutoPET training pool with nested 10 % / 30 % / 100 %
label fractions (whole patients), 200 held-out test scans, patient-disjoint. The split lists ship with
the package (``nnunetv2_petct/data/paper_splits/autopet_seg_split_{10,30,100}pct.csv``; columns
``subject_id``, ``scan_rel_path``, ``split`` in {train, val_test, unused}, ``is_test``). A CSV row is
matched to a converted case through the patient hash and the study date (``MM-DD-YYYY``) in
``scan_rel_path``, which is unique over the 1,014 studies. :func:`paper_protocol` builds:

- folds 0-4: patient-grouped 5-fold cross-validation *inside* the training pool (the test set is
  never seen) — for model selection and ensembles;
- fold 5: the whole pool for training and the 200 test scans as nnU-Net's validation set, which is
  what the CSVs encode (``is_val`` = ``is_test``) and the paper's protocol: nnU-Net then predicts the
  test scans at the end of training and scores them. Use ``checkpoint_final.pth`` (nnU-Net's
  default) for this fold; ``checkpoint_best.pth`` would be chosen on the test set.

Never train with ``-f all`` on a dataset that holds the test scans: nnU-Net's ``all`` means every
case in ``imagesTr``.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_petct.io import write_json_atomic

logger = logging.getLogger(__name__)

PAPER_FRACTIONS = (10, 30, 100)
DEFAULT_SEED = 12345
_KEY_RE = re.compile(r"(?:fdg_|PETCT_)?([0-9a-f]{10})(?:_\d+scans)?[/_](\d{2}-\d{2}-\d{4})")


class SplitError(ValueError):
    """The split cannot be made (too few patients, unknown fraction, mismatching manifest)."""


def paper_splits_dir() -> Path:
    """Folder of the paper's split CSVs shipped with the package."""
    return Path(__file__).resolve().parents[1] / "data" / "paper_splits"


# ------------------------------------------------------------------------------------ generic helpers


def cases_by_patient(case_to_patient: Mapping[str, str]) -> dict[str, list[str]]:
    """Patient -> sorted case ids."""
    out: dict[str, list[str]] = {}
    for case, patient in case_to_patient.items():
        out.setdefault(patient, []).append(case)
    return {p: sorted(c) for p, c in sorted(out.items())}


def patient_grouped_kfold(case_to_patient: Mapping[str, str], n_folds: int = 5,
                          seed: int = DEFAULT_SEED) -> list[dict[str, list[str]]]:
    """Patient-grouped k-fold: a patient's cases are all in one fold's validation set.

    Patients are shuffled with ``seed``, then taken largest group first (stable) and given to the
    fold with the fewest cases so far (lowest index on ties), which balances the fold sizes to
    within one patient's cases. Deterministic for a given input and seed.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` (``n_folds`` entries, case ids sorted).

    Raises:
        SplitError: fewer patients than folds, or ``n_folds`` < 2.
    """
    if n_folds < 2:
        raise SplitError("n_folds must be >= 2")
    groups = cases_by_patient(case_to_patient)
    if len(groups) < n_folds:
        raise SplitError(f"{len(groups)} patient(s) cannot fill {n_folds} folds")
    patients = list(groups)
    random.Random(seed).shuffle(patients)
    patients.sort(key=lambda p: -len(groups[p]))  # stable: the shuffle breaks ties
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for p in patients:
        i = min(range(n_folds), key=lambda k: (len(folds[k]), k))
        folds[i].extend(groups[p])
    all_cases = sorted(case_to_patient)
    out = []
    for val in folds:
        vs = set(val)
        out.append({"train": [c for c in all_cases if c not in vs], "val": sorted(val)})
    return out


def _choose_patients(groups: Mapping[str, list[str]], target_cases: int, rng: random.Random) -> list[str]:
    """Whole patients, in random order, until ``target_cases`` cases (never more; skips patients that
    would overshoot, so the count is exact whenever some combination in that order allows it)."""
    patients = list(groups)
    rng.shuffle(patients)
    chosen, n = [], 0
    for p in patients:
        if n >= target_cases:
            break
        if n + len(groups[p]) <= target_cases:
            chosen.append(p)
            n += len(groups[p])
    return chosen


def subset_cases(case_to_patient: Mapping[str, str], *, fraction: float | None = None, shots: int | None = None,
                 seed: int = 0, eligible: Iterable[str] | None = None) -> list[str]:
    """A seeded, patient-grouped training subset.

    Args:
        case_to_patient: every usable case -> its patient.
        fraction: share of the cases (0 < f <= 1), taken as whole patients (all of a patient's
            eligible cases), ``round(f * n)`` cases (at least 1).
        shots: K cases from K different patients (one random case per patient).
        seed: random seed.
        eligible: restrict the draw to these cases (e.g. lesion-positive ones).

    Returns:
        Sorted case ids.

    Raises:
        SplitError: neither or both of ``fraction``/``shots``; out-of-range values; more shots than
            patients.
    """
    if (fraction is None) == (shots is None):
        raise SplitError("give exactly one of fraction or shots")
    pool = {c: p for c, p in case_to_patient.items() if eligible is None or c in set(eligible)}
    if not pool:
        raise SplitError("no eligible case to draw from")
    groups = cases_by_patient(pool)
    rng = random.Random(seed)
    if shots is not None:
        if shots < 1:
            raise SplitError("shots must be >= 1")
        if shots > len(groups):
            raise SplitError(f"{shots} shots need {shots} patients; only {len(groups)} eligible")
        patients = list(groups)
        rng.shuffle(patients)
        return sorted(rng.choice(groups[p]) for p in patients[:shots])
    if not 0 < float(fraction) <= 1:
        raise SplitError(f"fraction must be in (0, 1], got {fraction}")
    target = max(1, round(float(fraction) * len(pool)))
    return sorted(c for p in _choose_patients(groups, target, rng) for c in groups[p])


def subset_splits(case_to_patient: Mapping[str, str], *, fraction: float | None = None, shots: int | None = None,
                  seed: int = 0, repeats: int = 1, eligible: Iterable[str] | None = None,
                  holdout: Iterable[str] = (), max_val: int | None = None) -> list[dict[str, list[str]]]:
    """``splits_final.json`` content for label-efficiency runs: fold ``i`` trains on the subset drawn
    with seed ``seed + i`` and validates on the cases of the *other* patients (never on ``holdout``
    cases, e.g. a test set, which are also never drawn).

    ``max_val`` caps the validation set (whole patients, seeded) so nnU-Net's final validation stays
    short on large datasets.
    """
    held = set(holdout)
    usable = {c: p for c, p in case_to_patient.items() if c not in held}
    held_patients = {case_to_patient[c] for c in held if c in case_to_patient}
    leaking = sorted(c for c, p in usable.items() if p in held_patients)
    if leaking:
        logger.warning("%d case(s) share a patient with the holdout set and are left out (e.g. %s)",
                       len(leaking), leaking[0])
        usable = {c: p for c, p in usable.items() if p not in held_patients}
    elig = None if eligible is None else [c for c in eligible if c in usable]
    out = []
    for i in range(repeats):
        train = subset_cases(usable, fraction=fraction, shots=shots, seed=seed + i, eligible=elig)
        train_patients = {usable[c] for c in train}
        rest = {c: p for c, p in usable.items() if p not in train_patients}
        if max_val is not None and len(rest) > max_val:
            groups = cases_by_patient(rest)
            chosen = _choose_patients(groups, max_val, random.Random(seed + 1000 + i))
            rest = {c: rest[c] for p in chosen for c in groups[p]}
        out.append({"train": train, "val": sorted(rest)})
    return out


def check_patient_disjoint(splits: Sequence[Mapping[str, Sequence[str]]], case_to_patient: Mapping[str, str]) -> None:
    """Raise :class:`SplitError` if any fold has a patient in both train and val."""
    for i, s in enumerate(splits):
        both = {case_to_patient[c] for c in s["train"]} & {case_to_patient[c] for c in s["val"]}
        if both:
            raise SplitError(f"fold {i}: patient(s) {sorted(both)[:3]} in both train and val")


# ------------------------------------------------------------------------------------ paper protocol


def study_key(text: str) -> tuple[str, str] | None:
    """(patient hash, ``MM-DD-YYYY``) from an AutoPET id or path, e.g. ``fdg_0011f3deaf_03-23-2003``,
    ``fdg_0410759456_2scans/08-22-2003-NA-...`` or ``PETCT_0011f3deaf/03-23-2003-NA-...``; None otherwise."""
    m = _KEY_RE.search(text)
    return (m.group(1), m.group(2)) if m else None


def record_study_key(record: Mapping) -> tuple[str, str] | None:
    """Study key of a manifest record: ``source_keys`` (patient key + study date) when present, else
    parsed from the case id."""
    keys = record.get("source_keys") or {}
    if keys.get("patient_key") and keys.get("study_date"):
        return str(keys["patient_key"]), str(keys["study_date"])
    return study_key(str(record.get("case_id", "")))


def read_paper_split(fraction: int, csv_dir: Path | None = None) -> list[dict]:
    """Rows of ``autopet_seg_split_<fraction>pct.csv``: ``key`` (hash, date), ``split``, ``is_test``,
    ``subject_id``, ``scan_rel_path``.

    Raises:
        SplitError: unknown fraction, missing file or a row whose study key cannot be parsed.
    """
    if int(fraction) not in PAPER_FRACTIONS:
        raise SplitError(f"fraction must be one of {PAPER_FRACTIONS} (percent), got {fraction}")
    path = Path(csv_dir or paper_splits_dir()) / f"autopet_seg_split_{int(fraction)}pct.csv"
    if not path.is_file():
        raise SplitError(f"{path} not found")
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = study_key(row["scan_rel_path"])
            if key is None:
                raise SplitError(f"{path}: cannot parse a study key from {row['scan_rel_path']!r}")
            rows.append({"key": key, "split": row["split"], "is_test": row["is_test"] == "yes",
                         "subject_id": row["subject_id"], "scan_rel_path": row["scan_rel_path"]})
    return rows


@dataclass
class PaperSplit:
    """The paper's protocol mapped onto a converted dataset.

    Attributes:
        fraction: 10, 30 or 100 (percent of the 700-scan pool).
        train_pool: case ids of the training pool at this fraction.
        test: case ids of the 200 held-out test scans.
        splits: ``splits_final.json`` content (folds 0-4 CV in the pool, fold 5 pool vs test; only
            the pool-vs-test fold, as fold 0, when the pool has fewer patients than folds).
        missing: CSV studies (train or test) with no converted case (``scan_rel_path`` strings).
        not_in_csv: converted cases the CSV does not list.
    """

    fraction: int
    train_pool: list[str]
    test: list[str]
    splits: list[dict[str, list[str]]]
    missing: list[str] = field(default_factory=list)
    not_in_csv: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        last = len(self.splits) - 1
        folds = {str(last): "train = whole pool, val = the test scans (paper protocol; use checkpoint_final)"}
        if last > 0:
            folds = {f"0-{last - 1}": f"patient-grouped {last}-fold CV inside the training pool", **folds}
        return {"fraction_percent": self.fraction, "train_pool": self.train_pool, "test": self.test, "folds": folds,
                "missing_from_dataset": self.missing, "not_in_csv": self.not_in_csv}


def paper_protocol(records: Sequence[Mapping], fraction: int, csv_dir: Path | None = None, n_folds: int = 5,
                   seed: int = DEFAULT_SEED, allow_missing: bool = False) -> PaperSplit:
    """Map the paper's split CSV for ``fraction`` onto converted AutoPET cases (manifest records).

    Raises:
        SplitError: training-pool or test studies missing from the dataset (unless
            ``allow_missing``), or a test patient that also appears in the pool.
    """
    rows = read_paper_split(fraction, csv_dir)
    by_key: dict[tuple[str, str], Mapping] = {}
    for r in records:
        k = record_study_key(r)
        if k is not None:
            by_key.setdefault(k, r)
    pool, test, missing = [], [], []
    csv_keys = set()
    for row in rows:
        csv_keys.add(row["key"])
        if row["split"] not in ("train", "val_test"):
            continue
        rec = by_key.get(row["key"])
        if rec is None:
            missing.append(row["scan_rel_path"])
            continue
        (test if row["is_test"] else pool).append(rec["case_id"])
    not_in_csv = sorted(r["case_id"] for r in records if record_study_key(r) not in csv_keys)
    if missing and not allow_missing:
        raise SplitError(f"{len(missing)} study(ies) of the {fraction} % split are not in the dataset "
                         f"(e.g. {missing[0]!r}); convert the full AutoPET cohort or pass allow_missing")
    c2p = {r["case_id"]: str(r["patient_id"]) for r in records}
    pool, test = sorted(pool), sorted(test)
    overlap = {c2p[c] for c in pool} & {c2p[c] for c in test}
    if overlap:
        raise SplitError(f"patient(s) {sorted(overlap)[:3]} in both the training pool and the test set")
    pool_c2p = {c: c2p[c] for c in pool}
    if len(set(pool_c2p.values())) >= n_folds:
        splits = patient_grouped_kfold(pool_c2p, n_folds, seed)
    else:  # only possible on a partial dataset (allow_missing)
        logger.warning("%d patient(s) in the pool: no %d-fold CV, only the pool-vs-test fold (fold 0)",
                       len(set(pool_c2p.values())), n_folds)
        splits = []
    splits.append({"train": list(pool), "val": list(test)})
    return PaperSplit(int(fraction), pool, test, splits, missing, not_in_csv)


# ------------------------------------------------------------------------------------ I/O


def case_to_patient_from_records(records: Sequence[Mapping]) -> dict[str, str]:
    return {str(r["case_id"]): str(r["patient_id"]) for r in records}


def lesion_positive_cases(records: Sequence[Mapping]) -> list[str]:
    """Cases whose label has foreground voxels.

    Raises:
        SplitError: the dataset's labels are body masks (no lesion labels).
    """
    kinds = {(r.get("label") or {}).get("kind") for r in records}
    if kinds - {"lesion"}:
        raise SplitError(f"lesion-positive selection needs lesion labels; this dataset has label kind(s) {sorted(kinds)}")
    return sorted(r["case_id"] for r in records if (r.get("label") or {}).get("foreground_voxels", 0) > 0)


def write_splits(splits: Sequence[Mapping[str, Sequence[str]]], path: Path) -> Path:
    """Write ``splits_final.json`` atomically and verified (:func:`nnunetv2_petct.io.write_json_atomic`)."""
    return write_json_atomic([{"train": list(s["train"]), "val": list(s["val"])} for s in splits], path)


def default_splits_path(dataset_folder_name: str, preprocessed_dir: str | os.PathLike | None = None) -> Path:
    """``$nnUNet_preprocessed/<DatasetXXX_Name>/splits_final.json``.

    Raises:
        SplitError: neither ``preprocessed_dir`` nor ``$nnUNet_preprocessed`` is set.
    """
    base = preprocessed_dir or os.environ.get("nnUNet_preprocessed")
    if not base:
        raise SplitError("nnUNet_preprocessed is not set: set it or give an output path (-o)")
    return Path(base) / dataset_folder_name / "splits_final.json"
