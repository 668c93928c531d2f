"""The paper preset's plans and plans rebuilt from a foundation checkpoint (nnunetv2_petct.nnunet.plans, pure JSON)."""

from __future__ import annotations

import copy
import json

import pytest

from nnunetv2_petct.nnunet.plans import (
    PlansError,
    check_patch_size,
    check_target_channels,
    paper_plans,
    plans_for_checkpoint,
    write_plans,
)
from nnunetv2_petct.transfer.foundation import normalization_mismatch


def base_plans(transpose=(0, 1, 2)) -> dict:
    """Plans as nnU-Net's planner writes them for a PET/CT dataset (shortened; values of the tiny phantoms)."""
    return {
        "dataset_name": "Dataset501_X", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [8.0, 6.0, 6.0],
        "original_median_shape_after_transp": [32, 40, 40],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose),
        "transpose_backward": [list(transpose).index(i) for i in range(3)],
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": -66.0}, "1": {"mean": 8.4}},
        "configurations": {
            "2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [40, 40], "spacing": [6.0, 6.0]},
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": [32, 40, 40], "median_image_size_in_voxels": [32.0, 40.0, 40.0],
                "spacing": [8.0, 6.0, 6.0], "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, True], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "architecture": {"network_class_name": "x.Y", "arch_kwargs": {}, "_kw_requires_import": []},
                "batch_dice": False,
            },
        },
    }


def test_paper_plans_have_the_papers_network_spacing_patch_and_batch():
    base = base_plans()
    plans = paper_plans(base)
    assert plans["plans_name"] == "nnUNetPlans_paper" and list(plans["configurations"]) == ["3d_fullres"]
    c = plans["configurations"]["3d_fullres"]
    assert c["spacing"] == [3.0, 2.0, 2.0] and c["patch_size"] == [96, 128, 128] and c["batch_size"] == 16
    assert c["data_identifier"] == "nnUNetPlans_paper_3d_fullres"  # never the base plans' data folder
    arch = c["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    kw = arch["arch_kwargs"]
    assert kw["n_stages"] == 6 and kw["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 6 and kw["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kw["n_conv_per_stage"] == [2] * 6 and kw["n_conv_per_stage_decoder"] == [2] * 5
    assert kw["conv_bias"] is True and kw["dropout_op"] is None
    assert kw["norm_op"].endswith("InstanceNorm3d") and kw["norm_op_kwargs"] == {"eps": 1e-5, "affine": True}
    assert kw["nonlin"] == "torch.nn.LeakyReLU" and kw["nonlin_kwargs"]["negative_slope"] == 0.01
    # default normalization: nnU-Net's (CT clip + z-score, PET per image), the planner's mask decision kept
    assert c["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    assert c["use_mask_for_norm"] == [False, True]
    # fingerprint-derived parts kept: 32x40x40 voxels of 8x6x6 mm = 256x240x240 mm -> 85.3, 120, 120 at 3x2x2
    assert c["median_image_size_in_voxels"] == [85.0, 120.0, 120.0]
    assert plans["foreground_intensity_properties_per_channel"] == base["foreground_intensity_properties_per_channel"]
    assert c["resampling_fn_data"] == "resample_data_or_seg_to_shape"
    # the patch (96) is larger than the median image along z (85): stated
    assert any("pads" in n for n in plans["petct_plans"]["notes"])
    assert base == base_plans()  # input untouched
    json.dumps(plans)


def test_paper_plans_options():
    c = paper_plans(base_plans(), patch_size=(32, 32, 64), batch_size=2, normalization="zscore-both",
                    plans_name="P")["configurations"]["3d_fullres"]
    assert c["patch_size"] == [32, 32, 64] and c["batch_size"] == 2
    # both z-scored per image over the whole image (as the authors): no mask
    assert c["normalization_schemes"] == ["ZScoreNormalization"] * 2 and c["use_mask_for_norm"] == [False, False]
    c = paper_plans(base_plans(), normalization="pet-global")["configurations"]["3d_fullres"]
    assert c["normalization_schemes"] == ["CTNormalization", "CTNormalization"]
    with pytest.raises(PlansError, match="normalization must be one of"):
        paper_plans(base_plans(), normalization="zscore")
    with pytest.raises(PlansError, match="own name"):
        paper_plans(base_plans(), plans_name="nnUNetPlans")
    one = base_plans()
    one["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    with pytest.raises(PlansError, match="2 channels"):
        paper_plans(one, normalization="nnunet")
    nib = base_plans()
    nib["image_reader_writer"] = "NibabelIOWithReorient"
    with pytest.raises(PlansError, match="z, y, x"):
        paper_plans(nib)


def test_paper_plans_use_the_arrays_axis_order_whatever_the_base_transposition():
    # a planner that put axis 1 first: the base's median spacing/shape are listed as (y, z, x)
    base = base_plans(transpose=(1, 0, 2))
    base["original_median_spacing_after_transp"] = [6.0, 8.0, 6.0]
    base["original_median_shape_after_transp"] = [40, 32, 40]
    plans = paper_plans(base)
    assert plans["transpose_forward"] == [0, 1, 2] and plans["transpose_backward"] == [0, 1, 2]
    assert plans["original_median_spacing_after_transp"] == [8.0, 6.0, 6.0]
    assert plans["original_median_shape_after_transp"] == [32, 40, 40]
    c = plans["configurations"]["3d_fullres"]
    assert c["spacing"] == [3.0, 2.0, 2.0] and c["median_image_size_in_voxels"] == [85.0, 120.0, 120.0]


def test_patch_checks():
    arch = {"arch_kwargs": {"strides": [[1, 1, 1]] + [[2, 2, 2]] * 5}}
    assert check_patch_size((96, 128, 128), arch) == [96, 128, 128]
    with pytest.raises(PlansError, match=r"nearest valid patch: \[96, 128, 128\]"):
        check_patch_size((100, 128, 120), arch)
    with pytest.raises(PlansError, match="single voxel"):  # instance norm cannot train on a 1x1x1 bottleneck
        check_patch_size((32, 32, 32), arch)


def liu_adaptation_plan() -> dict:
    from nnunetv2_petct.transfer.importers import paper_pretrain_plans

    config = paper_pretrain_plans()["configurations"]["3d_fullres"]
    return {"architecture": config["architecture"], "spacing": [3.0, 2.0, 2.0], "transpose_forward": [0, 1, 2],
            "patch_size": [96, 128, 128], "recommended_downstream_patchsize": [96, 128, 128],
            "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"], "use_mask_for_norm": [False, False],
            "channel_names": ["CT", "PET"]}


def test_plans_for_a_checkpoint_copy_its_network_spacing_and_normalization():
    plan = liu_adaptation_plan()
    plans = plans_for_checkpoint(base_plans(), plan, plans_name="nnUNetPlans_liu2026")
    c = plans["configurations"]["3d_fullres"]
    assert c["architecture"] == plan["architecture"] and c["spacing"] == [3.0, 2.0, 2.0]
    assert c["patch_size"] == [96, 128, 128] and c["batch_size"] == 2
    assert c["normalization_schemes"] == plan["normalization_schemes"] and c["use_mask_for_norm"] == [False, False]
    assert normalization_mismatch(plan, c["normalization_schemes"], c["use_mask_for_norm"]) is None
    c = plans_for_checkpoint(base_plans(), plan, plans_name="X", patch_size=(32, 32, 64), batch_size=1)[
        "configurations"]["3d_fullres"]
    assert c["patch_size"] == [32, 32, 64] and c["batch_size"] == 1
    # CT-style normalization: the pretraining data's statistics travel with the plans (as move_plans would do)
    ct_plan = {**plan, "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
               "foreground_intensity_properties_per_channel": {"0": {"mean": -300.0}, "1": {"mean": 3.0}}}
    plans = plans_for_checkpoint(base_plans(), ct_plan, plans_name="X")
    assert plans["foreground_intensity_properties_per_channel"]["0"] == {"mean": -300.0}
    assert plans_for_checkpoint(base_plans(), plan, plans_name="X")["foreground_intensity_properties_per_channel"][
        "0"] == {"mean": -66.0}  # z-score only: the target's own (unused) statistics stay
    with pytest.raises(PlansError, match="no normalization_schemes"):
        plans_for_checkpoint(base_plans(), {**plan, "normalization_schemes": []}, plans_name="X")


def test_normalization_mismatch_messages():
    plan = liu_adaptation_plan()
    msg = normalization_mismatch(plan, ["CTNormalization", "ZScoreNormalization"], [False, False])
    assert "zscore-both" in msg and "nnunet" in msg and "nnUNetv2_petct_import_weights" in msg
    msg = normalization_mismatch(plan, ["ZScoreNormalization"] * 2, [False, True])
    assert "use_mask_for_norm" in msg
    assert normalization_mismatch({**plan, "use_mask_for_norm": []}, ["ZScoreNormalization"] * 2, [True, True]) is None
    ct_plan = {**plan, "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
               "use_mask_for_norm": [True, False]}
    # CTNormalization ignores the mask: only z-scored channels are compared
    assert normalization_mismatch(ct_plan, ["CTNormalization", "ZScoreNormalization"], [False, False]) is None
    assert normalization_mismatch({}, ["CTNormalization"], None) is None  # nothing recorded


@pytest.mark.parametrize("names, expect", [
    ({"0": "CT", "1": "PET"}, None),
    ({"0": "CT_zscore", "1": "PET"}, None),
    ({"0": "PET", "1": "CT"}, "_0000 = CT"),
    ({"0": "PET"}, "nnUNetv2_petct_adapt_checkpoint CHECKPOINT --keep PET"),
    ({"0": "CT", "1": "PET", "2": "MR"}, "has 3"),
])
def test_target_channel_check(names, expect):
    if expect is None:
        check_target_channels({"channel_names": names}, ["CT", "PET"])
    else:
        with pytest.raises(PlansError, match=expect):
            check_target_channels({"channel_names": names}, ["CT", "PET"])


def test_write_plans_is_idempotent_and_refuses_silent_changes(tmp_path):
    plans = paper_plans(base_plans())
    path = write_plans(plans, tmp_path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(plans))
    write_plans(copy.deepcopy(plans), tmp_path)  # same content: fine
    other = paper_plans(base_plans(), batch_size=2)
    with pytest.raises(FileExistsError, match="force"):
        write_plans(other, tmp_path)
    write_plans(other, tmp_path, dry_run=True, overwrite=True)
    assert json.loads(path.read_text())["configurations"]["3d_fullres"]["batch_size"] == 16  # dry run wrote nothing
    write_plans(other, tmp_path, overwrite=True)
    assert json.loads(path.read_text())["configurations"]["3d_fullres"]["batch_size"] == 2
