"""Helpers every stage uses to read item and summary rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from kvprobe.api.metric import POOLED_DIVERGENCE
from kvprobe.api.record import Row, SummaryRow
from kvprobe.api.registry import by_name, pooled_metric


def by_config_and_ctx(items: Iterable[Row], probe: str) -> list[tuple[tuple[str, int], list[Row]]]:
    """Items of one probe grouped by (config, ctx), ordered by ctx then config."""
    groups: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for it in items:
        if it["probe"] == probe:
            groups[(it["config"], it["ctx"])].append(it)
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def fmt_ci(value: float, ci: list[float], digits: int = 2) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def pooled_row(summary: Iterable[SummaryRow], config: str, metric: str | None = None) -> SummaryRow | None:
    """A metric pooled over every position (by default the one the decision ranks by, see
    POOLED_DIVERGENCE), or None where no probe measured it."""
    chosen = by_name(metric) if metric is not None else pooled_metric(POOLED_DIVERGENCE)
    if chosen is None:
        return None
    return next(
        (
            r
            for r in summary
            if r["probe"] == chosen.probe and r["metric"] == chosen.name
            and r["config"] == config and r.get("scope") == "pooled"
        ),
        None,
    )  # fmt: skip
