"""What upstream nnU-Net's nnssl route reads from a checkpoint, re-enacted from its documented behaviour (facts
gathered from MIC-DKFZ/nnUNet master: ``nnUNetv2_preprocess_like_nnssl`` and ``PretrainedTrainer``; no code of
it is copied): the checks our foundation checkpoints must pass for that route to work.

1. ``torch.load(path, weights_only=True)`` without ``map_location`` (CPU tensors only);
2. ``nnssl_adaptation_plan``: the FIRST configuration of ``pretrain_plan.configurations`` gives ``spacing`` and
   ``patch_size`` (3 entries each for a 3D network); ``architecture_plans`` has ``arch_class_name`` and
   ``arch_kwargs_requiring_import`` (renamed by upstream into the plans' ``architecture``, saved as JSON);
   ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``, ``key_to_lpe``, ``pretrain_num_input_channels``
   and ``recommended_downstream_patchsize`` are required keys;
3. the network is built from the class name and kwargs (nnU-Net's ``get_network_from_plans``); the module keys
   the loader uses are the NETWORK's attributes, and the checkpoint's must name the same modules;
4. every ``network_weights`` key under ``key_to_encoder`` (prefix stripped) loads STRICTLY into
   ``network.get_submodule(key_to_encoder)``; the same for the stem; ``keys_to_in_proj[0] + ".weight"`` is a
   key of the stem weights (read when channels must be adapted).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def sub_state(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def check_upstream_readable(path: Path, num_output_channels: int = 2) -> torch.nn.Module:
    """Run the checks above on a checkpoint file; returns the network with the encoder loaded.

    Raises AssertionError (or the loader's RuntimeError) naming what upstream would trip over.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    ckpt = torch.load(path, weights_only=True)
    ap = ckpt["nnssl_adaptation_plan"]
    first = next(iter(ap["pretrain_plan"]["configurations"].values()))
    assert len(first["spacing"]) == 3 and all(isinstance(s, float) for s in first["spacing"]), first["spacing"]
    assert len(first["patch_size"]) == 3 and all(isinstance(p, int) for p in first["patch_size"])
    for key in ("key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe", "pretrain_num_input_channels",
                "recommended_downstream_patchsize"):
        assert key in ap, f"nnssl_adaptation_plan lacks {key}"
    assert ap["key_to_lpe"] is None
    arch_plans = dict(ap["architecture_plans"])
    architecture = {"network_class_name": arch_plans.pop("arch_class_name"),
                    "_kw_requires_import": arch_plans.pop("arch_kwargs_requiring_import"), **arch_plans}
    json.dumps(architecture)  # upstream writes it into a plans JSON
    json.dumps(first["spacing"]), json.dumps(ap["recommended_downstream_patchsize"])
    assert len(ap["recommended_downstream_patchsize"]) == 3
    n_in = int(ap["pretrain_num_input_channels"])
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], n_in, num_output_channels,
                                     deep_supervision=False)
    assert ap["key_to_encoder"] == network.key_to_encoder
    assert ap["key_to_stem"] == network.key_to_stem
    assert sorted(ap["keys_to_in_proj"]) == sorted(network.keys_to_in_proj)
    weights = ckpt["network_weights"]
    assert all(v.device.type == "cpu" for v in weights.values())
    encoder = sub_state(weights, ap["key_to_encoder"])
    network.get_submodule(ap["key_to_encoder"]).load_state_dict(encoder)  # strict, as upstream
    stem = sub_state(weights, ap["key_to_stem"])
    network.get_submodule(ap["key_to_stem"]).load_state_dict(stem)
    in_proj = ap["keys_to_in_proj"][0] + ".weight"
    assert in_proj in weights and weights[in_proj].shape[1] == n_in
    loaded = network.get_submodule(ap["key_to_encoder"]).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in encoder.items())
    return network
