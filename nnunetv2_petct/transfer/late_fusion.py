"""Late fusion of two single-modality foundation models, for the separated-modality linear probe (pure).

The paper's ablation compares joint CT+PET pretraining with "separated-modality" pretraining (a CT-only
and a PET-only model) by 5-shot linear probing. Two independently pretrained networks cannot be merged
into one network (their units are not aligned: an average of their weights computes neither network's
features), so the fair probe of the separated models runs **each on its own channel** and trains one
linear head on their concatenated features:

    CT  (channel 0) -> frozen CT-only U-Net  -> last decoder features (F channels) --+
                                                                                     +-> concat (2F) -> 1x1x1 conv -> classes
    PET (channel 1) -> frozen PET-only U-Net -> last decoder features (F channels) --+

"Last decoder features" are the input of the U-Net's final 1x1x1 segmentation layer; the branches' own
output layers are removed. The head has ``2F * C + C`` parameters for C classes: the same number of
trainable parameters per input feature (C weights) as the joint probe's ``F * C + C`` head on the joint
model's F features.

:class:`LateFusionNetwork` is the network (module names ``branches.ct.*``, ``branches.pet.*`` and
``head.seg_layers.0`` — the head's name contains ``.seg_layers.`` so that nnU-Net's
``-pretrained_weights`` loader, which never transfers output layers, leaves it alone).
:func:`bundle_late_fusion_checkpoints` turns the two single-channel foundation checkpoints into one
``weights_only``-safe *late-fusion checkpoint* whose ``network_weights`` keys are exactly the network's
non-output keys, so stock ``nnUNetv2_train ... -pretrained_weights late_fusion.pth`` loads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunetv2_petct.transfer.foundation import to_weights_only_safe
from nnunetv2_petct.transfer.weights import (
    compare_state_dicts,
    input_channel_count,
    is_output_key,
    state_dict_of,
)

logger = logging.getLogger(__name__)

FORMAT = "nnunetv2_petct.transfer.late_fusion"
FORMAT_VERSION = 1
BRANCH_NAMES: tuple[str, ...] = ("ct", "pet")
"""Branch names in input-channel order (``_0000`` = CT, ``_0001`` = PET)."""
_BRANCH_CHANNEL_KIND = {"ct": "CT", "pet": "PET"}


class LateFusionError(ValueError):
    """The two checkpoints cannot form a late-fusion checkpoint (the message says why and what to use)."""


class _Head(nn.Module):
    """One 1x1(x1) convolution, registered as ``seg_layers.0`` (nnU-Net's name for output layers)."""

    def __init__(self, conv_op: type[nn.Module], in_features: int, num_classes: int):
        super().__init__()
        self.seg_layers = nn.ModuleList([conv_op(in_features, num_classes, 1, 1, 0, bias=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg_layers[0](x)


def strip_output_layers(unet: nn.Module) -> tuple[int, type[nn.Module]]:
    """Replace every ``decoder.seg_layers`` entry of a dynamic_network_architectures U-Net with Identity and
    turn deep supervision off, so ``unet(x)`` returns the last decoder stage's features.

    Returns ``(number of features, conv class of the removed final output layer)``.

    Raises:
        LateFusionError: the network has no ``decoder.seg_layers`` (not an nnU-Net U-Net).
    """
    decoder = getattr(unet, "decoder", None)
    layers = getattr(decoder, "seg_layers", None)
    if layers is None or len(layers) == 0:
        raise LateFusionError(f"{type(unet).__name__} has no decoder.seg_layers: not an nnU-Net U-Net")
    last = layers[-1]
    features = int(last.in_channels)
    conv_op = type(last)
    decoder.seg_layers = nn.ModuleList([nn.Identity() for _ in range(len(layers))])
    decoder.deep_supervision = False
    return features, conv_op


class LateFusionNetwork(nn.Module):
    """Single-channel branches, each on its own input channel; concatenated features; one 1x1x1 head.

    Args:
        branches: name -> U-Net with one input channel, in input-channel order; their output layers are
            removed here (:func:`strip_output_layers`); all must give the same number of features.
        num_classes: output channels of the head.

    ``forward(x)``: ``x`` is (B, len(branches), *spatial); returns (B, num_classes, *spatial).
    """

    def __init__(self, branches: Mapping[str, nn.Module], num_classes: int):
        super().__init__()
        if len(branches) < 2:
            raise LateFusionError("late fusion needs at least two branches")
        feats = {}
        conv_op = None
        for name, net in branches.items():
            feats[name], conv_op = strip_output_layers(net)
        if len(set(feats.values())) != 1:
            raise LateFusionError(f"branches give different numbers of features: {feats}")
        self.branch_names = list(branches)
        self.features_per_branch = next(iter(feats.values()))
        self.branches = nn.ModuleDict(dict(branches))
        self.head = _Head(conv_op, self.features_per_branch * len(branches), int(num_classes))

    def branch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated last-decoder features (B, n_branches * F, *spatial), the head's input."""
        if x.shape[1] != len(self.branch_names):
            raise ValueError(f"expected {len(self.branch_names)} input channels, got {x.shape[1]}")
        return torch.cat([self.branches[n](x[:, i:i + 1]) for i, n in enumerate(self.branch_names)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.branch_features(x))


# ------------------------------------------------------------------------------------------- checkpoint
def _weights_digest(sd: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _source_channel_kind(checkpoint: Mapping) -> str | None:
    """"CT" / "PET" from a foundation checkpoint's metadata: dataset channel index (0 = CT, 1 = PET, the
    project's convention) of ``petct_metadata.input_channels``, else the channel name; None if unknown."""
    from nnunetv2_petct.conversion.channels import channel_kind

    meta = checkpoint.get("petct_metadata") if isinstance(checkpoint.get("petct_metadata"), Mapping) else {}
    idx = meta.get("input_channels")
    if isinstance(idx, (list, tuple)) and len(idx) == 1 and idx[0] in (0, 1):
        return ("CT", "PET")[int(idx[0])]
    names = meta.get("channel_order")
    if not names:
        plan = checkpoint.get("nnssl_adaptation_plan")
        names = plan.get("channel_names") if isinstance(plan, Mapping) else None
    if isinstance(names, (list, tuple)) and len(names) == 1:
        kind = channel_kind(str(names[0]))
        return kind if kind in ("CT", "PET") else None
    return None


def bundle_late_fusion_checkpoints(ct_checkpoint: Mapping, pet_checkpoint: Mapping,
                                   source_files: Sequence[str | None] = (None, None)) -> dict:
    """One late-fusion checkpoint from a CT-only and a PET-only foundation checkpoint (module doc).

    ``network_weights`` = ``branches.ct.<key>`` / ``branches.pet.<key>`` for every non-output key of the
    sources; ``petct_metadata.late_fusion`` records the sources (file, weights digest, trainer, channel),
    ``petct_metadata.pretraining_data`` concatenates the sources' pretraining records (leakage guard),
    ``branch_adaptation_plans`` keeps each source's ``nnssl_adaptation_plan``.

    Raises:
        LateFusionError: a source with more than one input channel (e.g. a joint checkpoint), a source
            whose metadata says it is the other modality, or sources of different architectures.
    """
    sources = {"ct": ct_checkpoint, "pet": pet_checkpoint}
    sds = {}
    for name, ck in sources.items():
        plan = ck.get("nnssl_adaptation_plan") if isinstance(ck.get("nnssl_adaptation_plan"), Mapping) else {}
        sd = state_dict_of(ck)
        n_in = input_channel_count(sd, plan.get("keys_to_in_proj"))
        if n_in != 1:
            raise LateFusionError(
                f"the {name.upper()} checkpoint has {n_in} input channels; late fusion takes two single-channel "
                f"checkpoints (from nnUNetTrainerPETCTMAE_CTOnly and nnUNetTrainerPETCTMAE_PETOnly). A joint "
                f"CT+PET checkpoint is probed with nnUNetTrainerPETCTLinearProbe instead.")
        kind = _source_channel_kind(ck)
        if kind is not None and kind != _BRANCH_CHANNEL_KIND[name]:
            raise LateFusionError(f"the checkpoint given as {name.upper()} was pretrained on {kind} (its metadata "
                                  f"says so); swap --ct and --pet")
        if kind is None:
            logger.warning("the %s checkpoint does not say which channel it was pretrained on; trusting the order",
                           name.upper())
        sds[name] = sd
    rep = compare_state_dicts(sds["pet"], sds["ct"])
    if not rep.ok or rep.unexpected:
        raise LateFusionError("the CT and PET checkpoints have different architectures (both must come from the "
                              "same plans):\n" + rep.message())
    weights = {f"branches.{name}.{k}": v.detach().cpu().clone()
               for name, sd in sds.items() for k, v in sd.items() if not is_output_key(k)}
    records, pretraining = [], []
    complete = True
    for (name, ck), path in zip(sources.items(), source_files):
        meta = ck.get("petct_metadata") if isinstance(ck.get("petct_metadata"), Mapping) else {}
        records.append({"branch": name, "channel": _BRANCH_CHANNEL_KIND[name], "file": path,
                        "weights_sha1": _weights_digest(sds[name]), "trainer_name": meta.get("trainer_name"),
                        "epoch": meta.get("epoch")})
        data = meta.get("pretraining_data")
        if isinstance(data, list):
            pretraining.extend(data)
        else:
            complete = False
    meta: dict[str, Any] = {
        "late_fusion": {"branches": list(BRANCH_NAMES), "input_channels": {"ct": 0, "pet": 1},
                        "features": "last decoder stage (input of the final 1x1x1 output layer)",
                        "sources": records},
        "pretraining_data": pretraining if complete else None,
        "channel_names": {"0": "CT", "1": "PET"},
        "intended_use": "nnUNetTrainerPETCTLateFusionProbe (separated-modality linear probe)",
    }
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network_weights": weights,
        "petct_metadata": meta,
        "branch_adaptation_plans": {name: ck.get("nnssl_adaptation_plan") for name, ck in sources.items()},
    }
    return to_weights_only_safe(ckpt)


def load_late_fusion_bundle(ct_path: str | os.PathLike, pet_path: str | os.PathLike) -> dict:
    """Load the two single-modality checkpoints (``weights_only``) and bundle them in memory (nothing written).

    Raises:
        FileNotFoundError: a source is missing.
        IncompatibleCheckpointError: a source is not a readable checkpoint.
        LateFusionError: see :func:`bundle_late_fusion_checkpoints`.
    """
    from nnunetv2_petct.transfer.weights import load_checkpoint

    ct_path, pet_path = Path(ct_path).resolve(), Path(pet_path).resolve()
    return bundle_late_fusion_checkpoints(load_checkpoint(ct_path), load_checkpoint(pet_path),
                                          (str(ct_path), str(pet_path)))


def write_late_fusion_checkpoint(ct_path: str | os.PathLike, pet_path: str | os.PathLike,
                                 out_path: str | os.PathLike) -> dict:
    """:func:`load_late_fusion_bundle`, then write ``out_path`` atomically; returns the bundle (errors as there)."""
    from nnunetv2_petct.transfer.weights import save_checkpoint

    bundle = load_late_fusion_bundle(ct_path, pet_path)
    save_checkpoint(bundle, out_path)
    return bundle


def is_late_fusion_checkpoint(checkpoint: Mapping) -> bool:
    """True for a checkpoint made by :func:`bundle_late_fusion_checkpoints`."""
    return isinstance(checkpoint, Mapping) and checkpoint.get("format") == FORMAT


__all__ = [
    "BRANCH_NAMES",
    "FORMAT",
    "LateFusionError",
    "LateFusionNetwork",
    "bundle_late_fusion_checkpoints",
    "is_late_fusion_checkpoint",
    "load_late_fusion_bundle",
    "strip_output_layers",
    "write_late_fusion_checkpoint",
]
