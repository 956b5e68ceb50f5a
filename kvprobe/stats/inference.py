"""Statistics over probe items: pure functions of plain data (SciPy underneath)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def bootstrap_mean_interval(
    values: Sequence[float], seed: int, confidence: float = 0.95, n_resamples: int = 2000
) -> tuple[float, float]:
    """Percentile-bootstrap interval for a mean (BCa fails on constant data)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    if data.size == 1 or np.all(data == data[0]):
        return (float(data[0]), float(data[0]))
    res = stats.bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


# --- paired comparisons against the baseline -------------------------------------------------


def mcnemar_exact(only_baseline: int, only_test: int, alternative: str = "two-sided") -> float:
    """Exact McNemar test: a binomial test on the discordant pairs.

    `only_baseline`: items the baseline got right and the test configuration wrong; `only_test`
    the reverse. alternative="greater" asks whether the test configuration is worse.
    """
    n = only_baseline + only_test
    if n == 0:
        return 1.0
    return float(stats.binomtest(only_baseline, n, 0.5, alternative=alternative).pvalue)


def wilcoxon_paired(
    test: Sequence[float], baseline: Sequence[float], alternative: str = "two-sided"
) -> float:
    """Wilcoxon signed-rank test of test − baseline (zero differences dropped, as Wilcoxon's
    original test; all-zero differences give p = 1). alternative="less": test is lower."""
    diff = np.asarray(test, dtype=float) - np.asarray(baseline, dtype=float)
    diff = diff[diff != 0]
    if diff.size == 0:
        return 1.0
    return float(stats.wilcoxon(diff, alternative=alternative).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def newcombe_paired_interval(
    both: int, only_baseline: int, only_test: int, neither: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for p_test − p_baseline on paired pass/fail items (Newcombe 1998, method 10:
    Wilson intervals of each proportion, combined with the phi correlation)."""
    n = both + only_baseline + only_test + neither
    if n == 0:
        return (float("nan"), float("nan"))
    p_test, p_base = (both + only_test) / n, (both + only_baseline) / n
    lo_t, hi_t = wilson_interval(both + only_test, n, confidence)
    lo_b, hi_b = wilson_interval(both + only_baseline, n, confidence)
    margins = (both + only_test) * (only_baseline + neither) * (both + only_baseline) * (only_test + neither)
    phi = (both * neither - only_test * only_baseline) / np.sqrt(margins) if margins > 0 else 0.0
    theta = p_test - p_base
    d_t, e_t = p_test - lo_t, hi_t - p_test
    d_b, e_b = p_base - lo_b, hi_b - p_base
    lower = theta - np.sqrt(max(0.0, d_t**2 - 2 * phi * d_t * e_b + e_b**2))
    upper = theta + np.sqrt(max(0.0, e_t**2 - 2 * phi * e_t * d_b + d_b**2))
    return (float(max(-1.0, lower)), float(min(1.0, upper)))


def newcombe_unpaired_interval(
    k_test: int, n_test: int, k_base: int, n_base: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for p_test − p_baseline from independent samples (Newcombe 1998, method 10)."""
    p_t, p_b = k_test / n_test, k_base / n_base
    lo_t, hi_t = wilson_interval(k_test, n_test, confidence)
    lo_b, hi_b = wilson_interval(k_base, n_base, confidence)
    theta = p_t - p_b
    return (
        float(theta - np.sqrt((p_t - lo_t) ** 2 + (hi_b - p_b) ** 2)),
        float(theta + np.sqrt((hi_t - p_t) ** 2 + (p_b - lo_b) ** 2)),
    )


def bootstrap_diff_interval(
    test: Sequence[float], baseline: Sequence[float], seed: int, paired: bool, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval for mean(test) − mean(baseline): resampling pairs when
    paired, each sample on its own otherwise."""
    t, b = np.asarray(test, dtype=float), np.asarray(baseline, dtype=float)
    if paired:
        return bootstrap_mean_interval(list(t - b), seed=seed, confidence=confidence)
    if t.size < 2 or b.size < 2:
        d = float(t.mean() - b.mean())
        return (d, d)
    res = stats.bootstrap(
        (t, b),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        confidence_level=confidence,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(seed),
        paired=False,
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def mann_whitney(test: Sequence[float], baseline: Sequence[float], alternative: str = "two-sided") -> float:
    if len(test) == 0 or len(baseline) == 0:
        return 1.0
    return float(stats.mannwhitneyu(test, baseline, alternative=alternative).pvalue)


# --- the one difference test and the one onset scan ------------------------------------------

# "less": the test configuration is lower than the baseline. McNemar counts the discordant
# pairs from the baseline's side, so its alternative is the mirror image.
_MCNEMAR_ALTERNATIVE = {"two-sided": "two-sided", "less": "greater", "greater": "less"}


@dataclass(frozen=True)
class Difference:
    """mean(test) − mean(baseline), its 95% interval, and the p of the named test."""

    diff: float
    ci: tuple[float, float]
    p: float
    test: str


def difference_test(
    test: Sequence[float],
    baseline: Sequence[float],
    *,
    binary: bool,
    paired: bool,
    seed: int,
    alternative: str = "two-sided",
) -> Difference:
    """The difference between a configuration and a baseline, with the test that fits the
    data: exact McNemar and a Newcombe interval for paired pass/fail, Fisher and Newcombe for
    unpaired pass/fail, Wilcoxon signed-rank or Mann-Whitney U with a bootstrap interval for
    continuous values. `alternative` ("less": test lower) applies to the paired tests."""
    t, b = np.asarray(test, dtype=float), np.asarray(baseline, dtype=float)
    diff = float(t.mean() - b.mean())
    if binary and paired:
        both = int(np.sum((t == 1) & (b == 1)))
        only_b = int(np.sum((t == 0) & (b == 1)))
        only_t = int(np.sum((t == 1) & (b == 0)))
        neither = int(np.sum((t == 0) & (b == 0)))
        ci = newcombe_paired_interval(both, only_b, only_t, neither)
        return Difference(
            diff, ci, mcnemar_exact(only_b, only_t, _MCNEMAR_ALTERNATIVE[alternative]), "exact McNemar"
        )
    if binary:
        ci = newcombe_unpaired_interval(int(t.sum()), len(t), int(b.sum()), len(b))
        table = [[int(t.sum()), len(t) - int(t.sum())], [int(b.sum()), len(b) - int(b.sum())]]
        return Difference(diff, ci, float(stats.fisher_exact(table).pvalue), "Fisher exact")
    if paired:
        ci = bootstrap_diff_interval(list(t), list(b), seed=seed, paired=True)
        return Difference(diff, ci, wilcoxon_paired(list(t), list(b), alternative), "Wilcoxon signed-rank")
    ci = bootstrap_diff_interval(list(t), list(b), seed=seed, paired=False)
    return Difference(diff, ci, mann_whitney(list(t), list(b), alternative), "Mann-Whitney U")


def significant_tail(p_values: Sequence[float], alpha: float) -> int | None:
    """Index of the first of the trailing run of p-values below alpha (the onset, when the
    p-values are in order of context or position), or None if the last one is not below it."""
    start: int | None = None
    for i in range(len(p_values) - 1, -1, -1):
        if p_values[i] >= alpha:
            break
        start = i
    return start
