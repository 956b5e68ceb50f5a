"""Helpers the probes share for their item and summary rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from kvprobe.probes.base import Row
from kvprobe.stats.inference import bootstrap_mean_interval, wilson_interval


def by_config_and_ctx(items: Iterable[Row], probe: str) -> list[tuple[tuple[str, int], list[Row]]]:
    """Items of one probe grouped by (config, ctx), ordered by ctx then config."""
    groups: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for it in items:
        if it["probe"] == probe:
            groups[(it["config"], it["ctx"])].append(it)
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


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


def fmt_ci(value: float, ci: list[float], digits: int = 2) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def pooled_row(summary: Iterable[Row], config: str, metric: str = "kld_mean") -> Row | None:
    """A divergence metric pooled over every position, or None."""
    return next(
        (
            r
            for r in summary
            if r["probe"] == "divergence" and r["metric"] == metric
            and r["config"] == config and r.get("scope") == "pooled"
        ),
        None,
    )  # fmt: skip
