"""Issue 21, items 2, 5, 6, 7 and 9: what ``nnUNetv2_petct_predict`` (and the converter, which shares the
readers) says about hostile inputs, through the installed commands.

One input folder holds every per-study case, so one prediction run answers them all (each study fails with
its own reason or is done with its warning; exit 1 because some failed):

- a 2D NIfTI pair and a 4D PET (item 2): "2D image (48x48): a 3D volume is needed", "4D image with 3 volumes";
- a NIfTI PET with NaN (item 9): the reason does not point at ``--nonfinite zero`` (not an option of predict);
- a DICOM study whose PatientWeight is 500 kg (item 9): done, with a warning that states the usual range, also
  in report.json;
- a DICOM study with two PET slices sharing one SOPInstanceUID (item 6): refused with the UID and the files;
- a DICOM study whose CT slice was truncated inside its header (item 9): the reason names the file;
- a DICOM study whose PatientID makes the folder name start with ``.tmp_`` (item 5): done, and a second run
  into the same folder keeps it (a result folder is never taken for a staging folder).

The model is an untrained network of the tiny plans: what it segments does not matter here.
"""

from __future__ import annotations

import copy
import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from reliability_helpers import cli_env, read_only_tree, run_cli, untrained_model_folder, write_shim

from nnunetv2_petct.cli import predict as predict_cli
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study

PREDICT_ARGS = ("-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0", "-q")


@pytest.fixture(scope="module")
def model(tiny_planned, tmp_path_factory) -> Path:
    return untrained_model_folder(tiny_planned, tmp_path_factory.mktemp("model"))


def _named(case, pid: str):
    c = copy.copy(case)
    c.case_id, c.patient_id = f"case_{pid}", pid
    return c


def _write_nifti(arr: np.ndarray, path: Path, like=None) -> None:
    img = sitk.GetImageFromArray(arr)
    if like is not None:
        img.CopyInformation(like)
    sitk.WriteImage(img, str(path), True)


def _set_tag(files, **tags) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {r["study"]: r for r in csv.DictReader(f)}


def _hostile_input(rel_cases, root: Path) -> dict[str, object]:
    """The input folder of the module docstring; returns facts the assertions need."""
    inp = root / "in"
    inp.mkdir()
    case = rel_cases[0]
    # item 2: a 2D pair; a 3D CT with a 4D PET of 3 volumes
    _write_nifti(np.zeros((48, 48), np.int16), inp / "twod_0000.nii.gz")
    _write_nifti(np.ones((48, 48), np.float32), inp / "twod_0001.nii.gz")
    sitk.WriteImage(case.ct, str(inp / "fourd_0000.nii.gz"), True)
    pet = sitk.Cast(case.pet, sitk.sitkFloat32)
    sitk.WriteImage(sitk.JoinSeries([pet, pet, pet]), str(inp / "fourd_0001.nii.gz"), True)
    # item 9: NaN in the PET
    sitk.WriteImage(case.ct, str(inp / "nanpet_0000.nii.gz"), True)
    arr = sitk.GetArrayFromImage(pet)
    arr[2, 3, 4] = np.nan
    _write_nifti(arr, inp / "nanpet_0001.nii.gz", like=pet)
    # item 9: PatientWeight 500 kg (the plausibility bound refuses only above 500)
    heavy = write_dicom_study(_named(rel_cases[1], "HEAVY"), inp / "heavy", seed=3)
    _set_tag(heavy.ct_files + heavy.pt_files, PatientWeight=500)
    # item 6: two PET slices with one SOPInstanceUID
    dup = write_dicom_study(_named(rel_cases[2], "DUPUID"), inp / "dup", seed=4)
    a, b = dup.pt_files[3], dup.pt_files[4]
    uid = pydicom.dcmread(a).SOPInstanceUID
    ds = pydicom.dcmread(b)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(b)
    # item 9: one CT slice cut inside its header (as by an interrupted copy)
    trunc = write_dicom_study(_named(rel_cases[3], "TRUNC"), inp / "trunc", seed=5)
    cut = trunc.ct_files[len(trunc.ct_files) // 2]
    cut.write_bytes(cut.read_bytes()[:300])
    # item 5: a PatientID that makes the result folder look like a staging folder
    write_dicom_study(_named(rel_cases[4], ".tmp_99999"), inp / "tmpname", seed=6)
    return {"inp": inp, "dup_uid": str(uid), "dup_files": (a, b), "cut": cut}


def test_every_hostile_study_gets_its_own_named_outcome(rel_cases, model, tmp_path):
    facts = _hostile_input(rel_cases, tmp_path)
    inp, out = facts["inp"], tmp_path / "out"
    env = cli_env(tmp_path)
    proc = run_cli("nnUNetv2_petct_predict", ["-i", inp, "-o", out, "-m", model, *PREDICT_ARGS], env, timeout=600)
    err = proc.stderr
    assert proc.returncode == 1, err  # some studies failed, the others are written
    assert "Traceback" not in err, err
    rows = _summary(out)

    # item 2
    assert f"FAILED twod: cannot use {inp / 'twod_0000.nii.gz'}: 2D image (48x48): a 3D volume is needed" in err
    size = "x".join(str(s) for s in rel_cases[0].pet.GetSize())
    assert (f"FAILED fourd: cannot use {inp / 'fourd_0001.nii.gz'}: 4D image with 3 volumes ({size}x3): pass one "
            "frame") in err
    # item 9: non-finite PET, no pointer to an option predict does not have
    assert "FAILED nanpet: PET has 1 non-finite voxel(s) (1 NaN)" in err
    assert "replace them in the input image" in rows["nanpet"]["reason"] and "--nonfinite" not in err
    # item 6: named refusal, nothing written for it
    dup = next(k for k in rows if k.startswith("DUPUID"))
    assert rows[dup]["status"] == "failed" and facts["dup_uid"] in rows[dup]["reason"]
    assert all(str(f) in rows[dup]["reason"] for f in facts["dup_files"])
    assert "share 1 SOPInstanceUID" in rows[dup]["reason"] and not (out / dup).exists()
    # item 9: the truncated CT slice is named, not only "missing slices?"
    tr = next(k for k in rows if k.startswith("TRUNC"))
    assert rows[tr]["status"] == "failed" and str(facts["cut"]) in rows[tr]["reason"]
    assert "cannot be read (truncated or corrupt" in rows[tr]["reason"]
    # item 9: 500 kg is used with a warning that states the range, printed and kept in the report
    heavy = next(k for k in rows if k.startswith("HEAVY"))
    assert rows[heavy]["status"] == "done"
    assert f"WARNING {heavy}: PatientWeight 500 kg is outside the usual 20-250 kg" in err
    report = json.loads((out / heavy / "report.json").read_text())
    assert any("PatientWeight 500 kg is outside the usual 20-250 kg" in w for w in report["warnings"])
    # item 5: the study whose name starts with .tmp_ is done ...
    tmpname = next(k for k in rows if k.startswith(".tmp_99999"))
    assert rows[tmpname]["status"] == "done"
    written = sorted(p.name for p in (out / tmpname).iterdir())
    assert "report.json" in written and ".nnunetv2_petct_staging" not in written
    # ... and survives the next run into the same folder (no staging marker: a result, whatever its name)
    proc2 = run_cli("nnUNetv2_petct_predict", ["-i", inp, "-o", out, "-m", model, *PREDICT_ARGS], env, timeout=600)
    assert proc2.returncode == 1 and "Traceback" not in proc2.stderr, proc2.stderr
    rows2 = _summary(out)
    assert rows2[tmpname]["status"] == "exists" and rows2[heavy]["status"] == "exists"
    assert sorted(p.name for p in (out / tmpname).iterdir()) == written
    # no work or staging folder is left behind
    assert not [p for p in out.iterdir() if (p / ".nnunetv2_petct_staging").exists()]


def test_converter_names_the_same_problems(rel_cases, tmp_path):
    facts = _hostile_input(rel_cases, tmp_path)
    inp = facts["inp"]
    env = cli_env(tmp_path)
    proc = run_cli("nnUNetv2_petct_convert", ["dicom", inp, "-d", 260], env, timeout=600)
    err = proc.stderr
    assert "Traceback" not in err, err
    assert facts["dup_uid"] in err and "share 1 SOPInstanceUID" in err  # item 6
    assert str(facts["cut"]) in err  # item 9: the truncated slice named
    assert "PatientWeight 500 kg is outside the usual 20-250 kg" in err  # item 9: the warning
    manifest = next((tmp_path / "raw").glob("Dataset260_*/manifest.jsonl")).read_text()
    assert "PatientWeight 500 kg is outside the usual 20-250 kg" in manifest  # recorded with the case
    # item 2 in the AutoPET NIfTI layout
    from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout

    src = write_autopet_layout(rel_cases[:2], tmp_path / "autopet")
    ids = autopet_ids(rel_cases[0])
    suv = src / ids["patient_folder"] / ids["study_folder"] / "SUV.nii.gz"
    img = sitk.Cast(sitk.ReadImage(str(suv)), sitk.sitkFloat32)
    sitk.WriteImage(sitk.JoinSeries([img, img, img]), str(suv), True)
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 261, "-q"], env, timeout=600)
    assert f"cannot use {suv}: 4D image with 3 volumes" in proc.stderr and "Traceback" not in proc.stderr


def test_output_folder_that_is_a_file_exits_2_before_the_model_loads(model, tmp_path):
    (tmp_path / "in").mkdir()
    blocker = tmp_path / "out_file"
    blocker.write_text("x")
    proc = run_cli("nnUNetv2_petct_predict", ["-i", tmp_path / "in", "-o", blocker, "-m", model, *PREDICT_ARGS],
                   cli_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: cannot write to the output folder {blocker}: it is a file, not a folder"
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("code, says", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")])
def test_unwritable_output_folder_exits_2_and_writes_nothing(model, tmp_path, capsys, code, says):
    """A read-only mount (simulated in this process: as root chmod does not stop writes)."""
    (tmp_path / "in").mkdir()
    out = tmp_path / "ro" / "out"
    (tmp_path / "ro").mkdir()
    with read_only_tree(tmp_path / "ro", code):
        rc = predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), *PREDICT_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: cannot create the output folder {out}: ") and says in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_full_disk_up_front_and_during_the_run(rel_cases, model, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    sitk.WriteImage(rel_cases[0].ct, str(inp / "c1_0000.nii.gz"), True)
    sitk.WriteImage(rel_cases[0].pet, str(inp / "c1_0001.nii.gz"), True)
    out = tmp_path / "out"
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_bavail, self.f_frsize, self.f_files, self.f_favail = 0, st.f_frsize, st.f_files, st.f_favail

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    rc = predict_cli.main(["-i", str(inp), "-o", str(out), "-m", str(model), *PREDICT_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "error: cannot write to the output folder" in err and "is full" in err, err
    assert not out.exists()
    monkeypatch.setattr(os, "statvfs", real)

    # the disk fills while summary.csv is written: one line, exit 2, the study written before stays complete
    import nnunetv2_petct.clinical.pipeline as pipeline
    from nnunetv2_petct.io import WriteError

    real_write = pipeline.write_text_atomic

    def failing(text, path):
        if Path(path).name == "summary.csv":
            raise WriteError(f"cannot write {path}: No space left on device (the disk is full)")
        return real_write(text, path)

    monkeypatch.setattr(pipeline, "write_text_atomic", failing)
    rc = predict_cli.main(["-i", str(inp), "-o", str(out), "-m", str(model), *PREDICT_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"error: cannot write {out / 'summary.csv'}: No space left on device (the disk is full)"), err
    assert "Traceback" not in err and (out / "c1" / "report.json").is_file()


def test_ctrl_c_prints_one_line_and_leaves_nothing_half_written(rel_cases, model, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    sitk.WriteImage(rel_cases[0].ct, str(inp / "c1_0000.nii.gz"), True)
    sitk.WriteImage(rel_cases[0].pet, str(inp / "c1_0001.nii.gz"), True)
    out = tmp_path / "out"
    shim = write_shim(tmp_path / "shim")
    env = cli_env(tmp_path, PYTHONPATH=f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                  RELIABILITY_SHIM="slow", RELIABILITY_SLEEP_S="3")
    exe = Path(sys.executable).parent / "nnUNetv2_petct_predict"
    # a shell starting a job in the background (`cmd &`, as some CI runners do) sets SIGINT to "ignore", and
    # children inherit that: give the command the default disposition, as a terminal's Ctrl-C finds it
    proc = subprocess.Popen([str(exe), "-i", str(inp), "-o", str(out), "-m", str(model), *PREDICT_ARGS], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out.exists() and any(out.glob(".work_*/inputs"))):
        time.sleep(0.2)  # the run is writing the network input of the study (3 s per image)
    assert any(out.glob(".work_*/inputs")), "the run never started its work folder"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted: nothing half-written in {out}")
    assert not out.exists() or not list(out.iterdir())  # no work folder, no half study (the run made `out`)
