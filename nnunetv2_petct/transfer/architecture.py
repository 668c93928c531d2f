"""Networks as nnU-Net plans describe them: the paper's U-Net, building a network from a plans entry, and the
module paths a fine-tuner needs (pure; torch + dynamic_network_architectures, no nnunetv2).

An *architecture entry* is the ``architecture`` dict of an nnU-Net 2.8 plans configuration::

    {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
     "arch_kwargs": {...},                      # JSON: classes as dotted strings
     "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}

:data:`PAPER_ARCHITECTURE` is the U-Net of Liu et al. 2026 (SPEC §1; the authors' pretraining notebook):
PlainConvUNet, 6 stages, features 32-64-128-256-320-320, 3x3x3 kernels, strides 1 then 2 in all axes, 2
convolutions per stage in encoder and decoder, conv bias, InstanceNorm3d (eps 1e-5, affine), LeakyReLU 0.01,
no dropout. With 2 input and 2 output channels it has 31,196,458 parameters.

Class lookup: a full dotted name is imported directly. A short name (``PlainConvUNet``) is looked up only in
``dynamic_network_architectures.architectures.unet``: importing every architecture module (what nnU-Net's
fallback search does) pulls in ``primus``, which fails next to a CPU torch wheel (SPEC §5).
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_ENCODER_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
KW_REQUIRES_IMPORT: tuple[str, ...] = ("conv_op", "norm_op", "dropout_op", "nonlin")
_SHORT_NAME_MODULE = "dynamic_network_architectures.architectures.unet"

#: The paper's voxel spacing (z, y, x) in mm, patch (z, y, x) in voxels and channel order of its weights.
PAPER_SPACING_MM: tuple[float, float, float] = (3.0, 2.0, 2.0)
PAPER_PATCH_SIZE: tuple[int, int, int] = (96, 128, 128)
PAPER_NUM_STAGES = 6
PAPER_PLANS_NAME = "nnUNetPlans_paper"
#: The paper's pretraining batch (its learning rate 5e-4 was chosen for it) and a fine-tuning batch (nnU-Net's).
PAPER_BATCH_SIZE_PRETRAINING = 16
PAPER_BATCH_SIZE_FINETUNING = 2

#: The paper's U-Net as an nnU-Net plans ``architecture`` entry (see the module docstring).
PAPER_ARCHITECTURE: dict[str, Any] = {
    "network_class_name": PLAIN_CONV_UNET,
    "arch_kwargs": {
        "n_stages": PAPER_NUM_STAGES,
        "features_per_stage": [32, 64, 128, 256, 320, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * PAPER_NUM_STAGES,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (PAPER_NUM_STAGES - 1),
        "n_conv_per_stage": [2] * PAPER_NUM_STAGES,
        "n_conv_per_stage_decoder": [2] * (PAPER_NUM_STAGES - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"negative_slope": 0.01, "inplace": True},
    },
    "_kw_requires_import": list(KW_REQUIRES_IMPORT),
}


class ArchitectureError(ValueError):
    """An architecture entry cannot be built, or a network lacks what a fine-tuner needs."""


def paper_architecture() -> dict[str, Any]:
    """A deep copy of :data:`PAPER_ARCHITECTURE` (safe to edit)."""
    return copy.deepcopy(PAPER_ARCHITECTURE)


def locate(name: str) -> Any:
    """The object a dotted name refers to (``torch.nn.LeakyReLU``); short names from DNA's ``unet`` module.

    Raises ArchitectureError naming the object when it cannot be imported.
    """
    if "." not in name:
        module_name, attr = _SHORT_NAME_MODULE, name
    else:
        module_name, attr = name.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a broken optional module must give a message, not a traceback
        raise ArchitectureError(f"cannot import {module_name} (for {name!r}): {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise ArchitectureError(f"{module_name} has no {attr!r} (network class / op {name!r} not found)")
    return getattr(module, attr)


def total_stride(arch_kwargs: Mapping[str, Any], ndim: int = 3) -> list[int]:
    """Product of the encoder strides per axis (a patch must be a multiple of it). Scalar strides broadcast."""
    out = [1] * ndim
    for s in arch_kwargs.get("strides", []):
        s = list(s) if isinstance(s, (list, tuple)) else [int(s)] * ndim
        out = [o * int(x) for o, x in zip(out, s)]
    return out


def build_network(architecture: Mapping[str, Any], num_input_channels: int, num_output_channels: int,
                  deep_supervision: bool = False, device: str | torch.device = "meta") -> torch.nn.Module:
    """The network an architecture entry describes, as nnU-Net's ``get_network_from_plans`` builds it.

    ``device="meta"`` (default) allocates no memory: enough for key names, shapes and the instance's
    attributes. No weight initialization is applied. Raises ArchitectureError when a class cannot be
    imported or the constructor rejects the arguments.
    """
    name = architecture.get("network_class_name") or architecture.get("arch_class_name")
    if not name:
        raise ArchitectureError(f"architecture entry without 'network_class_name': {sorted(architecture)}")
    cls = locate(str(name))
    kwargs = dict(architecture.get("arch_kwargs") or {})
    requires = architecture.get("_kw_requires_import", architecture.get("arch_kwargs_requiring_import")) or []
    for key in requires:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(str(kwargs[key]))
    try:
        with torch.device(device):
            return cls(input_channels=int(num_input_channels), num_classes=int(num_output_channels),
                       deep_supervision=bool(deep_supervision), **kwargs)
    except TypeError as e:
        raise ArchitectureError(f"{name} rejects the architecture's arguments: {e}") from e


def network_keys(network: torch.nn.Module) -> dict[str, Any]:
    """``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` (list) and ``key_to_lpe`` of a network instance.

    dynamic_network_architectures (>= 0.4) sets these as *instance* attributes in ``__init__`` (a class-level
    lookup finds nothing). Raises ArchitectureError when the instance lacks one of the first three, or when a
    path does not name a submodule of the network.
    """
    missing = [k for k in ("key_to_encoder", "key_to_stem", "keys_to_in_proj") if not getattr(network, k, None)]
    if missing:
        raise ArchitectureError(f"{type(network).__name__} instance has no {missing} (dynamic_network_architectures "
                                f">= 0.4 sets them on its U-Nets)")
    out = {
        "key_to_encoder": str(network.key_to_encoder),
        "key_to_stem": str(network.key_to_stem),
        "keys_to_in_proj": [str(k) for k in network.keys_to_in_proj],
        "key_to_lpe": getattr(network, "key_to_lpe", None),
    }
    for path in [out["key_to_encoder"], out["key_to_stem"], *out["keys_to_in_proj"]]:
        try:
            network.get_submodule(path)
        except AttributeError as e:
            raise ArchitectureError(f"{type(network).__name__}: {path!r} is not a submodule") from e
    return out


def state_dict_shapes(network: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a network's state dict (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def compare_with_architecture(state_dict: Mapping[str, torch.Tensor], architecture: Mapping[str, Any],
                              num_input_channels: int, num_output_channels: int) -> list[str]:
    """Differences between a state dict and the network an architecture entry builds (empty list: identical).

    Each entry is one line: ``missing KEY``, ``unexpected KEY`` or ``KEY: shape (a) in the file, (b) expected``.
    """
    want = state_dict_shapes(build_network(architecture, num_input_channels, num_output_channels))
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    out = [f"missing {k}" for k in want if k not in have]
    out += [f"unexpected {k}" for k in have if k not in want]
    out += [f"{k}: shape {have[k]} in the file, {want[k]} expected" for k in want
            if k in have and have[k] != want[k]]
    return out


def aliases_of(state_dict: Mapping[str, torch.Tensor], key: str) -> list[str]:
    """Every key of ``state_dict`` that holds the same tensor as ``key`` (``key`` included), in dict order.

    Same tensor = same shape and dtype, and either the same storage (a freshly saved or loaded state dict
    shares it between aliases) or equal values (a copy that lost the sharing). dynamic_network_architectures'
    U-Nets register each convolution twice (``.conv`` and ``.all_modules.0``) and the decoder holds the encoder
    (``decoder.encoder.*``), so the first convolution appears under four keys.
    """
    ref = state_dict[key]

    def same(v: torch.Tensor) -> bool:
        if v.shape != ref.shape or v.dtype != ref.dtype:
            return False
        if v.numel() and v.untyped_storage().data_ptr() == ref.untyped_storage().data_ptr() \
                and v.storage_offset() == ref.storage_offset() and v.stride() == ref.stride():
            return True
        return bool(torch.equal(v, ref))

    return [k for k, v in state_dict.items() if same(v)]


def permute_channels(tensor: torch.Tensor, order: Sequence[int], dim: int) -> torch.Tensor:
    """A new tensor whose slice ``i`` along ``dim`` is the input's slice ``order[i]`` (never in place)."""
    idx = torch.as_tensor(list(order), dtype=torch.long)
    return tensor.index_select(dim, idx).clone()
