"""Click simulation: random clicks for training, and the autoPET IV-style clicks for evaluation.

Training (:func:`sample_training_clicks`, per sample, on the augmented patch's label): with probability
``p_no_clicks`` no click at all (the model must stay a good non-interactive model); otherwise a number of
tumor clicks uniform in 0..``max_clicks_per_kind`` (0 without lesion) and of background clicks uniform in
0..``max_clicks_per_kind``. Tumor clicks are lesion voxels drawn with probability proportional to
``EDT ** interior_power`` (EDT = distance to the lesion border in mm: the interior is preferred, as a reader
clicks the middle of a lesion). Background clicks are non-lesion voxels: a share ``p_uptake_background`` on
high-uptake voxels (PET at or above the 95th percentile of the non-lesion voxels of the patch: brain, heart,
bladder, kidneys - the false-positive-prone organs), a share ``p_near_lesion`` within ``near_lesion_mm`` of
a lesion (its border), the rest anywhere outside lesions.

Evaluation: :func:`next_error_driven_clicks` (the iterative rule: interior point of the largest false-negative
and of the largest false-positive component of the current prediction) and :func:`presimulated_clicks` (a
fixed list made from the ground truth up front, as the challenge's pre-simulated click files).

Arrays are (z, y, x); returned points are (n, 3) int64 (z, y, x) unless stated as (x, y, z).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunetv2_petct.interactive.clicks import Clicks
from nnunetv2_petct.interactive.heatmaps import DEFAULT_SIGMA_MM

CONNECTIVITY = 18
UPTAKE_PERCENTILE = 95.0


@dataclass(frozen=True)
class TrainingClickConfig:
    """How training clicks are drawn (module doc).

    Attributes:
        max_clicks_per_kind: most clicks of each kind per sample (autoPET IV: 10).
        p_no_clicks: probability that a sample gets no click at all.
        p_uptake_background: share of background clicks on high-uptake non-lesion voxels.
        p_near_lesion: share of background clicks within ``near_lesion_mm`` outside a lesion.
        near_lesion_mm: the shell around lesions for those clicks.
        interior_power: tumor clicks drawn with probability proportional to EDT ** power (0 = uniform).
        sigma_mm: Gaussian sigma of the rendered heatmaps.
    """

    max_clicks_per_kind: int = 10
    p_no_clicks: float = 0.2
    p_uptake_background: float = 0.4
    p_near_lesion: float = 0.2
    near_lesion_mm: float = 10.0
    interior_power: float = 1.0
    sigma_mm: float = DEFAULT_SIGMA_MM


def _bbox(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _edt_inside(mask: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """EDT (mm) of ``mask`` computed on its padded bounding box: (edt of the box, box slices)."""
    box = _bbox(mask, 0)
    # one voxel of background all around: outside the array counts as outside the mask
    edt = ndimage.distance_transform_edt(np.pad(mask[box], 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    return edt, box


def _sample(flat_candidates: np.ndarray, n: int, rng: np.random.Generator, weights: np.ndarray | None = None
            ) -> np.ndarray:
    if n <= 0 or flat_candidates.size == 0:
        return np.zeros(0, np.int64)
    p = None
    if weights is not None:
        s = float(weights.sum())
        p = weights / s if s > 0 else None
    replace = n > flat_candidates.size
    return rng.choice(flat_candidates, size=n, replace=replace, p=p)


def sample_training_clicks(label_zyx: np.ndarray, pet_zyx: np.ndarray | None, spacing_mm: Sequence[float],
                           rng: np.random.Generator, config: TrainingClickConfig = TrainingClickConfig()
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Random tumor and background clicks of one training sample (module doc): ``(tumor_zyx, background_zyx)``.

    ``label_zyx``: > 0 lesion, 0 background, < 0 (nnU-Net's ignore label) never clicked. ``pet_zyx`` may be
    None (then no uptake-driven background clicks: they are drawn anywhere outside lesions).
    """
    label = np.asarray(label_zyx)
    empty = np.zeros((0, 3), np.int64)
    if rng.random() < config.p_no_clicks:
        return empty, empty
    lesion = label > 0
    background = label == 0
    has_lesion = bool(lesion.any())
    n_t = int(rng.integers(0, config.max_clicks_per_kind + 1)) if has_lesion else 0
    n_b = int(rng.integers(0, config.max_clicks_per_kind + 1)) if background.any() else 0
    shape = label.shape
    tumor = empty
    if n_t:
        edt, box = _edt_inside(lesion, spacing_mm)
        local = np.flatnonzero(edt > 0)
        w = edt.ravel()[local] ** config.interior_power if config.interior_power else None
        picked = _sample(local, n_t, rng, w)
        zyx = np.stack(np.unravel_index(picked, edt.shape), axis=1)
        tumor = zyx + np.array([s.start for s in box])[None]
    bg = empty
    if n_b:
        probs = np.array([config.p_uptake_background, config.p_near_lesion if has_lesion else 0.0])
        probs = np.append(probs, max(0.0, 1.0 - probs.sum()))
        counts = rng.multinomial(n_b, probs / probs.sum())
        flat_bg = np.flatnonzero(background)
        parts = []
        if counts[0]:
            if pet_zyx is not None:
                pet = np.asarray(pet_zyx, dtype=np.float32).ravel()[flat_bg]
                hot = flat_bg[pet >= np.percentile(pet, UPTAKE_PERCENTILE)] if pet.size else flat_bg[:0]
                if hot.size == 0:
                    hot = flat_bg
            else:
                hot = flat_bg
            parts.append(_sample(hot, int(counts[0]), rng))
        if counts[1]:
            margin = [int(np.ceil(config.near_lesion_mm / s)) for s in spacing_mm]
            box = _bbox(lesion, max(margin))
            dist = ndimage.distance_transform_edt(~lesion[box], sampling=spacing_mm)
            shell = (dist > 0) & (dist <= config.near_lesion_mm) & background[box]
            local = np.flatnonzero(shell)
            if local.size:
                loc = np.stack(np.unravel_index(_sample(local, int(counts[1]), rng), shell.shape), axis=1)
                loc = loc + np.array([s.start for s in box])[None]
                parts.append(np.ravel_multi_index(tuple(loc.T), shape))
            else:
                parts.append(_sample(flat_bg, int(counts[1]), rng))
        if counts[2]:
            parts.append(_sample(flat_bg, int(counts[2]), rng))
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        bg = np.stack(np.unravel_index(flat.astype(np.int64), shape), axis=1) if flat.size else empty
    return tumor.astype(np.int64), bg.astype(np.int64)


def _numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def sample_batch_clicks(labels, pets, spacing_mm: Sequence[float], rng: np.random.Generator,
                        config: TrainingClickConfig = TrainingClickConfig()) -> tuple[list, list]:
    """:func:`sample_training_clicks` for a batch: ``labels`` (B, 1, z, y, x) or (B, z, y, x), ``pets``
    (B, z, y, x) or None; numpy or torch. Returns two length-B lists of (n, 3) int64 arrays (z, y, x)."""
    lab = _numpy(labels)
    if lab.ndim == 5:
        lab = lab[:, 0]
    pet = _numpy(pets)
    tumor, background = [], []
    for b in range(lab.shape[0]):
        t, g = sample_training_clicks(lab[b], None if pet is None else pet[b], spacing_mm, rng, config)
        tumor.append(t)
        background.append(g)
    return tumor, background


def _largest_component_interior(mask: np.ndarray, spacing_mm: Sequence[float]) -> tuple[int, int, int] | None:
    """(x, y, z) of the EDT maximum of the largest 18-connected component of ``mask`` (ties: lowest label,
    then the first voxel in array order); None when ``mask`` is empty."""
    import cc3d

    if not mask.any():
        return None
    lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=CONNECTIVITY)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    comp = lab == int(np.argmax(sizes))
    edt, box = _edt_inside(comp, spacing_mm)
    z, y, x = np.unravel_index(int(np.argmax(edt)), edt.shape)
    return (int(x + box[2].start), int(y + box[1].start), int(z + box[0].start))


def next_error_driven_clicks(gt_zyx: np.ndarray, pred_zyx: np.ndarray, spacing_mm: Sequence[float]
                             ) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
    """The next (tumor, background) click of the iterative protocol, each (x, y, z) or None.

    Tumor: the interior point (maximum of the Euclidean distance transform in mm, computed inside the
    component) of the largest false-negative component (``gt & ~pred``, 18-connectivity, largest by voxel
    count); background: the same for the largest false-positive component (``pred & ~gt``). None when there
    is no such error.
    """
    gt, pred = np.asarray(gt_zyx) > 0, np.asarray(pred_zyx) > 0
    return (_largest_component_interior(gt & ~pred, spacing_mm),
            _largest_component_interior(pred & ~gt, spacing_mm))


def presimulated_clicks(gt_zyx: np.ndarray, pet_zyx: np.ndarray | None, spacing_mm: Sequence[float],
                        rng: np.random.Generator, n_per_kind: int = 10) -> Clicks:
    """A fixed click list made up front from the ground truth (the challenge's pre-simulated variant).

    Tumor clicks cycle over the 18-connected lesions, largest first: the first click of a lesion at its
    interior point (EDT maximum), later ones drawn with probability proportional to the EDT inside it; none
    without lesions. Background clicks: ``n_per_kind`` non-lesion voxels, half (rounded up) on high-uptake
    voxels (PET at or above the 95th percentile of non-lesion voxels; anywhere without PET), the rest uniform.
    Deterministic given ``rng``.
    """
    import cc3d

    gt = np.asarray(gt_zyx) > 0
    tumor: list[tuple[int, int, int]] = []
    if gt.any() and n_per_kind > 0:
        lab = cc3d.connected_components(gt.astype(np.uint8), connectivity=CONNECTIVITY)
        sizes = np.bincount(lab.ravel())
        order = [int(i) for i in np.argsort(-sizes[1:], kind="stable") + 1]
        edts = {}
        for k in range(n_per_kind):
            comp_id = order[k % len(order)]
            if comp_id not in edts:
                edts[comp_id] = _edt_inside(lab == comp_id, spacing_mm)
            edt, box = edts[comp_id]
            if k < len(order):
                flat = int(np.argmax(edt))
            else:
                local = np.flatnonzero(edt > 0)
                flat = int(_sample(local, 1, rng, edt.ravel()[local])[0])
            z, y, x = np.unravel_index(flat, edt.shape)
            tumor.append((int(x + box[2].start), int(y + box[1].start), int(z + box[0].start)))
    background: list[tuple[int, int, int]] = []
    flat_bg = np.flatnonzero(~gt)
    if flat_bg.size and n_per_kind > 0:
        n_hot = (n_per_kind + 1) // 2
        hot = flat_bg
        if pet_zyx is not None:
            pet = np.asarray(pet_zyx, dtype=np.float32).ravel()[flat_bg]
            sel = flat_bg[pet >= np.percentile(pet, UPTAKE_PERCENTILE)]
            hot = sel if sel.size else flat_bg
        picked = np.concatenate([_sample(hot, n_hot, rng), _sample(flat_bg, n_per_kind - n_hot, rng)])
        for f in picked:
            z, y, x = np.unravel_index(int(f), gt.shape)
            background.append((int(x), int(y), int(z)))
    return Clicks(tuple(tumor), tuple(background))


__all__ = ["TrainingClickConfig", "next_error_driven_clicks", "presimulated_clicks", "sample_batch_clicks",
           "sample_training_clicks"]
