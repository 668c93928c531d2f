"""Edit nnU-Net plans files (pure JSON; no nnunetv2 import).

:func:`shrink_plans` turns a configuration into a *tiny* one (small patch, few stages, few features)
for tests, CI and the demo on a 2-core CPU. Preprocessing depends only on the target spacing, not
on the architecture, so the plans can be shrunk before or after ``nnUNetv2_preprocess``.

:func:`paper_plans` (``nnUNetv2_petct_paper_plans``) derives plans that set up the paper's network, spacing, patch,
batch and a named normalization on a planned dataset; :func:`plans_for_checkpoint` /
:func:`plans_for_target` (``nnUNetv2_petct_import_weights -d``) derive plans that rebuild a foundation
checkpoint's network for a target dataset. Both write a new plans identifier with one ``3d_fullres``
configuration; ``nnUNetv2_preprocess -plans_name NAME`` then writes its data.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_petct.io import write_json_atomic
from nnunetv2_petct.transfer.architecture import (  # noqa: F401 - PAPER_BATCH_SIZE_FINETUNING re-exported
    PAPER_BATCH_SIZE_FINETUNING,
    PAPER_BATCH_SIZE_PRETRAINING,
    PAPER_PLANS_NAME,
)

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


# ------------------------------------------------------------------------------------------------------------
# Plans that rebuild a fixed architecture (the paper's, or a foundation checkpoint's) on a dataset


PLANS_NORMALIZATION_CHOICES = ("nnunet", "pet-global", "zscore-both")


class PlansError(ValueError):
    """Plans cannot be derived (bad patch, missing configuration, unsupported reader); the message says why."""


def check_patch_size(patch_size: Sequence[int], architecture: dict) -> list[int]:
    """``patch_size`` as a list of ints; raises PlansError unless every axis is a positive multiple of the network's
    total stride (32 for the paper's 5 downsamplings), naming the nearest valid sizes, and the bottleneck has more
    than one voxel (instance normalization cannot train on a single voxel: 32x32x32 fails with the paper's
    network, 32x32x64 works)."""
    from nnunetv2_petct.transfer.architecture import total_stride

    patch = [int(p) for p in patch_size]
    stride = total_stride(architecture["arch_kwargs"], len(patch))
    bad = [i for i, (p, s) in enumerate(zip(patch, stride)) if p < s or p % s]
    if bad:
        near = [max(s, int(round(p / s)) * s) for p, s in zip(patch, stride)]
        raise PlansError(f"patch {patch} must be a multiple of the network's total stride {stride} in every axis "
                         f"(axis/axes {bad} are not); nearest valid patch: {near}")
    bottleneck = [p // s for p, s in zip(patch, stride)]
    if all(b == 1 for b in bottleneck):
        raise PlansError(f"patch {patch} leaves a single voxel at the bottleneck (total stride {stride}); instance "
                         f"normalization needs more: double at least one axis (e.g. {patch[:-1] + [2 * patch[-1]]})")
    return patch


def _to_axes(values: Sequence, from_transpose: Sequence[int], to_transpose: Sequence[int]) -> list:
    """Values given in one plans axis order (``from_transpose``) re-ordered to another (``to_transpose``)."""
    original = [None] * len(values)
    for i, axis in enumerate(from_transpose):
        original[axis] = values[i]
    return [original[axis] for axis in to_transpose]


def _normalization_for(base_config: dict, normalization: str | Sequence[str], n_channels: int
                       ) -> tuple[list[str], list[bool]]:
    from nnunetv2_petct.conversion.channels import NORMALIZATION_SCHEMES

    base_schemes = list(base_config.get("normalization_schemes") or [])
    base_mask = list(base_config.get("use_mask_for_norm") or [False] * len(base_schemes))
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION_SCHEMES:
            raise PlansError(f"normalization must be one of {sorted(NORMALIZATION_SCHEMES)}, got {normalization!r}")
        if normalization == "zscore-both":
            schemes = ["ZScoreNormalization"] * n_channels
        elif n_channels != 2:
            raise PlansError(f"normalization {normalization!r} names the schemes of a CT+PET dataset (2 channels); "
                             f"this dataset has {n_channels}")
        else:
            schemes = list(NORMALIZATION_SCHEMES[normalization])
    else:
        schemes = [str(s) for s in normalization]
    if len(schemes) != n_channels:
        raise PlansError(f"{len(schemes)} normalization schemes for a dataset with {n_channels} channels")
    if normalization == "zscore-both":  # the authors: each channel z-scored over the whole (cropped) volume
        return schemes, [False] * n_channels
    # keep nnU-Net's mask decision where the scheme is the planned one; z-score over the whole image otherwise
    mask = [bool(base_mask[i]) if i < len(base_schemes) and base_schemes[i] == s else False
            for i, s in enumerate(schemes)]
    return schemes, mask


def derive_plans(base_plans: dict, *, plans_name: str, architecture: dict, spacing: Sequence[float],
                 patch_size: Sequence[int], batch_size: int, normalization: str | Sequence[str],
                 use_mask_for_norm: Sequence[bool] | None = None, transpose_forward: Sequence[int] = (0, 1, 2),
                 record: dict | None = None) -> dict:
    """New plans whose only configuration, ``3d_fullres``, builds ``architecture`` at ``spacing`` / ``patch_size``.

    ``base_plans`` are a dataset's nnU-Net plans (``nnUNetv2_plan_and_preprocess --no_pp`` or
    ``nnUNetv2_plan_experiment``): their fingerprint-derived parts (intensity properties for CTNormalization,
    label manager, reader, resampling functions, median image) are kept. ``spacing`` and ``patch_size`` are given
    in the axis order of ``transpose_forward`` (identity: the arrays' z, y, x as SimpleITK reads them; the base
    plans' median spacing / shape are re-ordered to it). ``normalization`` is a named choice
    (:data:`PLANS_NORMALIZATION_CHOICES`) or one scheme per channel; ``use_mask_for_norm`` defaults to the base
    plans' decision where the scheme is unchanged and False (whole image) elsewhere; ``zscore-both`` always
    z-scores over the whole image (the authors' way). The other configurations
    are dropped (their data identifiers would collide with the base plans' preprocessed data). ``record`` is
    stored as ``plans["petct_plans"]`` (nnU-Net ignores it) together with notes, e.g. when the patch exceeds
    the median image (nnU-Net pads).

    Raises PlansError for a base without ``3d_fullres``, a non-SimpleITK reader with identity transposition, a
    patch that is not a multiple of the network's stride, or a plans name equal to the base's.
    """
    configs = base_plans.get("configurations", {})
    if "3d_fullres" not in configs:
        raise PlansError(f"the base plans {base_plans.get('plans_name')!r} have no 3d_fullres configuration "
                         f"(have {list(configs)}); plan the dataset with -c 3d_fullres")
    if plans_name == base_plans.get("plans_name"):
        raise PlansError(f"the new plans need their own name (not {plans_name!r}, the base plans')")
    reader = str(base_plans.get("image_reader_writer", "SimpleITKIO"))
    if "nibabel" in reader.lower():
        raise PlansError(f"the dataset is read with {reader}, whose array axes are x, y, z; these plans give "
                         f"spacing and patch as z, y, x (SimpleITK's order). Use .nii.gz with SimpleITKIO")
    tf = [int(t) for t in transpose_forward]
    ndim = len(tf)
    patch = check_patch_size(patch_size, architecture)
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or len(patch) != ndim:
        raise PlansError(f"spacing {spacing} and patch {patch} must have {ndim} entries")
    base = copy.deepcopy(base_plans)
    base_tf = list(base.get("transpose_forward") or range(ndim))
    config = copy.deepcopy(configs["3d_fullres"])
    config.pop("inherits_from", None)
    n_channels = len(config.get("normalization_schemes") or []) or 2
    schemes, mask = _normalization_for(config, normalization, n_channels)
    if use_mask_for_norm is not None:
        mask = [bool(m) for m in use_mask_for_norm]
    notes = []
    med_spacing = _to_axes(base.get("original_median_spacing_after_transp", spacing), base_tf, tf)
    med_shape = _to_axes(base.get("original_median_shape_after_transp", patch), base_tf, tf)
    median_vox = [float(round(n * s / t)) for n, s, t in zip(med_shape, med_spacing, spacing)]
    small = [i for i, (p, m) in enumerate(zip(patch, median_vox)) if p > m]
    if small:
        notes.append(f"patch {patch} is larger than the median image {median_vox} at spacing {spacing} along "
                     f"axis/axes {small}: nnU-Net pads the images (with 0 after normalization)")
    config.update({
        "data_identifier": f"{plans_name}_3d_fullres",
        "preprocessor_name": config.get("preprocessor_name", "DefaultPreprocessor"),
        "batch_size": int(batch_size),
        "patch_size": patch,
        "median_image_size_in_voxels": median_vox,
        "spacing": spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": mask,
        "architecture": copy.deepcopy(architecture),
    })
    base.update({
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in med_spacing],
        "original_median_shape_after_transp": med_shape,
        "transpose_forward": tf,
        "transpose_backward": [tf.index(i) for i in range(ndim)],
        "configurations": {"3d_fullres": config},
    })
    base["petct_plans"] = {**(record or {}), "source_plans": base_plans.get("plans_name"), "notes": notes}
    for note in notes:
        logger.warning("%s: %s", plans_name, note)
    return base


def paper_plans(base_plans: dict, *, plans_name: str = PAPER_PLANS_NAME,
                patch_size: Sequence[int] | None = None, batch_size: int = PAPER_BATCH_SIZE_PRETRAINING,
                normalization: str = "nnunet") -> dict:
    """The paper's set-up on a dataset (Liu et al. 2026; SPEC §1): its U-Net
    (:data:`nnunetv2_petct.transfer.architecture.PAPER_ARCHITECTURE`) at 3 x 2 x 2 mm (z, y, x), patch 96 x 128 x 128
    (z, y, x; ``patch_size`` to change it, a multiple of 32 per axis), ``batch_size`` (16 for pretraining as
    the paper, 2 for fine-tuning) and ``normalization`` (``nnunet``: CT clip + z-score, PET per-image z-score;
    ``zscore-both``: both per image, as the authors and upstream nnU-Net's nnssl route; ``pet-global``).
    Axis order: identity transposition, so spacing and patch are the arrays' z, y, x whatever nnU-Net's planner
    chose for the base plans. See :func:`derive_plans` for what is kept from the base and what raises.
    """
    from nnunetv2_petct.transfer.architecture import PAPER_PATCH_SIZE, PAPER_SPACING_MM, paper_architecture

    patch = list(patch_size) if patch_size is not None else list(PAPER_PATCH_SIZE)
    record = {"preset": "paper (Liu et al. 2026)", "normalization": normalization,
              "spacing_zyx_mm": list(PAPER_SPACING_MM), "patch_size_zyx": [int(p) for p in patch],
              "batch_size": int(batch_size)}
    return derive_plans(base_plans, plans_name=plans_name, architecture=paper_architecture(),
                        spacing=PAPER_SPACING_MM, patch_size=patch, batch_size=batch_size,
                        normalization=normalization, transpose_forward=(0, 1, 2), record=record)


def plans_for_checkpoint(base_plans: dict, adaptation_plan: dict, *, plans_name: str,
                         patch_size: Sequence[int] | None = None,
                         batch_size: int = PAPER_BATCH_SIZE_FINETUNING) -> dict:
    """Plans for a target dataset that rebuild a foundation checkpoint's network exactly: its architecture,
    spacing, axis order and normalization (schemes and ``use_mask_for_norm``; with CTNormalization also the
    pretraining data's intensity statistics, as ``nnUNetv2_move_plans_between_datasets`` would) from the
    checkpoint's ``nnssl_adaptation_plan``; patch = ``patch_size`` or the checkpoint's recommended one;
    ``batch_size`` (2).

    Raises PlansError when the adaptation plan lacks the architecture or the spacing.
    """
    arch = adaptation_plan.get("architecture")
    if not arch:
        ap = adaptation_plan.get("architecture_plans") or {}
        if not ap.get("arch_class_name"):
            raise PlansError("the checkpoint's adaptation plan has no architecture")
        arch = {"network_class_name": ap["arch_class_name"], "arch_kwargs": ap.get("arch_kwargs") or {},
                "_kw_requires_import": ap.get("arch_kwargs_requiring_import") or []}
    spacing = adaptation_plan.get("spacing")
    if not spacing:
        raise PlansError("the checkpoint's adaptation plan records no spacing")
    patch = patch_size or adaptation_plan.get("recommended_downstream_patchsize") or adaptation_plan.get("patch_size")
    tf = adaptation_plan.get("transpose_forward") or list(range(len(spacing)))
    schemes = adaptation_plan.get("normalization_schemes")
    if not schemes:
        raise PlansError("the checkpoint's adaptation plan records no normalization_schemes")
    record = {"preset": "matching a foundation checkpoint", "batch_size": int(batch_size)}
    plans = derive_plans(base_plans, plans_name=plans_name, architecture=arch, spacing=spacing, patch_size=patch,
                         batch_size=batch_size, normalization=schemes,
                         use_mask_for_norm=adaptation_plan.get("use_mask_for_norm") or None,
                         transpose_forward=tf, record=record)
    props = adaptation_plan.get("foreground_intensity_properties_per_channel") or {}
    if "CTNormalization" in schemes and props:
        # CTNormalization clips and scales with these statistics: the pretraining data's, so that HU values map to
        # the same network inputs as in pretraining (what nnUNetv2_move_plans_between_datasets also does)
        plans["foreground_intensity_properties_per_channel"] = copy.deepcopy(props)
        plans["petct_plans"]["notes"].append("CT-style normalization uses the pretraining data's intensity statistics "
                                             "(from the checkpoint)")
    return plans


def write_plans(plans: dict, preprocessed_dataset_dir: Path, overwrite: bool = False, dry_run: bool = False) -> Path:
    """Write ``plans`` as ``<preprocessed_dataset_dir>/<plans_name>.json`` (atomic); returns the path.

    An existing file with the same content is left as it is; a different one raises FileExistsError unless
    ``overwrite`` (its preprocessed data would no longer match the plans: preprocess again). ``dry_run``: only
    these checks, nothing written.
    """
    path = Path(preprocessed_dataset_dir) / f"{plans['plans_name']}.json"
    if path.is_file():
        with open(path) as f:
            old = json.load(f)
        if old == json.loads(json.dumps(plans)):
            return path
        if not overwrite:
            raise FileExistsError(f"{path} exists with other settings (use --force to replace it, then run "
                                  f"nnUNetv2_preprocess again)")
    if not dry_run:
        write_json_atomic(plans, path)
    return path


def read_plans(preprocessed_dataset_dir: Path, plans_name: str) -> dict:
    """``<preprocessed_dataset_dir>/<plans_name>.json``; FileNotFoundError says how to make it."""
    path = Path(preprocessed_dataset_dir) / f"{plans_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: plan the dataset first (nnUNetv2_plan_and_preprocess -d "
                                f"DATASET -c 3d_fullres --no_pp, or nnUNetv2_extract_fingerprint + "
                                f"nnUNetv2_plan_experiment)")
    with open(path) as f:
        return json.load(f)


def write_paper_plans(preprocessed_dataset_dir: Path, *, plans_name: str = PAPER_PLANS_NAME,
                      source_plans: str = "nnUNetPlans", patch_size: Sequence[int] | None = None,
                      batch_size: int = PAPER_BATCH_SIZE_PRETRAINING, normalization: str = "nnunet",
                      overwrite: bool = False) -> tuple[Path, dict]:
    """:func:`paper_plans` from ``<dir>/<source_plans>.json`` written to ``<dir>/<plans_name>.json``.

    Returns the path and the plans. Raises FileNotFoundError (no base plans), PlansError, FileExistsError.
    """
    base = read_plans(preprocessed_dataset_dir, source_plans)
    plans = paper_plans(base, plans_name=plans_name, patch_size=patch_size, batch_size=batch_size,
                        normalization=normalization)
    return write_plans(plans, preprocessed_dataset_dir, overwrite=overwrite), plans


def check_target_channels(dataset_json: dict, channel_names: Sequence[str] | None, checkpoint_hint: str = "CHECKPOINT",
                          dataset_hint: str = "TARGET") -> None:
    """Raise PlansError unless the target dataset's channels are the checkpoint's, in the same order.

    ``channel_names``: the checkpoint's input channels (``nnssl_adaptation_plan["channel_names"]``, e.g.
    ``["CT", "PET"]``; None = CT, PET). Names are compared by kind (CT / PET,
    :func:`nnunetv2_petct.conversion.channels.channel_kind`). A different number of channels names
    ``nnUNetv2_petct_adapt_checkpoint`` (1-channel targets); a different order says how to reorder the data.
    """
    from nnunetv2_petct.conversion.channels import (
        ChannelOrderError,
        channel_kind,
        check_channels,
        pet_normalized_globally,
    )

    want = [channel_kind(str(n)) for n in (channel_names or ("CT", "PET"))]
    names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(names) != len(want):
        have = ", ".join(f"{k}={v!r}" for k, v in sorted(names.items()))
        fix = ""
        if len(names) == 1 and len(want) == 2:
            kind = channel_kind(str(next(iter(names.values()))))
            keep = kind if kind in ("CT", "PET") else "CT|PET"
            fix = (f" For a 1-channel target, make a 1-channel checkpoint first: nnUNetv2_petct_adapt_checkpoint "
                   f"{checkpoint_hint} --keep {keep} -o foundation_{keep.split('|')[0]}.pth, then run this command on "
                   f"that file")
        raise PlansError(f"the checkpoint takes {len(want)} input channel(s) ({', '.join(want)}); the target dataset "
                         f"{dataset_hint} has {len(names)} ({have}).{fix}")
    try:
        check_channels(names, tuple(want), pet_global=pet_normalized_globally(dataset_json))
    except ChannelOrderError as e:
        raise PlansError(f"the target dataset's channels do not match the checkpoint's ({', '.join(want)}): {e}") from e


def plans_for_target(preprocessed_dataset_dir: Path, adaptation_plan: dict, *, plans_name: str,
                     source_plans: str = "nnUNetPlans", patch_size: Sequence[int] | None = None,
                     batch_size: int = PAPER_BATCH_SIZE_FINETUNING) -> dict:
    """:func:`plans_for_checkpoint` for a planned target dataset, after :func:`check_target_channels` against its
    ``dataset.json`` (nothing written; see :func:`write_plans`).

    Raises FileNotFoundError (no base plans / dataset.json) and PlansError.
    """
    folder = Path(preprocessed_dataset_dir)
    ds_file = folder / "dataset.json"
    if not ds_file.is_file():
        raise FileNotFoundError(f"{ds_file} not found: plan the dataset first (nnUNetv2_plan_and_preprocess -d "
                                f"DATASET -c 3d_fullres --no_pp)")
    with open(ds_file) as f:
        dataset_json = json.load(f)
    check_target_channels(dataset_json, adaptation_plan.get("channel_names"), dataset_hint=folder.name)
    base = read_plans(folder, source_plans)
    return plans_for_checkpoint(base, adaptation_plan, plans_name=plans_name, patch_size=patch_size,
                                batch_size=batch_size)
