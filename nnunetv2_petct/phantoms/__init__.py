"""Synthetic whole-body FDG PET/CT phantoms and an nnU-Net raw-dataset writer.

Pure library (no nnunetv2 import). See :mod:`nnunetv2_petct.phantoms.phantom` for the anatomy
and conventions.
"""

from nnunetv2_petct.phantoms.nnunet_raw import write_nnunet_raw_dataset
from nnunetv2_petct.phantoms.phantom import (
    LESION_REGIONS,
    ORGAN_LABELS,
    SIZES,
    PhantomCase,
    SizeConfig,
    make_cohort,
    make_phantom,
)

__all__ = [
    "LESION_REGIONS",
    "ORGAN_LABELS",
    "SIZES",
    "PhantomCase",
    "SizeConfig",
    "make_cohort",
    "make_phantom",
    "write_nnunet_raw_dataset",
]
