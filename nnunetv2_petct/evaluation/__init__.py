"""Evaluation: official-equivalent autoPET metrics, lesion-wise detection, lesion quantification.

Pure library (numpy, cc3d; SimpleITK and matplotlib only inside the functions that need them).
Arrays are (z, y, x) and ``spacing_mm`` is (z, y, x); lesions are 18-connected components of
``mask > 0``.
"""

from .case import evaluate_case
from .detection import OVERLAP_RULES, lesion_detection, parse_overlap_rule
from .folders import EvaluationInputError, evaluate_folders
from .lesion_report import DEFAULT_MIN_VOLUME_ML, LesionReport, lesion_report
from .metrics import autopet_case_metrics, binarize, label_components, voxel_volume_ml
from .plots import (
    coronal_mip,
    dice_curves,
    mip,
    pet_mip_png,
    plot_dice_vs_fraction,
    plot_pet_mip_with_contours,
)
from .quantification import (
    case_quantification,
    peak_sphere_offsets,
    quantify_lesions,
    sphere_radius_mm,
)

__all__ = [
    "DEFAULT_MIN_VOLUME_ML",
    "OVERLAP_RULES",
    "EvaluationInputError",
    "autopet_case_metrics",
    "binarize",
    "case_quantification",
    "coronal_mip",
    "dice_curves",
    "evaluate_case",
    "evaluate_folders",
    "LesionReport",
    "label_components",
    "lesion_report",
    "lesion_detection",
    "mip",
    "parse_overlap_rule",
    "pet_mip_png",
    "peak_sphere_offsets",
    "plot_dice_vs_fraction",
    "plot_pet_mip_with_contours",
    "quantify_lesions",
    "sphere_radius_mm",
    "voxel_volume_ml",
]
