"""Statistics of repeated label-efficiency runs: mean ± sd over seeds and paired comparisons (pure).

Everything here works on plain numbers; NaN marks an undefined value (e.g. the Dice of a test case
with empty ground truth, autoPET rule) and is left out, with the number of values used reported.

Paired comparison of two methods A and B on the same test cases (:func:`paired_comparison`):

- the paired unit is the **test case**: each method's per-case value is first averaged over its
  seeds (repeated subset draws and training seeds; :func:`per_case_seed_means`), so seeds are
  replicates of the training randomness and test cases are the units drawn from the population;
- only cases where both A and B have a defined (finite) value are paired; ``n`` says how many;
- the mean difference ``mean(A - B)`` gets a percentile bootstrap confidence interval: test cases are
  resampled with replacement (``n_resamples`` times, seeded, so the interval is reproducible);
- the Wilcoxon signed-rank test (two-sided, :func:`scipy.stats.wilcoxon`, exact distribution for
  small samples without ties) gives the p-value. Zero differences are dropped (Wilcoxon's original
  rule, scipy's default ``zero_method="wilcox"``); when *every* difference is zero there is no
  evidence of a difference and p = 1; with no pair p is NaN.

Small samples: with n test cases the smallest possible two-sided exact Wilcoxon p is 2 / 2**n
(n = 5 -> 0.0625), so fewer than 6 test cases can never reach p < 0.05.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP_SEED = 0


def finite(values: Iterable) -> np.ndarray:
    """The finite values (floats) of ``values``; None, NaN, inf and empty strings are dropped."""
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        x = float(v)
        if math.isfinite(x):
            out.append(x)
    return np.asarray(out, dtype=np.float64)


def mean_sd(values: Iterable) -> dict:
    """``{"mean", "sd", "n"}`` of the finite values: sample standard deviation (ddof = 1).

    ``n`` = number of finite values; ``mean`` is NaN when n = 0, ``sd`` is NaN when n < 2.
    """
    v = finite(values)
    n = int(v.size)
    return {"mean": float(v.mean()) if n else math.nan, "sd": float(v.std(ddof=1)) if n >= 2 else math.nan, "n": n}


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (finite values only).

    ``n_resamples`` resamples of size n with replacement (numpy ``default_rng(seed)``); the interval is
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means (numpy's
    default linear interpolation). n = 1 gives ``(x, x)``; n = 0 gives ``(nan, nan)``.

    Raises:
        ValueError: ``n_resamples`` < 1 or ``confidence`` not in (0, 1).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = finite(values)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // v.size)  # bounded memory for large test sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (finite values only).

    Rules (module doc): zero differences dropped; all differences zero -> 1.0; no difference -> NaN.
    scipy chooses the exact null distribution for small samples without ties, else the normal
    approximation.
    """
    d = finite(differences)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about the normal approximation with ties/zeros
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return float(res.pvalue)


def per_case_seed_means(values_by_seed: Mapping[object, Mapping[str, float]]) -> dict[str, float]:
    """Per test case, the mean of its finite values over the seeds (NaN when none is finite).

    ``values_by_seed``: seed -> {case: value}. Cases missing from a seed are simply not counted there.
    """
    cases: dict[str, list] = {}
    for per_case in values_by_seed.values():
        for case, value in per_case.items():
            cases.setdefault(str(case), []).append(value)
    out = {}
    for case, vals in sorted(cases.items()):
        v = finite(vals)
        out[case] = float(v.mean()) if v.size else math.nan
    return out


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_BOOTSTRAP_SEED) -> dict:
    """Paired comparison A - B over the test cases both define (module doc).

    ``a``, ``b``: case -> value (typically :func:`per_case_seed_means`). Returns ``{"n", "cases",
    "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "confidence", "p_wilcoxon", "n_resamples"}``;
    the means are over the paired cases only (NaN when n = 0).
    """
    pairs = []
    for case in sorted(set(a) & set(b)):
        va, vb = a[case], b[case]
        if va is None or vb is None:
            continue
        va, vb = float(va), float(vb)
        if math.isfinite(va) and math.isfinite(vb):
            pairs.append((case, va, vb))
    n = len(pairs)
    xa = np.array([p[1] for p in pairs], dtype=np.float64)
    xb = np.array([p[2] for p in pairs], dtype=np.float64)
    diff = xa - xb
    lo, hi = bootstrap_mean_ci(diff, n_resamples, confidence, seed)
    return {
        "n": n,
        "cases": [p[0] for p in pairs],
        "mean_a": float(xa.mean()) if n else math.nan,
        "mean_b": float(xb.mean()) if n else math.nan,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "confidence": float(confidence),
        "p_wilcoxon": wilcoxon_p(diff),
        "n_resamples": int(n_resamples),
    }


def fmt_mean_sd(stats: Mapping, digits: int = 3) -> str:
    """``"0.512 ± 0.034"``; ``"0.512"`` when sd is undefined (one value); ``"-"`` when there is no value."""
    m, s = stats.get("mean"), stats.get("sd")
    if m is None or not math.isfinite(float(m)):
        return "-"
    if s is None or not math.isfinite(float(s)):
        return f"{float(m):.{digits}f}"
    return f"{float(m):.{digits}f} ± {float(s):.{digits}f}"


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "bootstrap_mean_ci",
    "finite",
    "fmt_mean_sd",
    "mean_sd",
    "paired_comparison",
    "per_case_seed_means",
    "wilcoxon_p",
]
