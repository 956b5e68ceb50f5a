"""Every metric kvprobe reports, declared once by the probe that makes it: whether it is
pass/fail, which way is worse, what it is computed from, what change `compare` marks and what
its equivalence margin. Summaries, compare and the verdict read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05  # every test and onset in kvprobe
MIN_RELATIVE_CHANGE = 0.10  # compare marks smaller changes of metrics without their own min_change

# The parts a metric can play in the verdict; a probe declares them, the verdict reads them.
POOLED_DIVERGENCE = "pooled_divergence"  # pooled over every position: the decision ranks by it
RETRIEVAL = "retrieval"  # pass/fail per item: its onset, its share of the reference, its halving
RETRIEVAL_LOGPROB = "retrieval_logprob"  # the same items' answers, finer: its onset, K vs V
ROLES = (POOLED_DIVERGENCE, RETRIEVAL, RETRIEVAL_LOGPROB)


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
    summary_mean: bool = False  # the summary reports its mean with a bootstrap interval
    min_change: float | None = None  # compare marks a smaller change never (None: 10% relative)
    # The equivalence margin (TOST): a paired difference within ±margin counts as no loss; for
    # a divergence metric, which is zero at best, an upper bound on its value. `--margin` sets it.
    margin: float | None = None
    role: str | None = None  # the part it plays in the verdict (ROLES)
    unit: str = ""  # written after its values in sentences (" nats")
    label: str = ""  # its name in sentences ("mean KL"); "": the metric's name
    # A tail statistic, bounded only where enough positions exist (else it can only rule out):
    # what deciding by it means, in words ("" for a metric that is not a tail).
    tail: str = ""

    @property
    def words(self) -> str:
        return self.label or self.name

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
