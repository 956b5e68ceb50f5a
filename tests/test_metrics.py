"""The one metric table: what compare, the summaries and the verdict know about each metric."""

from __future__ import annotations

import pytest

from kvprobe.compare import FailRule
from kvprobe.errors import UserError
from kvprobe.metrics import BY_NAME, COMPARED, METRIC_TABLE, PAIRED_ITEM_METRICS
from kvprobe.stats import significant_tail


def test_every_metric_is_declared_once_with_what_its_users_need() -> None:
    assert len(BY_NAME) == len(METRIC_TABLE)
    for m in METRIC_TABLE:
        if m.compared:
            assert m.lower_is_worse is not None, m.name  # compare must know which way is worse
            assert m.field is not None or m.source is not None, m.name
    assert {m.name for m in PAIRED_ITEM_METRICS} == {"accuracy", "answer_logprob", "seq_rep_4"}
    assert BY_NAME["accuracy"].negligible == 0.05
    assert BY_NAME["answer_logprob"].negligible == 0.25


def test_fail_on_accepts_exactly_the_compared_metrics() -> None:
    for name in COMPARED:
        assert FailRule.parse(f"{name}:-0.1").metric == name
    for m in METRIC_TABLE:
        if not m.compared:
            with pytest.raises(UserError):
                FailRule.parse(f"{m.name}:-0.1")


@pytest.mark.parametrize(
    ("p_values", "start"),
    [([0.5, 0.01, 0.02], 1), ([0.01, 0.5, 0.01], 2), ([0.01, 0.01], 0), ([0.01, 0.5], None), ([], None)],
)
def test_the_onset_is_the_start_of_the_significant_tail(p_values: list[float], start: int | None) -> None:
    assert significant_tail(p_values, 0.05) == start
