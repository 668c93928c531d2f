"""Statistics of repeated runs: hand-derived values, brute-force bootstrap, scipy's Wilcoxon as the reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnunetv2_petct.evaluation.statistics import (
    bootstrap_mean_ci,
    fmt_mean_sd,
    mean_sd,
    paired_comparison,
    per_case_seed_means,
    wilcoxon_p,
)


def test_mean_sd_by_hand_and_nan_rule():
    # 0.5, 0.7: mean 0.6, sample sd = sqrt(((-0.1)^2 + 0.1^2) / 1) = 0.1414...
    s = mean_sd([0.5, 0.7, float("nan"), None])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(math.sqrt(0.02))
    one = mean_sd([0.3])
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["sd"])
    none = mean_sd([float("nan")])
    assert none["n"] == 0 and math.isnan(none["mean"])
    assert fmt_mean_sd(s) == "0.600 ± 0.141" and fmt_mean_sd(one) == "0.300" and fmt_mean_sd(none) == "-"


def _exact_bootstrap_quantiles(values, q_lo=0.025, q_hi=0.975):
    """Quantiles of the exact bootstrap distribution of the mean: all n**n equally likely resamples."""
    n = len(values)
    means = [sum(c) / n for c in itertools.product(values, repeat=n)]
    atoms = sorted(set(means))
    cdf = {a: sum(m <= a + 1e-12 for m in means) / len(means) for a in atoms}
    lo = next(a for a in atoms if cdf[a] >= q_lo)
    hi = next(a for a in atoms if cdf[a] >= q_hi)
    # margins: the exact CDF jumps across each quantile by far more than the Monte-Carlo error of
    # 10,000 resamples (sd ~ 0.0016), so the sampled interval must land on the same atoms
    below = lambda x: max([cdf[a] for a in atoms if a < x] or [0.0])  # noqa: E731
    for x, q in ((lo, q_lo), (hi, q_hi)):
        assert below(x) < q - 0.005 and cdf[x] > q + 0.005
    return lo, hi


def test_bootstrap_ci_matches_brute_force_enumeration():
    # [0, 1, 2, 10], 256 resamples. Lower end by hand: P(mean 0) = 1/256, P(0.25) = 4/256 (one 1),
    # P(0.5) = 4/256 ({0,0,0,2}) + 6/256 ({0,0,1,1}): CDF 5/256 < 0.025 <= 15/256 -> 0.5.
    # Upper end: P(10) = 1/256, P(8) = 4/256 ({10,10,10,2}), P(7.75) = 4/256 ({10,10,10,1}):
    # 1 - 9/256 = 0.965 < 0.975 <= 1 - 5/256 -> 7.75.
    assert _exact_bootstrap_quantiles([0.0, 1.0, 2.0, 10.0]) == (0.5, 7.75)
    for seed in (0, 1, 7):
        lo, hi = bootstrap_mean_ci([0.0, 1.0, 2.0, 10.0], n_resamples=10_000, seed=seed)
        assert (lo, hi) == pytest.approx((0.5, 7.75))
    vals = [-0.2, 0.0, 0.1, 0.3]
    assert bootstrap_mean_ci(vals, seed=3) == pytest.approx(_exact_bootstrap_quantiles(vals))
    # seeded: same seed, same interval; NaN is left out; degenerate sizes
    assert bootstrap_mean_ci(vals, seed=5) == bootstrap_mean_ci(vals + [float("nan")], seed=5)
    assert bootstrap_mean_ci([0.4]) == (0.4, 0.4)
    assert all(math.isnan(x) for x in bootstrap_mean_ci([]))
    with pytest.raises(ValueError):
        bootstrap_mean_ci(vals, confidence=1.0)


def test_wilcoxon_by_hand_and_against_scipy():
    from scipy.stats import wilcoxon

    # n = 5, all differences positive and distinct: W- = 0 has probability 1/32 under H0 -> two-sided 2/32
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625)
    # n = 3 with the smallest one negative: W+ = 2 + 3 = 5; of the 8 sign patterns W+ takes
    # 0,1,2,3,3,4,5,6 -> P(W+ >= 5) = 2/8 -> two-sided 0.5
    assert wilcoxon_p([-0.1, 0.2, 0.3]) == pytest.approx(0.5)
    # zero differences are dropped (3 positive remain: 2 / 2**3 = 0.25), NaN pairs too
    assert wilcoxon_p([0.0, 0.0, 0.1, 0.2, 0.3, float("nan")]) == pytest.approx(0.25)
    d = [0.03, -0.01, 0.05, 0.02, 0.04, -0.02, 0.06, 0.01]
    assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # no evidence of any difference
    assert math.isnan(wilcoxon_p([float("nan")]))


def test_paired_comparison_pairs_only_cases_defined_for_both():
    a = {"c1": 0.8, "c2": 0.6, "c3": float("nan"), "c4": 0.5, "c5": 0.9}
    b = {"c1": 0.7, "c2": 0.6, "c3": 0.4, "c4": 0.2, "c6": 0.1}
    r = paired_comparison(a, b, n_resamples=2000, seed=1)
    # c3: NaN in A; c5, c6: only one side -> pairs c1, c2, c4 with differences 0.1, 0, 0.3
    assert r["n"] == 3 and r["cases"] == ["c1", "c2", "c4"]
    assert r["mean_a"] == pytest.approx((0.8 + 0.6 + 0.5) / 3) and r["mean_b"] == pytest.approx((0.7 + 0.6 + 0.2) / 3)
    assert r["mean_diff"] == pytest.approx(0.4 / 3)
    assert r["ci_low"] == pytest.approx(0.0) and r["ci_high"] == pytest.approx(0.3)  # 3 values: P(min) = 1/27 > 2.5 %
    assert r["p_wilcoxon"] == pytest.approx(0.5)  # zero dropped: 2 positive differences -> 2 / 2**2
    empty = paired_comparison({"x": 1.0}, {"y": 1.0})
    assert empty["n"] == 0 and math.isnan(empty["mean_diff"]) and math.isnan(empty["p_wilcoxon"])


def test_per_case_seed_means_average_each_case_over_its_seeds():
    means = per_case_seed_means({0: {"a": 0.2, "b": float("nan")}, 1: {"a": 0.4, "b": float("nan"), "c": 1.0}})
    assert means["a"] == pytest.approx(0.3) and math.isnan(means["b"]) and means["c"] == 1.0
    assert list(means) == sorted(means)
    assert np.isfinite(list(means.values())).sum() == 2
