"""Evaluation: official-equivalent autoPET metrics, lesion-wise detection, lesion quantification.

Pure library (numpy, cc3d; SimpleITK and matplotlib only inside the functions that need them).
Arrays are (z, y, x) and ``spacing_mm`` is (z, y, x); lesions are 18-connected components of
``mask > 0``.
"""

from .case import evaluate_case
from .detection import OVERLAP_RULES, lesion_detection, parse_overlap_rule
from .folders import EvaluationInputError, evaluate_folders
from .metrics import autopet_case_metrics, binarize, label_components, voxel_volume_ml
from .plots import coronal_mip, dice_curves, plot_dice_vs_fraction, plot_pet_mip_with_contours
from .quantification import (
    case_quantification,
    peak_sphere_offsets,
    quantify_lesions,
    sphere_radius_mm,
)

__all__ = [
    "OVERLAP_RULES",
    "EvaluationInputError",
    "autopet_case_metrics",
    "binarize",
    "case_quantification",
    "coronal_mip",
    "dice_curves",
    "evaluate_case",
    "evaluate_folders",
    "label_components",
    "lesion_detection",
    "parse_overlap_rule",
    "peak_sphere_offsets",
    "plot_dice_vs_fraction",
    "plot_pet_mip_with_contours",
    "quantify_lesions",
    "sphere_radius_mm",
    "voxel_volume_ml",
]
