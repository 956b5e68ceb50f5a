"""Multi-value needles (RULER niah_multivalue): one key, several values, all asked for in order."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import PAIRS_OF_WORDS, chunks, distinct, numbers, pair_of_words
from kvprobe.result.blocks import integer


@dataclass(frozen=True)
class MultiValueSpec:
    groups: int = count(1, 1, 16)  # keys per checkpoint segment
    values: int = count(4, 2, 8)  # values per key (RULER: 4)
    value_digits: int = count(7, 4, 12)
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = text("One of the special magic numbers for {key} is {value}.", "key", "value")
    query: str = text("The special magic numbers for {key} mentioned in the text, in the order they appear, "
                      "are", "key")  # fmt: skip
    chat_query: str = text("What are all the special magic numbers for {key} mentioned in the text? List "
                           "them in the order they appear, separated by commas.", "key")  # fmt: skip
    answer_prefix: str = text("The special magic numbers for {key} are", "key")


class MultiValueProbe(QuestionProbe[MultiValueSpec]):
    """Multi-value needles (RULER niah_multivalue): one key ("amber-falcon") holds several values planted
    apart; the question asks for all of them in the order they appear, and the answer must list them all."""

    name, order, title = "multivalue", 11, "Multi-value needles"
    logprob_margin = 0.5
    row_fields = row(values=integer("values the key holds, all in the answer", lo=1))

    def capacity(self, spec: MultiValueSpec) -> int:
        return PAIRS_OF_WORDS // 2

    def draw(self, spec: MultiValueSpec, n: int, rng: random.Random) -> Drawn:
        keys = distinct(n, pair_of_words, rng, "keys", PAIRS_OF_WORDS)
        values = chunks(numbers(n * spec.values, spec.value_digits, rng), spec.values)
        return Drawn.of([[self.fact(spec, k, v) for v in vs] for k, vs in zip(keys, values, strict=True)])

    def ask(self, spec: MultiValueSpec, groups: list[Group]) -> list[Question]:
        return [
            self.pose(spec, g, fill={"key": g.subject}, answer=g.values, values=len(g.values)) for g in groups
        ]


register(MultiValueProbe())
