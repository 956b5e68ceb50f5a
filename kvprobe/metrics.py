"""Every metric kvprobe reports, declared once: which probe makes it, whether it is pass/fail,
which way is worse, what it is computed from, what change `compare` marks and what the verdict
calls negligible. Summaries, compare and the verdict read this table; nothing else lists metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05  # every test and onset in kvprobe
MIN_RELATIVE_CHANGE = 0.10  # compare marks smaller changes of metrics without their own min_change


def needle_key(it: dict[str, Any]) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["key"])


def repetition_key(it: dict[str, Any]) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["offset"])


@dataclass(frozen=True)
class Metric:
    """One metric. `field` and `key` make it a per-item metric that pairs items across
    configurations; `source` names the per-position array a divergence metric comes from."""

    probe: str
    name: str
    binary: bool = False
    lower_is_worse: bool | None = None  # None: no direction (compare does not mark it)
    field: str | None = None  # the item field of a paired per-item metric
    key: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
    source: str | None = None  # the per-position array of a divergence metric
    compared: bool = False  # `kvprobe compare` tests it (and `--fail-on` accepts it)
    summary_mean: bool = False  # the repetition summary reports its mean with a bootstrap interval
    min_change: float | None = None  # compare marks a smaller change never (None: 10% relative)
    negligible: float | None = None  # the verdict's "no effect" band for an interval

    @property
    def item_field(self) -> str:
        if self.field is None:
            raise TypeError(f"{self.name} is not a per-item metric")
        return self.field

    def pair_key(self, item: dict[str, Any]) -> tuple[Any, ...]:
        """What pairs an item with the same item of another configuration."""
        if self.key is None:
            raise TypeError(f"{self.name} is not a per-item metric")
        return self.key(item)


METRIC_TABLE: tuple[Metric, ...] = (
    Metric("needle", "accuracy", binary=True, lower_is_worse=True, field="correct", key=needle_key,
           compared=True, min_change=0.05, negligible=0.05),
    Metric("needle", "answer_logprob", lower_is_worse=True, field="logprob", key=needle_key,
           compared=True, negligible=0.25),
    Metric("repetition", "seq_rep_4", lower_is_worse=False, field="seq_rep_4", key=repetition_key,
           compared=True, summary_mean=True),
    Metric("repetition", "distinct_2", summary_mean=True),
    Metric("repetition", "compression_ratio", summary_mean=True),
    Metric("repetition", "divergence_index", summary_mean=True),
    Metric("repetition", "loop_rate", binary=True),
    Metric("divergence", "kld_mean", lower_is_worse=False, source="kld", compared=True),
    Metric("divergence", "kld_p99", source="kld"),
    Metric("divergence", "top1_agree", lower_is_worse=True, source="top1_agree", compared=True,
           min_change=0.01),
    Metric("divergence", "ppl", source="nll"),
)  # fmt: skip
BY_NAME = {m.name: m for m in METRIC_TABLE}
PAIRED_ITEM_METRICS = tuple(m for m in METRIC_TABLE if m.field is not None)
COMPARED = tuple(m.name for m in METRIC_TABLE if m.compared)
REPETITION_MEANS = tuple(m.name for m in METRIC_TABLE if m.summary_mean)
DIVERGENCE_METRICS = tuple(m.name for m in METRIC_TABLE if m.source is not None)


def lower_is_worse(name: str) -> bool:
    direction = BY_NAME[name].lower_is_worse
    if direction is None:
        raise KeyError(f"metric {name} has no direction")
    return direction
