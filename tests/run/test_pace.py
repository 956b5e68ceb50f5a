"""The run's time arithmetic and its progress lines in a log, with a fake clock."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from kvprobe.run.pace import Pace, StepShape, format_duration, unscored_feed_cost
from kvprobe.run.progress import RunProgress

STEPS = [StepShape(0, 1024), StepShape(1024, 2048), StepShape(2048, 4096)]


def test_a_step_seen_once_predicts_itself_in_documents_of_its_kind() -> None:
    pace = Pace(STEPS, scored_docs={0})
    assert pace.predict(0, 0) is None  # nothing seen: no guess
    pace.observe(0, 0, 10.0, feed_s=6.0, reduce_s=2.0)
    pace.observe(1, 0, 5.0, feed_s=3.0)  # an unscored document does less work
    assert pace.predict(2, 0) == 5.0
    assert pace.predict(0, 0) == 10.0


def test_an_unscored_document_is_predicted_from_a_scored_one_by_the_model_shape() -> None:
    pace = Pace(STEPS, scored_docs={0}, unscored_feed=0.4)
    pace.observe(0, 0, 10.0, feed_s=6.0, reduce_s=2.0)
    # feeding costs 0.4 as much, nothing is reduced, the probes take as long: 2.4 + 0 + 2
    assert pace.predict(1, 0) == pytest.approx(6.0 * 0.4 + 2.0)


def test_an_unseen_step_is_extrapolated_by_depth() -> None:
    pace = Pace(STEPS, scored_docs=set())
    pace.observe(0, 0, 10.0, feed_s=6.0)
    # [1024, 2048) is as long as [0, 1024) but deeper; the probes run at depth 2048, not 1024
    feed = 6.0 * STEPS[1].work / STEPS[0].work
    probes = 4.0 * (1 + 2048 / 4096) / (1 + 1024 / 4096)
    assert pace.predict(0, 1) == pytest.approx(feed + probes)
    assert STEPS[2].work > 2 * STEPS[1].work > 2 * STEPS[0].work
    assert pace.remaining([(1, 0), (1, 1)]) == pytest.approx(10.0 + feed + probes)


def test_unscored_feed_cost_from_the_model_shape() -> None:
    gemma = {"n_params": 268_098_176, "n_vocab": 262_144, "n_embd": 640, "output_type": None}
    # tied embeddings: the body is 268M - 168M = 100M parameters, the logits 168M per token
    assert unscored_feed_cost(gemma, 2, 2) == pytest.approx(0.374, abs=0.001)
    assert unscored_feed_cost(gemma, 2, 3) == pytest.approx(0.374 * 2 / 3, abs=0.001)  # the null check


def test_durations_read_well() -> None:
    assert [format_duration(s) for s in (45, 210, 3000, 7500)] == ["45 s", "3.5 min", "50 min", "2 h 05 min"]


def test_a_log_gets_a_plain_progress_line_about_once_a_minute() -> None:
    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    pace = Pace(STEPS, scored_docs=set())
    units = [(0, 0, 0), (0, 1, 0), (0, 2, 0)]
    with RunProgress(console, 3000, pace, units, interval=60.0, clock=lambda: now[0]) as shown:
        now[0] = 30.0
        shown.advance(500, "doc 0 L=1024 (document)")
        assert out.getvalue() == ""  # not yet a minute
        now[0] = 40.0
        shown.unit_done((0, 0, 0), 40.0)
        assert "estimated run time: about" in out.getvalue()  # said once, after the first unit
        now[0] = 61.0
        shown.advance(500, "f16 doc 0 L=2048 needles")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(
        "progress: f16 doc 0 L=2048 needles: 1,000 of about 3,000 tokens, 61 s elapsed"
    )
    assert "left" in lines[1]


def test_a_unit_of_a_smaller_group_is_predicted_smaller() -> None:
    """In a run in configuration groups a unit's time goes with the contexts of its group."""
    pace = Pace(STEPS, scored_docs=set(), group_sizes=[4, 2])
    pace.observe(0, 0, 8.0, feed_s=4.0, group=0)
    assert pace.predict(0, 0, 0) == pytest.approx(8.0)
    assert pace.predict(0, 0, 1) == pytest.approx(4.0)
    assert pace.remaining([(0, 0, 0), (0, 0, 1)]) == pytest.approx(12.0)
