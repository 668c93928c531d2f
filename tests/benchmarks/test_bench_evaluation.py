"""The evaluation benchmark runs on a whole-body-sized case and reports its figures.

No timing thresholds (benchmarks print figures; tests never judge speed): only the reported case and
that every timing is a positive, finite number."""

from __future__ import annotations

import math

from nnunetv2_petct.benchmarks import bench_evaluation


def test_benchmark_figures():
    res = bench_evaluation.run(seed=0, repeats=1)
    assert res["shape_zyx"] == (330, 400, 400)
    assert res["n_gt_lesions"] >= 24  # "dozens of lesions"
    assert 0.3 < res["dice"] < 1.0  # a plausible prediction, not random blobs
    for key in ("seconds_autopet_case_metrics", "seconds_lesion_quantification", "seconds_evaluate_case"):
        assert math.isfinite(res[key]) and res[key] > 0, (key, res[key])
