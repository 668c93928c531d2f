"""Fixtures of the reliability corpus: tiny phantom cohorts written in the AutoPET layout."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rel_cases():
    """6 tiny phantoms of 5 patients (one lesion-free)."""
    from nnunetv2_petct.phantoms import make_cohort

    return make_cohort(6, seed=23, size="tiny", lesion_free_fraction=0.2, prefix="rel", n_patients=5)
