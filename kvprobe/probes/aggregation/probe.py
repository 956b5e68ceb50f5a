"""Aggregation (RULER cwe/fwe): a tally's most frequent words, their order fixed by their counts."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Fact, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import NOUNS, SIDED_PLACES, distinct, sided_place
from kvprobe.result.blocks import integer


@dataclass(frozen=True)
class AggregationSpec:
    groups: int = count(2, 1, 8)  # tallies per checkpoint segment
    common: int = count(3, 1, 6)  # words asked for: counted common + 1, common, ..., 2 times
    rare: int = count(2, 0, 12)  # words counted once
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = text("The {tally} tally adds {word}.", "tally", "word")
    query: str = text("The {count} words the {tally} tally adds most often, from the most frequent, are",
                      "tally")  # fmt: skip
    chat_query: str = text("Which {count} words does the {tally} tally add most often? List them from the "
                           "most frequent, separated by commas.", "tally")  # fmt: skip
    answer_prefix: str = text("The {count} words the {tally} tally adds most often are", "tally")


class AggregationProbe(QuestionProbe[AggregationSpec]):
    """Aggregation (RULER cwe/fwe): a tally's entries are spread over the document, a few common words several
    times and the rest once; the question asks for the most frequent words, from the most frequent down (their
    counts differ, so the answer's order is fixed)."""

    name, order, title = "aggregation", 14, "Aggregation"
    logprob_margin, margin = 0.5, 48
    row_fields = row(entries=integer("entries of the tally", lo=1))

    def draw(self, spec: AggregationSpec, n: int, rng: random.Random) -> Drawn:
        tallies = distinct(n, sided_place, rng, "tally names", SIDED_PLACES)
        counts = [spec.common + 1 - j for j in range(spec.common)] + [1] * spec.rare

        def group(g: int, rng: random.Random) -> list[Fact]:  # its words are drawn once it is placed
            words = rng.sample(NOUNS, len(counts))
            entered = [w for w, c in zip(words, counts, strict=True) for _ in range(c)]
            rng.shuffle(entered)
            return [self.fact(spec, tallies[g], word) for word in entered]

        return Drawn([sum(counts)] * n, group)

    def ask(self, spec: AggregationSpec, groups: list[Group]) -> list[Question]:
        words = f"{spec.common}" if spec.common > 1 else "one"
        return [self.pose(spec, g, fill={"count": words, "tally": g.subject}, entries=len(g.spans),
                          answer=[w for w, _ in Counter(g.values).most_common(spec.common)])
                for g in groups]  # fmt: skip


register(AggregationProbe())
