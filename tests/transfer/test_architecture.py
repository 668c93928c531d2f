"""The paper's U-Net as a plans entry, building networks from plans entries, aliases and channel permutation."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunetv2_petct.transfer.architecture import (
    PAPER_ARCHITECTURE,
    ArchitectureError,
    aliases_of,
    build_network,
    compare_with_architecture,
    locate,
    network_keys,
    paper_architecture,
    permute_channels,
    total_stride,
)
from tests.transfer.liu2026_replica import issue_facts_network


def test_paper_architecture_is_the_authors_network():
    ours = build_network(PAPER_ARCHITECTURE, 2, 2, device="cpu")
    theirs = issue_facts_network()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    n_params = sum(p.numel() for p in ours.parameters())
    assert round(n_params / 1e6, 1) == 31.2  # "about 31.2 M parameters" (the released file)
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.eps == 1e-5 and m.affine for m in norms)
    acts = [m for m in ours.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.01 for m in acts)
    assert not any(isinstance(m, torch.nn.Dropout3d | torch.nn.Dropout) for m in ours.modules())
    convs = [m for m in ours.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 12 and all(c.kernel_size == (3, 3, 3) and c.bias is not None for c in convs)
    assert total_stride(PAPER_ARCHITECTURE["arch_kwargs"]) == [32, 32, 32]
    assert paper_architecture() == PAPER_ARCHITECTURE and paper_architecture() is not PAPER_ARCHITECTURE


def test_network_keys_come_from_the_instance():
    # dynamic_network_architectures sets them in __init__: a class-level lookup finds nothing
    assert getattr(PlainConvUNet, "key_to_encoder", None) is None
    net = build_network(PAPER_ARCHITECTURE, 2, 2)
    keys = network_keys(net)
    assert keys["key_to_encoder"] == net.key_to_encoder and keys["key_to_stem"] == net.key_to_stem
    assert keys["keys_to_in_proj"] == list(net.keys_to_in_proj) and keys["key_to_lpe"] is None
    resenc = ResidualEncoderUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1])
    assert network_keys(resenc)["key_to_stem"] == resenc.key_to_stem
    with pytest.raises(ArchitectureError, match="key_to_encoder"):
        network_keys(torch.nn.Conv3d(1, 1, 1))


def test_build_network_on_meta_and_errors():
    net = build_network(PAPER_ARCHITECTURE, 2, 3)  # meta device: no memory
    assert net.encoder.stages[0][0].convs[0].conv.weight.is_meta
    assert net.decoder.seg_layers[-1].weight.shape[0] == 3
    assert locate("PlainConvUNet") is PlainConvUNet  # short name: only dynamic_network_architectures' unet module
    with pytest.raises(ArchitectureError, match="NoSuchNet"):
        build_network({"network_class_name": "dynamic_network_architectures.architectures.unet.NoSuchNet"}, 2, 2)
    with pytest.raises(ArchitectureError, match="rejects"):
        build_network({"network_class_name": PAPER_ARCHITECTURE["network_class_name"], "arch_kwargs": {"x": 1}}, 2, 2)


def test_compare_with_architecture_lists_each_difference():
    assert compare_with_architecture(issue_facts_network().state_dict(), PAPER_ARCHITECTURE, 2, 2) == []
    one_channel = issue_facts_network(n_in=1).state_dict()
    diffs = compare_with_architecture(one_channel, PAPER_ARCHITECTURE, 2, 2)
    # the first conv and its three aliases: (32, 1, 3, 3, 3) instead of (32, 2, 3, 3, 3)
    assert len(diffs) == 4 and all("(32, 1, 3, 3, 3) in the file" in d for d in diffs)
    sd = issue_facts_network().state_dict()
    sd.pop("decoder.seg_layers.4.bias")
    sd["extra.weight"] = torch.zeros(1)
    diffs = compare_with_architecture(sd, PAPER_ARCHITECTURE, 2, 2)
    assert diffs == ["missing decoder.seg_layers.4.bias", "unexpected extra.weight"]


def test_aliases_of_the_first_convolution():
    sd = issue_facts_network().state_dict()
    expected = ["encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.all_modules.0.weight",
                "decoder.encoder.stages.0.0.convs.0.conv.weight",
                "decoder.encoder.stages.0.0.convs.0.all_modules.0.weight"]
    assert sorted(aliases_of(sd, expected[0])) == sorted(expected)
    copied = {k: v.clone() for k, v in sd.items()}  # sharing lost (e.g. a re-saved copy): equal values still count
    assert sorted(aliases_of(copied, expected[0])) == sorted(expected)
    # a bias of the same conv is a different tensor
    assert aliases_of(sd, "encoder.stages.0.0.convs.0.conv.bias") == [
        "encoder.stages.0.0.convs.0.conv.bias", "encoder.stages.0.0.convs.0.all_modules.0.bias",
        "decoder.encoder.stages.0.0.convs.0.conv.bias", "decoder.encoder.stages.0.0.convs.0.all_modules.0.bias"]


def test_permute_channels_makes_a_new_tensor():
    w = torch.arange(12.0).reshape(2, 3, 2)
    out = permute_channels(w, [2, 0, 1], dim=1)
    assert torch.equal(out[:, 0], w[:, 2]) and torch.equal(out[:, 1], w[:, 0]) and torch.equal(out[:, 2], w[:, 1])
    out[0, 0, 0] = -1
    assert w[0, 2, 0] == 4.0  # the input is untouched
