"""The one metric table: what compare, the summaries and the verdict know about each metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvprobe.api import by_name, compared_metrics, metric_table, paired_item_metrics
from kvprobe.infra.errors import UserError
from kvprobe.result.store import Result
from kvprobe.stats.compare import FailRule
from kvprobe.stats.inference import significant_tail
from kvprobe.stats.verdict import build_verdict

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"


def test_every_metric_is_declared_once_with_what_its_users_need() -> None:
    assert len({m.name for m in metric_table()}) == len(metric_table())
    for m in metric_table():
        if m.compared:
            assert m.lower_is_worse is not None, m.name  # compare must know which way is worse
            assert m.field is not None or m.source is not None, m.name
    assert by_name("accuracy").margin == 0.05
    assert by_name("answer_logprob").margin == 0.25


def test_the_paired_metrics_are_the_ones_the_verdict_pairs_on_real_items() -> None:
    """From behaviour, not a list: the verdict, rebuilt from two real results that between them
    run every built-in probe, pairs items on exactly the metrics the registry calls paired, and
    each such metric's field is on every item of its probe."""
    paired: set[str] = set()
    for name in ("splitkv-f16-q8_0-q4_0-8192.json", "ruler-f16-q8_0-q4_0-8192.json"):
        doc = Result.load(EXAMPLES / name).doc
        verdict = build_verdict(doc, doc["run"]["seed"], doc["verdict"]["margins"])
        assert verdict is not None
        paired |= {row["metric"] for v in verdict["configs"].values() for row in v["paired"]}
        for m in paired_item_metrics():
            items = [it for it in doc["items"] if it["probe"] == m.probe]
            assert all(m.item_field in it for it in items), m.name
            keys = {(*m.pair_key(it), it["config"]) for it in items}
            assert len(keys) == len(items), m.name  # a key pairs one item of each configuration
    assert paired == {m.name for m in paired_item_metrics()}
    assert len(paired) > 3  # the needle's, the repetition probe's and the question probes' metrics


def test_fail_on_accepts_exactly_the_compared_metrics() -> None:
    for name in compared_metrics():
        assert FailRule.parse(f"{name}:-0.1").metric == name
    for m in metric_table():
        if not m.compared:
            with pytest.raises(UserError):
                FailRule.parse(f"{m.name}:-0.1")


@pytest.mark.parametrize(
    ("p_values", "start"),
    [([0.5, 0.01, 0.02], 1), ([0.01, 0.5, 0.01], 2), ([0.01, 0.01], 0), ([0.01, 0.5], None), ([], None)],
)
def test_the_onset_is_the_start_of_the_significant_tail(p_values: list[float], start: int | None) -> None:
    assert significant_tail(p_values, 0.05) == start
