"""Near-duplicate needles (MRCR-style): near-identical records, asked for the k-th. A wrong answer
that names another record of the same logbook is an ordinal confusion, expected to grow with
context."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import SIDED_PLACES, chunks, distinct, numbers, sided_place
from kvprobe.result.blocks import integer

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


@dataclass(frozen=True)
class NearDuplicateSpec:
    groups: int = count(1, 1, 8)  # logbooks per checkpoint segment
    duplicates: int = count(4, 2, len(ORDINALS))  # records per logbook, each asked for by its ordinal
    value_digits: int = count(7, 4, 12)
    generate: bool = True  # a wrong answer's greedy output, to tell which planted answer it gave
    template: str = text("The {book} logbook records parcel {value}.", "book", "value")
    query: str = text("The {ordinal} record in the {book} logbook is parcel", "book", "ordinal")
    chat_query: str = text("Which parcel does the {ordinal} record in the {book} logbook name? Answer with "
                           "the number only.", "book", "ordinal")  # fmt: skip


class NearDuplicateProbe(QuestionProbe[NearDuplicateSpec]):
    """Near-duplicate needles (MRCR-style): a logbook's records are near-identical sentences that differ only
    in their number, planted apart; the question asks for the k-th record's number. `output_candidate` names
    the record a wrong answer gave instead (an ordinal confusion)."""

    name, order, title = "nearduplicate", 15, "Near-duplicate needles"
    breakdown = "ordinal"
    row_fields = row(
        ordinal=integer("which record is asked for (1: the first)", lo=1),
        duplicates=integer("records in the logbook", lo=1),
    )

    def draw(self, spec: NearDuplicateSpec, n: int, rng: random.Random) -> Drawn:
        books = distinct(n, sided_place, rng, "logbooks", SIDED_PLACES)
        values = chunks(numbers(n * spec.duplicates, spec.value_digits, rng), spec.duplicates)
        return Drawn.of([[self.fact(spec, b, v) for v in vs] for b, vs in zip(books, values, strict=True)])

    def ask(self, spec: NearDuplicateSpec, groups: list[Group]) -> list[Question]:
        return [self.pose(spec, g, key=f"{g.subject}#{k}", answer=value, spans=[span], candidates=g.values,
                          fill={"ordinal": ORDINALS[k - 1], "book": g.subject}, ordinal=k,
                          duplicates=len(g.spans))
                for g in groups
                for k, (span, value) in enumerate(zip(g.spans, g.values, strict=True), 1)]  # fmt: skip


register(NearDuplicateProbe())
