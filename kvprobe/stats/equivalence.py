"""Equivalence against a stated margin: two one-sided tests (TOST) on paired items, and a
one-sided bound for metrics that cannot go below zero (KL). Pure functions of plain data.

A configuration is `equivalent` when the 95% interval of its difference from the reference
lies inside (-margin, +margin): each one-sided test rejects at 0.025. The textbook TOST uses
the 90% interval (0.05 per side); the calibration (benchmarks/tost_calibration.py) showed that
with this model's skewed answer log-prob differences the 90% t interval calls a configuration
at the margin equivalent in up to 11% of simulations, the 95% bootstrap-t interval in at most
5%. It is `worse` when the interval lies wholly beyond the margin on the worse side, and
`undecided` otherwise, with about how many items would decide at 80% power if the observed
difference were the true one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from kvprobe.api import ALPHA
from kvprobe.api.record import JsonObject
from kvprobe.stats.inference import newcombe_paired_interval, newcombe_unpaired_interval

EQUIVALENT, WORSE, UNDECIDED = "equivalent", "worse", "undecided"
LEVEL = 1 - ALPHA  # the interval that must lie inside the margin: 0.025 per side
POWER = 0.80
MAX_ITEMS = 100_000  # "more than this" when the observed difference sits on the margin
N_BOOT = 999
Values = Sequence[float] | np.ndarray  # one value per item
MIN_BOOT_ITEMS = 10  # fewer paired items: the t interval
MIN_TAIL_RESAMPLES = 10  # a bootstrap quantile needs this many resamples beyond it
MAX_BOOT = 20_000  # resamples for a group-sequential look's narrow tail; beyond: Student t
MIN_ITEMS = 3  # fewer: never equivalent or worse (a zero-width interval from one item is no evidence)


@dataclass(frozen=True)
class Tost:
    """One metric at one checkpoint: the difference (or, for a bound, the value), its 90%
    interval, the margin, the decision and what would decide it."""

    metric: str
    value: float
    ci: tuple[float, float]  # the LEVEL (95%) interval the decision reads
    margin: float
    kind: str  # "two-sided" (a difference within ±margin) | "bound" (a value below margin)
    status: str
    n: int
    p: float | None = None  # the larger of the two one-sided p-values (continuous tests only)
    items_needed: int | None = None  # total items for 80% power, where undecided
    scope: str | None = None  # what the value covers: "at 1,024 tokens", "positions 1–1,023"

    def to_json(self) -> JsonObject:  # dataclasses.asdict gives a plain dict
        out = asdict(self)
        out["ci"] = [c if math.isfinite(c) else None for c in self.ci]  # None: no end (too little data)
        return out


def _status_two_sided(ci: tuple[float, float], margin: float, lower_is_worse: bool) -> str:
    lo, hi = ci
    if -margin < lo and hi < margin:
        return EQUIVALENT
    if (hi < -margin) if lower_is_worse else (lo > margin):
        return WORSE
    return UNDECIDED


def items_to_decide(
    diff: float, ci: tuple[float, float], n: int, margin: float, *, worse_side: bool, level: float = LEVEL
) -> int | None:
    """About how many items (in all) would decide at 80% power, taking the observed difference
    as the truth and scaling the interval's half-width with 1/sqrt(n): equivalence when the
    difference is inside the margin, "worse" when it is beyond it on the worse side. None when
    no number of items would decide (a difference beyond the margin on the better side)."""
    half = (ci[1] - ci[0]) / 2
    gap = margin - abs(diff)
    if not (math.isfinite(half) and math.isfinite(diff)):
        return None
    if gap < 0 and not worse_side:
        return None
    if n == 0:
        return None
    z_level, z_power = stats.norm.isf((1 - level) / 2), stats.norm.isf(1 - POWER)
    sigma = half * math.sqrt(n) / z_level  # per-item spread implied by the interval
    if sigma == 0:
        return n
    if gap == 0 or not math.isfinite(sigma):
        return MAX_ITEMS
    needed = math.ceil(((z_level + z_power) * sigma / abs(gap)) ** 2)
    return int(min(max(needed, n + 1), MAX_ITEMS))


def _bootstrap_t(d: np.ndarray, seed: int, n_boot: int = N_BOOT) -> tuple[np.ndarray, float, float] | None:
    """Studentized bootstrap of a mean: the resampled t statistics, the mean and its standard
    error; None where the data cannot carry it (fewer than MIN_BOOT_ITEMS items, where the
    resampled t is erratic, or no spread)."""
    n = len(d)
    mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    if n < MIN_BOOT_ITEMS or se == 0:
        return None
    x = d[np.random.default_rng(seed).integers(0, n, (n_boot, n))]
    spread = x.std(axis=1, ddof=1)
    keep = spread > 0
    if keep.sum() < n_boot // 2:
        return None
    t = (x.mean(axis=1)[keep] - mean) / (spread[keep] / math.sqrt(n))
    return t, mean, se


def tost_continuous(
    test: Values,
    reference: Values,
    margin: float,
    *,
    metric: str,
    lower_is_worse: bool = True,
    paired: bool = True,
    seed: int = 0,
    level: float = LEVEL,
) -> Tost:
    """TOST of mean(test) - mean(reference) within ±margin. Paired: the studentized
    (bootstrap-t) 95% interval of the mean item difference, which follows the skew of the
    differences (plain t below MIN_BOOT_ITEMS items or without spread, or at a level whose
    tail MAX_BOOT resamples cannot place); independent samples: Welch t. `level`: the interval's
    confidence (a group-sequential look reads a wider one, kvprobe.stats.sequential)."""
    t, r = np.asarray(test, dtype=float), np.asarray(reference, dtype=float)
    boot = None
    if paired:
        d = t - r
        n, diff = len(d), float(d.mean())
        sd = float(d.std(ddof=1)) if n > 1 else 0.0
        se, df = sd / math.sqrt(max(n, 1)), float(max(n - 1, 1))
        # A group-sequential look's wider interval needs more resamples to place its tail.
        n_boot = max(N_BOOT, math.ceil(MIN_TAIL_RESAMPLES / ((1 - level) / 2)) - 1)
        boot = _bootstrap_t(d, seed, n_boot) if n_boot <= MAX_BOOT else None
    else:
        n, diff = min(len(t), len(r)), float(t.mean() - r.mean())
        vt = float(t.var(ddof=1)) / len(t) if len(t) > 1 else 0.0
        vr = float(r.var(ddof=1)) / len(r) if len(r) > 1 else 0.0
        se = math.sqrt(vt + vr)  # Welch
        df = (vt + vr) ** 2 / (vt**2 / max(len(t) - 1, 1) + vr**2 / max(len(r) - 1, 1)) if se > 0 else 1.0
    half = (1 - level) / 2
    p: float | None
    if n < MIN_ITEMS:  # too few items to claim anything: an interval of everything
        ci, p = (-math.inf, math.inf), 1.0
    elif se == 0:
        ci, p = (diff, diff), (0.0 if abs(diff) < margin else 1.0)
    elif boot is not None:
        stat, _, _ = boot
        lo_q, hi_q = np.quantile(stat, [half, 1 - half])
        ci = (diff - float(hi_q) * se, diff - float(lo_q) * se)
        # H0: diff <= -margin is rejected when the statistic is large against the bootstrap
        p = max(float(np.mean(stat >= (diff + margin) / se)), float(np.mean(stat <= (diff - margin) / se)))
    else:
        q = float(stats.t.isf(half, df))
        ci = (diff - q * se, diff + q * se)
        p = max(float(stats.t.sf((diff + margin) / se, df)), float(stats.t.cdf((diff - margin) / se, df)))
    status = _status_two_sided(ci, margin, lower_is_worse)
    worse_side = diff < 0 if lower_is_worse else diff > 0
    needed = None
    if status == UNDECIDED:
        needed = items_to_decide(diff, ci, n, margin, worse_side=worse_side, level=level)
    return Tost(metric, diff, ci, margin, "two-sided", status, n, p, needed)


def tost_binary(
    test: Values, reference: Values, margin: float, *, metric: str, paired: bool = True, level: float = LEVEL
) -> Tost:
    """TOST of the difference of two pass/fail rates within ±margin: the 95% (`level`)
    Newcombe interval (paired: method 10 with the phi correlation) inside the margin."""
    t, r = np.asarray(test, dtype=float), np.asarray(reference, dtype=float)
    if paired:
        both = int(np.sum((t == 1) & (r == 1)))
        only_r = int(np.sum((t == 0) & (r == 1)))
        only_t = int(np.sum((t == 1) & (r == 0)))
        neither = int(np.sum((t == 0) & (r == 0)))
        ci = newcombe_paired_interval(both, only_r, only_t, neither, confidence=level)
        n = len(t)
    else:
        ci = newcombe_unpaired_interval(int(t.sum()), len(t), int(r.sum()), len(r), confidence=level)
        n = min(len(t), len(r))
    diff = float(t.mean() - r.mean())
    if n < MIN_ITEMS:
        ci = (-math.inf, math.inf)
    status = _status_two_sided(ci, margin, lower_is_worse=True)
    needed = None
    if status == UNDECIDED:
        needed = items_to_decide(diff, ci, n, margin, worse_side=diff < 0, level=level)
    return Tost(metric, diff, ci, margin, "two-sided", status, n, None, needed)


def bound_test(value: float, ci: Sequence[float | None], bound: float, *, metric: str, n: int) -> Tost:
    """A metric that is zero at best (KL): equivalent when the 95% interval's upper end is
    below the bound (a one-sided test at 0.025), worse when its lower end is above it. A
    missing end (None, NaN: the data could not bound it) decides nothing."""
    lo = -math.inf if ci[0] is None or math.isnan(ci[0]) else float(ci[0])
    hi = math.inf if ci[1] is None or math.isnan(ci[1]) else float(ci[1])
    status = EQUIVALENT if hi < bound else WORSE if lo > bound else UNDECIDED
    return Tost(metric, float(value), (lo, hi), bound, "bound", status, n)


def equivalence_interval(
    test: Values, reference: Values, *, binary: bool, paired: bool, seed: int = 0
) -> tuple[float, float]:
    """The interval of mean(test) - mean(reference) that the TOST reads (margin-free)."""
    return tost(test, reference, math.inf, metric="", binary=binary, paired=paired, seed=seed).ci


def tost(
    test: Values,
    reference: Values,
    margin: float,
    *,
    metric: str,
    binary: bool,
    lower_is_worse: bool = True,
    paired: bool = True,
    seed: int = 0,
    level: float = LEVEL,
) -> Tost:
    """The TOST that fits the data: Newcombe for pass/fail, bootstrap-t for continuous values;
    `level` the interval's confidence."""
    if binary:
        return tost_binary(test, reference, margin, metric=metric, paired=paired, level=level)
    return tost_continuous(
        test, reference, margin, metric=metric, lower_is_worse=lower_is_worse, paired=paired, seed=seed,
        level=level,
    )  # fmt: skip
