"""The one metric table: what compare, the summaries and the verdict know about each metric."""

from __future__ import annotations

import pytest

from kvprobe.api import by_name, compared_metrics, metric_table, paired_item_metrics
from kvprobe.compare import FailRule
from kvprobe.errors import UserError
from kvprobe.stats.inference import significant_tail


def test_every_metric_is_declared_once_with_what_its_users_need() -> None:
    assert len({m.name for m in metric_table()}) == len(metric_table())
    for m in metric_table():
        if m.compared:
            assert m.lower_is_worse is not None, m.name  # compare must know which way is worse
            assert m.field is not None or m.source is not None, m.name
    ruler = ("multikey", "multivalue", "multiquery", "vartrack", "aggregation", "nearduplicate")
    question_metrics = {f"{p}_{m}" for p in ruler for m in ("accuracy", "logprob")}
    assert {m.name for m in paired_item_metrics()} == {
        "accuracy",
        "answer_logprob",
        "seq_rep_4",
        *question_metrics,
    }
    assert by_name("accuracy").margin == 0.05
    assert by_name("answer_logprob").margin == 0.25


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
