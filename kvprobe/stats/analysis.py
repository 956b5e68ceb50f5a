"""Paired comparisons of a configuration against the baseline, onset, effective context and
the decay fit: pure functions of result items (design §6)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

from kvprobe.api import ALPHA, Metric, paired_item_metrics
from kvprobe.api.record import ItemRow, JsonObject
from kvprobe.stats.inference import difference_test, holm, significant_tail
from kvprobe.stats.parts import DifferenceDoc, PairedDoc

EFFECTIVE_THRESHOLD = 0.85  # share of the baseline's score that still counts as "effective"


def paired_values(
    items: Sequence[ItemRow], metric: Metric, baseline: str, config: str
) -> dict[int, tuple[list[float], list[float]]]:
    """Per checkpoint, the (test, baseline) values of items both configurations have."""
    by_key: dict[str, dict[tuple[Any, ...], ItemRow]] = defaultdict(dict)
    for it in items:
        if it["probe"] == metric.probe and it["config"] in (baseline, config):
            by_key[it["config"]][metric.pair_key(it)] = it
    out: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for key, test_item in sorted(by_key[config].items(), key=lambda kv: str(kv[0])):
        base_item = by_key[baseline].get(key)
        if base_item is None or test_item.get(metric.item_field) is None:
            continue
        out[test_item["ctx"]][0].append(float(test_item[metric.item_field]))
        out[test_item["ctx"]][1].append(float(base_item[metric.item_field]))
    return dict(sorted(out.items()))


def compare_paired(test: Sequence[float], base: Sequence[float], metric: Metric, seed: int) -> DifferenceDoc:
    """Difference test − baseline with its interval, and the one-sided p that test is worse."""
    d = difference_test(
        test, base, binary=metric.binary, paired=True, seed=seed,
        alternative="less" if metric.lower_is_worse else "greater",
    )  # fmt: skip
    return {
        "test_value": float(np.mean(np.asarray(test, dtype=float))),
        "baseline_value": float(np.mean(np.asarray(base, dtype=float))),
        "diff": d.diff,
        "ci": list(d.ci),
        "p_worse": d.p,
        "test": d.test,
        "n": len(test),
    }


def paired_rows(items: Sequence[ItemRow], baseline: str, config: str, seed: int) -> list[PairedDoc]:
    """One row per metric and checkpoint: difference, interval, one-sided p (test worse) and
    its Holm adjustment across the metric's checkpoints."""
    rows: list[PairedDoc] = []
    for metric in paired_item_metrics():
        values = paired_values(items, metric, baseline, config)
        if not values:
            continue
        mine: list[PairedDoc] = [
            {"probe": metric.probe, "metric": metric.name, "config": config, "ctx": ctx,
             **compare_paired(t, b, metric, seed)}
            for ctx, (t, b) in values.items()
        ]  # fmt: skip
        for row, p_holm in zip(mine, holm([r["p_worse"] for r in mine]), strict=True):
            row["p_holm"] = p_holm
        rows.extend(mine)
    return rows


def onset(rows: Sequence[PairedDoc | JsonObject], alpha: float = ALPHA) -> int | None:
    """The shortest checkpoint from which the configuration is significantly worse than the
    baseline at every longer checkpoint (rows of one metric and configuration)."""
    ordered = sorted(rows, key=lambda r: r["ctx"])
    # A row without a p-value (a file may hold null) is no evidence of a loss.
    start = significant_tail([1.0 if r["p_holm"] is None else r["p_holm"] for r in ordered], alpha)
    return None if start is None else int(ordered[start]["ctx"])


def effective_context(
    test: dict[int, float], base: dict[int, float], threshold: float = EFFECTIVE_THRESHOLD
) -> int | None:
    """The longest checkpoint up to which the configuration keeps >= threshold of the
    baseline's score at every checkpoint (None if it fails at the first)."""
    effective: int | None = None
    for ctx in sorted(test):
        if base.get(ctx, 0.0) <= 0 or test[ctx] >= threshold * base[ctx]:
            effective = ctx
        else:
            break
    return effective


# --- decay fit -----------------------------------------------------------------------------


def _logistic(x: np.ndarray, top: float, mid: float, slope: float) -> np.ndarray:
    result: np.ndarray = top / (1.0 + np.exp(slope * (x - mid)))
    return result


MAX_LOG2_LENGTH = 40.0  # 2^40 tokens: a fitted length past this is no length at all


def fit_decay(ctx: Sequence[int], correct: Sequence[float]) -> tuple[float, float, float] | None:
    """Least-squares logistic fit of per-item correctness in log2(context):
    accuracy(L) = top / (1 + exp(slope (log2 L − mid))). None when it does not converge or
    the data cannot carry it (fewer than two lengths, or values that are not finite)."""
    x = np.log2(np.asarray(ctx, dtype=float))
    y = np.asarray(correct, dtype=float)
    if len(x) != len(y) or not (np.isfinite(x).all() and np.isfinite(y).all()) or len(set(x.tolist())) < 2:
        return None
    start = (min(max(float(y.mean()), 1e-3), 1.0), float(np.clip(x.mean(), 0.0, 40.0)), 1.0)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(
                _logistic, x, y, p0=start, bounds=([0.0, 0.0, -20.0], [1.0, 40.0, 20.0]), maxfev=5000
            )
    except (RuntimeError, ValueError, FloatingPointError, OverflowError, np.linalg.LinAlgError):
        return None
    top, mid, slope = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (top, mid, slope)):
        return None
    return top, mid, slope


def halving_length(fit: tuple[float, float, float], reference: float) -> float | None:
    """The context where the fitted accuracy falls to half of the reference's accuracy; None
    when the fitted curve never gets there (or only past 2^40 tokens)."""
    top, mid, slope = fit
    target = reference / 2
    if not (math.isfinite(target) and slope > 0 and 0 < target < top):
        return None
    log2_length = mid + math.log(top / target - 1) / slope
    if not math.isfinite(log2_length) or log2_length > MAX_LOG2_LENGTH:
        return None
    return float(2.0**log2_length)


@dataclass(frozen=True)
class Halving:
    """Where the decay fit puts half of the reference's accuracy, or why it cannot say."""

    length: float | None
    ci: list[float | None] | None
    reason: str | None  # set when length is None: "not estimable" and why


def halving_interval(
    ctx: Sequence[int], correct: Sequence[float], reference: float, seed: int, n_boot: int = 300
) -> Halving:
    """Point estimate and percentile-bootstrap 95% interval (resampling items) of the length
    where accuracy halves; not estimable where the fit fails or the curve does not reach half
    within 16x the longest context measured (further out is extrapolation, not measurement)."""
    if not ctx or len(ctx) != len(correct):
        return Halving(None, None, "no items")
    if not (math.isfinite(reference) and reference > 0):
        return Halving(None, None, "the reference has no correct answer to halve")
    reach = 16 * max(ctx)

    def within(h: float | None) -> float | None:
        return h if h is not None and h <= reach else None

    fit = fit_decay(ctx, correct)
    if fit is None:
        return Halving(None, None, "the logistic fit did not converge on these items")
    point = within(halving_length(fit, reference))
    if point is None:
        return Halving(
            None, None, f"the fitted curve stays above half of the reference within {reach:,} tokens"
        )
    rng = np.random.default_rng(seed)
    c, y = np.asarray(ctx), np.asarray(correct, dtype=float)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(c), len(c))
        f = fit_decay(c[idx].tolist(), y[idx].tolist())
        h = within(halving_length(f, reference)) if f else None
        boots.append(h if h is not None else math.inf)
    ordered = np.sort(np.asarray(boots))
    if np.mean(np.isfinite(ordered)) < 0.5:
        return Halving(point, None, None)
    # Order statistics, not interpolation: a fit that never halves counts as +infinity, and an
    # upper end there means "not within reach" (None, not infinity).
    lo = ordered[math.floor(0.025 * (len(ordered) - 1))]
    hi = ordered[math.ceil(0.975 * (len(ordered) - 1))]
    return Halving(
        point, [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None], None
    )
