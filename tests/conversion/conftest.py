"""Fixtures for the cohort-converter tests: tiny phantom cohorts and their native layouts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_cases():
    """4 tiny phantoms, 3 patients (case 3 is patient 0's second study, 90 days later), 1 lesion-free."""
    from nnunetv2_petct.phantoms import make_cohort

    cases = make_cohort(4, seed=7, size="tiny", lesion_free_fraction=0.25, prefix="ph", n_patients=3)
    assert sum(c.lesion_free for c in cases) == 1
    return cases


def tree_fingerprint(root: Path) -> dict[str, tuple[int, int, str]]:
    """Relative path -> (size, mtime_ns, sha1) of every file under ``root`` (to prove it is untouched)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            p = Path(dirpath, fn)
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


@pytest.fixture()
def fingerprint():
    """:func:`tree_fingerprint` as a fixture (test modules here are not a package)."""
    return tree_fingerprint
