"""Foundation checkpoints (nnunetv2_petct.transfer.foundation): contents, weights_only safety, validation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_petct.transfer.foundation import (
    FoundationCheckpointError,
    architecture_keys,
    build_foundation_checkpoint,
    check_writable_folder,
    load_foundation_checkpoint,
    save_foundation_checkpoint,
    strip_wrapper_prefixes,
    to_weights_only_safe,
    validate_foundation_checkpoint,
)
from tests.transfer.upstream_reader import check_upstream_readable

ARCH_KWARGS = {
    "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


RESENC_KWARGS = {
    "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


def plans_for(arch_class: str = "PlainConvUNet", arch_kwargs: dict | None = None) -> dict:
    return {
        "dataset_name": "Dataset501_X", "plans_name": "nnUNetPlans",
        "foreground_intensity_properties_per_channel": {"0": {"mean": -100.0}, "1": {"mean": 8.0}},
        "configurations": {
            "3d_fullres": {
                "patch_size": [32, 32, 32], "spacing": [8.0, 6.0, 6.0], "batch_size": 2,
                "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "architecture": {
                    "network_class_name": f"dynamic_network_architectures.architectures.unet.{arch_class}",
                    "arch_kwargs": arch_kwargs or dict(ARCH_KWARGS),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            },
            "3d_bigger": {"inherits_from": "3d_fullres", "patch_size": [64, 64, 64]},
        },
    }


def plain_unet(n_in: int = 2):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(n_in, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 2, n_in, [2, 2], conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=False)


def resenc_unet(n_in: int = 2):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(n_in, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 2, 2], n_in, [1, 1],
                               conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                               norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                               deep_supervision=False)


METADATA = {"trainer_name": "nnUNetTrainerPETCTMAE", "epoch": np.int64(3), "val_loss": np.float32(0.5),
            "version": torch.__version__, "spacing": (3.0, 2.0, 2.0), "where": Path("/x/y")}


def test_checkpoint_loads_with_weights_only_and_keeps_nnunet_key_names(tmp_path):
    net = plain_unet()
    wrapped_sd = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}  # DDP + compile
    ckpt = build_foundation_checkpoint(wrapped_sd, plans_for(), "3d_fullres", 2, METADATA, ["CT", "PET"])
    path = save_foundation_checkpoint(ckpt, tmp_path / "foundation_final.pth")
    loaded = torch.load(path, weights_only=True)  # raises if anything but plain types is inside
    assert set(loaded["network_weights"]) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(loaded["network_weights"][k], v)
    meta = loaded["petct_metadata"]
    # numpy -> Python, tuple -> list, Path -> str, TorchVersion (a str subclass) -> str
    assert meta["epoch"] == 3 and type(meta["epoch"]) is int
    assert meta["spacing"] == [3.0, 2.0, 2.0] and meta["where"] == "/x/y" and type(meta["version"]) is str
    assert load_foundation_checkpoint(path)["format_version"] == 2


def test_adaptation_plan_fields_for_plain_unet():
    net = plain_unet()
    plan = build_foundation_checkpoint(net.state_dict(), plans_for(), "3d_fullres", 2, {})["nnssl_adaptation_plan"]
    # the full dotted name: a short one makes nnU-Net import every architecture module (primus breaks on CPU)
    assert plan["architecture_plans"]["arch_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert plan["architecture_plans"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert plan["architecture_plans"]["arch_kwargs_requiring_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    assert plan["architecture"]["network_class_name"].endswith(".PlainConvUNet")
    assert plan["pretrain_plan"]["dataset_name"] == "Dataset501_X"
    assert plan["pretrain_num_input_channels"] == 2
    assert plan["patch_size"] == [32, 32, 32] == plan["recommended_downstream_patchsize"]
    assert plan["spacing"] == [8.0, 6.0, 6.0]
    assert plan["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    # the module keys are the network instance's own attributes (dynamic_network_architectures sets them)
    assert plan["key_to_encoder"] == net.key_to_encoder == "encoder.stages"
    assert plan["key_to_stem"] == net.key_to_stem == "encoder.stages.0"
    assert plan["keys_to_in_proj"] == list(net.keys_to_in_proj)
    assert plan["key_to_lpe"] is None
    for key in plan["keys_to_in_proj"]:
        assert net.state_dict()[f"{key}.weight"].shape[1] == 2
    json.dumps(plan)  # upstream copies parts of it into a plans JSON


def test_pretrain_plan_holds_only_the_trained_configuration():
    plans = plans_for()
    # nnU-Net lists 2d first; upstream reads the FIRST configuration's spacing and patch
    plans["configurations"] = {"2d": {"patch_size": [40, 40], "spacing": [6.0, 6.0]}, **plans["configurations"]}
    plan = build_foundation_checkpoint(plain_unet().state_dict(), plans, "3d_fullres", 2, {})["nnssl_adaptation_plan"]
    configs = plan["pretrain_plan"]["configurations"]
    assert list(configs) == ["3d_fullres"]
    first = next(iter(configs.values()))
    assert first["spacing"] == [8.0, 6.0, 6.0] and first["patch_size"] == [32, 32, 32]
    assert plans["configurations"]["2d"]  # the caller's plans are not modified


def test_adaptation_plan_for_resenc_and_inherited_configuration():
    net = resenc_unet(1)
    plan = build_foundation_checkpoint(net.state_dict(), plans_for("ResidualEncoderUNet", RESENC_KWARGS), "3d_bigger",
                                       1, {})["nnssl_adaptation_plan"]
    assert plan["key_to_encoder"] == net.key_to_encoder == "encoder.stages"
    assert plan["key_to_stem"] == net.key_to_stem == "encoder.stem"
    assert sorted(plan["keys_to_in_proj"]) == ["encoder.stem.convs.0.all_modules.0", "encoder.stem.convs.0.conv"]
    assert plan["patch_size"] == [64, 64, 64]  # own entry
    assert plan["spacing"] == [8.0, 6.0, 6.0]  # inherited from 3d_fullres
    assert plan["pretrain_num_input_channels"] == 1
    assert list(plan["pretrain_plan"]["configurations"]) == ["3d_bigger"]
    assert "inherits_from" not in plan["pretrain_plan"]["configurations"]["3d_bigger"]


@pytest.mark.parametrize("arch", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_saved_checkpoint_passes_what_upstream_nnunet_reads(tmp_path, arch):
    net = plain_unet() if arch == "PlainConvUNet" else resenc_unet()
    kwargs = None if arch == "PlainConvUNet" else RESENC_KWARGS
    for p in net.parameters():  # distinct values, so that a wrong key mapping cannot load equal tensors
        torch.nn.init.normal_(p)
    ckpt = build_foundation_checkpoint(net.state_dict(), plans_for(arch, kwargs), "3d_fullres", 2, METADATA)
    path = save_foundation_checkpoint(ckpt, tmp_path / "foundation_final.pth")
    check_upstream_readable(path)


def test_unknown_architecture_falls_back_to_the_first_conv():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Module()
            self.enc.first = torch.nn.Conv3d(2, 4, 3)
            self.enc.alias = self.enc.first  # same tensor under a second name
            self.head = torch.nn.Conv3d(4, 2, 1)

    keys = architecture_keys({"network_class_name": "torch.nn.Identity", "arch_kwargs": {}}, Net().state_dict(), 2)
    assert (keys["key_to_encoder"], keys["key_to_stem"], keys["keys_to_in_proj"]) == ("enc", "enc",
                                                                                      ["enc.first", "enc.alias"])
    assert keys["source"] == "state-dict guess"


def test_architecture_keys_must_fit_the_state_dict():
    sd = {k: v for k, v in plain_unet().state_dict().items() if not k.startswith("encoder.stages.0.")}
    arch = plans_for()["configurations"]["3d_fullres"]["architecture"]
    with pytest.raises(FoundationCheckpointError, match="encoder.stages.0"):
        architecture_keys(arch, sd, 2)


def test_validation_catches_missing_parts_and_wrong_channel_count():
    net = plain_unet()
    ckpt = build_foundation_checkpoint(net.state_dict(), plans_for(), "3d_fullres", 2, {})
    broken = dict(ckpt)
    del broken["nnssl_adaptation_plan"]
    with pytest.raises(FoundationCheckpointError, match="nnssl_adaptation_plan"):
        validate_foundation_checkpoint(broken)
    # claims 1 input channel, but the first conv takes 2
    with pytest.raises(FoundationCheckpointError, match="pretrain_num_input_channels=1"):
        build_foundation_checkpoint(net.state_dict(), plans_for(), "3d_fullres", 1, {})
    with pytest.raises(FoundationCheckpointError, match="configuration '2d'"):
        build_foundation_checkpoint(net.state_dict(), plans_for(), "2d", 2, {})
    with pytest.raises(FoundationCheckpointError, match="collide|both map"):
        strip_wrapper_prefixes({"module.a": torch.zeros(1), "a": torch.zeros(1)})


def test_unsafe_objects_are_refused_with_their_location():
    with pytest.raises(FoundationCheckpointError, match=r"petct_metadata\.bad"):
        to_weights_only_safe({"petct_metadata": {"bad": object()}})
    with pytest.raises(FoundationCheckpointError, match="key"):
        to_weights_only_safe({(1, 2): 3})
    assert to_weights_only_safe({"a": np.arange(3), "b": (1, np.float64(2.5))}) == {"a": [0, 1, 2], "b": [1, 2.5]}


def test_load_refuses_training_checkpoints_and_missing_files(tmp_path):
    torch.save({"network_weights": {}, "init_args": {"x": np.zeros(2)}}, tmp_path / "checkpoint_final.pth")
    with pytest.raises(FoundationCheckpointError, match="weights_only"):
        load_foundation_checkpoint(tmp_path / "checkpoint_final.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_foundation_checkpoint(tmp_path / "nope.pth")


def test_unwritable_outputs_raise_naming_the_folder(tmp_path):
    ckpt = build_foundation_checkpoint(plain_unet().state_dict(), plans_for(), "3d_fullres", 2, {})
    with pytest.raises(FileNotFoundError, match="missing"):
        save_foundation_checkpoint(ckpt, tmp_path / "missing" / "foundation_final.pth")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=str(blocker / "fold_all")):
        check_writable_folder(blocker / "fold_all")  # a parent is a file (fails for root too)
    assert check_writable_folder(tmp_path / "new" / "fold_0").is_dir()
    assert not list((tmp_path / "new" / "fold_0").iterdir())  # the probe file is gone
