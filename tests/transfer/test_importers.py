"""Importing the authors' released weights (a replica built here from the published facts) and our own older
foundation checkpoints (nnunetv2_petct.transfer.importers)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from nnunetv2_petct.transfer.foundation import FORMAT, build_foundation_checkpoint, load_foundation_checkpoint
from nnunetv2_petct.transfer.importers import (
    FORMATS,
    WeightsImportError,
    detect_format,
    import_checkpoint,
    import_weights,
)
from tests.transfer.liu2026_replica import MultiModalMIMWrapper, issue_facts_network, write_replica
from tests.transfer.upstream_reader import check_upstream_readable

FIRST_CONV_ALIASES = {
    "encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.all_modules.0.weight",
    "decoder.encoder.stages.0.0.convs.0.conv.weight", "decoder.encoder.stages.0.0.convs.0.all_modules.0.weight",
}


@pytest.fixture(scope="module")
def wrapper():
    return MultiModalMIMWrapper(seed=3)


@pytest.fixture(scope="module")
def source_sd(wrapper):
    """The replica's U-Net state dict with the DNA key names (the authors' channel order: PET, CT)."""
    return {k: v.detach().clone() for k, v in wrapper.nnunet.state_dict().items()}


@pytest.fixture(scope="module")
def replica(tmp_path_factory, wrapper):
    return write_replica(tmp_path_factory.mktemp("liu") / "nnunet_v2_mim_best.pth", wrapper)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, replica):
    out = tmp_path_factory.mktemp("imported") / "foundation_liu2026.pth"
    path, _ = import_weights(replica, out, "liu2026")
    return path


def test_replica_has_the_published_layout(replica):
    raw = torch.load(replica, weights_only=True)  # the facts say the real file loads like this
    assert set(raw) == {"epoch", "model_state_dict", "optimizer_state_dict", "scaler_state_dict",
                        "scheduler_state_dict", "best_loss"}
    assert all(k.startswith("nnunet.") for k in raw["model_state_dict"])
    assert detect_format(raw) == "liu2026"


def test_import_round_trips_every_tensor(imported, source_sd):
    ckpt = torch.load(imported, weights_only=True)  # weights_only-safe
    w = ckpt["network_weights"]
    assert set(w) == set(source_sd)  # prefix stripped, nothing added, nothing lost
    heads = {k for k in source_sd if ".seg_layers." in k}
    assert len(heads) == 10  # 5 reconstruction heads (weight + bias)
    for k, src in source_sd.items():
        if k in FIRST_CONV_ALIASES:  # (PET, CT) -> (CT, PET) along the input-channel dimension
            assert torch.equal(w[k][:, 0], src[:, 1]) and torch.equal(w[k][:, 1], src[:, 0]), k
        elif k in heads:  # reconstruction outputs (PET, CT) -> (CT, PET)
            assert torch.equal(w[k][0], src[1]) and torch.equal(w[k][1], src[0]), k
        else:
            assert torch.equal(w[k], src), k
    assert not any(k in ckpt for k in ("optimizer_state_dict", "scaler_state_dict", "scheduler_state_dict",
                                       "model_state_dict"))


def test_every_alias_is_swapped_so_loading_keeps_the_swap(imported, source_sd):
    # load_state_dict assigns key after key: a missed alias would overwrite the swapped tensor
    net = issue_facts_network()
    net.load_state_dict(torch.load(imported, weights_only=True)["network_weights"])
    src = source_sd["encoder.stages.0.0.convs.0.conv.weight"]
    assert torch.equal(net.encoder.stages[0][0].convs[0].conv.weight, src[:, [1, 0]])
    assert torch.equal(net.decoder.encoder.stages[0][0].convs[0].all_modules[0].weight, src[:, [1, 0]])


def test_ct_only_input_gives_the_source_first_layer_response(imported, wrapper):
    torch.manual_seed(0)
    ct = torch.randn(1, 1, 16, 24, 24)
    zero = torch.zeros_like(ct)
    src_conv = wrapper.nnunet.encoder.stages[0][0].convs[0].conv
    net = issue_facts_network()
    net.load_state_dict(torch.load(imported, weights_only=True)["network_weights"])
    ours = net.encoder.stages[0][0].convs[0].conv
    with torch.no_grad():
        expected = src_conv(torch.cat([zero, ct], 1))  # the source's order: PET, CT
        got = ours(torch.cat([ct, zero], 1))  # ours: CT, PET
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # and the whole network: same reconstruction, outputs in our channel order
    wrapper.nnunet.eval(), net.eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        src_out = wrapper.nnunet(torch.cat([torch.zeros_like(x), x], 1))
        our_out = net(torch.cat([x, torch.zeros_like(x)], 1))
    assert torch.allclose(our_out, src_out[:, [1, 0]], atol=1e-5, rtol=1e-4)


def test_data_parallel_variant_gives_the_same_checkpoint(tmp_path, wrapper, imported):
    dp = write_replica(tmp_path / "dp.pth", wrapper, data_parallel=True)
    assert next(iter(torch.load(dp, weights_only=True)["model_state_dict"])).startswith("module.nnunet.")
    ckpt = import_checkpoint(dp)  # auto-detected
    ref = torch.load(imported, weights_only=True)["network_weights"]
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in ref.items())
    assert ckpt["petct_metadata"]["import"]["source_key_prefix"] == "module.nnunet."


def test_provenance_metadata_and_adaptation_plan(imported, replica, tmp_path):
    ckpt = load_foundation_checkpoint(imported)
    info = ckpt["petct_metadata"]["import"]
    assert info["sha256"] == hashlib.sha256(replica.read_bytes()).hexdigest()
    assert info["format"] == "liu2026" and info["file_name"] == "nnunet_v2_mim_best.pth"
    assert set(info["input_projection_keys"]) == FIRST_CONV_ALIASES
    assert any("optimizer_state_dict" in c for c in info["changes"])
    assert ckpt["petct_metadata"]["channel_order"] == ["CT", "PET"]
    assert ckpt["petct_metadata"]["epoch"] == 187 and ckpt["petct_metadata"]["best_loss"] == pytest.approx(0.0421)
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan["spacing"] == [3.0, 2.0, 2.0] and plan["patch_size"] == [96, 128, 128]
    assert plan["normalization_schemes"] == ["ZScoreNormalization", "ZScoreNormalization"]
    assert plan["use_mask_for_norm"] == [False, False]
    assert plan["channel_names"] == ["CT", "PET"] and plan["pretrain_num_input_channels"] == 2
    assert ckpt["citations"][0]["apa_citations"]
    check_upstream_readable(imported)


def test_refuses_a_file_of_another_architecture(tmp_path, wrapper):
    sd = {f"nnunet.{k}": v for k, v in issue_facts_network(n_in=1).state_dict().items()}
    path = write_replica(tmp_path / "one_channel.pth", wrapper, model_state_dict=sd)
    with pytest.raises(WeightsImportError, match=r"not the declared architecture.*\(32, 1, 3, 3, 3\) in the file"):
        import_checkpoint(path, "liu2026")
    sd = {k: v for k, v in torch.load(tmp_path / "one_channel.pth", weights_only=True)["model_state_dict"].items()
          if "stages.5" not in k}
    path = write_replica(tmp_path / "five_stages.pth", wrapper, model_state_dict=sd)
    with pytest.raises(WeightsImportError, match="missing encoder.stages.5"):
        import_checkpoint(path)


def test_format_detection_and_refusals(tmp_path, wrapper, imported):
    assert set(FORMATS) >= {"liu2026", "petct-foundation"}
    unknown = tmp_path / "unknown.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, unknown)
    with pytest.raises(WeightsImportError, match="none of the known formats"):
        import_checkpoint(unknown)
    nnssl = tmp_path / "nnssl.pth"
    torch.save({"network_weights": {"a": torch.zeros(1)}, "nnssl_adaptation_plan": {}}, nnssl)
    with pytest.raises(WeightsImportError, match="nnssl checkpoint"):
        import_checkpoint(nnssl)
    with pytest.raises(WeightsImportError, match="is not a liu2026 file"):
        import_checkpoint(imported, "liu2026")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        import_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "truncated.pth").write_bytes(imported.read_bytes()[:1000])
    with pytest.raises(WeightsImportError, match="download complete"):
        import_checkpoint(tmp_path / "truncated.pth")
    out = tmp_path / "exists.pth"
    out.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        import_weights(imported, out)
    assert out.read_bytes() == b"x"


def test_numpy_bookkeeping_needs_trust_pickle(tmp_path, wrapper):
    path = write_replica(tmp_path / "np.pth", wrapper, best_loss=np.float64(0.05))
    with pytest.raises(WeightsImportError, match="--trust-pickle"):
        import_checkpoint(path)
    ckpt = import_checkpoint(path, trust_pickle=True)
    assert ckpt["petct_metadata"]["best_loss"] == pytest.approx(0.05)
    assert ckpt["petct_metadata"]["import"]["loaded_with_weights_only"] is False


def test_rewrites_our_version_1_checkpoints(tmp_path):
    from tests.transfer.test_foundation import plain_unet, plans_for

    net = plain_unet()
    plans = plans_for()
    plans["configurations"] = {"2d": {"patch_size": [40, 40], "spacing": [6.0, 6.0]}, **plans["configurations"]}
    ckpt = build_foundation_checkpoint(net.state_dict(), plans, "3d_fullres", 2, {"trainer_name": "x"}, ["CT", "PET"])
    # what version 1 wrote: every configuration and hard-coded keys (upstream's route failed on both)
    ckpt["format_version"] = 1
    ckpt["nnssl_adaptation_plan"].update(pretrain_plan=plans, key_to_encoder="encoder",
                                         key_to_stem="encoder.stages.0.0.convs.0")
    old = tmp_path / "foundation_final.pth"
    torch.save(ckpt, old)
    assert detect_format(torch.load(old, weights_only=True)) == "petct-foundation"
    path, new = import_weights(old, tmp_path / "foundation_v2.pth")
    assert new["format"] == FORMAT and new["format_version"] == 2
    assert new["petct_metadata"]["trainer_name"] == "x"
    assert new["petct_metadata"]["import"]["source_format_version"] == 1
    assert all(torch.equal(new["network_weights"][k], v) for k, v in net.state_dict().items())
    check_upstream_readable(path)
