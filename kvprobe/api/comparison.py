"""`kvprobe compare`'s report, typed: what changed between two result files, one row per metric,
configuration pair and checkpoint (kvprobe.stats.compare makes it; a probe may make its own rows,
`Probe.compare_rows`). `kvprobe compare --json` prints it."""

from __future__ import annotations

from kvprobe.api.bounds import Count
from kvprobe.api.record import Record


class Difference(Record):
    """Two sets of values of one metric: their means, the difference new − old with its 95%
    interval and two-sided p, and the 95% interval an equivalence gate reads."""

    old: float
    new: float
    diff: float
    ci: list[float]
    p: float
    test: str
    ci_equivalence: list[float]
    n_old: Count
    n_new: Count


class ComparisonRow(Difference):
    """One metric of one configuration pair at one checkpoint."""

    probe: str
    metric: str
    config_old: str
    config_new: str
    ctx: Count
    scope: str | None = None
    """`pooled`: over every position the two files share (`ctx` is then the run's context)"""
    mark: str = ""
    """`worse`, `better`, `no significant change` or `not testable` (asv's rule)"""


class Failure(ComparisonRow):
    """A row a `--fail-on` rule failed on."""

    rule: str


class Unmatched(Record):
    old: list[str] = []
    new: list[str] = []


class Comparison(Record):
    """Every metric both files have, per matched configuration and checkpoint."""

    paired: bool
    pairing: str
    """whether the items were paired, and why (not)"""
    notes: list[str] = []
    configs: list[list[str]] = []
    """the configuration pairs compared, [old, new]"""
    unmatched: Unmatched = Unmatched()
    test_configs_compared: list[list[str]] = []
    rows: list[ComparisonRow] = []
    failures: list[Failure] = []
