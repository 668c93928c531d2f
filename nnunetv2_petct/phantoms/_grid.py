"""Voxel grids and vectorised painting of analytic shapes (internal to the phantom generator).

A :class:`Grid` has an identity direction. Shapes are "z-ellipses": at each physical height z
they are an axis-aligned ellipse (centre ``cx, cy``, semi-axes ``ax, ay`` in mm, all functions
of z). Ellipsoids, cylinders and the body outline are all of this kind, so one painter serves
them all. Painting works on z-slabs and on the x/y bounding box of the shape only, which keeps
full-size (512x512x330) rendering fast and its temporaries small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# f(z_mm) -> (cx, cy, ax, ay), each an array shaped like z (or broadcastable to it).
ProfileFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

_CHUNK_VOXELS = 4_000_000


@dataclass(frozen=True)
class Grid:
    """Regular grid with identity direction.

    ``shape_zyx`` and ``spacing_mm`` are numpy (z, y, x) order; ``origin_mm_xyz`` is SimpleITK's
    (x, y, z) physical position of voxel index (0, 0, 0).
    """

    shape_zyx: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm_xyz: tuple[float, float, float]

    def coords(self, axis_zyx: int) -> np.ndarray:
        """Physical coordinate (mm) of every index along numpy axis 0=z, 1=y, 2=x."""
        origin = self.origin_mm_xyz[2 - axis_zyx]
        return origin + self.spacing_mm[axis_zyx] * np.arange(self.shape_zyx[axis_zyx], dtype=np.float64)

    def extent_mm(self, axis_zyx: int) -> tuple[float, float]:
        """(first, last) voxel-centre coordinate along a numpy axis."""
        c = self.coords(axis_zyx)
        return float(c[0]), float(c[-1])

    def nearest_index_zyx(self, point_mm_xyz: tuple[float, float, float]) -> tuple[int, int, int] | None:
        """Index (z, y, x) of the voxel nearest to a physical point, None if outside the grid."""
        idx = []
        for axis in range(3):
            i = int(round((point_mm_xyz[2 - axis] - self.origin_mm_xyz[2 - axis]) / self.spacing_mm[axis]))
            if i < 0 or i >= self.shape_zyx[axis]:
                return None
            idx.append(i)
        return idx[0], idx[1], idx[2]

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array of this grid's shape as a SimpleITK image with this geometry."""
        if tuple(array.shape) != tuple(self.shape_zyx):
            raise ValueError(f"array shape {array.shape} != grid shape {self.shape_zyx}")
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in reversed(self.spacing_mm)))
        img.SetOrigin(tuple(float(o) for o in self.origin_mm_xyz))
        return img

    def sub_grid_around(self, center_mm_xyz: tuple[float, float, float], half_width_mm: float
                        ) -> tuple[Grid, tuple[slice, slice, slice]]:
        """Sub-grid covering a cube of ``half_width_mm`` around a point (clipped to this grid)."""
        slices = []
        for axis in range(3):
            c = self.coords(axis)
            centre = center_mm_xyz[2 - axis]
            i0 = int(np.searchsorted(c, centre - half_width_mm, "left"))
            i1 = int(np.searchsorted(c, centre + half_width_mm, "right"))
            slices.append(slice(i0, max(i1, i0)))
        origin_xyz = tuple(
            self.origin_mm_xyz[2 - a] + slices[a].start * self.spacing_mm[a] for a in (2, 1, 0)
        )
        shape = tuple(s.stop - s.start for s in slices)
        return Grid(shape, self.spacing_mm, origin_xyz), (slices[0], slices[1], slices[2])


@dataclass(frozen=True)
class Shape:
    """A z-ellipse shape between heights ``z_lo`` and ``z_hi`` (mm).

    ``hole`` > 0 makes it an elliptic annulus: points with normalised radius <= ``hole`` are left out.
    """

    z_lo: float
    z_hi: float
    profile: ProfileFn
    hole: float = 0.0


def ellipsoid(center_xyz: tuple[float, float, float], semi_xyz: tuple[float, float, float],
              hole: float = 0.0) -> Shape:
    """Axis-aligned ellipsoid (physical centre and semi-axes in mm, (x, y, z) order)."""
    cx, cy, cz = (float(v) for v in center_xyz)
    a, b, c = (float(v) for v in semi_xyz)

    def prof(z: np.ndarray):
        s = np.sqrt(np.clip(1.0 - ((z - cz) / c) ** 2, 0.0, None))
        return np.full_like(z, cx), np.full_like(z, cy), a * s, b * s

    return Shape(cz - c, cz + c, prof, hole)


def sphere(center_xyz: tuple[float, float, float], radius_mm: float) -> Shape:
    return ellipsoid(center_xyz, (radius_mm, radius_mm, radius_mm))


def cylinder(cx: float, cy: float, a: float, b: float, z_lo: float, z_hi: float, hole: float = 0.0) -> Shape:
    """Elliptic cylinder along z."""

    def prof(z: np.ndarray):
        return np.full_like(z, cx), np.full_like(z, cy), np.full_like(z, a), np.full_like(z, b)

    return Shape(float(z_lo), float(z_hi), prof, hole)


def profile_shape(z_knots: np.ndarray, ax_knots: np.ndarray, ay_knots: np.ndarray, cx: float, cy: float,
                  shrink_mm: float = 0.0, hole: float = 0.0) -> Shape:
    """Generalised cylinder whose semi-axes follow piecewise-linear knots in z (ascending);
    ``shrink_mm`` is subtracted from both semi-axes (used for the fat layer)."""
    zk = np.asarray(z_knots, float)
    axk = np.asarray(ax_knots, float)
    ayk = np.asarray(ay_knots, float)

    def prof(z: np.ndarray):
        ax = np.interp(z, zk, axk, left=0.0, right=0.0) - shrink_mm
        ay = np.interp(z, zk, ayk, left=0.0, right=0.0) - shrink_mm
        return np.full_like(z, cx), np.full_like(z, cy), ax, ay

    return Shape(float(zk[0]), float(zk[-1]), prof, hole)


def paint(array: np.ndarray, grid: Grid, shape: Shape, value: float) -> int:
    """Set ``array`` (on ``grid``) to ``value`` at every voxel centre inside ``shape``.

    Returns the number of voxels painted. Voxels outside the grid are ignored.
    """
    z = grid.coords(0)
    y = grid.coords(1)
    x = grid.coords(2)
    k0 = int(np.searchsorted(z, shape.z_lo, "left"))
    k1 = int(np.searchsorted(z, shape.z_hi, "right"))
    if k1 <= k0:
        return 0
    nz_chunk = max(1, _CHUNK_VOXELS // (len(y) * len(x)))
    painted = 0
    for c0 in range(k0, k1, nz_chunk):
        c1 = min(c0 + nz_chunk, k1)
        zz = z[c0:c1]
        cx, cy, ax, ay = (np.broadcast_to(np.asarray(v, float), zz.shape) for v in shape.profile(zz))
        valid = (ax > 0) & (ay > 0)
        if not valid.any():
            continue
        vz = np.flatnonzero(valid)
        c1 = c0 + int(vz[-1]) + 1
        c0 = c0 + int(vz[0])
        sl = slice(int(vz[0]), int(vz[-1]) + 1)
        cx, cy, ax, ay, valid = cx[sl], cy[sl], ax[sl], ay[sl], valid[sl]
        i0 = int(np.searchsorted(x, np.min((cx - ax)[valid]), "left"))
        i1 = int(np.searchsorted(x, np.max((cx + ax)[valid]), "right"))
        j0 = int(np.searchsorted(y, np.min((cy - ay)[valid]), "left"))
        j1 = int(np.searchsorted(y, np.max((cy + ay)[valid]), "right"))
        if i1 <= i0 or j1 <= j0:
            continue
        safe_ax = np.where(valid, ax, 1.0).astype(np.float32)
        safe_ay = np.where(valid, ay, 1.0).astype(np.float32)
        dx = ((x[i0:i1][None, :] - cx[:, None]).astype(np.float32) / safe_ax[:, None]) ** 2
        dy = ((y[j0:j1][None, :] - cy[:, None]).astype(np.float32) / safe_ay[:, None]) ** 2
        d = dy[:, :, None] + dx[:, None, :]
        inside = d <= 1.0
        if shape.hole > 0:
            inside &= d > shape.hole ** 2
        inside &= valid[:, None, None]
        sub = array[c0:c1, j0:j1, i0:i1]
        sub[inside] = value
        painted += int(np.count_nonzero(inside))
    return painted
