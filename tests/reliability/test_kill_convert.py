"""Issue 16, item 4: kill -9 of ``nnUNetv2_petct_convert -np 2`` leaves no process behind (workers and the
multiprocessing resource tracker end within a bounded wait), no half-written case, and a re-run
completes cleanly. Each SimpleITK write is slowed down by a sitecustomize shim so that the kill lands
while the workers are busy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_helpers import alive, cli_env, descendants, run_cli, write_shim

from nnunetv2_petct.conversion import core
from nnunetv2_petct.io import check_nifti_gz_complete
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout


def test_kill_9_of_the_cli_leaves_no_workers_and_a_rerun_completes(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases, tmp_path / "autopet")
    env = cli_env(tmp_path, PYTHONPATH=str(write_shim(tmp_path / "shim")), RELIABILITY_SHIM="slow",
                  RELIABILITY_SLEEP_S="2")
    exe = str(Path(sys.executable).parent / "nnUNetv2_petct_convert")
    proc = subprocess.Popen([exe, "autopet", str(src), "-d", "232", "-np", "2", "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ds = tmp_path / "raw" / "Dataset232_AutoPET"
    deadline = time.monotonic() + 120
    family: set[int] = set()
    while time.monotonic() < deadline:  # both workers started and writing (their temp files appear)
        family |= set(descendants(proc.pid))
        partial = ds / core.PARTIAL_DIR
        if len(family) >= 2 and partial.is_dir() and any(partial.iterdir()):
            break
        time.sleep(0.1)
    family |= set(descendants(proc.pid))
    assert len(family) >= 2, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 30  # workers poll their parent every 0.5 s
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(family) == [], f"processes outlived the killed CLI: {alive(family)}"

    # nothing half-written counts: every finished case is complete, nothing else is in imagesTr
    finished = core.finished_case_ids(ds)
    assert len(finished) < len(rel_cases)
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == sorted(
        f"{c}_000{k}.nii.gz" for c in finished for k in (0, 1))

    rerun = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 232, "-np", 2, "-q"], cli_env(tmp_path))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(rel_cases) - len(finished)} converted, {len(finished)} already done, 0 failed" in rerun.stdout
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == len(rel_cases)
    assert sorted(core.finished_case_ids(ds)) == sorted(autopet_ids(c)["case_id"] for c in rel_cases)
    assert not (ds / core.PARTIAL_DIR).exists()
    for p in (ds / "imagesTr").iterdir():
        check_nifti_gz_complete(p)
