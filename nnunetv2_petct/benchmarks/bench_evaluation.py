"""Benchmark: seconds per whole-body case for the autoPET metrics and the lesion quantification.

The synthetic case is built here (no phantom module): a (z, y, x) = 330 x 400 x 400 grid at
3 x 2 x 2 mm, an elliptic-cylinder body of SUV ~1 with noise, dozens of irregular lesions (unions of
random ellipsoids) of SUV 3-15, and a prediction that misses some lesions, shifts and grows/shrinks the
others and adds false-positive blobs.

``run()`` prints nothing; it returns the figures as a dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

SHAPE_ZYX = (330, 400, 400)
SPACING_MM = (3.0, 2.0, 2.0)


def _blob(rng: np.random.Generator, radius_vox: float) -> np.ndarray:
    """An irregular blob: union of 1-4 random ellipsoids around the centre of a small cube."""
    half = int(np.ceil(radius_vox * 1.8)) + 1
    g = np.mgrid[-half:half + 1, -half:half + 1, -half:half + 1].astype(np.float32)
    out = np.zeros(g.shape[1:], dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        c = rng.normal(0, radius_vox * 0.35, 3)
        ax = radius_vox * rng.uniform(0.5, 1.0, 3)
        out |= (((g[0] - c[0]) / ax[0]) ** 2 + ((g[1] - c[1]) / ax[1]) ** 2 + ((g[2] - c[2]) / ax[2]) ** 2) <= 1
    return out


def _paste(volume: np.ndarray, blob: np.ndarray, centre: np.ndarray, value=True) -> None:
    h = np.array(blob.shape) // 2
    lo = centre - h
    src = []
    dst = []
    for a in range(3):
        s0 = max(0, -lo[a])
        s1 = min(blob.shape[a], volume.shape[a] - lo[a])
        if s1 <= s0:
            return
        src.append(slice(s0, s1))
        dst.append(slice(lo[a] + s0, lo[a] + s1))
    region = volume[tuple(dst)]
    region[blob[tuple(src)]] = value


def make_case(seed: int = 0, n_lesions: int = 40, n_false_positives: int = 12) -> dict:
    """Synthetic whole-body case: ``{"gt", "pred", "suv", "spacing_mm"}`` (arrays (z, y, x))."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE_ZYX
    suv = rng.normal(0.0, 0.15, SHAPE_ZYX).astype(np.float32)
    yy, xx = np.ogrid[:ny, :nx]
    body2d = ((yy - ny / 2) / (ny * 0.3)) ** 2 + ((xx - nx / 2) / (nx * 0.45)) ** 2 <= 1
    suv[:, body2d] += 1.0
    np.maximum(suv, 0, out=suv)
    body_idx = np.argwhere(body2d)
    gt = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    pred = np.zeros(SHAPE_ZYX, dtype=np.uint8)

    def random_centre() -> np.ndarray:
        y, x = body_idx[rng.integers(len(body_idx))]
        return np.array([rng.integers(15, nz - 15), y, x])

    for _ in range(n_lesions):
        centre = random_centre()
        blob = _blob(rng, float(rng.uniform(2.0, 12.0)))
        _paste(gt, blob, centre, 1)
        _paste(suv, blob, centre, np.float32(rng.uniform(3.0, 15.0)))
        if rng.random() < 0.8:  # detected: shifted by up to 1 voxel, sometimes with an extra part
            shifted = centre + rng.integers(-1, 2, 3)
            _paste(pred, blob, shifted, 1)
            if rng.random() < 0.3:
                _paste(pred, _blob(rng, float(rng.uniform(1.5, 4.0))), shifted, 1)
    for _ in range(n_false_positives):
        _paste(pred, _blob(rng, float(rng.uniform(1.5, 6.0))), random_centre(), 1)
    return {"gt": gt, "pred": pred, "suv": suv, "spacing_mm": SPACING_MM}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(seed: int = 0, repeats: int = 3) -> dict:
    """Time the evaluation of one synthetic whole-body case (median of ``repeats`` runs).

    Returns ``shape_zyx``, ``spacing_mm``, ``n_gt_lesions``, ``n_pred_lesions``,
    ``seconds_autopet_case_metrics`` (Dice/FPV/FNV), ``seconds_lesion_quantification``
    (SUVmax/mean/peak, MTV, TLG of ground truth and prediction, labelling included) and
    ``seconds_evaluate_case`` (metrics + detection + quantification from one labelling).
    """
    from nnunetv2_petct.evaluation import autopet_case_metrics, case_quantification, evaluate_case

    case = make_case(seed)
    gt, pred, suv, sp = case["gt"], case["pred"], case["suv"], case["spacing_mm"]
    result = evaluate_case(gt, pred, sp, suv=suv)
    return {
        "shape_zyx": SHAPE_ZYX,
        "spacing_mm": SPACING_MM,
        "n_gt_lesions": result["detection"]["n_gt_lesions"],
        "n_pred_lesions": result["detection"]["n_pred_lesions"],
        "dice": result["metrics"]["dice"],
        "seconds_autopet_case_metrics": _median_seconds(lambda: autopet_case_metrics(gt, pred, sp), repeats),
        "seconds_lesion_quantification": _median_seconds(lambda: case_quantification(gt, pred, suv, sp), repeats),
        "seconds_evaluate_case": _median_seconds(lambda: evaluate_case(gt, pred, sp, suv=suv), repeats),
    }
