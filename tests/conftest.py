"""Shared fixtures: nnU-Net folders in a temp dir, a tiny planned PET/CT phantom dataset, CLI runner."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunetv2_petct.nnunet.env import nnunet_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli(name: str) -> str:
    """Path of a console script installed next to this interpreter (the real CLI users run)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} is not installed next to {sys.executable}; run `make setup`")
    return str(path)


def run(cmd: list[str], env: dict[str, str], timeout: float = 600, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; on an unexpected exit code fail with the tail of its output."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        tail = (proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-6000:])
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


@dataclass
class TinyDataset:
    root: Path
    env: dict[str, str]
    dataset_id: int
    dataset_name: str
    test_images: Path  # raw images (CT _0000, PET _0001) of held-out phantom cases
    test_labels: Path


@pytest.fixture(scope="session")
def tiny_planned(tmp_path_factory) -> TinyDataset:
    """Tiny labeled PET/CT phantom dataset, planned by nnU-Net and shrunk to tiny plans, NOT preprocessed.

    Enough for tests that only need the plans (``$nnUNet_preprocessed/<name>/nnUNetPlans.json`` and
    ``dataset.json``); :func:`tiny_dataset` preprocesses this same dataset.
    """
    from nnunetv2_petct.phantoms import make_cohort, write_nnunet_raw_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    dataset_id, name = 501, "PETCTPhantomTiny"
    cases = make_cohort(8, seed=1, size="tiny", prefix="train")
    ds_dir = write_nnunet_raw_dataset(cases, root / "raw", dataset_id, name)
    held_out = make_cohort(2, seed=2, size="tiny", lesion_free_fraction=0.0, prefix="test")
    ts_dir = write_nnunet_raw_dataset(held_out, root / "heldout", dataset_id, name)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): it must be > 0 there.
    run([cli("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity", "--no_pp"], {**env, "nnUNet_n_proc_DA": "2"}, timeout=900)
    # tiny plans change only patch, batch and architecture, never spacing or normalization: preprocessing
    # after shrinking gives the same data as before it
    run([cli("nnUNetv2_petct_tiny_plans"), "-d", str(dataset_id)], env)
    return TinyDataset(root, env, dataset_id, ds_dir.name, ts_dir / "imagesTr", ts_dir / "labelsTr")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_planned) -> TinyDataset:
    """:func:`tiny_planned`, preprocessed (3d_fullres). Shared by the end-to-end tests (each trainer writes
    its own results folder); tests that use it are marked ``slow``."""
    d = tiny_planned
    run([cli("nnUNetv2_preprocess"), "-d", str(d.dataset_id), "-c", "3d_fullres", "-np", "2"],
        {**d.env, "nnUNet_n_proc_DA": "2"}, timeout=900)
    return d


def tree_fingerprint(root: Path) -> dict[str, tuple[int, int, str]]:
    """Relative path -> (size, mtime_ns, sha1) of every file under ``root`` (to prove it is untouched)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            p = Path(dirpath, fn)
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out
