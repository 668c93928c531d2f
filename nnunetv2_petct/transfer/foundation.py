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
    (``arch_class_name``, ``arch_kwargs``, ``arch_kwargs_requiring_import``), ``pretrain_plan`` (the nnU-Net
    plans dict), ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``, ``key_to_encoder``,
    ``key_to_stem``, ``keys_to_in_proj`` (module paths; append ``.weight`` / ``.bias`` for the tensors),
    ``key_to_lpe`` (None: no positional embedding). Added for nnU-Net users: ``architecture`` (the plans'
    own ``architecture`` entry: ``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``),
    ``configuration``, ``plans_name``, ``patch_size``, ``spacing``, ``normalization_schemes``,
    ``use_mask_for_norm``, ``channel_names`` (of the network's inputs) and
    ``foreground_intensity_properties_per_channel``.
``petct_metadata``
    Our metadata: channel order, masking config, data summary, versions, trainer, epoch, losses.
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
FORMAT_VERSION = 1
REQUIRED_PLAN_KEYS = ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "key_to_encoder",
                      "key_to_stem", "keys_to_in_proj", "patch_size", "spacing", "normalization_schemes")

#: (key_to_encoder, key_to_stem, keys_to_in_proj) of dynamic_network_architectures' U-Nets. PlainConvUNet has
#: no separate stem: its first conv block is the stem. Each conv is registered twice (``.conv`` and
#: ``.all_modules.0``), so the input projection has two module paths holding the same tensor.
KNOWN_ARCHITECTURE_KEYS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "PlainConvUNet": ("encoder", "encoder.stages.0.0.convs.0",
                      ("encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0")),
    "ResidualEncoderUNet": ("encoder", "encoder.stem",
                            ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")),
    "ResidualUNet": ("encoder", "encoder.stem",
                     ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")),
}


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


def to_weights_only_safe(obj: Any, path: str = "checkpoint") -> Any:
    """A copy of ``obj`` made only of what ``torch.load(weights_only=True)`` accepts.

    numpy scalars/arrays become Python numbers/lists, tuples become lists, ``Path`` becomes str, subclasses
    of str/int/float/bool (e.g. ``torch.__version__``, IntEnum) become the plain builtin; tensors, dicts
    (with str/int keys), lists, str, int, float, bool, None pass. Anything else raises
    FoundationCheckpointError naming where it sits (e.g. ``checkpoint.petct_metadata.x``).
    """
    import torch

    if obj is None:
        return None
    # exact builtin types: subclasses (torch's TorchVersion, IntEnum, ...) would pickle as classes
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    mod = type(obj).__module__
    if mod == "numpy":
        return obj.tolist() if hasattr(obj, "tolist") else obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise FoundationCheckpointError(f"{path}: key {k!r} is a {type(k).__name__}, not str or int")
            k = str(k) if isinstance(k, str) else int(k)
            out[k] = to_weights_only_safe(v, f"{path}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_weights_only_safe(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise FoundationCheckpointError(f"{path}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored "
                                    f"in a weights_only checkpoint")


def architecture_keys(arch_class_name: str, state_dict: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """``(key_to_encoder, key_to_stem, keys_to_in_proj)`` for an architecture and its state_dict.

    Known dynamic_network_architectures classes use :data:`KNOWN_ARCHITECTURE_KEYS` (checked against the
    state_dict). Other classes: the input projection is the first weight with >= 3 dimensions in state_dict
    order plus every key holding the same tensor; the stem is its parent module; the encoder is the first
    path component. Raises FoundationCheckpointError when the expected keys are absent.
    """
    short = arch_class_name.rsplit(".", 1)[-1]
    if short in KNOWN_ARCHITECTURE_KEYS:
        enc, stem, in_proj = KNOWN_ARCHITECTURE_KEYS[short]
        in_proj = [k for k in in_proj if f"{k}.weight" in state_dict]
        if not in_proj:
            raise FoundationCheckpointError(
                f"{short}: none of the expected input-projection keys {KNOWN_ARCHITECTURE_KEYS[short][2]} "
                f"(+ '.weight') is in the state_dict")
        return enc, stem, in_proj
    first = next((k for k, v in state_dict.items() if k.endswith(".weight") and getattr(v, "ndim", 0) >= 3), None)
    if first is None:
        raise FoundationCheckpointError(f"{short}: no convolution weight found in the state_dict")
    ptr = state_dict[first].data_ptr()
    in_proj = [k[: -len(".weight")] for k, v in state_dict.items()
               if k.endswith(".weight") and hasattr(v, "data_ptr") and v.data_ptr() == ptr]
    stem = in_proj[0].rsplit(".", 1)[0]
    return in_proj[0].split(".", 1)[0], stem, in_proj


def build_adaptation_plan(plans: Mapping[str, Any], configuration: str, num_input_channels: int,
                          state_dict: Mapping[str, Any], channel_names: Sequence[str] | None = None) -> dict:
    """The ``nnssl_adaptation_plan`` dict for a network built from ``plans[configurations][configuration]``.

    ``plans`` is nnU-Net's plans dict (as in ``nnUNetPlans.json``; ``inherits_from`` is resolved);
    ``num_input_channels`` is the network's (2 for CT+PET, 1 for a single-modality model);
    ``channel_names`` names them (dataset.json names of the selected channels).
    Raises FoundationCheckpointError when the configuration or its architecture entry is missing.
    """
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise FoundationCheckpointError(f"configuration {configuration!r} not in plans (have {list(configs)})")
    config = _resolved_configuration(configs, configuration)
    arch = config.get("architecture")
    if not arch or "network_class_name" not in arch:
        raise FoundationCheckpointError(f"plans configuration {configuration!r} has no 'architecture' entry")
    enc, stem, in_proj = architecture_keys(arch["network_class_name"], state_dict)
    arch_short = arch["network_class_name"].rsplit(".", 1)[-1]
    plan = {
        "architecture_plans": {
            "arch_class_name": arch_short,
            "arch_kwargs": dict(arch.get("arch_kwargs", {})),
            "arch_kwargs_requiring_import": list(arch.get("_kw_requires_import", [])),
        },
        "architecture": dict(arch),
        "pretrain_plan": dict(plans),
        "configuration": configuration,
        "plans_name": plans.get("plans_name"),
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": list(config.get("patch_size", [])),
        "patch_size": list(config.get("patch_size", [])),
        "spacing": list(config.get("spacing", [])),
        "normalization_schemes": list(config.get("normalization_schemes", [])),
        "use_mask_for_norm": list(config.get("use_mask_for_norm", [])),
        "foreground_intensity_properties_per_channel": dict(plans.get("foreground_intensity_properties_per_channel",
                                                                      {})),
        "channel_names": list(channel_names) if channel_names is not None else None,
        "key_to_encoder": enc,
        "key_to_stem": stem,
        "keys_to_in_proj": list(in_proj),
        "key_to_lpe": None,
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
