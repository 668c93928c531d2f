"""Leakage guard: test cases of a label-efficiency study must never be in the pretraining set (pure).

Why: a foundation model that reconstructed the test scans during pretraining has seen their images
(not their labels); a label-efficiency gain measured on those scans may partly be memorization. The
paper's pretraining pool contained all 1,014 AutoPET studies, its 200 test studies included (SPEC §1);
our protocol excludes them and checks it twice:

1. when the pretraining dataset is assembled (``nnUNetv2_petct_pretraining_dataset
   --protect-test-cases FILE``): a protected test case that would enter the set stops the assembly;
2. when the label-efficiency runner is given a foundation checkpoint: the checkpoint lists the cases it
   was pretrained on (``petct_metadata.pretraining_data``, written by the MAE trainer) and the runner
   compares them with its test cases.

Identity of a case (:func:`identity_keys`) — two cases are the same study when any key is shared:

- ``case:<id>``: the case id; for a pretraining-set record also its source case id (the id in the
  converted source dataset) and its prefixed id (``autopet_<id>``);
- ``study:<patient hash>/<MM-DD-YYYY>``: the AutoPET study key (:func:`nnunetv2_petct.transfer.splits.study_key`),
  from the manifest record's ``source_keys`` or parsed from the id, so the same AutoPET study matches
  across conversions (NIfTI release, nnU-Net release, DICOM) whatever its case id.

The rule is conservative: two unrelated cohorts that happen to use the same case id also match (a
false alarm shows both ids; the override flag exists for it). Cohorts other than AutoPET are matched by
case id only, so the same scan converted twice under different ids cannot be recognised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_petct.transfer.splits import record_study_key, study_key

logger = logging.getLogger(__name__)

PRETRAINING_DATA_KEY = "pretraining_data"
"""``petct_metadata`` key of a foundation checkpoint: a list of :func:`pretraining_data_record` dicts."""
OVERRIDE_FLAG = "--allow-test-overlap"


class LeakageError(ValueError):
    """Test cases would be (or were) in the pretraining set; the message names them and the override."""


def identity_keys(case_id: str, record: Mapping | None = None) -> set[str]:
    """Identity keys of a case (module doc); ``record`` is its manifest record when known."""
    keys = {f"case:{case_id}"}
    if record:
        for k in ("case_id", "source_case_id"):
            if record.get(k):
                keys.add(f"case:{record[k]}")
        sk = record_study_key(record)
        if sk is None and record.get("source_case_id"):
            sk = study_key(str(record["source_case_id"]))
    else:
        sk = None
    if sk is None:
        sk = study_key(str(case_id))
    if sk is not None:
        keys.add(f"study:{sk[0]}/{sk[1]}")
    return keys


def read_manifest_records(folder: str | Path | None) -> dict[str, dict] | None:
    """``{case_id: record}`` from ``folder/manifest.jsonl`` (datasets converted by this package), or None."""
    if folder is None:
        return None
    path = Path(folder) / "manifest.jsonl"
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "case_id" in r:
                out[str(r["case_id"])] = r
    return out


def pretraining_data_record(dataset_name: str, training_cases: Sequence[str], validation_cases: Sequence[str],
                            records: Mapping[str, Mapping] | None, fold: str | int | None = None) -> dict:
    """What a foundation checkpoint records about its pretraining data (``petct_metadata.pretraining_data``).

    Every case the run could read (training and validation) is listed with its source identity from the
    pretraining dataset's manifest (``records``; None when the dataset has no manifest: then only the case
    ids are known, and the record says so).
    """
    cases = []
    for c in sorted(set(training_cases) | set(validation_cases)):
        r = (records or {}).get(c) or {}
        entry = {"case_id": c}
        for k in ("source_dataset", "source_case_id", "cohort"):
            if r.get(k) is not None:
                entry[k] = str(r[k])
        sk = record_study_key(r) if r else study_key(c)
        if sk is None and r.get("source_case_id"):
            sk = study_key(str(r["source_case_id"]))
        if sk is not None:
            entry["study_key"] = f"{sk[0]}/{sk[1]}"
        cases.append(entry)
    return {
        "dataset_name": dataset_name,
        "fold": None if fold is None else str(fold),
        "n_training_cases": len(set(training_cases)),
        "n_validation_cases": len(set(validation_cases)),
        "identities_from": "manifest.jsonl of the pretraining dataset" if records else
                           "case ids only (no manifest.jsonl found for the pretraining dataset)",
        "cases": cases,
    }


def _entry_keys(entry: Mapping) -> set[str]:
    keys = {f"case:{entry['case_id']}"}
    if entry.get("source_case_id"):
        keys.add(f"case:{entry['source_case_id']}")
    if entry.get("study_key"):
        keys.add(f"study:{entry['study_key']}")
    return keys


@dataclass
class LeakageReport:
    """Result of comparing test cases with pretraining cases.

    ``overlap``: ``{"test_case", "pretraining_case", "pretraining_dataset", "shared"}`` per match;
    ``verified`` False when the pretraining cases are unknown (nothing could be checked).
    """

    n_test: int
    n_pretraining: int
    verified: bool
    overlap: list[dict] = field(default_factory=list)
    pretraining_datasets: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def overlapping_test_cases(self) -> list[str]:
        return sorted({o["test_case"] for o in self.overlap})

    def describe(self, max_items: int = 10) -> str:
        items = [f"{o['test_case']} = {o['pretraining_case']} ({o['shared']})" for o in self.overlap[:max_items]]
        more = f" ... and {len(self.overlap) - max_items} more" if len(self.overlap) > max_items else ""
        return "; ".join(items) + more

    def to_dict(self) -> dict:
        return {"n_test_cases": self.n_test, "n_pretraining_cases": self.n_pretraining, "verified": self.verified,
                "overlap": self.overlap, "overlapping_test_cases": self.overlapping_test_cases,
                "pretraining_datasets": self.pretraining_datasets, "reason": self.reason}


def find_overlap(test_cases: Iterable[str], pretraining_entries: Iterable[Mapping],
                 test_records: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Matches between test cases and pretraining entries (``{"case_id", "source_case_id", "study_key", ...}``),
    by :func:`identity_keys`; sorted by test case."""
    index: dict[str, list[Mapping]] = {}
    for e in pretraining_entries:
        for k in _entry_keys(e):
            index.setdefault(k, []).append(e)
    out, seen = [], set()
    for t in sorted(set(test_cases)):
        for k in sorted(identity_keys(t, (test_records or {}).get(t))):
            for e in index.get(k, []):
                pair = (t, e["case_id"])
                if pair not in seen:
                    seen.add(pair)
                    out.append({"test_case": t, "pretraining_case": e["case_id"],
                                "pretraining_dataset": e.get("dataset_name") or e.get("source_dataset"),
                                "shared": k})
    return out


def pretraining_data_of(checkpoint: Mapping) -> list[dict] | None:
    """The pretraining records a checkpoint carries (foundation, adapted, merged or late-fusion), or None
    when it does not list them (e.g. older checkpoints or weights from elsewhere)."""
    meta = checkpoint.get("petct_metadata") if isinstance(checkpoint, Mapping) else None
    data = meta.get(PRETRAINING_DATA_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(data, list) or not data:
        return None
    return [dict(d) for d in data if isinstance(d, Mapping)]


def check_checkpoint_leakage(checkpoint: Mapping, test_cases: Sequence[str],
                             test_records: Mapping[str, Mapping] | None = None) -> LeakageReport:
    """Compare the test cases with the pretraining cases recorded in ``checkpoint`` (never raises)."""
    data = pretraining_data_of(checkpoint)
    if data is None:
        return LeakageReport(len(set(test_cases)), 0, False,
                             reason="the checkpoint does not list the cases it was pretrained on "
                                    f"(petct_metadata.{PRETRAINING_DATA_KEY})")
    entries = [dict(c, dataset_name=d.get("dataset_name")) for d in data for c in d.get("cases", [])]
    overlap = find_overlap(test_cases, entries, test_records)
    return LeakageReport(len(set(test_cases)), len({(e.get("dataset_name"), e["case_id"]) for e in entries}), True,
                         overlap, sorted({str(d.get("dataset_name")) for d in data}))


def read_protected_cases(path: str | Path) -> tuple[list[str], str]:
    """Test cases to protect from a file: a label-efficiency design (``label_efficiency_design.json``, its
    ``test`` list) or any case list :func:`nnunetv2_petct.io.read_case_list` reads. Returns ``(ids, what)``.

    Raises:
        nnunetv2_petct.io.CaseListError: unreadable or empty.
    """
    from nnunetv2_petct.io import CaseListError, read_case_list

    p = Path(path)
    if p.suffix.lower() == ".json" and p.is_file():
        try:
            obj = json.loads(p.read_text())
        except ValueError as e:
            raise CaseListError(f"{p}: not valid JSON ({e})") from None
        if isinstance(obj, Mapping):
            test = obj.get("test")
            if not isinstance(test, list) or not test:
                raise CaseListError(f"{p}: a JSON object needs a non-empty 'test' list (label_efficiency_design.json)")
            name = obj.get("dataset_name")
            return sorted({str(c) for c in test}), f"test set of the label-efficiency design {p}" + (
                f" ({name})" if name else "")
    return read_case_list(p), f"case list {p}"


__all__ = [
    "OVERRIDE_FLAG",
    "PRETRAINING_DATA_KEY",
    "LeakageError",
    "LeakageReport",
    "check_checkpoint_leakage",
    "find_overlap",
    "identity_keys",
    "pretraining_data_of",
    "pretraining_data_record",
    "read_manifest_records",
    "read_protected_cases",
]
