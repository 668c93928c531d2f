"""Foundation checkpoints: the pretrained U-Net plus what a fine-tuner needs to adapt it (pure; no nnunetv2).

A foundation checkpoint (``foundation_final.pth`` / ``foundation_best.pth`` in the pretraining fold
folder) is a dict that ``torch.load(path, weights_only=True)`` can read — only tensors, dicts, lists,
str, int, float, bool and None inside, no classes, no numpy:

``network_weights``
    The full U-Net ``state_dict`` with nnU-Net's own key names (``module.`` / ``_orig_mod.`` prefixes of
    DDP / ``torch.compile`` stripped), so stock ``nnUNetv2_train ... -pretrained_weights FILE`` loads it into
    a network built from the same plans with the same number of input channels. nnU-Net's loader skips
    keys containing ``.seg_layers.``: the reconstruction head (output layers) is not transferred.
``nnssl_adaptation_plan``
    The fields of MIC-DKFZ/nnssl's adaptation plan (serialized names): ``architecture_plans``
    (``arch_class_name`` = the full dotted class name, ``arch_kwargs``, ``arch_kwargs_requiring_import``),
    ``pretrain_plan`` (the nnU-Net plans dict with only the trained configuration under ``configurations``),
    ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``, ``key_to_encoder``,
    ``key_to_stem``, ``keys_to_in_proj`` (module paths read from the built network; append ``.weight`` /
    ``.bias`` for the tensors), ``key_to_lpe`` (None: no positional embedding). Upstream nnU-Net's nnssl route
    (``nnUNetv2_preprocess_like_nnssl`` + ``nnUNetv2_train_pretrained``, master branch) reads exactly these.
    Added for nnU-Net users: ``architecture`` (the plans' own ``architecture`` entry: ``network_class_name``,
    ``arch_kwargs``, ``_kw_requires_import``), ``configuration``, ``plans_name``, ``patch_size``, ``spacing``
    and ``transpose_forward`` (spacing and patch are in the plans' axis order), ``normalization_schemes``,
    ``use_mask_for_norm`` (compared with the target plans before fine-tuning, :func:`normalization_mismatch`),
    ``channel_names`` (of the network's inputs) and ``foreground_intensity_properties_per_channel``.
``petct_metadata``
    Our metadata: channel order, masking config, data summary, versions, trainer, epoch, losses; for imported
    weights (``nnunetv2_petct.transfer.importers``) also ``import``: source file, SHA-256, format, changes.
``citations`` (optional)
    Upstream's field: a list of ``{"type", "name", "apa_citations"}`` printed by its fine-tuning trainer.
``format``
    ``"nnunetv2_petct.transfer.foundation"`` and ``format_version``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunetv2_petct.io import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "nnunetv2_petct.transfer.foundation"
FORMAT_VERSION = 2
#: 1: the adaptation plan listed every configuration and hard-coded ``key_to_encoder="encoder"`` (upstream's
#: route failed on it); 2: only the trained configuration, keys from the network instance.
REQUIRED_PLAN_KEYS = ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "key_to_encoder",
                      "key_to_stem", "keys_to_in_proj", "patch_size", "spacing", "normalization_schemes")

class FoundationCheckpointError(ValueError):
    """A foundation checkpoint is missing a part, or holds something ``weights_only`` loading refuses."""


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any order/repetition.

    Tensors are detached and moved to the CPU. Raises FoundationCheckpointError when two keys collide.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    changed = True
        if k in out:
            raise FoundationCheckpointError(f"state_dict keys {key!r} and another one both map to {k!r}")
        out[k] = value.detach().cpu() if hasattr(value, "detach") else value
    return out


class NotWeightsOnlySafeError(FoundationCheckpointError, TypeError):
    """A value cannot be stored in a checkpoint that ``torch.load(weights_only=True)`` reads."""


def to_weights_only_safe(obj: Any, path: str = "checkpoint", *, tuples_as_lists: bool = True,
                         unknown: str = "raise") -> Any:
    """A copy of ``obj`` made only of what ``torch.load(weights_only=True)`` accepts (the one place that
    decides it: foundation checkpoints, training checkpoints, imported legacy files).

    numpy scalars/arrays become Python numbers/lists, ``Path`` becomes str, subclasses of str/int/float/bool
    (e.g. ``torch.__version__``, IntEnum) become the plain builtin; tensors, ``torch.device``,
    ``torch.dtype``, dicts (str/int keys), lists, str, int, float, bool and None pass. Tuples and sets
    become lists (``tuples_as_lists``, the JSON-like form of foundation checkpoints) or stay tuples/sets.

    Args:
        unknown: ``"raise"`` (default): any other object raises :class:`NotWeightsOnlySafeError` naming
            where it sits (e.g. ``checkpoint.petct_metadata.x``); ``"str"``: it becomes its ``str`` (for
            importing legacy files whose extra entries are informative only).
    """
    import torch

    if obj is None or isinstance(obj, (torch.Tensor, torch.device, torch.dtype)):
        return obj
    # exact builtin types: subclasses (torch's TorchVersion, IntEnum, ...) would pickle as classes
    for t in (bool, int, float, str):
        if isinstance(obj, t):
            return t(obj)
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__ == "numpy":
        return obj.tolist() if hasattr(obj, "tolist") else obj.item()
    kw = {"tuples_as_lists": tuples_as_lists, "unknown": unknown}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                if unknown != "str":
                    raise NotWeightsOnlySafeError(f"{path}: key {k!r} is a {type(k).__name__}, not str or int")
                k = str(k)
            k = str(k) if isinstance(k, str) else int(k)
            out[k] = to_weights_only_safe(v, f"{path}.{k}", **kw)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [to_weights_only_safe(v, f"{path}[{i}]", **kw) for i, v in enumerate(obj)]
        if tuples_as_lists or isinstance(obj, list):
            return items
        return tuple(items) if isinstance(obj, tuple) else set(items)
    if unknown == "str":
        return str(obj)
    raise NotWeightsOnlySafeError(f"{path}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored "
                                  f"in a weights_only checkpoint")


def architecture_keys(architecture: Mapping[str, Any], state_dict: Mapping[str, Any],
                      num_input_channels: int) -> dict[str, Any]:
    """``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` and ``key_to_lpe`` of a plans architecture entry.

    The network is built from ``architecture`` (a plans ``architecture`` entry, on the meta device: no memory)
    and the keys are read from the *instance's own attributes*, which dynamic_network_architectures sets in
    ``__init__`` and upstream nnU-Net's ``PretrainedTrainer`` reads on the network it builds (PlainConvUNet:
    ``encoder.stages`` / ``encoder.stages.0``; ResidualEncoderUNet: ``encoder.stages`` / ``encoder.stem``).
    A class that cannot be built or has no such attributes (not a dynamic_network_architectures network) falls
    back to a guess from ``state_dict``, logged as a warning: the input projection is the first weight with
    >= 3 dimensions plus every key holding the same tensor, the stem its parent module, the encoder the first
    path component; ``"source"`` in the result says which way was used.

    Raises FoundationCheckpointError when the keys do not fit ``state_dict`` (no tensor under the encoder or
    stem prefix, or an input projection without its ``.weight``).
    """
    from nnunetv2_petct.transfer.architecture import (
        ArchitectureError,
        aliases_of,
        build_network,
        network_keys,
    )

    name = str(architecture.get("network_class_name", "?"))
    try:
        keys = network_keys(build_network(architecture, num_input_channels, num_input_channels))
        keys["source"] = "network attributes"
    except ArchitectureError as e:
        logger.warning("%s: key_to_encoder/key_to_stem/keys_to_in_proj guessed from the state dict (%s)", name, e)
        first = next((k for k, v in state_dict.items() if k.endswith(".weight") and getattr(v, "ndim", 0) >= 3),
                     None)
        if first is None:
            raise FoundationCheckpointError(f"{name}: no convolution weight found in the state_dict") from e
        in_proj = [k[: -len(".weight")] for k in aliases_of(state_dict, first) if k.endswith(".weight")]
        keys = {"key_to_encoder": in_proj[0].split(".", 1)[0], "key_to_stem": in_proj[0].rsplit(".", 1)[0],
                "keys_to_in_proj": in_proj, "key_to_lpe": None, "source": "state-dict guess"}
    for what in ("key_to_encoder", "key_to_stem"):
        prefix = keys[what] + "."
        if not any(k.startswith(prefix) for k in state_dict):
            raise FoundationCheckpointError(f"{name}: {what}={keys[what]!r}, but the state_dict has no key under "
                                            f"{prefix!r}")
    missing = [k for k in keys["keys_to_in_proj"] if f"{k}.weight" not in state_dict]
    if missing:
        raise FoundationCheckpointError(f"{name}: input-projection module(s) {missing} have no '.weight' in the "
                                        f"state_dict")
    return keys


def build_adaptation_plan(plans: Mapping[str, Any], configuration: str, num_input_channels: int,
                          state_dict: Mapping[str, Any], channel_names: Sequence[str] | None = None) -> dict:
    """The ``nnssl_adaptation_plan`` dict for a network built from ``plans[configurations][configuration]``.

    ``plans`` is nnU-Net's plans dict (as in ``nnUNetPlans.json``; ``inherits_from`` is resolved);
    ``num_input_channels`` is the network's (2 for CT+PET, 1 for a single-modality model);
    ``channel_names`` names them (dataset.json names of the selected channels).

    What upstream nnU-Net's nnssl route reads (``nnUNetv2_preprocess_like_nnssl`` and ``PretrainedTrainer``):
    ``pretrain_plan.configurations`` holds ONLY the trained configuration (upstream takes the first one's
    ``spacing`` and ``patch_size``); ``architecture_plans`` has the full dotted class name (a short name makes
    nnU-Net import every architecture module) and JSON-safe ``arch_kwargs`` with classes as dotted strings;
    the module keys come from the built network (:func:`architecture_keys`); ``key_to_lpe`` is None
    (convolutional networks have no positional embedding); ``recommended_downstream_patchsize`` is the
    trained patch size.

    Raises FoundationCheckpointError when the configuration or its architecture entry is missing.
    """
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise FoundationCheckpointError(f"configuration {configuration!r} not in plans (have {list(configs)})")
    config = _resolved_configuration(configs, configuration)
    arch = config.get("architecture")
    if not arch or "network_class_name" not in arch:
        raise FoundationCheckpointError(f"plans configuration {configuration!r} has no 'architecture' entry")
    keys = architecture_keys(arch, state_dict, num_input_channels)
    pretrain_plan = {k: v for k, v in plans.items() if k != "configurations"}
    pretrain_plan["configurations"] = {configuration: config}
    plan = {
        "architecture_plans": {
            "arch_class_name": str(arch["network_class_name"]),
            "arch_kwargs": dict(arch.get("arch_kwargs") or {}),
            "arch_kwargs_requiring_import": list(arch.get("_kw_requires_import") or []),
        },
        "architecture": dict(arch),
        "pretrain_plan": pretrain_plan,
        "configuration": configuration,
        "plans_name": plans.get("plans_name"),
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": list(config.get("patch_size", [])),
        "patch_size": list(config.get("patch_size", [])),
        "spacing": list(config.get("spacing", [])),
        "transpose_forward": list(plans.get("transpose_forward") or range(len(config.get("spacing", [])))),
        "normalization_schemes": list(config.get("normalization_schemes", [])),
        "use_mask_for_norm": list(config.get("use_mask_for_norm", [])),
        "foreground_intensity_properties_per_channel": dict(plans.get("foreground_intensity_properties_per_channel",
                                                                      {})),
        "channel_names": list(channel_names) if channel_names is not None else None,
        "key_to_encoder": keys["key_to_encoder"],
        "key_to_stem": keys["key_to_stem"],
        "keys_to_in_proj": list(keys["keys_to_in_proj"]),
        "key_to_lpe": keys["key_to_lpe"],
    }
    return plan


def _resolved_configuration(configs: Mapping[str, Any], name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A configuration with nnU-Net's ``inherits_from`` applied (parent first, then own entries)."""
    if name in _seen:
        raise FoundationCheckpointError(f"circular 'inherits_from' in plans: {_seen + (name,)}")
    config = dict(configs[name])
    parent = config.pop("inherits_from", None)
    if parent is None:
        return config
    if parent not in configs:
        raise FoundationCheckpointError(f"configuration {name!r} inherits from missing {parent!r}")
    merged = _resolved_configuration(configs, parent, _seen + (name,))
    merged.update(config)
    return merged


def build_foundation_checkpoint(state_dict: Mapping[str, Any], plans: Mapping[str, Any], configuration: str,
                                num_input_channels: int, metadata: Mapping[str, Any],
                                channel_names: Sequence[str] | None = None) -> dict:
    """The foundation checkpoint dict (see the module docstring), ready for :func:`save_foundation_checkpoint`.

    ``state_dict`` is the network's (wrapper prefixes are stripped here); ``metadata`` becomes
    ``petct_metadata`` (made weights_only-safe; an unsupported object raises FoundationCheckpointError).
    """
    weights = strip_wrapper_prefixes(state_dict)
    plan = build_adaptation_plan(plans, configuration, num_input_channels, weights, channel_names)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network_weights": weights,
        "nnssl_adaptation_plan": plan,
        "petct_metadata": dict(metadata),
    }
    ckpt = to_weights_only_safe(ckpt)
    validate_foundation_checkpoint(ckpt)
    return ckpt


def validate_foundation_checkpoint(ckpt: Mapping[str, Any]) -> None:
    """Raise FoundationCheckpointError unless ``ckpt`` has every part a fine-tuner relies on.

    Checks: ``network_weights`` is a non-empty dict of tensors; the adaptation plan has
    :data:`REQUIRED_PLAN_KEYS`; every ``keys_to_in_proj`` entry has a ``.weight`` in the weights whose
    input-channel dimension equals ``pretrain_num_input_channels``; ``petct_metadata`` is a dict.
    """
    import torch

    missing = [k for k in ("network_weights", "nnssl_adaptation_plan", "petct_metadata") if k not in ckpt]
    if missing:
        raise FoundationCheckpointError(f"foundation checkpoint lacks {missing}")
    weights = ckpt["network_weights"]
    if not isinstance(weights, Mapping) or not weights:
        raise FoundationCheckpointError("network_weights must be a non-empty dict of tensors")
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FoundationCheckpointError(f"network_weights entries that are not tensors: {bad[:5]}")
    wrapped = [k for k in weights if k.startswith(("module.", "_orig_mod."))]
    if wrapped:
        raise FoundationCheckpointError(f"network_weights keys still carry wrapper prefixes: {wrapped[:3]}")
    plan = ckpt["nnssl_adaptation_plan"]
    missing = [k for k in REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise FoundationCheckpointError(f"nnssl_adaptation_plan lacks {missing}")
    n_in = int(plan["pretrain_num_input_channels"])
    for key in plan["keys_to_in_proj"]:
        w = weights.get(f"{key}.weight")
        if w is None:
            raise FoundationCheckpointError(f"keys_to_in_proj entry {key!r} has no '{key}.weight' in network_weights")
        if w.ndim < 2 or w.shape[1] != n_in:
            raise FoundationCheckpointError(f"{key}.weight has shape {tuple(w.shape)}: its input-channel dimension "
                                            f"is not pretrain_num_input_channels={n_in}")
    if not isinstance(ckpt["petct_metadata"], Mapping):
        raise FoundationCheckpointError("petct_metadata must be a dict")


def normalization_mismatch(plan: Mapping[str, Any], schemes: Sequence[str],
                           use_mask_for_norm: Sequence[bool] | None = None) -> str | None:
    """None when a target configuration normalizes its channels as the checkpoint's pretraining did, else why not.

    ``plan`` is a foundation checkpoint's ``nnssl_adaptation_plan``; ``schemes`` / ``use_mask_for_norm`` are the
    target plans configuration's ``normalization_schemes`` / ``use_mask_for_norm``. The scheme names must be
    equal channel by channel; ``use_mask_for_norm`` is compared only for z-scored channels (CTNormalization
    ignores it) and only when both sides record it. A plan that records no schemes matches anything (None).
    The message names both sides and how to fix it (plans made from the checkpoint, or the same
    ``--normalization`` choice).
    """
    from nnunetv2_petct.conversion.channels import normalization_choice

    want = [str(s) for s in (plan.get("normalization_schemes") or [])]
    if not want:
        return None
    have = [str(s) for s in schemes]

    def label(s: Sequence[str]) -> str:
        choice = normalization_choice(s) if len(s) == 2 else None
        return f"{list(s)}" + (f" ({choice})" if choice else "")

    problem = None
    if have != want:
        problem = f"the checkpoint was pretrained with normalization {label(want)}, the target plans use {label(have)}"
    else:
        want_mask = plan.get("use_mask_for_norm") or []
        if use_mask_for_norm is not None and len(want_mask) == len(have) == len(use_mask_for_norm):
            differ = [i for i, s in enumerate(have) if s == "ZScoreNormalization"
                      and bool(want_mask[i]) != bool(use_mask_for_norm[i])]
            if differ:
                problem = (f"channel(s) {differ} are z-scored over the {'foreground mask' if want_mask[differ[0]] else 'whole image'} "
                           f"in pretraining but not in the target plans (use_mask_for_norm {list(want_mask)} vs "
                           f"{list(use_mask_for_norm)})")
    if problem is None:
        return None
    return (f"{problem}. The network would see differently scaled inputs than it was trained on. Fix: preprocess "
            f"the target with plans that match the checkpoint: `nnUNetv2_petct_import_weights CHECKPOINT -d "
            f"TARGET` (writes them from the checkpoint), `nnUNetv2_petct_paper_plans -d TARGET --normalization "
            f"CHOICE`, or `nnUNetv2_move_plans_between_datasets` from the pretraining dataset; "
            f"then `nnUNetv2_preprocess -d TARGET -plans_name PLANS -c CONFIGURATION`.")


def save_foundation_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validate ``ckpt`` and write it to ``path`` atomically (temporary file in the same folder, then rename).

    Raises FoundationCheckpointError for an invalid checkpoint, FileNotFoundError for a missing folder and
    :class:`nnunetv2_petct.io.WriteError` naming the file when it cannot be written completely.
    """
    import torch

    validate_foundation_checkpoint(ckpt)
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write foundation checkpoint: folder {folder} does not exist")
    with atomic_write(path) as tmp:
        torch.save(dict(ckpt), tmp)
    return path


def load_foundation_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` + :func:`validate_foundation_checkpoint`.

    Raises FileNotFoundError naming the file, FoundationCheckpointError for a file that is not a
    foundation checkpoint (e.g. an nnU-Net training checkpoint, which needs ``weights_only=False``).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"foundation checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise FoundationCheckpointError(f"{path} cannot be loaded with weights_only=True (is it an nnU-Net "
                                        f"training checkpoint rather than a foundation checkpoint?): {e}") from e
    if not isinstance(ckpt, dict):
        raise FoundationCheckpointError(f"{path} does not hold a dict")
    validate_foundation_checkpoint(ckpt)
    return ckpt


def read_adaptation_plan(path: str | os.PathLike) -> dict | None:
    """The ``nnssl_adaptation_plan`` of a checkpoint file, or None when it has none or is not weights_only-safe
    (e.g. an nnU-Net training checkpoint). Memory-maps the file, so the tensors are not read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any file nnU-Net itself can load must pass here
        logger.info("no adaptation plan read from %s: %s", path, e)
        return None
    plan = ckpt.get("nnssl_adaptation_plan") if isinstance(ckpt, dict) else None
    return dict(plan) if isinstance(plan, Mapping) else None


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it is writable by creating and deleting a probe file.

    Raises PermissionError / OSError whose message names the folder (for a long pretraining run this is
    checked before the first epoch rather than discovered at the first checkpoint).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a unique name: ranks on different nodes of a shared file system can have the same PID
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise type(e)(f"output folder {folder} is not writable ({e.strerror or e}); check nnUNet_results and its "
                      f"permissions") from e
    return folder
