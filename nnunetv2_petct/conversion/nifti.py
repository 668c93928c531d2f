"""Raw NIfTI-1/2 reading, for what ITK hides: the header's data type and non-finite voxels (pure library).

ITK's NIfTI reader turns NaN and +-inf voxels into 0 without a word, so a PET with NaNs would be
converted as if those voxels had no activity and an all-NaN PET would look "empty". Here the header
is parsed and the voxel data of floating-point files are scanned in the file itself (gzip or not),
before any library can change them:

- :func:`read_nifti_header` — datatype, dimensions, ``vox_offset``, ``scl_slope``/``scl_inter`` and
  the byte order, with a reason in words for files that are not NIfTI;
- :func:`scan_nonfinite` — counts NaN, +inf and -inf voxels (streamed, in chunks; only float and
  complex data types can hold them, integer files are not read);
- :func:`restore_nonfinite` — puts those voxels back into the array ITK returned (same voxel order:
  ITK keeps the stored order and expresses orientation in the direction matrix), so the converter's
  non-finite policy applies to NIfTI exactly as to other formats.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NIfTI datatype code -> (name, numpy type character or None when numpy cannot read it here).
NIFTI_DATATYPES: dict[int, tuple[str, str | None]] = {
    2: ("uint8", "u1"), 4: ("int16", "i2"), 8: ("int32", "i4"), 16: ("float32", "f4"),
    32: ("complex64", "c8"), 64: ("float64", "f8"), 128: ("RGB24", None), 256: ("int8", "i1"),
    512: ("uint16", "u2"), 768: ("uint32", "u4"), 1024: ("int64", "i8"), 1280: ("uint64", "u8"),
    1536: ("float128", None), 1792: ("complex128", "c16"), 2048: ("complex256", None),
    2304: ("RGBA32", None),
}
#: Data types that are not image intensities (refused by the converter).
NON_INTENSITY_DATATYPES = frozenset({32, 128, 1792, 2048, 2304})
_CHUNK_BYTES = 1 << 24


class NiftiError(ValueError):
    """A file is not a readable NIfTI-1/2 image; the message says why in words."""


@dataclass(frozen=True)
class NiftiHeader:
    """The parts of a NIfTI header needed to find and decode the voxel data.

    ``dims`` are the sizes of the used dimensions (x, y, z, t, ...); ``byteorder`` is ``"<"`` or ``">"``.
    """

    version: int
    byteorder: str
    datatype: int
    bitpix: int
    dims: tuple[int, ...]
    vox_offset: int
    scl_slope: float
    scl_inter: float

    @property
    def datatype_name(self) -> str:
        return NIFTI_DATATYPES.get(self.datatype, (f"unknown ({self.datatype})", None))[0]

    @property
    def numpy_dtype(self) -> np.dtype | None:
        code = NIFTI_DATATYPES.get(self.datatype, ("", None))[1]
        return None if code is None else np.dtype(self.byteorder + code)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 0

    @property
    def can_hold_nonfinite(self) -> bool:
        """Floating-point (or complex) storage: the only kinds that can hold NaN/inf."""
        dt = self.numpy_dtype
        return self.datatype in (1536, 2048) or (dt is not None and dt.kind in "fc")

    @property
    def scaling(self) -> tuple[float, float] | None:
        """``(slope, intercept)`` that readers apply, or None (NIfTI: slope 0 means "no scaling")."""
        if self.scl_slope == 0 or (self.scl_slope == 1 and self.scl_inter == 0):
            return None
        return self.scl_slope, self.scl_inter


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def parse_nifti_header(head: bytes) -> NiftiHeader:
    """Parse the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes of an (uncompressed) NIfTI file.

    Raises:
        NiftiError: not a NIfTI-1/2 single-file header (the reason in words).
    """
    if len(head) < 348:
        raise NiftiError(f"too short to hold a NIfTI header ({len(head)} bytes, a header has 348)")
    for bo in "<>":
        size = struct.unpack(bo + "i", head[:4])[0]
        if size == 348:
            magic = head[344:348]
            dim = struct.unpack(bo + "8h", head[40:56])
            datatype, bitpix = struct.unpack(bo + "hh", head[70:74])
            vox_offset = struct.unpack(bo + "f", head[108:112])[0]
            slope, inter = struct.unpack(bo + "ff", head[112:120])
            version = 1
            if magic not in (b"n+1\x00", b"ni1\x00"):
                raise NiftiError(f"not a NIfTI-1 file (magic {magic!r}; an Analyze 7.5 header?)")
            if magic == b"ni1\x00":
                raise NiftiError("a two-file NIfTI (.hdr/.img) header; convert it to a single .nii/.nii.gz")
            break
        if size == 540:
            if len(head) < 540:
                raise NiftiError(f"too short to hold a NIfTI-2 header ({len(head)} of 540 bytes)")
            magic = head[4:12]
            datatype, bitpix = struct.unpack(bo + "hh", head[12:16])
            dim = struct.unpack(bo + "8q", head[16:80])
            vox_offset = struct.unpack(bo + "q", head[168:176])[0]
            slope, inter = struct.unpack(bo + "dd", head[176:192])
            version = 2
            if magic[:3] not in (b"n+2",):
                raise NiftiError(f"not a single-file NIfTI-2 (magic {magic!r})")
            break
    else:
        raise NiftiError("not a NIfTI file (the header-size field is neither 348 nor 540)")
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise NiftiError(f"invalid number of dimensions in the header ({ndim})")
    dims = tuple(int(d) for d in dim[1:1 + ndim])
    if any(d < 0 for d in dims):
        raise NiftiError(f"invalid image size in the header {dims}")
    if datatype not in NIFTI_DATATYPES:
        raise NiftiError(f"unknown NIfTI data type code {datatype}")
    if not math.isfinite(float(slope)):
        raise NiftiError(f"the header's intensity scale factor scl_slope is {slope} (not finite)")
    if not math.isfinite(float(inter)):
        raise NiftiError(f"the header's intensity offset scl_inter is {inter} (not finite)")
    return NiftiHeader(version=version, byteorder=bo, datatype=int(datatype), bitpix=int(bitpix), dims=dims,
                       vox_offset=int(vox_offset), scl_slope=float(slope), scl_inter=float(inter))


def read_nifti_header(path: str | os.PathLike) -> NiftiHeader:
    """The header of a ``.nii`` or ``.nii.gz`` file (gzip detected from the content, not the name).

    Raises:
        NiftiError: unreadable, not gzip although named ``.gz``, corrupt gzip, or not a NIfTI header.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".gz") and not _is_gzip(path):
            raise NiftiError("not a gzip file although its name ends in .gz")
        with _open(path) as f:
            head = f.read(544)
    except NiftiError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiError(f"corrupt gzip data ({e})") from None
    return parse_nifti_header(head)


@dataclass(frozen=True)
class NonfiniteCount:
    """Non-finite voxels found in a file's stored data (before any scaling)."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    n_voxels: int = 0

    @property
    def total(self) -> int:
        return self.nan + self.posinf + self.neginf

    def describe(self) -> str:
        """``"12 NaN, 3 +inf"``."""
        parts = [f"{n} {name}" for n, name in ((self.nan, "NaN"), (self.posinf, "+inf"), (self.neginf, "-inf")) if n]
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return {"nan": self.nan, "posinf": self.posinf, "neginf": self.neginf}


def _voxel_chunks(path: Path, header: NiftiHeader, dtype: np.dtype):
    """Yield the stored voxel values chunk by chunk (flat, file order)."""
    n_bytes = header.n_voxels * dtype.itemsize
    step = max(dtype.itemsize, _CHUNK_BYTES - _CHUNK_BYTES % dtype.itemsize)
    with _open(path) as f:
        skip = header.vox_offset
        while skip > 0:
            got = f.read(min(skip, _CHUNK_BYTES))
            if not got:
                raise NiftiError("the file ends before its voxel data")
            skip -= len(got)
        left = n_bytes
        while left > 0:
            buf = f.read(min(step, left))
            if not buf:
                raise NiftiError(f"truncated: {n_bytes - left} of {n_bytes} bytes of voxel data")
            if len(buf) % dtype.itemsize:  # rare: a read that stops inside a value
                buf += f.read(dtype.itemsize - len(buf) % dtype.itemsize)
            left -= len(buf)
            yield np.frombuffer(buf, dtype=dtype)


def scan_nonfinite(path: str | os.PathLike, header: NiftiHeader | None = None) -> NonfiniteCount:
    """Count NaN, +inf and -inf in the stored voxel data of a NIfTI file (streamed; constant memory).

    Integer files cannot hold them and are not read (zero counts). For complex data, a voxel counts
    once when its real or imaginary part is non-finite (as NaN if either part is NaN).

    Raises:
        NiftiError: not a NIfTI file, a data type numpy cannot read (float128), or truncated data.
    """
    path = Path(path)
    header = header or read_nifti_header(path)
    if not header.can_hold_nonfinite:
        return NonfiniteCount(n_voxels=header.n_voxels)
    dtype = header.numpy_dtype
    if dtype is None:
        raise NiftiError(f"data type {header.datatype_name} cannot be checked for NaN/inf")
    nan = posinf = neginf = 0
    try:
        for chunk in _voxel_chunks(path, header, dtype):
            if dtype.kind == "c":
                bad = ~np.isfinite(chunk)
                if bad.any():
                    vals = chunk[bad]
                    is_nan = np.isnan(vals.real) | np.isnan(vals.imag)
                    nan += int(is_nan.sum())
                    posinf += int((~is_nan).sum())
                continue
            finite = np.isfinite(chunk)
            if finite.all():
                continue
            vals = chunk[~finite]
            n_nan = int(np.isnan(vals).sum())
            n_pos = int((vals > 0).sum())
            nan, posinf, neginf = nan + n_nan, posinf + n_pos, neginf + (vals.size - n_nan - n_pos)
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiError(f"corrupt gzip data ({e})") from None
    return NonfiniteCount(nan=nan, posinf=posinf, neginf=neginf, n_voxels=header.n_voxels)


def stored_values(path: str | os.PathLike, header: NiftiHeader | None = None) -> np.ndarray:
    """All voxel values of a NIfTI file as stored, scaled as readers scale them (flat, file order; float64
    for scaled data). Loads the whole image: for the rare files :func:`scan_nonfinite` flags."""
    path = Path(path)
    header = header or read_nifti_header(path)
    dtype = header.numpy_dtype
    if dtype is None:
        raise NiftiError(f"data type {header.datatype_name} cannot be read here")
    values = np.concatenate(list(_voxel_chunks(path, header, dtype)))[: header.n_voxels]
    if header.scaling is not None:
        slope, inter = header.scaling
        with np.errstate(invalid="ignore", over="ignore"):
            values = values.astype(np.float64) * slope + inter
    return values


def restore_nonfinite(array: np.ndarray, path: str | os.PathLike, header: NiftiHeader | None = None) -> int:
    """Write the non-finite voxels of the file back into ``array`` (what ITK returned, zeros there), in place.

    ``array`` must hold the file's voxels in file order (SimpleITK's ``(z, y, x)`` array of a 3D NIfTI).
    Returns the number of voxels restored.

    Raises:
        NiftiError: ``array`` does not have one element per voxel, or is not floating point.
    """
    header = header or read_nifti_header(path)
    values = stored_values(path, header)
    if array.size != values.size:
        raise NiftiError(f"the image read has {array.size} values but the file stores {values.size} voxels")
    bad = ~np.isfinite(values)
    if not bad.any():
        return 0
    if array.dtype.kind != "f" or not array.flags.c_contiguous:
        raise NiftiError(f"non-finite voxels cannot be kept in an array of type {array.dtype}")
    flat = array.reshape(-1)
    flat[bad] = values[bad].real if np.iscomplexobj(values) else values[bad]
    return int(bad.sum())
