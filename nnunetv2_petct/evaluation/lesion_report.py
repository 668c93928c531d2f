"""One study's lesion table from a lesion mask and the PET in SUV on its original grid.

Pure library (numpy, SimpleITK; no nnunetv2 import). The numbers come from
:func:`nnunetv2_petct.evaluation.quantification.quantify_lesions` (the one implementation of SUVmax,
SUVmean, SUVpeak, MTV and TLG); this module adds what a per-study report needs around them:

* specks are removed first: 18-connected components smaller than ``min_volume_ml``
  (default :data:`DEFAULT_MIN_VOLUME_ML` = 0.1 ml, i.e. one or two voxels of a typical PET grid) are taken
  out of the mask itself, so the written mask, the DICOM-SEG and the table describe the same lesions;
  their number and volume are reported;
* lesions are numbered 1..N by decreasing SUVmax (ties: larger volume first), the order of the table;
* positions are given in DICOM patient coordinates (LPS, mm) through the image geometry: the centroid
  (mean position of the lesion voxels) and the hottest voxel (where SUVmax and the SUVpeak sphere are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnunetv2_petct.io import csv_text as io_csv_text

DEFAULT_MIN_VOLUME_ML = 0.1

LESION_CSV_COLUMNS = (
    "lesion_id", "volume_ml", "suv_max", "suv_peak", "suv_mean", "tlg", "n_voxels",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "suv_max_x_mm", "suv_max_y_mm", "suv_max_z_mm",
)  # fmt: skip


@dataclass
class LesionReport:
    """Lesions of one study (see module docstring).

    Attributes:
        mask: the lesion mask after speck removal (uint8 SimpleITK image on the PET grid).
        lesions: per lesion, in table order: ``lesion_id``, ``volume_ml`` (MTV), ``suv_max``, ``suv_peak``,
            ``suv_mean``, ``tlg``, ``n_voxels``, ``centroid_mm`` and ``suv_max_position_mm`` ((x, y, z)
            patient coordinates), ``centroid_index_zyx`` and ``suv_max_index_zyx`` (voxel indices).
        totals: ``lesion_count``, ``tmtv_ml``, ``total_tlg``, ``suv_max`` and ``suv_peak`` (highest lesion
            values; NaN without lesions).
        removed: ``min_volume_ml``, ``count`` and ``volume_ml`` of the specks taken out.
    """

    mask: Any
    lesions: list[dict] = field(default_factory=list)
    totals: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)


def remove_small_components(mask_zyx: np.ndarray, spacing_mm: Sequence[float], min_volume_ml: float
                            ) -> tuple[np.ndarray, int, float]:
    """Drop the 18-connected components of ``mask > 0`` whose volume is below ``min_volume_ml``.

    Returns ``(kept uint8 mask, number removed, volume removed in ml)``; ``min_volume_ml <= 0`` keeps all.
    """
    from .metrics import label_components, voxel_volume_ml

    binary = (np.asarray(mask_zyx) > 0).astype(np.uint8)
    if min_volume_ml <= 0 or not binary.any():
        return binary, 0, 0.0
    labels, n = label_components(binary)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    vox_ml = voxel_volume_ml(spacing_mm)
    small = np.flatnonzero(sizes * vox_ml < min_volume_ml)
    small = small[small > 0]
    if small.size == 0:
        return binary, 0, 0.0
    binary[np.isin(labels, small)] = 0
    return binary, int(small.size), float(sizes[small].sum() * vox_ml)


def _to_patient_mm(image, index_zyx: Sequence[float]) -> list[float]:
    z, y, x = (float(v) for v in index_zyx)
    return [round(float(c), 3) for c in image.TransformContinuousIndexToPhysicalPoint((x, y, z))]


def lesion_report(mask, suv, min_volume_ml: float = DEFAULT_MIN_VOLUME_ML) -> LesionReport:
    """The lesion table of a study (see module docstring).

    Args:
        mask: SimpleITK lesion mask (values > 0) on the grid of ``suv``.
        suv: SimpleITK PET image in SUV on its original grid.
        min_volume_ml: components below this volume are removed (0 keeps everything).

    Raises:
        ValueError: the mask is not on the PET grid, or ``min_volume_ml`` is negative or not finite.
    """
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.geometry import same_geometry, spacing_mm_zyx

    from .quantification import PEAK_VOLUME_ML, quantify_lesions

    if not (math.isfinite(min_volume_ml) and min_volume_ml >= 0):
        raise ValueError(f"min_volume_ml must be a finite number >= 0, got {min_volume_ml}")
    if not same_geometry(mask, suv, tol=1e-3):
        raise ValueError(f"the mask (size {mask.GetSize()}, origin {mask.GetOrigin()}) is not on the PET grid "
                         f"(size {suv.GetSize()}, origin {suv.GetOrigin()})")
    spacing = spacing_mm_zyx(suv)
    kept, n_removed, removed_ml = remove_small_components(sitk.GetArrayViewFromImage(mask), spacing, min_volume_ml)
    suv_arr = sitk.GetArrayViewFromImage(suv)
    q = quantify_lesions(kept, suv_arr, spacing, PEAK_VOLUME_ML)
    ranked = sorted(q["lesions"], key=lambda d: (-d["suv_max"], -d["n_voxels"], d["lesion_id"]))
    lesions = []
    for rank, d in enumerate(ranked, start=1):
        centroid = (d["centroid_z"], d["centroid_y"], d["centroid_x"])
        hot = (d["peak_z"], d["peak_y"], d["peak_x"])
        lesions.append({
            "lesion_id": rank, "volume_ml": d["mtv_ml"], "suv_max": d["suv_max"], "suv_peak": d["suv_peak"],
            "suv_mean": d["suv_mean"], "tlg": d["tlg"], "n_voxels": d["n_voxels"],
            "centroid_mm": _to_patient_mm(suv, centroid), "suv_max_position_mm": _to_patient_mm(suv, hot),
            "centroid_index_zyx": [round(float(c), 3) for c in centroid], "suv_max_index_zyx": [int(c) for c in hot],
        })
    out = sitk.GetImageFromArray(kept)
    out.CopyInformation(suv)
    return LesionReport(
        mask=out, lesions=lesions, totals=dict(q["totals"]),
        removed={"min_volume_ml": float(min_volume_ml), "count": n_removed, "volume_ml": removed_ml},
    )


def _round(v: Any, digits: int) -> Any:
    if isinstance(v, float):
        return round(v, digits) if math.isfinite(v) else ""
    return v


def lesion_csv_row(lesion: Mapping) -> dict:
    """One :data:`LESION_CSV_COLUMNS` row of a :class:`LesionReport` lesion (ml/SUV 4 decimals, mm 2)."""
    cx, cy, cz = lesion["centroid_mm"]
    hx, hy, hz = lesion["suv_max_position_mm"]
    row = {k: _round(lesion[k], 4) for k in ("lesion_id", "volume_ml", "suv_max", "suv_peak", "suv_mean", "tlg",
                                              "n_voxels")}
    row.update({"centroid_x_mm": round(cx, 2), "centroid_y_mm": round(cy, 2), "centroid_z_mm": round(cz, 2),
                "suv_max_x_mm": round(hx, 2), "suv_max_y_mm": round(hy, 2), "suv_max_z_mm": round(hz, 2)})
    return row


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """CSV text with a header line; missing keys and non-finite floats are empty cells (floats: 6 decimals)."""
    return io_csv_text(rows, columns, cell=lambda v: _round(v, 6))
