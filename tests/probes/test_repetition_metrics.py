"""Repetition metrics on hand-made token sequences with known answers."""

from __future__ import annotations

import pytest

from kvprobe.probes.repetition.metrics import (
    Loop,
    compression_ratio,
    distinct_n,
    find_loop,
    first_difference,
    periodic_suffix,
    seq_rep_n,
)

NON_REPEATING = list(range(100, 164))  # 64 distinct tokens


def test_pure_loop() -> None:
    tokens = [7] * 40
    assert find_loop(tokens) == Loop(period=1, repeats=40, length=40)
    assert seq_rep_n(tokens, 1) == pytest.approx(1 - 1 / 40)
    assert seq_rep_n(tokens, 4) == pytest.approx(1 - 1 / 37)
    assert distinct_n(tokens, 2) == pytest.approx(1 / 39)


def test_loop_after_clean_prefix() -> None:
    tokens = NON_REPEATING[:20] + [1, 2, 3] * 8  # 24-token periodic suffix
    loop = find_loop(tokens)
    assert loop == Loop(period=3, repeats=8, length=24)
    # 4-grams: 20 + 24 - 3 = 41; the suffix has only 3 distinct 4-grams of its 21
    assert seq_rep_n(tokens, 4) == pytest.approx(1 - (41 - 21 + 3) / 41)


def test_non_repeating_sequence() -> None:
    assert find_loop(NON_REPEATING) is None
    for n in (1, 2, 3, 4):
        assert seq_rep_n(NON_REPEATING, n) == 0.0
        assert distinct_n(NON_REPEATING, n) == 1.0


@pytest.mark.parametrize("period", [1, 2, 7])
def test_period_detection(period: int) -> None:
    unit = list(range(50, 50 + period))
    tokens = NON_REPEATING[:10] + unit * (32 // period + 2)
    loop = find_loop(tokens)
    assert loop is not None
    assert loop.period == period
    assert loop.length == len(tokens) - 10
    assert loop.repeats == loop.length // period


def test_short_repeat_is_not_a_loop() -> None:
    # a 12-token periodic suffix is below the 16-token threshold
    tokens = NON_REPEATING[:30] + [5, 6] * 6
    assert periodic_suffix(tokens, 2) == 12
    assert find_loop(tokens) is None
    assert find_loop(tokens, min_tokens=8) == Loop(period=2, repeats=6, length=12)


def test_digit_loop_like_a_failed_needle() -> None:
    # "899999999": with one token per digit, period 1 over the last eight tokens
    tokens = [8] + [9] * 8
    assert find_loop(tokens, min_tokens=6) == Loop(period=1, repeats=8, length=8)


def test_compression_ratio() -> None:
    looping = "the cat sat on the mat. " * 20
    assert compression_ratio(looping) > 2.4
    prose = (
        "Canal builders measured every fall of ground with a level and a chain, then argued with "
        "landowners about the route, the price of clay, and who would pay for the bridges."
    )
    assert compression_ratio(prose) < 2.4
    assert compression_ratio("") == 0.0


def test_first_difference() -> None:
    assert first_difference([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert first_difference([1, 2, 3], [1, 2, 3]) == 3
    assert first_difference([5], [1]) == 0
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_short_sequences() -> None:
    assert seq_rep_n([1, 2], 4) == 0.0
    assert distinct_n([], 2) == 1.0
    assert find_loop([]) is None
