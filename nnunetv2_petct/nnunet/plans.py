"""Edit nnU-Net plans files (pure JSON; no nnunetv2 import).

:func:`shrink_plans` turns a configuration into a *tiny* one (small patch, few stages, few features)
for tests, CI and the demo on a 2-core CPU. Preprocessing depends only on the target spacing, not
on the architecture, so the plans can be shrunk before or after ``nnUNetv2_preprocess``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_petct.io import write_json_atomic

logger = logging.getLogger(__name__)

# arch_kwargs entries with one value per encoder stage (PlainConvUNet and ResidualEncoderUNet).
_PER_STAGE_KEYS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage")


def _divisible_patch(patch: Sequence[int], wanted: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """Smallest of ``patch`` and ``wanted`` per axis, rounded down to a multiple of ``divisor`` (>= divisor)."""
    out = []
    for p, w, d in zip(patch, wanted, divisor):
        size = min(int(p), int(w))
        out.append(max(d, (size // d) * d))
    return out


def shrink_plans(
    plans: dict,
    configuration: str = "3d_fullres",
    patch_size: Sequence[int] = (32, 32, 32),
    n_stages: int = 3,
    base_features: int = 4,
    max_features: int = 16,
    batch_size: int = 2,
) -> dict:
    """A copy of ``plans`` whose ``configuration`` is tiny.

    - ``n_stages`` encoder stages kept (the first ones, so strides stay the planner's);
    - features ``base_features * 2**stage`` capped at ``max_features``;
    - patch = min(planned patch, ``patch_size``) per axis, a multiple of the network's total stride;
    - ``batch_size`` as given.

    Raises KeyError naming the configuration when it is missing, ValueError when ``n_stages`` < 2.
    """
    if n_stages < 2:
        raise ValueError("n_stages must be >= 2 (a U-Net needs one downsampling step)")
    plans = copy.deepcopy(plans)
    if configuration not in plans.get("configurations", {}):
        raise KeyError(f"configuration {configuration!r} not in plans (have {list(plans.get('configurations', {}))})")
    config = plans["configurations"][configuration]
    arch = config["architecture"]["arch_kwargs"]
    n = min(n_stages, int(arch["n_stages"]))
    arch["n_stages"] = n
    for key in _PER_STAGE_KEYS:
        if key in arch and isinstance(arch[key], list):
            arch[key] = arch[key][:n]
    if isinstance(arch.get("n_conv_per_stage_decoder"), list):
        arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n - 1]
    arch["features_per_stage"] = [min(base_features * 2**i, max_features) for i in range(n)]
    total_stride = [1] * len(config["patch_size"])
    for stride in arch["strides"]:
        stride = stride if isinstance(stride, list) else [stride] * len(total_stride)
        total_stride = [t * s for t, s in zip(total_stride, stride)]
    config["patch_size"] = _divisible_patch(config["patch_size"], patch_size, total_stride)
    config["batch_size"] = int(batch_size)
    logger.info("tiny plans %s: patch %s, stages %d, features %s", configuration, config["patch_size"], n,
                arch["features_per_stage"])
    return plans


def shrink_plans_file(plans_file: Path, configuration: str = "3d_fullres", output_file: Path | None = None,
                      **kwargs) -> dict:
    """Load a plans JSON, :func:`shrink_plans` it, and write it back (or to ``output_file``)."""
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        raise FileNotFoundError(f"plans file not found: {plans_file} (run nnUNetv2_plan_and_preprocess first)")
    with open(plans_file) as f:
        plans = json.load(f)
    tiny = shrink_plans(plans, configuration, **kwargs)
    write_json_atomic(tiny, Path(output_file) if output_file else plans_file)
    return tiny
