"""nnunetv2_petct.io: verified atomic writes, JSON, case lists, number formatting, the process pool."""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_petct import io as pio


# ------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_commits_only_on_success(tmp_path):
    final = tmp_path / "sub" / "a.txt"
    with pio.atomic_write(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.endswith("a.txt") and tmp.name != "a.txt"
        tmp.write_text("one")
        assert not final.exists()  # nothing visible before the commit
    assert final.read_text() == "one"
    with pytest.raises(RuntimeError, match="boom"):
        with pio.atomic_write(final) as tmp:
            tmp.write_text("two")
            raise RuntimeError("boom")
    assert final.read_text() == "one"
    assert sorted(p.name for p in final.parent.iterdir()) == ["a.txt"]  # no temporary file left


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out" / "study"
    with pio.atomic_directory(final) as stage:
        assert stage.parent == final.parent and stage.name != "study"
        (stage / "a.json").write_text('{"n": 1}')
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
        assert not final.exists()
    assert json.loads((final / "a.json").read_text()) == {"n": 1} and (final / "sub" / "b.txt").read_text() == "b"
    # exists, no overwrite: refused before anything is written
    with pytest.raises(FileExistsError):
        with pio.atomic_directory(final):
            raise AssertionError("not reached")
    # a failing body leaves the old folder as it was and no staging folder behind
    with pytest.raises(RuntimeError, match="boom"):
        with pio.atomic_directory(final, overwrite=True) as stage:
            (stage / "a.json").write_text('{"n": 2}')
            raise RuntimeError("boom")
    assert json.loads((final / "a.json").read_text()) == {"n": 1}
    # an incomplete file (truncated JSON) is a WriteError, the old folder stays
    with pytest.raises(pio.WriteError, match="a.json"):
        with pio.atomic_directory(final, overwrite=True) as stage:
            (stage / "a.json").write_text('{"n": ')
    assert json.loads((final / "a.json").read_text()) == {"n": 1}
    # overwrite replaces the whole folder (the old extra file is gone)
    with pio.atomic_directory(final, overwrite=True) as stage:
        (stage / "a.json").write_text('{"n": 3}')
    assert json.loads((final / "a.json").read_text()) == {"n": 3} and not (final / "sub").exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["study"]


def test_atomic_directory_keeps_the_errno_of_a_failed_write(tmp_path):
    """Callers tell a full disk from other failures by ``WriteError.errno`` (FATAL_WRITE_ERRNOS)."""
    import errno

    final = tmp_path / "study"
    with pytest.raises(pio.WriteError, match="disk full") as info:
        with pio.atomic_directory(final):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC and not final.exists()
    # a WriteError of a nested atomic write passes through unchanged (its file name and errno)
    inner = pio._write_error("cannot write x.nii.gz: quota", OSError(errno.EDQUOT, "quota"))
    with pytest.raises(pio.WriteError) as info:
        with pio.atomic_directory(final):
            raise inner
    assert info.value is inner and info.value.errno == errno.EDQUOT
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder left


def test_atomic_write_refuses_a_short_nifti_and_keeps_the_old_file(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    final = tmp_path / "img.nii.gz"
    with pio.atomic_write(final) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    good = final.read_bytes()
    # a writer that "succeeds" but leaves a truncated file (what a full disk can do)
    with pytest.raises(pio.WriteError, match=r"img\.nii\.gz.*disk full"):
        with pio.atomic_write(final) as tmp:
            sitk.WriteImage(img, str(tmp), True)
            tmp.write_bytes(tmp.read_bytes()[:-30])
    assert final.read_bytes() == good
    with pytest.raises(pio.WriteError, match="empty"):
        with pio.atomic_write(final) as tmp:
            tmp.write_bytes(b"")
    assert final.read_bytes() == good
    with pytest.raises(pio.WriteError, match="empty"):
        with pio.atomic_write(tmp_path / "w.pth") as tmp:
            tmp.write_bytes(b"")
    assert not (tmp_path / "w.pth").exists()
    pio.write_text_atomic("", tmp_path / "empty.txt")  # an empty text file is a legitimate file
    assert (tmp_path / "empty.txt").read_text() == ""
    (tmp_path / "empty.txt").unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["img.nii.gz"]


def test_atomic_write_turns_enospc_into_write_error(tmp_path, monkeypatch):
    final = tmp_path / "x.json"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(pio.WriteError, match=r"cannot write .*x\.json: No space left on device"):
        with pio.atomic_write(final) as tmp:
            with open(tmp, "w") as f:
                f.write("{")
                full_disk()
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_into_unwritable_folder_is_a_write_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not apply; use a file as "folder"
            ro = tmp_path / "file"
            ro.write_text("")
        with pytest.raises(pio.WriteError, match="cannot write"):
            pio.write_text_atomic("x", ro / "y.txt")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_json_round_trip_and_jsonable():
    obj = {"a": np.float32(1.5), "b": np.int64(3), "c": (1, 2), "d": Path("x/y"), "e": float("nan"),
           "f": np.bool_(True), "g": {"h": [np.float64(2.0)]}}
    out = pio.jsonable(obj)
    assert out["a"] == 1.5 and isinstance(out["a"], float) and out["b"] == 3 and isinstance(out["b"], int)
    assert out["c"] == [1, 2] and out["d"] == "x/y" and math.isnan(out["e"]) and out["f"] is True
    assert out["g"] == {"h": [2.0]}
    assert pio.jsonable(obj, nan_as_null=True)["e"] is None


def test_write_json_atomic_strict_and_read_json(tmp_path):
    p = pio.write_json_atomic({"x": float("nan"), "y": [1, 2]}, tmp_path / "s.json", nan_as_null=True)
    assert json.loads(p.read_text()) == {"x": None, "y": [1, 2]}
    assert pio.read_json(p) == {"x": None, "y": [1, 2]}
    (tmp_path / "bad.json").write_text('{"x": ')
    with pytest.raises(pio.IncompleteFileError, match=r"bad\.json"):
        pio.read_json(tmp_path / "bad.json")
    with pytest.raises(pio.IncompleteFileError, match="not found"):
        pio.read_json(tmp_path / "none.json")


def test_check_nifti_gz_complete_names_the_file(tmp_path):
    raw = b"x" * 1000
    (tmp_path / "plain.gz").write_bytes(gzip.compress(raw))
    pio.check_nifti_gz_complete(tmp_path / "plain.gz")  # not NIfTI: complete gzip is enough
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(pio.IncompleteFileError, match=r"prediction .*cut\.nii\.gz"):
        pio.check_nifti_gz_complete(tmp_path / "cut.nii.gz", f"prediction {tmp_path / 'cut.nii.gz'}")
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(pio.IncompleteFileError, match="empty"):
        pio.check_nifti_gz_complete(tmp_path / "zero.nii.gz")


# --------------------------------------------------------------------------------------------- case lists
def test_read_case_list_formats(tmp_path):
    (tmp_path / "a.txt").write_text("# test cases\ncase_1_0000.nii.gz\ncase_2\n\ncase_1  # again\n")
    assert pio.read_case_list(tmp_path / "a.txt") == ["case_1", "case_2"]
    (tmp_path / "b.json").write_text(json.dumps(["x", "y.nii.gz", "z_0001"]))
    assert pio.read_case_list(tmp_path / "b.json") == ["x", "y", "z"]
    (tmp_path / "c.csv").write_text("case_id,split\nz,test\n")
    assert pio.read_case_list(tmp_path / "c.csv") == ["z"]
    (tmp_path / "d.csv").write_text("id\nz\n")
    with pytest.raises(pio.CaseListError, match="case_id"):
        pio.read_case_list(tmp_path / "d.csv")
    (tmp_path / "e.txt").write_text("# nothing\n\n")
    with pytest.raises(pio.CaseListError, match="no case ids"):
        pio.read_case_list(tmp_path / "e.txt")
    with pytest.raises(pio.CaseListError, match="not found"):
        pio.read_case_list(tmp_path / "nope.txt")


@pytest.mark.parametrize("value,digits,style,expected", [
    (None, 3, "f", "n/a"), ("", 3, "f", "n/a"), (float("nan"), 3, "f", "n/a"), (float("inf"), 2, "g", "n/a"),
    (0.12345, 3, "f", "0.123"), (0.12345, 2, "g", "0.12"), (1234.5, 4, "g", "1234"), (7, 3, "f", "7"),
    ("0.5", 2, "f", "0.50"), ("abc", 3, "f", "abc"), (np.float32(2.0), 1, "f", "2.0"), (True, 3, "f", "True"),
])
def test_fmt_number(value, digits, style, expected):
    assert pio.fmt_number(value, digits, style) == expected


# ------------------------------------------------------------------------------------------ process pool
def _square(x):
    return x * x


def _crash_on(x, bad):
    if x == bad:
        os._exit(7)  # a hard worker death (like an out-of-memory kill)
    return x


def _raise_on(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def test_run_parallel_in_process_and_pool_give_the_same_results():
    tasks = [(i,) for i in range(7)]
    assert sorted(pio.run_parallel(_square, tasks, 1, quiet=True)) == [i * i for i in range(7)]
    assert sorted(pio.run_parallel(_square, tasks, 2, quiet=True)) == [i * i for i in range(7)]


def test_a_crashed_worker_fails_only_its_task():
    tasks = [(i, 3) for i in range(8)]
    failed = []
    results = list(pio.run_parallel(_crash_on, tasks, 2, quiet=True,
                                    on_crash=lambda task, e: failed.append((task, e)) or None))
    assert sorted(r for r in results if r is not None) == [0, 1, 2, 4, 5, 6, 7]
    assert len(failed) == 1 and failed[0][0] == (3, 3)
    assert isinstance(failed[0][1], pio.WorkerCrashed) and "exit code 7" in str(failed[0][1])


def test_an_exception_in_a_task_is_reported_with_the_worker_traceback():
    failed = []
    results = list(pio.run_parallel(_raise_on, [(i, 2) for i in range(5)], 2, quiet=True,
                                    on_crash=lambda task, e: failed.append(e) or -1))
    assert sorted(results) == [-1, 0, 1, 3, 4]
    (e,) = failed
    assert isinstance(e, pio.TaskError) and "ValueError: bad value 2" in str(e)
    assert "_raise_on" in e.remote_traceback and isinstance(e.__cause__, ValueError)
    with pytest.raises(pio.TaskError, match="bad value 2"):
        list(pio.run_parallel(_raise_on, [(i, 2) for i in range(5)], 2, quiet=True))
    with pytest.raises(ValueError, match="bad value 2"):  # in-process: the original exception
        list(pio.run_parallel(_raise_on, [(i, 2) for i in range(5)], 1, quiet=True))


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:  # a zombie (exited, not yet reaped by init) counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                continue
        except OSError:
            continue
        alive.append(pid)
    return alive


def test_workers_end_when_the_parent_is_killed(tmp_path):
    """kill -9 of the parent must not leave worker processes behind (they poll their parent)."""
    pid_file = tmp_path / "workers.txt"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from nnunetv2_petct.io import run_parallel
        from test_io import _record_and_sleep
        for _ in run_parallel(_record_and_sleep, [({str(pid_file)!r},)] * 6, 2, quiet=True):
            pass
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pid_file.is_file() and len(pid_file.read_text().split()) >= 2:
            break
        time.sleep(0.2)
    workers = [int(x) for x in pid_file.read_text().split()]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 15
    while _pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_alive(workers) == [], "worker processes outlived their killed parent"


def _record_and_sleep(pid_file):
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(30)
    return os.getpid()


def test_csv_text_empty_cells_and_cell_conversion():
    rows = [{"a": 1, "b": None, "c": True}, {"a": 2.5, "c": False}]  # second row lacks "b"
    assert pio.csv_text(rows, ["a", "b", "c"]) == "a,b,c\n1,,True\n2.5,,False\n"
    as_int = pio.csv_text(rows, ["c", "a"], cell=lambda v: int(v) if isinstance(v, bool) else v)
    assert as_int == "c,a\n1,1\n0,2.5\n"
    assert pio.csv_text([], ["x"]) == "x\n"
