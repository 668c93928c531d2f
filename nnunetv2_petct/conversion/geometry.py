"""Image geometry for the converters: grids, resampling, fields of view, body mask and crop
(pure library: no nnunetv2 import).

Axis conventions
----------------
* numpy arrays are (z, y, x), as returned by ``sitk.GetArrayFromImage``;
* ``spacing_mm`` tuples in this package are (z, y, x) as well;
* SimpleITK's own ``GetSpacing()``, ``GetOrigin()``, ``GetSize()`` and index tuples are (x, y, z).
  Every function here converts explicitly and says which order it expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def resample_to_reference(
    image: sitk.Image,
    reference: sitk.Image,
    interpolator: str = "linear",
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto the grid (size, spacing, origin, direction) of ``reference``.

    The mapping uses the physical geometry of both headers (origin, spacing and direction) with an
    identity transform, so two images that cover the same patient in world coordinates line up
    whatever their array sizes. Points of the reference grid outside ``image`` get ``default_value``.

    Args:
        image: image to resample (any scalar pixel type).
        reference: image whose grid defines the output.
        interpolator: ``"linear"``, ``"nearest"`` (use for label maps) or ``"bspline"``.
        default_value: fill value outside ``image`` (e.g. -1024 for CT in HU).

    Returns:
        A new image on the reference grid with the same pixel type as ``image``. For integer pixel
        types, linear/B-spline values are rounded by SimpleITK's cast (truncation toward zero is
        avoided by resampling in float and rounding before the cast).

    Raises:
        ValueError: unknown interpolator name.
    """
    key = interpolator.lower()
    if key not in _INTERPOLATORS:
        raise ValueError(f"unknown interpolator {interpolator!r}; use one of {sorted(_INTERPOLATORS)}")
    pixel_id = image.GetPixelID()
    integer_input = pixel_id in (
        sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
        sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64,
    )
    transform = sitk.Transform(image.GetDimension(), sitk.sitkIdentity)
    if integer_input and key != "nearest":
        # Interpolate in float, then round and cast back (a direct integer resample truncates).
        out = sitk.Resample(
            sitk.Cast(image, sitk.sitkFloat32), reference, transform, _INTERPOLATORS[key],
            float(default_value), sitk.sitkFloat32,
        )
        arr = np.rint(sitk.GetArrayViewFromImage(out))
        info = np.iinfo(sitk.GetArrayViewFromImage(image).dtype)
        arr = np.clip(arr, info.min, info.max).astype(info.dtype)
        res = sitk.GetImageFromArray(arr)
        res.CopyInformation(out)
        return res
    return sitk.Resample(
        image, reference, transform, _INTERPOLATORS[key], float(default_value), pixel_id
    )


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True if ``a`` and ``b`` share size, spacing, origin and direction (absolute tolerance ``tol``)."""
    if a.GetDimension() != b.GetDimension() or tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    for fa, fb in (
        (a.GetSpacing(), b.GetSpacing()),
        (a.GetOrigin(), b.GetOrigin()),
        (a.GetDirection(), b.GetDirection()),
    ):
        if not np.allclose(np.asarray(fa, float), np.asarray(fb, float), rtol=0.0, atol=tol):
            return False
    return True


def spacing_mm_zyx(image: sitk.Image) -> tuple[float, ...]:
    """Voxel spacing in mm in numpy (z, y, x) order (SimpleITK's ``GetSpacing()`` reversed)."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def geometry_record(image: sitk.Image) -> dict:
    """The grid of ``image`` as manifest entries: ``spacing_mm`` and ``shape_zyx`` in (z, y, x),
    ``origin_mm_xyz`` and the flattened ``direction`` in SimpleITK's (x, y, z) convention (rounded)."""
    return {
        "spacing_mm": [round(float(s), 6) for s in reversed(image.GetSpacing())],
        "shape_zyx": [int(s) for s in reversed(image.GetSize())],
        "origin_mm_xyz": [round(float(o), 4) for o in image.GetOrigin()],
        "direction": [round(float(d), 6) for d in image.GetDirection()],
    }


def overlap_fractions_xyz(moving: sitk.Image, reference: sitk.Image) -> tuple[float, float, float]:
    """Per-axis fraction of ``reference``'s field of view covered by ``moving``'s, along the reference
    index axes (x, y, z), each in 0..1.

    Both fields of view are boxes in physical space (voxel edges, i.e. index -0.5 .. size-0.5); the
    corners of ``moving`` are mapped into ``reference``'s continuous index space and their axis-aligned
    bounding box is intersected with the reference box. Exact for images sharing orientation, an
    upper bound otherwise.
    """
    size_m = moving.GetSize()
    size_r = np.asarray(reference.GetSize(), float)
    corners = []
    for cx in (-0.5, size_m[0] - 0.5):
        for cy in (-0.5, size_m[1] - 0.5):
            for cz in (-0.5, size_m[2] - 0.5):
                p = moving.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))
                corners.append(reference.TransformPhysicalPointToContinuousIndex(p))
    c = np.asarray(corners)
    lo = np.maximum(c.min(axis=0), -0.5)
    hi = np.minimum(c.max(axis=0), size_r - 0.5)
    frac = np.clip(hi - lo, 0.0, None) / np.maximum(size_r, 1)
    return tuple(float(f) for f in frac)


def overlap_fraction(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of ``reference``'s field-of-view volume covered by ``moving`` (product of the per-axis
    fractions of :func:`overlap_fractions_xyz`)."""
    return float(np.prod(overlap_fractions_xyz(moving, reference)))


def array_zyx_to_image(
    array: np.ndarray,
    spacing_mm: Sequence[float],
    origin_mm_xyz: Sequence[float],
    direction: Sequence[float] | None = None,
) -> sitk.Image:
    """Build a SimpleITK image from a (z, y, x) array.

    Args:
        array: voxel array in (z, y, x) order.
        spacing_mm: spacing in (z, y, x) order (converted to SimpleITK's (x, y, z)).
        origin_mm_xyz: physical origin in SimpleITK/LPS (x, y, z) order, as ``SetOrigin`` expects.
        direction: flattened 3x3 direction matrix (SimpleITK convention); identity if None.
    """
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_mm))))
    img.SetOrigin(tuple(float(o) for o in origin_mm_xyz))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in direction))
    return img


def body_mask(ct_hu: np.ndarray, threshold_hu: float = -500) -> np.ndarray:
    """Body mask from a CT in HU: largest 3D connected component of ``ct_hu > threshold_hu``.

    Holes (lungs, bowel gas) are filled slice by slice in the axial plane (axis 0 = z), which keeps
    the lungs inside the body without closing the open ends of the body along z.

    Args:
        ct_hu: CT array in HU, (z, y, x) (2D input is treated as one slice).
        threshold_hu: voxels strictly above this value are candidate body voxels.

    Returns:
        bool array of ``ct_hu.shape``; all False when no voxel exceeds the threshold (or the input
        is empty). Connectivity is 26-neighbourhood.
    """
    ct = np.asarray(ct_hu)
    if ct.size == 0:
        return np.zeros(ct.shape, dtype=bool)
    squeeze = ct.ndim == 2
    if squeeze:
        ct = ct[None]
    mask = cc3d.largest_k(ct > threshold_hu, k=1, connectivity=26, binary_image=True) > 0
    for z in range(mask.shape[0]):
        if mask[z].any():
            mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask[0] if squeeze else mask


def mask_bbox_zyx(mask: np.ndarray, margin_vox: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of a non-empty mask as (z, y, x) slices, grown by ``margin_vox`` and clipped to
    the array; None for an empty mask."""
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return None
    slices = []
    for axis in range(m.ndim):
        other = tuple(a for a in range(m.ndim) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        lo = max(int(idx[0]) - margin_vox, 0)
        hi = min(int(idx[-1]) + 1 + margin_vox, m.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def crop_to_mask_bbox(
    images: Sequence[sitk.Image], mask: np.ndarray, margin_vox: int = 3
) -> tuple[list[sitk.Image], tuple[slice, ...] | None]:
    """Crop images that share one grid to the bounding box of ``mask`` plus ``margin_vox`` voxels.

    Cropping uses SimpleITK slicing, so each output's origin is moved to the physical position of
    its first kept voxel (spacing and direction unchanged): the voxels stay where they were in
    world coordinates.

    Args:
        images: images on the same grid as ``mask`` (size checked, (x, y, z) = mask.shape reversed).
        mask: (z, y, x) boolean (or 0/1) mask.
        margin_vox: margin added on each side of the box, clipped to the image.

    Returns:
        ``(cropped, box)``: the cropped images in input order and the box as (z, y, x) slices
        (:func:`mask_bbox_zyx`). An empty mask gives ``(list(images), None)``: nothing cropped.

    Raises:
        ValueError: an image's size does not match the mask's shape.
    """
    m = np.asarray(mask)
    expected = tuple(reversed(m.shape))
    for i, img in enumerate(images):
        if tuple(img.GetSize()) != expected:
            raise ValueError(
                f"image {i} has size (x,y,z) {tuple(img.GetSize())}, mask implies {expected}"
            )
    box = mask_bbox_zyx(m, margin_vox)
    if box is None:
        return list(images), None
    sz, sy, sx = box
    return [img[sx.start:sx.stop, sy.start:sy.stop, sz.start:sz.stop] for img in images], box


def axial_coverage(moving: sitk.Image, reference: sitk.Image) -> dict:
    """Which part of ``reference``'s axial extent (its third index axis, the slice normal) ``moving``'s field
    of view covers, e.g. how much of a PET the CT covers.

    Positions are in mm along the reference's slice normal n (``n . p`` for a patient point p; for an axial
    series with identity direction this is the patient z, LPS: larger = superior). Extents are voxel edges
    (index -0.5 .. size - 0.5), as in :func:`overlap_fractions_xyz`; in-plane coverage is not considered.

    Returns:
        dict with ``fraction`` (covered share of the reference's axial extent, 0..1), ``reference_range_mm``
        ([low, high]), ``covered_range_mm`` ([low, high], None without overlap), ``n_slices``, and
        ``uncovered``: one entry per end of the reference that ``moving`` misses, each with ``from_mm``,
        ``to_mm``, ``length_mm``, ``fraction`` (of the reference's axial extent), ``slices`` ([first, last]
        reference slice indices whose centres are not covered; None when no centre is) and ``end``:
        ``"inferior"``/``"superior"`` when the normal is within 45 degrees of the patient z axis, else
        ``"low-index"``/``"high-index"`` (``"whole"`` when nothing is covered).
    """
    nz = int(reference.GetSize()[2])
    dz = float(reference.GetSpacing()[2])
    direction = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    normal = direction[:, 2]
    base_mm = float(np.dot(np.asarray(reference.GetOrigin(), float), normal))
    size_m = moving.GetSize()
    ks = []
    for cx in (-0.5, size_m[0] - 0.5):
        for cy in (-0.5, size_m[1] - 0.5):
            for cz in (-0.5, size_m[2] - 0.5):
                p = moving.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))
                ks.append(reference.TransformPhysicalPointToContinuousIndex(p)[2])
    k_lo, k_hi = max(min(ks), -0.5), min(max(ks), nz - 0.5)

    def mm(k: float) -> float:
        return round(base_mm + k * dz, 3)

    ref_lo, ref_hi = sorted((mm(-0.5), mm(nz - 0.5)))
    total = ref_hi - ref_lo
    covered = k_hi > k_lo
    if normal[2] >= np.sqrt(0.5):
        names = ("inferior", "superior")
    elif normal[2] <= -np.sqrt(0.5):
        names = ("superior", "inferior")
    else:
        names = ("low-index", "high-index")
    uncovered = []
    ends = [(-0.5, k_lo, names[0])] if covered else [(-0.5, nz - 0.5, "whole")]
    if covered:
        ends.append((k_hi, nz - 0.5, names[1]))
    for a, b, end in ends:
        if b - a <= 1e-6:
            continue
        lo, hi = sorted((mm(a), mm(b)))
        centres = [k for k in range(nz) if a < k < b] if covered else list(range(nz))
        uncovered.append({"end": end, "from_mm": lo, "to_mm": hi, "length_mm": round(hi - lo, 3),
                          "fraction": round((hi - lo) / total, 4) if total > 0 else 1.0,
                          "slices": [centres[0], centres[-1]] if centres else None})
    return {
        "fraction": round((k_hi - k_lo) / nz, 4) if covered else 0.0,
        "reference_range_mm": [ref_lo, ref_hi],
        "covered_range_mm": sorted((mm(k_lo), mm(k_hi))) if covered else None,
        "n_slices": nz,
        "uncovered": uncovered,
    }
