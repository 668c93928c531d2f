"""Issue 16, item 6: a worker process that dies while converting a case fails only that case (not every
pending one); the other cases, including those that had not started yet, are converted."""

from __future__ import annotations

import json
from functools import partial

from reliability_helpers import crash_worker

from nnunetv2_petct.conversion.core import CaseSource, ConversionOptions, LoadedCase, convert_cases


def _load(case):
    return LoadedCase(ct=case.ct, pet=case.pet, label=case.label, meta={"pet_units": "SUVbw"})


def test_a_dying_worker_fails_only_its_case(rel_cases, tmp_path):
    good = [CaseSource(c.case_id, c.patient_id, "test", f"mem://{c.case_id}", partial(_load, c)) for c in rel_cases[:5]]
    # the crashing case is second in line: with 2 workers, 3 cases are still queued when it dies
    dying = CaseSource("dies_in_worker", "Pdie", "test", "mem://dies", partial(crash_worker, "x"))
    sources = [good[0], dying, *good[1:]]
    ds = tmp_path / "Dataset920_T"
    report = convert_cases(sources, ds, ConversionOptions(labeled=True), name="T", quiet=True, num_processes=2)
    assert [f["case_id"] for f in report.failed] == ["dies_in_worker"]
    reason = report.failed[0]["reason"]
    assert reason.startswith("worker crashed: WorkerCrashed: the worker process died (exit code 9)")
    assert "the other tasks were not affected" in reason
    assert sorted(report.converted) == sorted(s.case_id for s in good)
    assert report.num_training == 5
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 5
    assert not list(ds.glob("*/dies_in_worker*"))
