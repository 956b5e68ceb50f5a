"""Repetition and degeneration metrics of a continuation: pure functions over token ids.

seq-rep-n and distinct-n follow Welleck et al. (2019) "Neural text generation with
unlikelihood training"; the zlib compression ratio and its 2.4 threshold follow Whisper's
decoding fallback.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

WHISPER_LOOP_RATIO = 2.4
MIN_LOOP_TOKENS = 16


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(tokens: Sequence[int], n: int) -> float:
    """1 - unique n-grams / all n-grams; 0 for a sequence shorter than n."""
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """unique n-grams / all n-grams; 1 for a sequence shorter than n."""
    grams = ngrams(tokens, n)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes); above 2.4 Whisper treats text as looping."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


@dataclass(frozen=True)
class Loop:
    period: int  # shortest period of the repeated suffix, in tokens
    repeats: int  # how many whole periods the suffix spans
    length: int  # tokens in the periodic suffix


def periodic_suffix(tokens: Sequence[int], period: int) -> int:
    """Length of the longest suffix with tokens[i] == tokens[i - period] throughout."""
    n = len(tokens)
    i = n - 1
    while i - period >= 0 and tokens[i] == tokens[i - period]:
        i -= 1
    return (n - 1 - i) + period if n >= period else 0


def find_loop(tokens: Sequence[int], min_tokens: int = MIN_LOOP_TOKENS) -> Loop | None:
    """The shortest period p whose periodic suffix is at least `min_tokens` long and spans
    at least two periods; None if the sequence does not end in a loop."""
    n = len(tokens)
    for period in range(1, n // 2 + 1):
        length = periodic_suffix(tokens, period)
        if length >= min_tokens and length >= 2 * period:
            return Loop(period=period, repeats=length // period, length=length)
    return None


def first_difference(tokens: Sequence[int], reference: Sequence[int]) -> int:
    """Index of the first token that differs from the reference continuation; the common
    length when one is a prefix of the other (no divergence within the compared span)."""
    for i, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return i
    return min(len(tokens), len(reference))


@dataclass(frozen=True)
class RepetitionMetrics:
    seq_rep: dict[int, float]  # n -> seq-rep-n, n = 1..4
    distinct: dict[int, float]  # n -> distinct-n, n = 1..4
    compression_ratio: float
    loop: Loop | None


def repetition_metrics(tokens: Sequence[int], text: str) -> RepetitionMetrics:
    return RepetitionMetrics(
        seq_rep={n: seq_rep_n(tokens, n) for n in range(1, 5)},
        distinct={n: distinct_n(tokens, n) for n in range(1, 5)},
        compression_ratio=compression_ratio(text),
        loop=find_loop(tokens),
    )
