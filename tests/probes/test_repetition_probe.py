"""The repetition probe's own parts, directly, on plain rows: where it forks, how it marks where
a continuation leaves the reference's, what its summary says, and which continuation it shows."""

from __future__ import annotations

from typing import Any

import pytest
from scipy.stats import binomtest

from kvprobe.api import get_probe
from kvprobe.api.result import ResultDoc
from kvprobe.probes.repetition.probe import RepetitionRun, continuation_points, worst_continuation


def test_forks_step_back_from_the_checkpoint_and_stop_at_the_start() -> None:
    assert continuation_points(1024, 4, 96) == [1024, 928, 832, 736]
    assert continuation_points(100, 4, 96) == [100, 4]
    assert continuation_points(2, 3, 96) == [2]


def row(config: str, tokens: list[int], *, seq_rep_4: float = 0.1, loop: bool = False, ctx: int = 1024,
        offset: int = 1024) -> dict[str, Any]:  # fmt: skip
    return {"probe": "repetition", "config": config, "doc": 0, "ctx": ctx, "offset": offset, "tokens": tokens,
            "text": " ".join(map(str, tokens)), "seq_rep_4": seq_rep_4, "distinct_2": 0.9,
            "compression_ratio": 1.5, "loop": loop, "first_difference": None}  # fmt: skip


def test_each_continuation_is_marked_where_it_leaves_the_references() -> None:
    run = RepetitionRun.__new__(RepetitionRun)  # finish() reads only the baseline: no model needed
    run.baseline = "f16"
    items = [row("f16", [1, 2, 3, 4]), row("q4_0", [1, 2, 9, 9]), row("q8_0", [1, 2, 3, 4]),
             row("q4_0", [5, 6], offset=928)]  # fmt: skip
    run.finish(items)
    assert [it["first_difference"] for it in items] == [None, 2, 4, None]  # no reference from 928


def test_the_summary_has_means_and_the_loop_rate_with_its_wilson_interval() -> None:
    items = [row("q4_0", [1], seq_rep_4=0.2 * i, loop=i < 3) for i in range(5)]
    text = [row("text", [1], seq_rep_4=0.0)]
    doc = ResultDoc.model_construct(items=items, text_items=text)  # a result holding only these rows
    summary = get_probe("repetition").summary(doc, seed=0, measured=None)
    by = {(r["config"], r["metric"]): r for r in summary}
    assert by[("q4_0", "seq_rep_4")]["value"] == pytest.approx(0.4)
    assert by[("q4_0", "loop_rate")]["value"] == 3 / 5
    wilson = binomtest(3, 5).proportion_ci(method="wilson")
    assert by[("q4_0", "loop_rate")]["ci"] == pytest.approx([wilson.low, wilson.high])
    assert by[("text", "seq_rep_4")]["value"] == 0.0  # the document's own text: the level of real text
    assert ("q4_0", "first_difference") not in by  # no continuation had one


def test_the_worst_continuation_shown_is_the_most_repetitive_test_one() -> None:
    items = [row("f16", [7] * 8, seq_rep_4=0.99), row("q4_0", [1, 2], seq_rep_4=0.5),
             row("q4_0", [3, 3, 3], seq_rep_4=0.8, loop=True, ctx=2048, offset=1952)]  # fmt: skip
    said = worst_continuation({"items": items, "baseline": "f16"})
    assert said is not None
    assert said.startswith("The most repetitive continuation: q4_0 at 2,048 tokens, from position 1,952")
    assert "seq-rep-4 0.80, a loop" in said
    assert worst_continuation({"items": items[:1], "baseline": "f16"}) is None
