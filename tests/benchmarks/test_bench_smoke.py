"""Smoke tests of the predict and dataloader benchmarks at tiny size: they run and report sane figures.

No timing thresholds (benchmarks print figures; tests never judge speed): only structure, positivity and
facts derived by hand. All reuse the session's tiny preprocessed dataset (``tiny_dataset``) so no extra
planning/preprocessing runs here; that fixture's cost makes them ``slow``.
"""

from __future__ import annotations

import json
import math

import pytest
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from nnunetv2_petct.benchmarks import bench_dataloader, bench_predict
from nnunetv2_petct.pretraining.augment import zoom_margin_patch_size


def _tiny_plans(d) -> dict:
    path = d.root / "preprocessed" / d.dataset_name / "nnUNetPlans.json"
    return json.loads(path.read_text())["configurations"]["3d_fullres"]


@pytest.mark.slow
def test_predict_benchmark_runs_stock_predict(tiny_dataset):
    d = tiny_dataset
    config = _tiny_plans(d)
    patch = [int(p) for p in config["patch_size"]]
    res = bench_predict.run(
        device="cpu", mirroring=(False, True), n_cases=1, crop=patch,
        preprocessed_folder=d.root / "preprocessed" / d.dataset_name, images_folder=d.test_images,
        timeout_s=600)
    assert res["patch_size"] == patch
    # a crop the size of the patch is exactly one sliding-window position (printed by the predictor)
    assert res["n_steps_measured"] == 1
    padded = [max(s, p) for s, p in zip(res["full_volume_shape_zyx"], patch)]  # the predictor pads to the patch
    assert res["n_steps_full_volume"] == math.prod(
        len(steps) for steps in compute_steps_for_sliding_window(padded, patch, 0.5))
    assert res["measured_on"].startswith("centred crop")
    for key in ("seconds_per_case_no_mirroring", "seconds_per_case_mirroring"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert "--disable_tta" in res["command_no_mirroring"]
    assert "--disable_tta" not in res["command_mirroring"]
    assert "-npp 1 -nps 1" in res["command_mirroring"]
    # the estimate adds the missing windows to the measured crop, so it is never below the measurement
    assert res["estimated_seconds_full_case_mirroring"] >= res["seconds_per_case_mirroring"] - 0.05
    assert res["estimated_seconds_full_case_no_mirroring"] >= res["seconds_per_case_no_mirroring"] - 0.05
    assert res["model_folder"].endswith("nnUNetTrainerPETCT__nnUNetPlans__3d_fullres")
    assert len(res["loadavg_before"]) == 3


@pytest.mark.slow
def test_dataloader_benchmark_mae_pipeline(tiny_dataset):
    d = tiny_dataset
    config = _tiny_plans(d)
    res = bench_dataloader.run(n_batches=2, workers=(0, 1), profile_batches=1,
                               preprocessed_folder=d.root / "preprocessed" / d.dataset_name)
    # tiny cases (32x40x40 at most) cannot hold the 96x128x128 pretraining patch: the plans' patch is used
    assert res["patch_size"] == [int(p) for p in config["patch_size"]]
    assert res["batch_size"] == int(config["batch_size"])
    assert res["transforms_from"] == "nnUNetTrainerPETCTMAE"
    # issue 22: the MAE loader only reads and crops (patch + zoom margin); zoom + mirroring run on the device
    assert res["augmentation_on"] == "device"
    assert not any("Spatial" in t or "Mirror" in t for t in res["transforms"])
    margin = list(zoom_margin_patch_size(res["patch_size"], (0.9, 1.1)))
    assert res["delivered_patch_size"] == margin and res["floor"]["crop"] == margin
    # the pipeline before (in the same run): spatial only (zoom + mirroring), no intensity transform
    before = res["before"]
    assert before["trainer"] == "mae_cpu_augment" and before["augmentation_on"] == "cpu"
    assert "SpatialTransform" in before["transforms"] and "MirrorTransform" in before["transforms"]
    assert not any("Noise" in t or "Gamma" in t or "Brightness" in t for t in before["transforms"])
    assert before["delivered_patch_size"] == res["patch_size"]
    assert res["ms_per_patch_total"] == res["profile"]["ms_per_patch_total"] > 0
    assert res["floor_ms_per_patch"] > 0
    assert res["cpu_cost_to_floor_ratio"] == pytest.approx(res["ms_per_patch_total"] / res["floor_ms_per_patch"],
                                                           rel=0.01)
    assert res["single_worker_speedup"] == pytest.approx(
        res["profile"]["single_worker_patches_per_s"] / before["profile"]["single_worker_patches_per_s"], rel=0.01)
    assert set(res["patches_per_s_by_workers"]) == set(before["patches_per_s_by_workers"]) == {"0", "1"}
    dev = res["device_augment"]
    assert dev["device"] == "cpu" and dev["augment_source_patch"] == margin
    assert dev["device_augment_s_per_batch"] > 0 and dev["mae_step_s"] > 0
    assert res["device_augment_to_step_ratio"] == pytest.approx(
        (dev["device_augment_s_per_batch"] / dev["augment_batch_size"]) / (dev["mae_step_s"] / dev["step_batch_size"]),
        rel=0.05, abs=1e-4)
    assert [r["workers"] for r in res["per_workers"]] == [0, 1]
    assert [r["augmenter"] for r in res["per_workers"]] == ["SingleThreadedAugmenter",
                                                            "NonDetMultiThreadedAugmenter"]
    for r in res["per_workers"]:
        assert r["patches_per_s"] > 0 and r["timed_batches"] == 2
    prof = res["profile"]
    assert prof["n_patches"] == res["batch_size"]  # one profiled batch
    assert set(prof["ms_per_patch"]) == {"loading_and_crop", *res["transforms"]}
    assert abs(sum(prof["fraction"].values()) - 1.0) < 0.01
    assert prof["bottleneck"] in prof["ms_per_patch"]
    assert res["gpu_figure_is_estimate"] is True
    assert res["workers_needed_estimate"] >= 1


@pytest.mark.slow
def test_dataloader_benchmark_default_nnunet_transforms_and_given_gpu_time(tiny_dataset):
    d = tiny_dataset
    res = bench_dataloader.run(n_batches=1, workers=(0,), patch_size=(16, 16, 16), batch_size=3,
                               trainer="nnunet", gpu_seconds_per_patch=0.5, profile_batches=1,
                               preprocessed_folder=d.root / "preprocessed" / d.dataset_name)
    assert res["patch_size"] == [16, 16, 16] and res["batch_size"] == 3
    assert res["transforms_from"] == "nnUNetTrainer"
    assert len(res["transforms"]) > 3  # nnU-Net's default pipeline: spatial, intensity, mirroring, ...
    # 0.5 s per patch on the GPU -> it consumes 2 patches/s, i.e. 2/3 steps of 3 patches per second
    assert res["gpu_figure_is_estimate"] is False
    assert res["gpu_patches_per_s_needed"] == 2.0
    assert res["gpu_steps_per_s_needed"] == pytest.approx(0.67, abs=0.01)
