"""Issue 16, item 8: an output folder that cannot be written (a file in the path, read-only, no permission,
disk full, no inodes, too many open files) is detected once, up front, with a one-line ``error:`` and exit
code 2, not a traceback after trying every case; a no-op re-run of a finished dataset in a read-only
folder succeeds and writes nothing.

"Not a directory" is real (a regular file in the path) and runs the installed CLIs. As root, chmod does not
stop writes, so read-only/permission/quota/no-space/EMFILE are simulated in this process: every write-like
call under the folder fails with that errno (:func:`reliability_helpers.read_only_tree`), and a full disk
or inode table through a faked ``os.statvfs``; the CLIs run through their ``main(argv)``.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import SimpleITK as sitk
from reliability_helpers import cli_env, read_only_tree, run_cli

from nnunetv2_petct.cli import convert as convert_cli
from nnunetv2_petct.cli import pretraining_dataset as pretraining_cli
from nnunetv2_petct.phantoms.layouts import write_autopet_layout


@pytest.fixture
def source(rel_cases, tmp_path):
    return write_autopet_layout(rel_cases[:3], tmp_path / "autopet")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_output_below_a_regular_file_exits_2_for_convert_and_pretraining(source, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", source, "-d", 250, "-o", blocker / "raw", "-q"],
                   cli_env(tmp_path))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"error: cannot create the nnU-Net raw folder {blocker / 'raw'}: ")
    assert "a part of the path is a file, not a folder" in line
    # a dataset "folder" that is a file
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "Dataset251_AutoPET").write_text("x")
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", source, "-d", 251, "-q"], cli_env(tmp_path))
    assert proc.returncode == 2 and "is a file, not a dataset folder" in _one_error_line(proc.stderr)
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", source, "-d", 252, "-q"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "raw" / "Dataset300_PETCTPretraining").write_text("x")
    proc = run_cli("nnUNetv2_petct_pretraining_dataset", ["-d", 300, "--from", 252, "-q"], cli_env(tmp_path))
    assert proc.returncode == 2 and "is a file, not a dataset folder" in _one_error_line(proc.stderr)


@pytest.mark.parametrize("code, says", [
    (errno.EROFS, "Read-only file system"),
    (errno.EACCES, "Permission denied"),
    (errno.ENOSPC, "No space left on device (disk full, or no free inodes)"),
    (errno.EDQUOT, "Disk quota exceeded"),
    (errno.EMFILE, "Too many open files"),
])
def test_unwritable_dataset_folder_is_detected_before_any_case(source, tmp_path, capsys, monkeypatch, code, says):
    raw = tmp_path / "raw"
    (raw / "Dataset253_AutoPET").mkdir(parents=True)
    writes = []
    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: writes.append(a))
    with read_only_tree(raw, code):
        rc = convert_cli.main(["autopet", str(source), "-d", "253", "-o", str(raw), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith(f"error: cannot write to the dataset folder {raw / 'Dataset253_AutoPET'}: {says}")
    assert writes == [] and list((raw / "Dataset253_AutoPET").iterdir()) == []


@pytest.mark.parametrize("changes, says", [({"f_favail": 0}, "no free inodes"), ({"f_bavail": 0}, "is full")])
def test_full_disk_or_inode_table_is_detected_up_front(source, tmp_path, capsys, monkeypatch, changes, says):
    real = os.statvfs

    class Fake:
        def __init__(self, st):
            self.__dict__.update({k: getattr(st, k) for k in dir(st) if k.startswith("f_")}, **changes)

    monkeypatch.setattr(os, "statvfs", lambda p: Fake(real(p)))
    rc = convert_cli.main(["autopet", str(source), "-d", "254", "-o", str(tmp_path / "raw"), "-q"])
    assert rc == 2 and says in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "raw" / "Dataset254_AutoPET" / "imagesTr").exists()


def test_no_op_rerun_in_a_read_only_folder_succeeds_and_writes_nothing(source, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert convert_cli.main(["autopet", str(source), "-d", "255", "-o", str(raw), "-q"]) == 0
    ds = raw / "Dataset255_AutoPET"
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 3
    assert pretraining_cli.main(["-d", "301", "--from", "255", "-o", str(raw), "-q"]) == 0
    capsys.readouterr()
    with read_only_tree(raw) as attempts:
        rc = convert_cli.main(["autopet", str(source), "-d", "255", "-o", str(raw), "-q"])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "0 converted, 3 already done" in out.out and "nothing was written" in out.out
        rc = pretraining_cli.main(["-d", "301", "--from", "255", "-o", str(raw), "-q"])
        assert rc == 0, capsys.readouterr().err
    assert attempts == []
    # with something to do, the same read-only folder is refused up front, in one line
    write_autopet_layout([], source)
    (source / "extra").mkdir()
    import shutil

    first = next(p for p in source.iterdir() if p.name.startswith("PETCT_"))
    shutil.copytree(first, source / "PETCT_0123456789")
    with read_only_tree(raw):
        rc = convert_cli.main(["autopet", str(source), "-d", "255", "-o", str(raw), "-q"])
    assert rc == 2 and "Read-only file system" in _one_error_line(capsys.readouterr().err)


def test_disk_filling_mid_run_stops_the_run_with_exit_2(source, tmp_path, capsys, monkeypatch):
    """The second case's write fails (ITK raises, as on a full disk) and statvfs then reports no space:
    the run stops at once (no further case attempted), keeps the finished case, says how far it got."""
    real_write, real_statvfs = sitk.WriteImage, os.statvfs
    state = {"cases": set(), "full": False}

    def write(image, path, *args):
        case = os.path.basename(str(path)).split("_fdg_")[-1][:21]  # <patient key>_<MM-DD-YYYY>
        state["cases"].add(case)
        if len(state["cases"]) >= 2:
            state["full"] = True
            raise RuntimeError("ITK ERROR: NiftiImageIO: could not write (simulated full disk)")
        real_write(image, path, *args)

    class Full:
        def __init__(self, st):
            self.__dict__.update({k: getattr(st, k) for k in dir(st) if k.startswith("f_")}, f_bavail=0)

    monkeypatch.setattr(sitk, "WriteImage", write)
    monkeypatch.setattr(os, "statvfs", lambda p: Full(real_statvfs(p)) if state["full"] else real_statvfs(p))
    rc = convert_cli.main(["autopet", str(source), "-d", "256", "-o", str(tmp_path / "raw"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write into") and "is full" in last
    assert "The run stopped: 1 case(s) converted, 1 not attempted (finished cases are kept)" in last
    assert len(state["cases"]) == 2  # the third case was never started
    ds = tmp_path / "raw" / "Dataset256_AutoPET"
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 1
