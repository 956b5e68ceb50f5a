"""The needle probe's own parts, directly, on plain data: where needles go, what they are, which
are asked at a checkpoint, what a row says, and the summary and depth grid made from rows."""

from __future__ import annotations

import random

import pytest
from scipy.stats import binomtest

from kvprobe.api import Document, PlantedSpan, get_probe
from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.probes.needle.plan import draw_keys_values, items_at, needle_targets
from kvprobe.probes.needle.probe import depth_grid, first_number


def test_every_checkpoint_segment_gets_its_needles_clear_of_the_end() -> None:
    targets = needle_targets([1024, 2048, 4096], per_segment=4, margin=60, rng=random.Random(1))
    assert targets == sorted(targets)
    for start, end in ((0, 1024), (1024, 2048), (2048, 4096)):
        inside = [t for t in targets if start <= t < end]
        assert len(inside) == 4
        assert all(t < end - 60 for t in inside)  # a needle ends before its checkpoint asks for it
    # spread over the segment: shallow, middle and deep
    assert min(targets[:4]) < 1024 / 3
    assert max(targets[:4]) > 2 * (1024 - 60) / 3


def test_keys_and_values_are_distinct_and_values_have_their_digits() -> None:
    pairs = draw_keys_values(200, 7, random.Random(3), ["locker number", "passport number"])
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    assert len(set(keys)) == len(set(values)) == 200
    assert all(len(v) == 7 and v[0] != "0" for v in values)
    assert len({v[:3] for v in values}) == 200  # no two share their first three digits
    assert all(k.endswith(("'s locker number", "'s passport number")) for k in keys)
    assert draw_keys_values(5, 7, random.Random(3)) == draw_keys_values(5, 7, random.Random(3))  # seeded
    with pytest.raises(UserError, match="needle"):
        draw_keys_values(10**6, 2, random.Random(0))  # more needles than two digits can hold


def span(key: str, position: int, n: int = 10) -> PlantedSpan:
    return PlantedSpan(0, key, "1234567", position, n, probe="needle")


def test_a_checkpoint_asks_the_needles_planted_wholly_before_it() -> None:
    other = PlantedSpan(0, "v", "1", 50, 5, probe="vartrack")
    document = Document(0, list(range(4096)), [span("a", 100), span("b", 1015), span("c", 2000), other])
    at_1024 = items_at(document, 1024)
    assert [i.key for i in at_1024] == ["a"]  # "b" ends at 1025; another probe's span is not a needle
    at_2048 = items_at(document, 2048)
    assert [i.key for i in at_2048] == ["a", "b", "c"]
    c = at_2048[2]
    assert c.depth == round(2000 / 2048, 4)
    assert c.distance == 2048 - 2010
    assert c.ctx == 2048
    assert c.expected == "1234567"


def rows(
    config: str, ctx: int, hits: int, n: int, logprob: float, *, depth: float = 0.5
) -> list[dict[str, object]]:
    return [{"probe": "needle", "config": config, "doc": 0, "ctx": ctx, "key": f"k{i}", "depth": depth,
             "correct": i < hits, "logprob": logprob - 0.01 * i} for i in range(n)]  # fmt: skip


def test_the_summary_is_the_accuracy_with_its_wilson_interval_and_the_mean_log_prob() -> None:
    items = rows("f16", 1024, 14, 16, -1.0) + rows("q4_0", 1024, 9, 16, -2.0)
    summary = get_probe("needle").summary(ResultDoc.model_construct(items=items), seed=0, measured=None)
    acc = {r["config"]: r for r in summary if r["metric"] == "accuracy"}
    assert acc["q4_0"]["value"] == 9 / 16
    wilson = binomtest(9, 16).proportion_ci(method="wilson")
    assert acc["q4_0"]["ci"] == pytest.approx([wilson.low, wilson.high])
    logprob = {r["config"]: r for r in summary if r["metric"] == "answer_logprob"}
    assert logprob["f16"]["value"] == pytest.approx(-1.0 - 0.01 * 7.5)
    assert logprob["f16"]["ci"][0] < logprob["f16"]["value"] < logprob["f16"]["ci"][1]
    assert logprob["f16"]["n"] == 16


def test_the_depth_grid_places_each_answer_in_its_depth_bin() -> None:
    items = rows("q4_0", 1024, 1, 2, -1.0, depth=0.05) + rows("q4_0", 2048, 0, 1, -1.0, depth=0.95)
    grid = depth_grid(items, "q4_0", [1024, 2048])
    assert grid[0] == [0.5, None]  # the shallowest bin at 1,024: one of two right
    assert grid[-1] == [None, 0.0]  # the deepest at 2,048: none
    assert all(cell is None for row in grid[1:-1] for cell in row)


def test_the_number_a_failed_answer_gave() -> None:
    assert first_number(" 899999999 and more") == "899999999"
    assert first_number("no number") is None
