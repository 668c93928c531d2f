"""The GPU check and the label-efficiency benchmark: their arithmetic, their settings, and the GPU check's
whole code path at a tiny size on the CPU (the label-efficiency grid runs in tests/demo on the demo's data)."""

from __future__ import annotations

import math

import pytest

from nnunetv2_petct.benchmarks import bench_gpu, bench_label_efficiency


def test_loading_verdict_compares_loader_with_step_consumption():
    # a 0.5 s step of batch 16 consumes 32 patches/s: 40 patches/s keep up, 20 do not
    ok = bench_gpu.loading_verdict(40.0, 0.5, 16)
    assert ok["step_patches_per_s"] == 32.0 and ok["loader_to_step_ratio"] == 1.25
    assert ok["loading_is_bottleneck"] is False
    assert bench_gpu.loading_verdict(20.0, 0.5, 16)["loading_is_bottleneck"] is True
    with pytest.raises(ValueError):
        bench_gpu.loading_verdict(20.0, 0.0, 16)


def test_paper_preset_plans():
    cfg = bench_gpu.paper_plans()["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert cfg["patch_size"] == [96, 128, 128] and cfg["batch_size"] == 16
    assert arch["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert arch["arch_kwargs"]["n_stages"] == 6
    tiny = bench_gpu.paper_plans(tiny=True)["configurations"]["3d_fullres"]
    # the same network class and depth at a tiny size
    assert tiny["architecture"]["network_class_name"] == arch["network_class_name"]
    assert tiny["architecture"]["arch_kwargs"]["n_stages"] == 6
    assert tiny["patch_size"] == [64, 64, 64] and tiny["batch_size"] == 2


def test_label_efficiency_budgets_plan_the_grid():
    cpu = bench_label_efficiency.planned_iterations("bench-cpu-1h")
    assert cpu["n_training_runs"] == 3 * 3 * 4  # fractions 10/30/100 %, 3 seeds, 4 methods
    gpu = bench_label_efficiency.planned_iterations("bench-gpu")
    assert gpu["n_training_runs"] == 4 * 3 * 4  # fractions 5/10/30/100 %
    for plan in (cpu, gpu):
        per_run = plan["segmentation_iterations_per_run"]
        assert set(per_run) == {"pretrained", "scratch", "nnunet_default", "probe"}
        assert plan["segmentation_iterations_total"] == plan["n_training_runs"] // 4 * sum(per_run.values())
        assert plan["mae_iterations"] > 0
    # rough wall time: MAE alone, segmentation spread over the parallel runs, plus fixed costs
    plan = {"mae_iterations": 100, "segmentation_iterations_total": 1000}
    assert bench_label_efficiency.estimate_seconds(plan, 0.1, 2, fixed_seconds=60) == pytest.approx(10 + 50 + 60)
    with pytest.raises(ValueError):
        bench_label_efficiency.estimate_seconds(plan, 0.1, 0)
    with pytest.raises(ValueError, match="budget"):
        bench_label_efficiency.run(budget="cpu-2h")


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tiny_dataset):
    d = tiny_dataset
    res = bench_gpu.run(device="cpu", tiny=True, n_warmup=1, n_iter=1,
                        preprocessed_folder=d.root / "preprocessed" / d.dataset_name, images_folder=d.test_images,
                        predict_mirroring=(False,))
    assert res["tiny"] is True and res["device"] == "cpu" and res["gpu"] is None
    assert res["network"] == "PlainConvUNet" and res["features_per_stage"] == [4, 8, 16, 32, 32, 32]
    assert res["patch_size"] == [64, 64, 64] and res["batch_size"] == 2
    for key in ("mae_step_s", "plain_nnunet_step_s", "mae_to_plain_ratio", "loader_patches_per_s",
                "predict_seconds_per_case_no_mirroring"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["mae_to_plain_ratio"] == pytest.approx(res["mae_step_s"] / res["plain_nnunet_step_s"], rel=0.02)
    assert res["mae_peak_memory_gib"] is None  # no GPU memory on the CPU
    # the verdict is the loader's patches/s against batch / step seconds of the MAE step
    need = res["batch_size"] / res["mae_step_s"]
    assert res["step_patches_per_s"] == pytest.approx(need, abs=0.002)
    assert res["loading_is_bottleneck"] is (res["loader_patches_per_s"] < res["step_patches_per_s"])
    assert res["predict_seconds_per_case_mirroring"] is None  # only the setting asked for
    # issue 22's targets: device-side augmentation vs the measured MAE step, the loader keeping up
    assert res["device_augment_source_patch"] == [71, 71, 71]  # 64^3 plus the margin for zoom 1.1
    assert res["device_augment_to_step_ratio"] == pytest.approx(res["device_augment_s_per_batch"] / res["mae_step_s"],
                                                                rel=0.05, abs=1e-4)
    t = res["targets"]
    assert t["device_augment_ok"] is (res["device_augment_to_step_ratio"] <= t["device_augment_to_step_ratio_max"])
    assert t["loader_keeps_up"] is (not res["loading_is_bottleneck"])


def test_targets_verdict():
    assert bench_gpu.targets_verdict(0.02, False) == {"device_augment_to_step_ratio_max": 0.03,
                                                      "device_augment_ok": True, "loader_keeps_up": True}
    v = bench_gpu.targets_verdict(0.05, True)
    assert v["device_augment_ok"] is False and v["loader_keeps_up"] is False


def test_tiny_budget_shares_the_test_profiles_data():
    """The tiny budget can reuse a finished test-profile demo folder (tests/demo does): every field that
    decides the downloads, conversion, planning and pretraining is the test profile's."""
    from dataclasses import fields

    from nnunetv2_petct.demo.config import PROFILES

    tiny, test = PROFILES["bench-tiny"], PROFILES["test"]
    grid_only = {"name", "fractions", "shots", "methods", "seeds", "description"}
    for f in fields(tiny):
        if f.name not in grid_only:
            assert getattr(tiny, f.name) == getattr(test, f.name), f.name
    assert tiny.seeds == 2 and len(tiny.methods) == 2
