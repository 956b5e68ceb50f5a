"""Multi-query needles (RULER niah_multiquery): one question names several keys, asked at once."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import PAIRS_OF_WORDS, chunks, distinct, numbers, pair_of_words
from kvprobe.result.blocks import integer


@dataclass(frozen=True)
class MultiQuerySpec:
    groups: int = count(2, 1, 16)  # questions per checkpoint segment
    keys: int = count(3, 2, 8)  # keys each question names
    value_digits: int = count(7, 4, 12)
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = text("The tracking number of the {key} parcel is {value}.", "key", "value")
    query: str = text("The tracking numbers of the {keys} parcels are, in that order,", "keys")
    chat_query: str = text("What are the tracking numbers of the {keys} parcels? Answer with the numbers "
                           "only, in that order, separated by commas.", "keys")  # fmt: skip
    answer_prefix: str = text("The tracking numbers of the {keys} parcels are", "keys")


class MultiQueryProbe(QuestionProbe[MultiQuerySpec]):
    """Multi-query needles (RULER niah_multiquery): several keys, one value each, planted apart; one question
    names them all and the answer gives every value, in the order the question names the keys."""

    name, order, title = "multiquery", 12, "Multi-query needles"
    logprob_margin = 0.5
    row_fields = row(keys=integer("keys the question names", lo=1))

    def capacity(self, spec: MultiQuerySpec) -> int:
        return PAIRS_OF_WORDS // (2 * spec.keys)

    def draw(self, spec: MultiQuerySpec, n: int, rng: random.Random) -> Drawn:
        keys = distinct(n * spec.keys, pair_of_words, rng, "keys", PAIRS_OF_WORDS)
        values = numbers(n * spec.keys, spec.value_digits, rng)
        return Drawn.of(chunks([self.fact(spec, k, v) for k, v in zip(keys, values, strict=True)], spec.keys))

    def ask(self, spec: MultiQuerySpec, groups: list[Group]) -> list[Question]:
        out = []
        for g in groups:  # the keys named alphabetically, not in the order of the document
            facts = sorted(g.facts, key=lambda f: (f.subject, f.value))
            keys = [f.subject for f in facts]
            named = ", ".join(keys[:-1]) + " and " + keys[-1]
            out.append(self.pose(spec, g, key="+".join(keys), fill={"keys": named},
                                 answer=[f.value for f in facts], keys=len(keys)))  # fmt: skip
        return out


register(MultiQueryProbe())
