"""Weight surgery (nnunetv2_petct.transfer.weights) on real dynamic_network_architectures U-Nets, in-process."""

from __future__ import annotations

import pytest
import torch

from nnunetv2_petct.transfer import weights as W

# PlainConvUNet as nnU-Net builds it, tiny: 3 stages, features 4-8-16, InstanceNorm, LeakyReLU.
ARCH = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 3,
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2, 2, 2],
            n_conv_per_stage_decoder=[2, 2], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
            nonlin_kwargs={"inplace": True})
# The input projection of PlainConvUNet: the first conv, registered as .conv and .all_modules.0, and
# reachable both as encoder.* and through the decoder's reference decoder.encoder.* (4 keys, 1 tensor).
IN_PROJ = sorted(f"{p}stages.0.0.convs.0.{m}.weight" for p in ("encoder.", "decoder.encoder.")
                 for m in ("conv", "all_modules.0"))


def unet(in_ch: int, out_ch: int = 2, seed: int = 0, features=None):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    kw = dict(ARCH)
    if features is not None:
        kw["features_per_stage"] = features
    net = PlainConvUNet(input_channels=in_ch, num_classes=out_ch, deep_supervision=False, **kw)
    with torch.no_grad():  # non-trivial norm parameters, so averaging/selection errors show
        for n, p in net.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def ckpt(net, names=None) -> dict:
    c = {"network_weights": {k: v.clone() for k, v in net.state_dict().items()}}
    if names is not None:
        c["nnssl_adaptation_plan"] = {
            "pretrain_num_input_channels": len(names),
            "keys_to_in_proj": ["encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0"],
            "channel_names": list(names),
            "normalization_schemes": ["CTNormalization", "ZScoreNormalization"][: len(names)] if len(names) == 2
            else ["ZScoreNormalization"],
            "foreground_intensity_properties_per_channel": {str(i): {"mean": float(i)} for i in range(len(names))},
        }
    return c


def load_non_output(net, checkpoint) -> None:
    """What nnU-Net's -pretrained_weights does: every key except .seg_layers., shapes must match."""
    sd = net.state_dict()
    src = W.state_dict_of(checkpoint)
    for k in sd:
        if not W.is_output_key(k):
            assert src[k].shape == sd[k].shape, k
            sd[k] = src[k]
    net.load_state_dict(sd)


def test_input_projection_keys_found_with_and_without_names():
    net = unet(2)
    assert W.find_input_projection_keys(net) == IN_PROJ  # by tensor identity (aliases)
    names = ["encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0"]
    assert W.find_input_projection_keys(net, names) == IN_PROJ  # by name (+ decoder alias)
    assert W.input_channel_count(net) == 2


def test_keep_pet_slices_input_projection_and_computes_the_same_as_zero_ct():
    two = unet(2, seed=1)
    out = W.select_input_channels(ckpt(two, ("CT", "PET")), ["PET"])
    sd2, sd1 = two.state_dict(), out["network_weights"]
    for k in IN_PROJ:
        assert sd1[k].shape == (4, 1, 3, 3, 3)
        assert torch.equal(sd1[k], sd2[k][:, 1:2])
    others = [k for k in sd2 if k not in IN_PROJ]
    assert all(torch.equal(sd1[k], sd2[k]) for k in others)
    # metadata follows the selection
    plan = out["nnssl_adaptation_plan"]
    assert plan["pretrain_num_input_channels"] == 1
    assert plan["channel_names"] == ["PET"] and plan["normalization_schemes"] == ["ZScoreNormalization"]
    assert plan["foreground_intensity_properties_per_channel"] == {"0": {"mean": 1.0}}
    assert out["petct_metadata"]["adaptations"][-1]["kept_channels"] == [1]
    # the 1-channel network on PET alone == the 2-channel network on (CT = 0, PET): conv is linear and
    # the CT slice multiplies zeros
    one = unet(1, seed=99)
    load_non_output(one, out)
    one.decoder.seg_layers.load_state_dict(two.decoder.seg_layers.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        y1 = one(x)
        y2 = two(torch.cat([torch.zeros_like(x), x], 1))
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)


def test_keep_by_index_and_bad_channel_names():
    c = ckpt(unet(2), ("CT", "PET"))
    assert W.select_input_channels(c, ["0"])["petct_metadata"]["channel_names"] == {"0": "CT"}
    with pytest.raises(ValueError, match="not in the checkpoint's channels"):
        W.select_input_channels(c, ["MR"])
    with pytest.raises(ValueError, match="out of range"):
        W.select_input_channels(c, [2])
    with pytest.raises(ValueError, match="distinct"):
        W.select_input_channels(c, ["CT", "0"])


def test_merge_second_rule_by_hand_first_conv_only():
    a, b = unet(1, out_ch=1, seed=2), unet(1, out_ch=1, seed=3)
    m = W.merge_single_channel_checkpoints([ckpt(a, ("CT",)), ckpt(b, ("PET",))], rule="second")
    sa, sb, sm = a.state_dict(), b.state_dict(), m["network_weights"]
    for k in IN_PROJ:  # [w_ct, w_pet]: each channel keeps its own network's first-layer filters, unscaled
        assert torch.equal(sm[k], torch.cat([sa[k], sb[k]], 1))
    k = "encoder.stages.1.0.convs.0.conv.weight"  # everything else: the PET network's tensors, unchanged
    assert torch.equal(sm[k], sb[k])
    k = "decoder.seg_layers.1.weight"  # output layers: reconstruction heads side by side
    assert sm[k].shape[0] == 2 and torch.equal(sm[k][0], sa[k][0]) and torch.equal(sm[k][1], sb[k][0])
    plan = m["nnssl_adaptation_plan"]
    assert plan["pretrain_num_input_channels"] == 2 and plan["channel_names"] == ["CT", "PET"]
    meta = m["petct_metadata"]
    assert "first-conv only" in meta["adaptations"][-1]["rule"] and "checkpoint 2 (PET)" in meta["adaptations"][-1]["rule"]
    assert "fine-tuning only" in meta["intended_use"]
    # the merged checkpoint loads into a 2-channel network (nnU-Net's shape rule)
    assert W.check_compatibility(m, unet(2)).ok


def test_merge_first_rule_keeps_the_ct_network_exact_for_ct_input():
    a, b = unet(1, seed=4), unet(1, seed=5)
    m = W.merge_single_channel_checkpoints([ckpt(a), ckpt(b)], rule="first")
    two = unet(2, seed=6)
    load_non_output(two, m)
    two.decoder.seg_layers.load_state_dict(a.decoder.seg_layers.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():  # PET = 0: only the CT slice (a's own weights) contributes, rest is a's network
        torch.testing.assert_close(two(torch.cat([x, torch.zeros_like(x)], 1)), a(x), rtol=1e-5, atol=1e-5)


def test_merge_refuses_bad_inputs():
    with pytest.raises(ValueError, match="single-channel"):
        W.merge_single_channel_checkpoints([ckpt(unet(2)), ckpt(unet(1))], rule="first")
    with pytest.raises(ValueError, match="different architecture"):
        W.merge_single_channel_checkpoints([ckpt(unet(1)), ckpt(unet(1, features=[4, 8, 8]))], rule="first")
    with pytest.raises(ValueError, match="unknown merge rule"):
        W.merge_single_channel_checkpoints([ckpt(unet(1)), ckpt(unet(1))], rule="max")
    # averaging was removed on purpose: unaligned networks averaged compute neither network's features
    with pytest.raises(ValueError, match="neither network's features"):
        W.merge_single_channel_checkpoints([ckpt(unet(1)), ckpt(unet(1))], rule="average")
    with pytest.raises(TypeError):  # no default rule
        W.merge_single_channel_checkpoints([ckpt(unet(1)), ckpt(unet(1))])


def test_check_compatibility_reports_and_suggests_the_fix():
    c = ckpt(unet(2))
    ok = W.check_compatibility(c, unet(2, out_ch=3))  # output layers differ: not transferred, fine
    assert ok.ok and ok.n_transferred > 0
    rep = W.check_compatibility(c, unet(1))
    assert not rep.ok and rep.only_input_channels_differ
    assert sorted(k for k, _, _ in rep.shape_mismatches) == IN_PROJ
    assert "nnUNetv2_petct_adapt_checkpoint" in rep.message()
    rep = W.check_compatibility(c, unet(2, features=[4, 8, 32]))
    assert not rep.ok and not rep.only_input_channels_differ
    msg = rep.message()
    assert "nnUNetv2_move_plans_between_datasets" in msg
    assert "encoder.stages.2.0.convs.0.conv.weight: (16, 8, 3, 3, 3) vs (32, 8, 3, 3, 3)" in msg
    with pytest.raises(W.IncompatibleCheckpointError, match="move_plans"):
        W.require_compatible(c, unet(2, features=[4, 8, 32]))
    missing = W.check_compatibility({"network_weights": {"x.weight": torch.zeros(1)}}, unet(2))
    assert not missing.ok and "encoder.stages.0.0.convs.0.conv.weight" in missing.missing


def test_digest_and_differing_tensors_see_a_one_ulp_change():
    net = unet(2)
    a = ckpt(net)
    b = ckpt(net)
    k = "encoder.stages.1.0.convs.1.norm.bias"
    b["network_weights"][k][0] = torch.nextafter(b["network_weights"][k][0], torch.tensor(1e9))
    assert W.tensor_digest(a) != W.tensor_digest(b)
    assert W.differing_tensors(a, b) == [k]
    c = ckpt(net)
    c["network_weights"]["decoder.seg_layers.0.weight"].add_(1.0)  # output layers are skipped by default
    assert W.tensor_digest(a) == W.tensor_digest(c) and W.differing_tensors(a, c) == []
    assert W.differing_tensors(a, c, skip_output=False) == ["decoder.seg_layers.0.weight"]


def test_load_checkpoint_is_weights_only_and_wraps_state_dicts(tmp_path):
    net = unet(1)
    torch.save(net.state_dict(), tmp_path / "sd.pth")
    c = W.load_checkpoint(tmp_path / "sd.pth")
    assert set(c) == {"network_weights"} and W.differing_tensors(c, net) == []
    torch.save({"network_weights": {"module._orig_mod.a": torch.ones(2)}}, tmp_path / "wrapped.pth")
    assert list(W.load_checkpoint(tmp_path / "wrapped.pth")["network_weights"]) == ["module._orig_mod.a"]
    assert list(W.state_dict_of(W.load_checkpoint(tmp_path / "wrapped.pth"))) == ["a"]

    import datetime

    # anything that needs unpickling of a class outside torch's allow-list must be refused
    torch.save({"network_weights": {}, "x": datetime.date(2020, 1, 1)}, tmp_path / "evil.pth")
    with pytest.raises(W.UnsafeCheckpointError, match=r"not a weights-only checkpoint: it references datetime\.date"):
        W.load_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError):
        W.load_checkpoint(tmp_path / "nope.pth")
