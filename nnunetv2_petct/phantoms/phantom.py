"""Synthetic whole-body FDG PET/CT phantoms (deterministic by seed).

Geometry and conventions
------------------------
* Physical space is LPS (SimpleITK / DICOM): +x = patient left, +y = posterior, +z = superior.
  All images have identity direction, so array index z grows from the thighs to the head.
* The CT and PET are rendered separately from one analytic anatomy (ellipsoids, elliptic
  cylinders and a z-varying body outline), each on its own grid: the CT grid is finer in-plane
  and has a smaller field of view; its z range starts 1.5 slices below the PET's and ends half a
  slice above it, so origins and extents differ while the two overlap over the whole PET range.
* Arrays are numpy (z, y, x); ``spacing_mm`` tuples are (z, y, x); SimpleITK origins and
  lesion ``center_mm`` values are physical (x, y, z).

Rendering
---------
All random parameters are drawn first from ``np.random.default_rng(seed)`` (anatomy jitter,
tissue values, lesions, and two integer seeds for the CT and PET noise fields); rendering is
then a deterministic function of those parameters. The PET is painted as a piecewise-constant
SUV map, Poisson-like noise (variance proportional to the local SUV) is added and the sum is
blurred with a Gaussian of 6 mm FWHM; negative values are clipped to 0. Lesion uptake is
boosted by the discrete recovery coefficient of its sphere under that blur, so the noise-free
peak of a lesion after blurring is its sampled target SUV. ``suv_max`` in ``PhantomCase.lesions``
is the measured maximum of the final PET inside that lesion's own label voxels.

Lesion labels are the lesion spheres evaluated at PET voxel centres (plus the voxel nearest to
each centre, so no lesion is ever without a label voxel), 0/1 uint8 on the PET grid.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_petct.phantoms._grid import (
    Grid,
    Shape,
    cylinder,
    ellipsoid,
    paint,
    profile_shape,
    sphere,
)

logger = logging.getLogger(__name__)

#: Values of the organ map (``PhantomCase.organs``, uint8 on the PET grid).
ORGAN_LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,  # fat, muscle, other soft tissue
    "lung": 2,
    "heart": 3,
    "liver": 4,
    "spleen": 5,
    "kidney": 6,
    "bladder": 7,
    "brain": 8,
    "bone": 9,
}

LESION_REGIONS: tuple[str, ...] = ("lung", "liver", "lymph_node")

PET_FWHM_MM = 6.0
# PET noise standard deviation after blurring = _PET_NOISE * sqrt(SUV): 10 % at SUV 2.5.
_PET_NOISE = 0.158
_CT_NOISE_HU = 10.0


@dataclass(frozen=True)
class SizeConfig:
    """Grid sizes of one phantom size. Shapes and spacings are numpy (z, y, x)."""

    pet_shape: tuple[int, int, int]
    pet_spacing_mm: tuple[float, float, float]
    ct_shape: tuple[int, int, int]
    ct_spacing_mm: tuple[float, float, float]
    body_half_width_mm: float  # nominal left-right semi-axis of the trunk
    body_half_depth_mm: float  # nominal anterior-posterior semi-axis of the trunk
    lesion_radius_mm: tuple[float, float]
    first_lesion_min_radius_mm: float
    max_lesions: int


# "tiny" is anatomically compressed along z (a whole body in 32 slices) so tests stay fast.
SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig((32, 40, 40), (8.0, 6.0, 6.0), (34, 80, 80), (8.0, 3.0, 3.0),
                       90.0, 58.0, (8.0, 16.0), 10.0, 3),
    "small": SizeConfig((64, 64, 64), (6.0, 6.0, 6.0), (66, 136, 136), (6.0, 2.6, 2.6),
                        135.0, 88.0, (5.0, 20.0), 9.0, 4),
    "full": SizeConfig((326, 400, 400), (3.0, 2.0364, 2.0364), (328, 512, 512), (3.0, 0.9765625, 0.9765625),
                       170.0, 110.0, (4.0, 20.0), 6.0, 6),
}


@dataclass
class PhantomCase:
    """One synthetic PET/CT study.

    Attributes:
        case_id: unique case identifier (used for nnU-Net file names).
        patient_id: patient identifier (several cases may share one).
        ct: CT in HU, int16, on the CT grid.
        pet: SUVbw, float32, on the PET grid (non-negative).
        label: uint8 lesion mask (0/1) on the PET grid.
        lesions: one dict per lesion: ``region`` ("lung", "liver", "lymph_node"), ``center_mm``
            (physical (x, y, z)), ``radius_mm``, ``suv_max`` (measured max of the PET in this
            lesion's label voxels), ``suv_target`` (sampled noise-free peak), ``uptake_suv``
            (painted activity before blur), ``n_voxels`` (label voxels of this sphere on the PET
            grid; spheres may overlap), ``center_index_zyx`` (nearest PET voxel).
        study_date: DICOM-style date YYYYMMDD.
        organs: uint8 organ map on the PET grid (values in :data:`ORGAN_LABELS`), lesions not
            included; for tests and sanity checks.
        seed: the seed the case was made from.
    """

    case_id: str
    patient_id: str
    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image
    lesions: list[dict]
    study_date: str = "20200101"
    organs: sitk.Image | None = None
    seed: int | None = None
    params: dict = field(default_factory=dict, repr=False)

    @property
    def lesion_free(self) -> bool:
        return len(self.lesions) == 0

    def ct_on_pet_grid(self, default_hu: float = -1024.0) -> sitk.Image:
        """CT resampled onto the PET grid (linear, int16, ``default_hu`` outside the CT)."""
        from nnunetv2_petct.conversion.geometry import resample_to_reference

        return resample_to_reference(self.ct, self.pet, "linear", default_hu)


# --------------------------------------------------------------------------------------------
# parameter sampling
# --------------------------------------------------------------------------------------------

# Organ layout in normalised body coordinates: u = x / half-width, v = y / half-depth (+v is
# posterior), t = height fraction from the bottom of the trunk/thigh model (0) to the vertex (1).
# name: (centre (u, v, t), semi-axes (u, v, t))
_ORGANS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "lung_r": ((-0.42, 0.02, 0.645), (0.32, 0.50, 0.100)),
    "lung_l": ((0.42, 0.02, 0.645), (0.31, 0.50, 0.095)),
    "heart": ((0.12, -0.28, 0.600), (0.30, 0.38, 0.055)),
    "liver": ((-0.34, -0.02, 0.535), (0.40, 0.60, 0.065)),
    "spleen": ((0.50, 0.30, 0.520), (0.16, 0.26, 0.045)),
    "kidney_r": ((-0.33, 0.45, 0.440), (0.14, 0.22, 0.050)),
    "kidney_l": ((0.33, 0.45, 0.450), (0.14, 0.22, 0.050)),
    "bladder": ((0.0, -0.25, 0.200), (0.24, 0.30, 0.040)),
    "head": ((0.0, -0.05, 0.915), (0.44, 0.85, 0.085)),
    "ilium_r": ((-0.45, 0.30, 0.220), (0.22, 0.10, 0.050)),
    "ilium_l": ((0.45, 0.30, 0.220), (0.22, 0.10, 0.050)),
}

# Trunk outline knots: t, semi-axis u, semi-axis v (neck included; head is a separate ellipsoid).
_TRUNK_KNOTS = np.array([
    [0.13, 0.93, 0.90],
    [0.25, 0.93, 0.92],
    [0.45, 0.95, 1.00],
    [0.55, 1.00, 0.97],
    [0.76, 1.00, 0.90],
    [0.80, 0.36, 0.50],
    [0.86, 0.36, 0.50],
])

# Lymph-node stations (u, v, t); left/right pairs are listed separately.
_LN_STATIONS: tuple[tuple[float, float, float], ...] = (
    (-0.15, -0.05, 0.820), (0.15, -0.05, 0.820),   # cervical
    (-0.30, 0.00, 0.770), (0.30, 0.00, 0.770),     # supraclavicular
    (-0.68, 0.05, 0.720), (0.68, 0.05, 0.720),     # axillary
    (0.00, -0.10, 0.680),                          # mediastinal (subcarinal / paratracheal)
    (-0.18, 0.05, 0.640), (0.22, 0.05, 0.640),     # hilar
    (-0.12, 0.30, 0.420), (0.12, 0.30, 0.420),     # para-aortic
    (0.05, -0.10, 0.380),                          # mesenteric
    (-0.35, 0.15, 0.240), (0.35, 0.15, 0.240),     # iliac
)

_LESION_REGION_P = (0.35, 0.30, 0.35)  # lung, liver, lymph_node


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sample_params(rng: np.random.Generator, cfg: SizeConfig, lesion_free: bool | None) -> dict:
    """Draw every random quantity of a case (always the same draws in the same order, so that
    ``lesion_free=True/False`` give the same anatomy and noise for one seed)."""
    coin_lesion_free = bool(rng.random() < 0.5)
    scale = cfg.body_half_width_mm / 170.0  # mm jitters scale with the body
    pet_fov_z = cfg.pet_shape[0] * cfg.pet_spacing_mm[0]
    p: dict = {}
    p["lesion_free"] = coin_lesion_free if lesion_free is None else bool(lesion_free)
    p["wx"] = cfg.body_half_width_mm * rng.uniform(0.9, 1.1)
    p["wy"] = cfg.body_half_depth_mm * rng.uniform(0.9, 1.1)
    p["height"] = 1.08 * pet_fov_z * rng.uniform(0.95, 1.05)
    p["body_cx"] = rng.uniform(-15, 15) * scale
    p["body_cy"] = rng.uniform(-15, 15) * scale
    p["ct_center_dx"] = rng.uniform(-8, 8) * scale
    p["ct_center_dy"] = rng.uniform(-8, 8) * scale
    p["vertex_margin"] = pet_fov_z * rng.uniform(0.01, 0.04)
    p["pet_z0"] = -pet_fov_z * rng.uniform(0.70, 0.95)
    p["fat_frac"] = rng.uniform(0.05, 0.12)
    p["organs"] = {
        name: {
            "shift": rng.uniform(-0.03, 0.03, size=3),
            "size": rng.uniform(0.9, 1.1),
        }
        for name in _ORGANS
    }
    p["bladder_fill"] = rng.uniform(0.6, 1.2)
    p["hu"] = {
        "fat": rng.uniform(-115, -85),
        "soft": rng.uniform(30, 50),
        "muscle": rng.uniform(40, 60),
        "lung": rng.uniform(-880, -820),
        "heart": rng.uniform(30, 50),
        "liver": rng.uniform(50, 70),
        "spleen": rng.uniform(40, 55),
        "kidney": rng.uniform(25, 40),
        "bladder": rng.uniform(0, 15),
        "bone": rng.uniform(600, 800),
        "spine": rng.uniform(550, 750),
        "skull": rng.uniform(800, 1000),
        "brain": rng.uniform(30, 40),
        "disc": rng.uniform(70, 100),
    }
    bg = rng.uniform(0.6, 1.0)
    p["suv"] = {
        "soft": bg,
        "fat": bg * rng.uniform(0.3, 0.5),
        "lung": rng.uniform(0.25, 0.40),
        "heart": rng.uniform(3.0, 5.0),
        "blood": rng.uniform(1.3, 2.0),
        "liver": rng.uniform(2.2, 2.8),
        "spleen": rng.uniform(1.7, 2.2),
        "kidney": rng.uniform(5.0, 10.0),
        "bladder": rng.uniform(6.0, 15.0),
        "bone": rng.uniform(0.5, 0.8),
        "marrow": rng.uniform(1.1, 1.8),
        "brain": rng.uniform(7.0, 9.0),
    }
    # Lesions: always drawn (dropped afterwards when lesion-free).
    n_lesions = int(rng.integers(1, cfg.max_lesions + 1))
    lesions = []
    for i in range(n_lesions):
        region = LESION_REGIONS[int(rng.choice(3, p=_LESION_REGION_P))]
        side = int(rng.integers(0, 2))
        station = int(rng.integers(0, len(_LN_STATIONS)))
        direction = rng.normal(size=3)
        rad_frac = rng.uniform(0.0, 1.0) ** (1.0 / 3.0)  # uniform in the unit ball
        jitter = rng.normal(0.0, 0.03, size=3)
        lo, hi = cfg.lesion_radius_mm
        if i == 0:
            radius = rng.uniform(max(lo, cfg.first_lesion_min_radius_mm), hi)
        else:
            radius = _loguniform(rng, lo, hi)
        lesions.append({
            "region": region,
            "side": side,
            "station": station,
            "direction": direction / max(np.linalg.norm(direction), 1e-9),
            "rad_frac": rad_frac,
            "jitter": jitter,
            "radius_mm": float(radius),
            "suv_target": _loguniform(rng, 3.0, 20.0),
            "hu": rng.uniform(25, 40),
        })
    p["lesions"] = lesions
    p["ct_noise_seed"] = int(rng.integers(0, 2**62))
    p["pet_noise_seed"] = int(rng.integers(0, 2**62))
    return p


# --------------------------------------------------------------------------------------------
# geometry from parameters
# --------------------------------------------------------------------------------------------


def _grids(cfg: SizeConfig, p: dict) -> tuple[Grid, Grid]:
    pz, py, px = cfg.pet_shape
    sz, sy, sx = cfg.pet_spacing_mm
    pet = Grid(cfg.pet_shape, cfg.pet_spacing_mm,
               (-(px - 1) * sx / 2.0, -(py - 1) * sy / 2.0, p["pet_z0"]))
    cz, cy, cx = cfg.ct_shape
    csz, csy, csx = cfg.ct_spacing_mm
    ct_center_x = p["body_cx"] + p["ct_center_dx"]
    ct_center_y = p["body_cy"] + p["ct_center_dy"]
    ct = Grid(cfg.ct_shape, cfg.ct_spacing_mm,
              (ct_center_x - (cx - 1) * csx / 2.0, ct_center_y - (cy - 1) * csy / 2.0,
               p["pet_z0"] - 1.5 * csz))
    return ct, pet


class _Body:
    """Maps normalised body coordinates (u, v, t) to physical mm for one case."""

    def __init__(self, p: dict, pet: Grid):
        self.wx, self.wy, self.h = p["wx"], p["wy"], p["height"]
        self.cx, self.cy = p["body_cx"], p["body_cy"]
        vertex_z = pet.extent_mm(0)[1] - p["vertex_margin"]
        self.z0 = vertex_z - self.h
        self.fat_mm = p["fat_frac"] * self.wx

    def xyz(self, u: float, v: float, t: float) -> tuple[float, float, float]:
        return self.cx + u * self.wx, self.cy + v * self.wy, self.z0 + t * self.h

    def semi(self, su: float, sv: float, st: float) -> tuple[float, float, float]:
        return su * self.wx, sv * self.wy, st * self.h

    def organ(self, p: dict, name: str, scale: float = 1.0) -> tuple[tuple, tuple]:
        (u, v, t), (su, sv, st) = _ORGANS[name]
        jit = p["organs"][name]
        size = jit["size"] * scale * (p["bladder_fill"] if name == "bladder" else 1.0)
        centre = self.xyz(u + jit["shift"][0], v + jit["shift"][1], t + jit["shift"][2] * 0.3)
        semi = self.semi(su * size, sv * size, st * size)
        return centre, semi

    def trunk(self, shrink_mm: float = 0.0, scale: float = 1.0, hole: float = 0.0) -> Shape:
        k = _TRUNK_KNOTS
        return profile_shape(self.z0 + k[:, 0] * self.h, k[:, 1] * self.wx * scale, k[:, 2] * self.wy * scale,
                             self.cx, self.cy, shrink_mm, hole)

    def thigh(self, side: int, shrink_mm: float = 0.0) -> Shape:
        u = -0.45 if side == 0 else 0.45
        a, b = 0.40 * self.wx - shrink_mm, 0.62 * self.wy - shrink_mm
        x, y, _ = self.xyz(u, 0.0, 0.0)
        return cylinder(x, y, a, b, self.z0 - 0.1 * self.h, self.z0 + 0.16 * self.h)


def _rib_shapes(body: _Body) -> list[Shape]:
    trunk_inner = body.trunk(shrink_mm=body.fat_mm, scale=1.0)
    period = 0.0185 * body.h
    thick = 0.4 * period
    shapes = []
    for i in range(12):
        z_lo = body.z0 + 0.53 * body.h + i * period
        z_hi = z_lo + thick

        def prof(z, _f=trunk_inner.profile):
            cx, cy, ax, ay = _f(z)
            return cx, cy, 0.97 * ax, 0.97 * ay

        shapes.append(Shape(z_lo, z_hi, prof, hole=0.88))
    return shapes


def _scene(p: dict, body: _Body) -> list[tuple[Shape, float | None, float | None, int | None]]:
    """Painter's list: (shape, CT HU or None, PET SUV or None, organ label or None), in order."""
    hu, suv = p["hu"], p["suv"]
    lab = ORGAN_LABELS
    s: list[tuple[Shape, float | None, float | None, int | None]] = []
    fat = body.fat_mm
    s.append((body.trunk(), hu["fat"], suv["fat"], lab["body"]))
    for side in (0, 1):
        s.append((body.thigh(side), hu["fat"], suv["fat"], lab["body"]))
    c, a = body.organ(p, "head")
    s.append((ellipsoid(c, a), hu["soft"], suv["soft"], lab["body"]))
    s.append((body.trunk(shrink_mm=fat), hu["soft"], suv["soft"], lab["body"]))
    for side in (0, 1):
        s.append((body.thigh(side, shrink_mm=fat), hu["muscle"], suv["soft"], lab["body"]))
    for rib in _rib_shapes(body):
        s.append((rib, hu["bone"], suv["bone"], lab["bone"]))
    for name in ("lung_r", "lung_l"):
        c, a = body.organ(p, name)
        s.append((ellipsoid(c, a), hu["lung"], suv["lung"], lab["lung"]))
    c, a = body.organ(p, "heart")
    s.append((ellipsoid(c, a), hu["heart"], suv["heart"], lab["heart"]))
    c, a = body.organ(p, "heart", scale=0.6)
    s.append((ellipsoid(c, a), None, suv["blood"], None))
    for name, tissue in (("liver", "liver"), ("spleen", "spleen"), ("kidney_r", "kidney"),
                         ("kidney_l", "kidney"), ("bladder", "bladder")):
        c, a = body.organ(p, name)
        s.append((ellipsoid(c, a), hu[tissue], suv[tissue], lab[tissue]))
    # spine: lumbar + thoracic column with discs, cervical column, spinous processes
    x, y, z_lo = body.xyz(0.0, 0.5, 0.16)
    z_hi = body.z0 + 0.79 * body.h
    s.append((cylinder(x, y, 0.12 * body.wx, 0.17 * body.wy, z_lo, z_hi), hu["spine"], suv["marrow"], lab["bone"]))
    xs, ys, _ = body.xyz(0.0, 0.70, 0.0)
    s.append((cylinder(xs, ys, 0.04 * body.wx, 0.06 * body.wy, z_lo, z_hi), hu["bone"], suv["bone"], lab["bone"]))
    period = 0.028 * body.h
    zd = z_lo + 0.8 * period
    while zd + 0.2 * period < z_hi:
        s.append((cylinder(x, y, 0.12 * body.wx, 0.17 * body.wy, zd, zd + 0.2 * period),
                  hu["disc"], suv["soft"], lab["body"]))
        zd += period
    xc, yc, _ = body.xyz(0.0, 0.20, 0.0)
    s.append((cylinder(xc, yc, 0.09 * body.wx, 0.12 * body.wy, z_hi, body.z0 + 0.85 * body.h),
              hu["spine"], suv["marrow"], lab["bone"]))
    for name in ("ilium_r", "ilium_l"):
        c, a = body.organ(p, name)
        s.append((ellipsoid(c, a), hu["bone"], suv["marrow"], lab["bone"]))
    for side in (0, 1):
        x, y, _ = body.xyz(-0.45 if side == 0 else 0.45, 0.0, 0.0)
        s.append((cylinder(x, y, 0.10 * body.wx, 0.10 * body.wx, body.z0 - 0.1 * body.h, body.z0 + 0.17 * body.h),
                  hu["bone"], suv["marrow"], lab["bone"]))
    c, a = body.organ(p, "head", scale=0.95)
    s.append((ellipsoid(c, a), hu["skull"], suv["bone"], lab["bone"]))
    c, a = body.organ(p, "head", scale=0.86)
    s.append((ellipsoid(c, a), hu["brain"], suv["brain"], lab["brain"]))
    return s


def _lesion_geometry(p: dict, body: _Body) -> list[dict]:
    """Physical centre and radius of each lesion (radius capped to 0.9x the host organ's smallest
    semi-axis so a lesion never dwarfs its organ on compressed tiny phantoms)."""
    out = []
    for les in p["lesions"]:
        region = les["region"]
        if region in ("lung", "liver"):
            name = "liver" if region == "liver" else ("lung_r" if les["side"] == 0 else "lung_l")
            (cx, cy, cz), semi = body.organ(p, name)
            off = les["direction"] * les["rad_frac"] * 0.6
            centre = (cx + off[0] * semi[0], cy + off[1] * semi[1], cz + off[2] * semi[2])
            cap = 0.9 * min(semi)
        else:
            u, v, t = _LN_STATIONS[les["station"]]
            j = les["jitter"]
            centre = body.xyz(u + j[0], v + j[1], t + j[2] * 0.3)
            cap = 0.15 * body.wx
        radius = float(min(les["radius_mm"], cap))
        out.append({"region": region, "center_mm": tuple(float(v) for v in centre), "radius_mm": radius,
                    "suv_target": float(les["suv_target"]), "hu": float(les["hu"])})
    return out


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _pet_sigma_vox(pet: Grid) -> tuple[float, float, float]:
    sigma_mm = PET_FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return tuple(sigma_mm / s for s in pet.spacing_mm)


def _noise_gain(sigma_vox: tuple[float, ...]) -> float:
    """Standard deviation of white unit noise after the Gaussian blur (exact for the discrete
    kernel scipy uses)."""
    gain = 1.0
    for s in sigma_vox:
        delta = np.zeros(65)
        delta[32] = 1.0
        w = ndimage.gaussian_filter1d(delta, s, mode="constant")
        gain *= float(np.sqrt(np.sum(w ** 2)))
    return gain


def _paint_lesion(arr: np.ndarray, grid: Grid, centre: tuple, radius: float, value: float) -> int:
    n = paint(arr, grid, sphere(centre, radius), value)
    idx = grid.nearest_index_zyx(centre)
    if idx is not None and arr[idx] != value:
        arr[idx] = value
        n += 1
    return n


def _recovery(pet: Grid, centre: tuple, radius: float, sigma_vox: tuple) -> float:
    """Peak of the blurred lesion indicator (its discrete recovery coefficient)."""
    sigma_mm = max(s * sp for s, sp in zip(sigma_vox, pet.spacing_mm))
    sub, _ = pet.sub_grid_around(centre, radius + 4 * sigma_mm + max(pet.spacing_mm))
    if min(sub.shape_zyx) == 0:
        return 1.0
    ind = np.zeros(sub.shape_zyx, np.float32)
    _paint_lesion(ind, sub, centre, radius, 1.0)
    if not ind.any():
        return 1.0
    blurred = ndimage.gaussian_filter(ind, sigma_vox, mode="constant")
    return float(max(blurred[ind > 0].max(), 0.05))


def _render(p: dict, cfg: SizeConfig) -> dict:
    ct_grid, pet_grid = _grids(cfg, p)
    body = _Body(p, pet_grid)
    scene = _scene(p, body)
    lesions = [] if p["lesion_free"] else _lesion_geometry(p, body)

    ct = np.full(ct_grid.shape_zyx, -1000, dtype=np.int16)
    pet = np.zeros(pet_grid.shape_zyx, dtype=np.float32)
    organs = np.zeros(pet_grid.shape_zyx, dtype=np.uint8)
    for shape, hu, suv, org in scene:
        if hu is not None:
            paint(ct, ct_grid, shape, int(round(hu)))
        if suv is not None:
            paint(pet, pet_grid, shape, suv)
        if org is not None:
            paint(organs, pet_grid, shape, org)

    sigma_vox = _pet_sigma_vox(pet_grid)
    label = np.zeros(pet_grid.shape_zyx, dtype=np.uint8)
    own_masks = []
    for les in lesions:
        c, r = les["center_mm"], les["radius_mm"]
        idx = pet_grid.nearest_index_zyx(c)
        bg = float(pet[idx]) if idx is not None else p["suv"]["soft"]
        rc = _recovery(pet_grid, c, r, sigma_vox)
        uptake = min(bg + (les["suv_target"] - bg) / rc, 100.0)
        les["uptake_suv"] = float(uptake)
        les["center_index_zyx"] = idx
        _paint_lesion(pet, pet_grid, c, r, uptake)
        paint(ct, ct_grid, sphere(c, r), int(round(les["hu"])))
        sub, sl = pet_grid.sub_grid_around(c, r + max(pet_grid.spacing_mm))
        own = np.zeros(sub.shape_zyx, np.uint8)
        les["n_voxels"] = _paint_lesion(own, sub, c, r, 1)
        label[sl] |= own
        own_masks.append((sl, own.astype(bool)))

    # CT noise, slab by slab (bounded temporaries)
    rng_ct = np.random.default_rng(p["ct_noise_seed"])
    step = max(1, 2_000_000 // (ct.shape[1] * ct.shape[2]))
    for k in range(0, ct.shape[0], step):
        slab = ct[k:k + step]
        noise = rng_ct.standard_normal(slab.shape, dtype=np.float32) * np.float32(_CT_NOISE_HU)
        slab[...] = np.clip(slab + np.rint(noise), -1024, 3071).astype(np.int16)

    # PET: Poisson-like noise added before the blur, scaled so that its post-blur SD is
    # _PET_NOISE * sqrt(SUV); then blur and clip.
    rng_pet = np.random.default_rng(p["pet_noise_seed"])
    gain = _noise_gain(sigma_vox)
    noise = rng_pet.standard_normal(pet.shape, dtype=np.float32)
    noise *= np.sqrt(pet) * np.float32(_PET_NOISE / gain)
    noise += pet
    del pet
    pet = ndimage.gaussian_filter(noise, sigma_vox, mode="nearest", truncate=3.0)
    del noise
    np.maximum(pet, 0.0, out=pet)

    out_lesions = []
    for les, (sl, own) in zip(lesions, own_masks):
        vals = pet[sl][own]
        out_lesions.append({
            "region": les["region"],
            "center_mm": les["center_mm"],
            "radius_mm": les["radius_mm"],
            "suv_max": float(vals.max()) if vals.size else float("nan"),
            "suv_target": les["suv_target"],
            "uptake_suv": les["uptake_suv"],
            "n_voxels": int(les["n_voxels"]),
            "center_index_zyx": les["center_index_zyx"],
        })
    return {
        "ct": ct_grid.to_image(ct),
        "pet": pet_grid.to_image(pet.astype(np.float32, copy=False)),
        "label": pet_grid.to_image(label),
        "organs": pet_grid.to_image(organs),
        "lesions": out_lesions,
    }


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def make_phantom(
    seed: int,
    size: str = "tiny",
    lesion_free: bool | None = None,
    case_id: str | None = None,
    patient_id: str | None = None,
    study_date: str = "20200101",
    lesion_radius_mm: tuple[float, float] | None = None,
) -> PhantomCase:
    """Make one synthetic whole-body PET/CT case.

    Args:
        seed: any non-negative int; the same seed (and size, lesion_free) gives identical images.
        size: "tiny" (PET 32x40x40 at 8x6x6 mm, CT 34x80x80 at 8x3x3 mm, anatomy compressed in z;
            for tests), "small" (PET 64^3 at 6 mm, CT 66x136x136 at 6x2.6x2.6 mm; demos) or "full"
            (PET 326x400x400 at 3x2.04x2.04 mm, CT 328x512x512 at 3x0.98x0.98 mm; benchmarks).
            Shapes are (z, y, x).
        lesion_free: True: no lesions (empty label); False: 1..max lesions; None: a fair coin
            drawn from the seed. The anatomy and noise do not depend on this choice, so
            ``make_phantom(s, lesion_free=True)`` is the lesion-free twin of ``make_phantom(s,
            lesion_free=False)``.
        case_id, patient_id: identifiers (default ``phantom_<seed>`` and ``P<seed>``).
        study_date: stored as is.
        lesion_radius_mm: (min, max) lesion radius instead of the size's ``lesion_radius_mm``; the first
            lesion's minimum becomes ``max(min, first_lesion_min_radius_mm)``. The random draws are the same
            (only their range changes), so anatomy, noise and lesion positions do not depend on it;
            None (default) keeps the size's range.

    Returns:
        A :class:`PhantomCase`. At least one lesion of a lesion-bearing case has a radius of at
        least the size's ``first_lesion_min_radius_mm`` (10 mm at tiny size: >= 10 label voxels).

    Raises:
        ValueError: unknown size or negative seed.
    """
    if size not in SIZES:
        raise ValueError(f"unknown phantom size {size!r}; use one of {sorted(SIZES)}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    t0 = time.perf_counter()
    cfg = SIZES[size]
    if lesion_radius_mm is not None:
        lo, hi = (float(r) for r in lesion_radius_mm)
        if not 0 < lo <= hi:
            raise ValueError(f"lesion_radius_mm must be (min, max) with 0 < min <= max, got {lesion_radius_mm}")
        first_min = min(hi, max(lo, cfg.first_lesion_min_radius_mm))
        cfg = replace(cfg, lesion_radius_mm=(lo, hi), first_lesion_min_radius_mm=first_min)
    rng = np.random.default_rng(int(seed))
    params = _sample_params(rng, cfg, lesion_free)
    r = _render(params, cfg)
    logger.debug("phantom seed=%s size=%s rendered in %.2f s", seed, size, time.perf_counter() - t0)
    return PhantomCase(
        case_id=case_id if case_id is not None else f"phantom_{int(seed)}",
        patient_id=patient_id if patient_id is not None else f"P{int(seed)}",
        ct=r["ct"],
        pet=r["pet"],
        label=r["label"],
        lesions=r["lesions"],
        study_date=study_date,
        organs=r["organs"],
        seed=int(seed),
        params={"size": size, "lesion_free": params["lesion_free"]},
    )


def make_cohort(
    n: int,
    seed: int = 0,
    size: str = "tiny",
    lesion_free_fraction: float = 0.5,
    prefix: str = "phantom",
    n_patients: int | None = None,
    lesion_radius_mm: tuple[float, float] | None = None,
) -> list[PhantomCase]:
    """Make ``n`` cases with exactly ``round(n * lesion_free_fraction)`` lesion-free ones.

    Case i gets ``case_id = f"{prefix}_{i:04d}"`` and its own seed derived from ``seed`` with
    ``np.random.SeedSequence(seed).spawn(n)``; which cases are lesion-free is a random
    permutation drawn from ``seed``.

    Args:
        n: number of cases (0 gives an empty list).
        seed: cohort seed.
        size: phantom size (see :func:`make_phantom`).
        lesion_free_fraction: in [0, 1].
        prefix: case-id prefix.
        n_patients: if given (1 <= n_patients <= n), cases are spread round-robin over that many
            patients (``patient_id = f"{prefix}_P{j:04d}"``), the k-th study of a patient dated
            k * 90 days after 2020-01-01; by default every case is its own patient.
        lesion_radius_mm: passed to :func:`make_phantom` (None: the size's lesion radius range).

    Raises:
        ValueError: bad n, fraction or n_patients.
    """
    import datetime as _dt

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= lesion_free_fraction <= 1.0:
        raise ValueError(f"lesion_free_fraction must be in [0, 1], got {lesion_free_fraction}")
    if n_patients is not None and not 1 <= n_patients <= max(n, 1):
        raise ValueError(f"n_patients must be in [1, n], got {n_patients}")
    if n == 0:
        return []
    ss = np.random.SeedSequence(int(seed))
    case_seeds = [int(child.generate_state(1, dtype=np.uint32)[0]) for child in ss.spawn(n)]
    n_free = int(round(n * lesion_free_fraction))
    order = np.random.default_rng(int(seed)).permutation(n)
    free = np.zeros(n, dtype=bool)
    free[order[:n_free]] = True
    cases = []
    base = _dt.date(2020, 1, 1)
    for i in range(n):
        if n_patients is None:
            pid, visit = f"{prefix}_P{i:04d}", 0
        else:
            pid, visit = f"{prefix}_P{i % n_patients:04d}", i // n_patients
        date = (base + _dt.timedelta(days=90 * visit)).strftime("%Y%m%d")
        cases.append(make_phantom(case_seeds[i], size=size, lesion_free=bool(free[i]),
                                  case_id=f"{prefix}_{i:04d}", patient_id=pid, study_date=date,
                                  lesion_radius_mm=lesion_radius_mm))
    return cases
