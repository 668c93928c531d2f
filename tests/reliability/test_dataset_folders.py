"""Issue 16, item 7: dataset folders carry a marker of who wrote them; a folder this tool did not write is
refused (named, with what to do; --overwrite does not change that); --overwrite makes the folder hold
exactly the source's cases; finished cases are reused only when their source fingerprint still matches."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from reliability_helpers import cli_env, run_cli

from nnunetv2_petct.conversion import core
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _convert(src, tmp_path, *extra, expect=0):
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 240, "-q", *extra], cli_env(tmp_path))
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


def test_foreign_folder_is_refused_even_with_overwrite(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:2], tmp_path / "autopet")
    foreign = tmp_path / "raw" / "Dataset240_AutoPET"
    (foreign / "imagesTr").mkdir(parents=True)
    for i in range(8):  # someone else's dataset: 8 images, numTraining 6
        (foreign / "imagesTr" / f"other_{i:03d}_0000.nii.gz").write_bytes(b"not ours")
    (foreign / "dataset.json").write_text(json.dumps({"numTraining": 6, "channel_names": {"0": "CT"}}))
    before = _tree(foreign)
    for extra in ((), ("--overwrite",)):
        proc = _convert(src, tmp_path, *extra, expect=2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {foreign} already exists and was not written by "
                                                       f"nnUNetv2_petct_convert"), proc.stderr
        assert "Move or delete that folder, or choose another dataset id (-d) or --name" in lines[0]
        assert _tree(foreign) == before  # untouched
    shutil.rmtree(foreign)  # what the message says to do
    _convert(src, tmp_path)
    assert json.loads((foreign / "dataset.json").read_text())["numTraining"] == 2


def test_marker_records_writer_version_cohort_and_options(rel_cases, tmp_path):
    from nnunetv2_petct import __version__

    src = write_autopet_layout(rel_cases[:1], tmp_path / "autopet")
    _convert(src, tmp_path, "--min-overlap", "0.4")
    marker = json.loads((tmp_path / "raw" / "Dataset240_AutoPET" / core.MARKER_FILE).read_text())
    assert marker["tool"] == "nnunetv2_petct" and marker["version"] == __version__
    assert marker["writer"] == "nnUNetv2_petct_convert" and marker["kind"] == "converted"
    assert marker["cohorts"] == ["autopet"]
    assert marker["options"]["min_overlap_fraction"] == 0.4 and marker["options"]["nonfinite"] == "error"
    assert marker["created_utc"] and marker["updated_utc"]


def test_overwrite_removes_stray_files_and_cases_not_in_the_source(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:3], tmp_path / "autopet")
    _convert(src, tmp_path)
    ds = tmp_path / "raw" / "Dataset240_AutoPET"
    stray = ds / "imagesTr" / "leftover_case_0000.nii.gz"
    shutil.copy(next((ds / "imagesTr").glob("*_0000.nii.gz")), stray)
    gone = autopet_ids(rel_cases[2])
    shutil.rmtree(src / gone["patient_folder"])  # that study is no longer in the source
    proc = _convert(src, tmp_path)
    assert "1 finished case(s) are not among this run's sources and were kept" in proc.stdout
    assert "1 file(s) in imagesTr/labelsTr belong to no finished case" in proc.stdout
    assert "rerun with --overwrite to remove them" in proc.stdout
    assert stray.exists()

    proc = _convert(src, tmp_path, "--overwrite")  # the suggested fix
    assert f"removed 1 case(s) that are not in the source (--overwrite), e.g. {gone['case_id']}" in proc.stdout
    assert not stray.exists() and not list(ds.glob(f"*/{gone['case_id']}*"))
    dj = json.loads((ds / "dataset.json").read_text())
    images = sorted((ds / "imagesTr").glob("*_0000.nii.gz"))
    assert dj["numTraining"] == 2 == len(images) == len(list((ds / "labelsTr").iterdir()))
    assert "belong to no finished case" not in proc.stdout


def test_reuse_only_when_the_source_fingerprint_matches(rel_cases, tmp_path):
    cases = rel_cases[:3]
    src = write_autopet_layout(cases, tmp_path / "autopet")
    _convert(src, tmp_path)
    ds = tmp_path / "raw" / "Dataset240_AutoPET"
    ids = [autopet_ids(c) for c in cases]
    record = json.loads((ds / "manifest" / f"{ids[0]['case_id']}.json").read_text())
    fp = record["source_fingerprint"]
    study = src / ids[0]["patient_folder"] / ids[0]["study_folder"]
    assert fp["path"] == str(study) and fp["n_files"] == 5
    assert fp["bytes"] == sum(p.stat().st_size for p in study.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (ds / "imagesTr").iterdir()}

    # the SUV of study 0 is replaced (same size on disk is irrelevant: size or time changes)
    suv = study / "SUV.nii.gz"
    img = sitk.ReadImage(str(suv))
    doubled = sitk.GetImageFromArray(sitk.GetArrayFromImage(img) * 2)
    doubled.CopyInformation(img)
    sitk.WriteImage(doubled, str(suv), True)
    os.utime(suv, ns=(suv.stat().st_atime_ns, suv.stat().st_mtime_ns + 10**9))
    proc = _convert(src, tmp_path)
    assert "1 converted, 2 already done" in proc.stdout
    assert "redone: 1 case(s): the source files changed (size or modification time)" in proc.stdout
    pet = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{ids[0]['case_id']}_0001.nii.gz")))
    np.testing.assert_allclose(pet, sitk.GetArrayFromImage(doubled), rtol=1e-6)
    after = {p.name: p.stat().st_mtime_ns for p in (ds / "imagesTr").iterdir()}
    for i in (1, 2):  # the unchanged cases were not rewritten
        for k in (0, 1):
            name = f"{ids[i]['case_id']}_000{k}.nii.gz"
            assert after[name] == mtimes[name]

    # other options (here the CT overlap threshold) redo every case
    proc = _convert(src, tmp_path, "--min-overlap", "0.3")
    assert "3 converted, 0 already done" in proc.stdout and "3 case(s): converted with other options" in proc.stdout


def test_folder_of_an_older_version_is_adopted_and_its_cases_redone(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:2], tmp_path / "autopet")
    _convert(src, tmp_path)
    ds = tmp_path / "raw" / "Dataset240_AutoPET"
    (ds / core.MARKER_FILE).unlink()  # what an older version left: no marker, records without fingerprints
    for rec in (ds / "manifest").glob("*.json"):
        data = json.loads(rec.read_text())
        data.pop("source_fingerprint")
        rec.write_text(json.dumps(data))
    proc = _convert(src, tmp_path)
    assert "redone: 2 case(s): converted without a source fingerprint (older version)" in proc.stdout
    assert (ds / core.MARKER_FILE).is_file()


def test_pretraining_dataset_refuses_a_foreign_output_folder(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:2], tmp_path / "autopet")
    _convert(src, tmp_path)
    foreign = tmp_path / "raw" / "Dataset300_PETCTPretraining"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    proc = run_cli("nnUNetv2_petct_pretraining_dataset", ["-d", 300, "--from", 240, "-q"], cli_env(tmp_path))
    assert proc.returncode == 2 and f"error: {foreign} already exists and was not written by " \
                                   f"nnUNetv2_petct_pretraining_dataset" in proc.stderr
    # converting into a pretraining folder (another kind of dataset of ours) is refused too
    foreign.joinpath("notes.txt").unlink()
    proc = run_cli("nnUNetv2_petct_pretraining_dataset", ["-d", 300, "--from", 240, "-q"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 300, "--name", "PETCTPretraining", "-q"],
                   cli_env(tmp_path))
    assert proc.returncode == 2 and "was written by nnUNetv2_petct_pretraining_dataset (a pretraining dataset)" \
        in proc.stderr
