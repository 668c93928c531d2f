"""Header-less inputs (``.npy``/``.npz`` arrays) and generic volume files, for SPADE and ViMed-PET.

Arrays carry no geometry: the caller supplies the voxel spacing (z, y, x) and the axis order of the
stored array; the image gets origin (0, 0, 0) and an identity direction, and the manifest says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.conversion.core import ConversionError, read_image

ARRAY_EXTENSIONS = (".npy", ".npz")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
AXIS_ORDERS = ("zyx", "xyz", "yxz")


def file_kind(path: Path | str) -> str | None:
    """``"array"``, ``"volume"`` or None from the file name (case-insensitive)."""
    low = str(path).lower()
    if low.endswith(ARRAY_EXTENSIONS):
        return "array"
    if low.endswith(VOLUME_EXTENSIONS):
        return "volume"
    return None


def load_array(path: Path | str, key_hint: str = "") -> np.ndarray:
    """Array from ``.npy`` or ``.npz``.

    For ``.npz`` the array is the only one in the archive, else the one whose key equals
    ``key_hint`` (case-insensitive), else one of ``data``, ``image``, ``arr_0``.

    Only integer and floating-point arrays are image intensities: boolean, complex, string, structured
    or object arrays are refused (``allow_pickle`` stays off).

    Raises:
        ConversionError: unreadable file, an archive with several arrays and no matching key
            (the message lists the keys), or an array whose type cannot hold intensities.
    """
    array = _load_array(Path(path), key_hint)
    if array.dtype.kind not in "iuf":
        kinds = {"b": "boolean", "c": "complex", "U": "text", "S": "bytes", "V": "structured", "O": "object",
                 "M": "datetime", "m": "timedelta"}
        raise ConversionError(f"{path} holds a {kinds.get(array.dtype.kind, 'non-numeric')} array (dtype "
                              f"{array.dtype}), not image intensities: expected integers or floating point")
    return array


def _load_array(path: Path, key_hint: str) -> np.ndarray:
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) == 1:
                    return z[keys[0]]
                lower = {k.lower(): k for k in keys}
                for cand in (key_hint.lower(), "data", "image", "arr_0"):
                    if cand and cand in lower:
                        return z[lower[cand]]
            raise ConversionError(f"{path} holds arrays {keys}; cannot tell which one to use")
        return np.load(path, allow_pickle=False)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError for corrupt files
        raise ConversionError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def to_zyx(array: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a 3D array stored in ``axes`` order (e.g. ``"xyz"``) to (z, y, x)."""
    if sorted(axes) != ["x", "y", "z"]:
        raise ValueError(f"axis order must be a permutation of 'zyx', got {axes!r}")
    return np.transpose(array, [axes.index(a) for a in "zyx"])


def array_to_image(array: np.ndarray, spacing_mm: Sequence[float], axes: str = "zyx", dtype=None):
    """A SimpleITK image (origin 0, identity direction) from a 3D array.

    Raises:
        ConversionError: the array is not 3D (after squeezing singleton axes), or its values do not fit
            ``dtype`` (a float64 beyond the float32 range would silently become inf).
    """
    from nnunetv2_petct.conversion.geometry import array_zyx_to_image

    arr = np.asarray(array)
    if arr.ndim > 3:
        arr = np.squeeze(arr)
    if arr.ndim != 3:
        raise ConversionError(f"array has shape {tuple(np.shape(array))}, expected 3D")
    arr = to_zyx(arr, axes)
    if dtype is not None:
        target = np.dtype(dtype)
        if target.kind == "f" and arr.dtype.kind == "f" and arr.dtype.itemsize > target.itemsize:
            finite = arr[np.isfinite(arr)]
            if finite.size and float(np.abs(finite).max()) > float(np.finfo(target).max):
                raise ConversionError(f"array values up to {float(np.abs(finite).max()):g} do not fit {target} "
                                      f"(implausible intensities)")
        arr = arr.astype(target, copy=False)
    return array_zyx_to_image(np.ascontiguousarray(arr), spacing_mm, (0.0, 0.0, 0.0))


def load_volume(path: Path | str):
    """A volume file with its own header (NIfTI, NRRD, MetaImage)."""
    return read_image(path)
