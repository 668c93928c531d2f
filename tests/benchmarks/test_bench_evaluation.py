"""The evaluation benchmark runs and whole-body evaluation stays far from the official code's cost."""

from __future__ import annotations

import math

from nnunetv2_petct.benchmarks import bench_evaluation


def test_benchmark_figures():
    res = bench_evaluation.run(seed=0, repeats=1)
    assert res["shape_zyx"] == (330, 400, 400)
    assert res["n_gt_lesions"] >= 24  # "dozens of lesions"
    assert 0.3 < res["dice"] < 1.0  # a plausible prediction, not random blobs
    for key in ("seconds_autopet_case_metrics", "seconds_lesion_quantification", "seconds_evaluate_case"):
        # ~0.2-0.3 s on a 2-core machine; the per-component full-volume loop takes tens of seconds.
        # Loose bound for shared CI machines.
        assert math.isfinite(res[key]) and 0 < res[key] < 5.0, (key, res[key])
