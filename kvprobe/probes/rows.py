"""Summary rows with their intervals, as the probes make them."""

from __future__ import annotations

from collections.abc import Sequence

from kvprobe.api import Row
from kvprobe.stats.inference import bootstrap_mean_interval, wilson_interval


def rate_row(probe: str, metric: str, config: str, ctx: int, *, hits: int, n: int) -> Row:
    """A share of n with its Wilson 95% interval."""
    lo, hi = wilson_interval(hits, n)
    return {"probe": probe, "metric": metric, "config": config, "ctx": ctx, "value": hits / n,
            "ci": [lo, hi], "n": n}  # fmt: skip


def mean_row(probe: str, metric: str, config: str, ctx: int, *, values: Sequence[float], seed: int) -> Row:
    """A mean with its percentile-bootstrap 95% interval."""
    lo, hi = bootstrap_mean_interval(values, seed=seed)
    return {"probe": probe, "metric": metric, "config": config, "ctx": ctx,
            "value": sum(values) / len(values), "ci": [lo, hi], "n": len(values)}  # fmt: skip
