"""Issue 16, item 1: a write that "succeeds" but leaves a truncated NIfTI (a full disk under SimpleITK) must
never be committed as a finished case: the case is reported failed, not counted, and redone next time.

Simulated, not a real full disk: SimpleITK.WriteImage is wrapped to cut the file to half its size after
writing (in-process for -np 1; through a sitecustomize shim inherited by the spawn workers for -np 2).
"""

from __future__ import annotations

import json
from functools import partial

import SimpleITK as sitk
from reliability_helpers import cli_env, run_cli, write_shim

from nnunetv2_petct.conversion import core
from nnunetv2_petct.conversion.core import CaseSource, ConversionOptions, LoadedCase, convert_cases
from nnunetv2_petct.io import check_nifti_gz_complete
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout


def _load(case):
    return LoadedCase(ct=case.ct, pet=case.pet, label=case.label, meta={"pet_units": "SUVbw"})


def _assert_clean(ds, done_ids, failed_id):
    """Only finished, complete cases on disk; nothing of the failed one; numTraining = finished cases."""
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["numTraining"] == len(done_ids)
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == sorted(
        f"{c}_000{k}.nii.gz" for c in done_ids for k in (0, 1))
    assert not list(ds.glob(f"*/{failed_id}*"))
    assert not (ds / core.PARTIAL_DIR).exists()
    for p in (ds / "imagesTr").iterdir():
        check_nifti_gz_complete(p)
    manifest = [json.loads(line) for line in (ds / core.MANIFEST_FILE).read_text().splitlines()]
    assert sorted(r["case_id"] for r in manifest) == sorted(done_ids)


def test_truncating_writer_in_process_np1(rel_cases, tmp_path, monkeypatch):
    cases = rel_cases[:3]
    sources = [CaseSource(c.case_id, c.patient_id, "test", f"mem://{c.case_id}", partial(_load, c)) for c in cases]
    victim = cases[1].case_id
    real_write = sitk.WriteImage

    def truncating_write(image, path, *args):
        real_write(image, path, *args)
        if f"{victim}_0000" in str(path):
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", truncating_write)
    ds = tmp_path / "Dataset910_T"
    report = convert_cases(sources, ds, ConversionOptions(labeled=True), name="T", quiet=True)
    assert [f["case_id"] for f in report.failed] == [victim]
    reason = report.failed[0]["reason"]
    assert f"{victim}_0000.nii.gz" in reason and "truncated" in reason and "disk full?" in reason
    assert report.num_training == 2
    _assert_clean(ds, [c.case_id for c in cases if c.case_id != victim], victim)

    monkeypatch.setattr(sitk, "WriteImage", real_write)  # the disk has space again
    again = convert_cases(sources, ds, ConversionOptions(labeled=True), name="T", quiet=True)
    assert again.converted == [victim] and len(again.existing) == 2 and again.num_training == 3


def test_truncating_writer_in_spawn_workers_np2_through_the_cli(rel_cases, tmp_path):
    cases = rel_cases[:4]
    src = write_autopet_layout(cases, tmp_path / "autopet")
    ids = [autopet_ids(c)["case_id"] for c in cases]
    victim = ids[2]
    env = cli_env(tmp_path, PYTHONPATH=str(write_shim(tmp_path / "shim")), RELIABILITY_SHIM="truncate",
                  RELIABILITY_TRUNCATE=f"{victim}_0000")
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 231, "-np", 2, "-q"], env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"FAILED {victim}: writing" in out and f"{victim}_0000.nii.gz" in out and "disk full?" in out
    assert "3 converted, 0 already done, 1 failed" in out
    ds = tmp_path / "raw" / "Dataset231_AutoPET"
    _assert_clean(ds, [i for i in ids if i != victim], victim)
    assert [f["case_id"] for f in json.loads((ds / core.FAILURES_FILE).read_text())] == [victim]

    # the next run (disk fine again) converts it: it was never recorded as done
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 231, "-np", 2, "-q"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 converted, 3 already done, 0 failed" in proc.stdout
    _assert_clean(ds, ids, "no-such-case")
