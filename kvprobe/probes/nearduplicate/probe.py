"""Near-duplicate needles (MRCR-style): a logbook's records are near-identical sentences that
differ only in their number, planted apart; the question asks for the k-th record's number.
A wrong answer that names another record of the same logbook is an ordinal confusion, which is
expected to grow with context."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from kvprobe.api import HASHED_IF_SET, Insert, PlantedSpan, Tokenizer, register
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.kit.probe import QuestionProbe
from kvprobe.probes.kit.questions import Question, group_key
from kvprobe.probes.kit.words import PLACES, distinct, group_targets, number, value_count
from kvprobe.result.blocks import Schema, integer

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
SIDES = ("north", "south", "east", "west", "upper", "lower", "old", "new")


@dataclass(frozen=True)
class NearDuplicateSpec:
    groups: int = 1  # logbooks per checkpoint segment
    duplicates: int = 4  # records per logbook, each asked for by its ordinal
    value_digits: int = 7
    generate: bool = True  # a wrong answer's greedy output, to tell which planted answer it gave
    template: str = field(default="The {book} logbook records parcel {value}.", metadata=HASHED_IF_SET)
    query: str = field(default="The {ordinal} record in the {book} logbook is parcel", metadata=HASHED_IF_SET)
    chat_query: str = field(
        default="Which parcel does the {ordinal} record in the {book} logbook name? Answer with the "
        "number only.",
        metadata=HASHED_IF_SET,
    )


class NearDuplicateProbe(QuestionProbe):
    name = "nearduplicate"
    order = 15
    sections: ClassVar[dict[str, type]] = {"nearduplicate": NearDuplicateSpec}
    spec_type = NearDuplicateSpec
    title = "Near-duplicate needles"
    about = (
        "Near-duplicate needles (MRCR-style): a logbook's records are near-identical sentences that differ "
        "only in their number, planted apart; the question asks for the k-th record's number. "
        "`output_candidate` names the record a wrong answer gave instead (an ordinal confusion)."
    )
    row_fields: ClassVar[dict[str, Schema]] = {
        "ordinal": integer("which record is asked for (1: the first)", lo=1),
        "duplicates": integer("records in the logbook", lo=1),
    }
    breakdown = "ordinal"

    def groups(self, spec: NearDuplicateSpec) -> int:
        return spec.groups

    def capacity(self, spec: NearDuplicateSpec) -> int:
        return len(SIDES) * len(PLACES)

    def check_spec(self, spec: NearDuplicateSpec, source: str) -> None:
        within(source, "nearduplicate.groups", spec.groups, 1, 8)
        within(source, "nearduplicate.duplicates", spec.duplicates, 2, len(ORDINALS))
        within(source, "nearduplicate.value_digits", spec.value_digits, 4, 12)
        if "{book}" not in spec.template or "{value}" not in spec.template:
            raise bad(source, "nearduplicate.template", "must contain {book} and {value}")
        for key in ("query", "chat_query"):
            if "{book}" not in getattr(spec, key) or "{ordinal}" not in getattr(spec, key):
                raise bad(source, f"nearduplicate.{key}", "must contain {book} and {ordinal}")

    def plant(
        self, tok: Tokenizer, spec: NearDuplicateSpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        n = len(checkpoints) * spec.groups
        books = distinct(
            n, lambda r: f"{r.choice(SIDES)} {r.choice(PLACES)}", rng, "logbooks", self.capacity(spec)
        )
        values = distinct(
            n * spec.duplicates, number(spec.value_digits), rng, "values", value_count(spec.value_digits)
        )
        out = []
        for g, aims in enumerate(group_targets(checkpoints, [spec.duplicates] * n, margin=64, rng=rng)):
            for j, aim in enumerate(aims):
                value = values[g * spec.duplicates + j]
                tokens = tok.tokenize(" " + spec.template.format(book=books[g], value=value))
                out.append(
                    Insert(group_key(g, len(aims)), f"{books[g]}={value}", tokens, aim, probe=self.name)
                )
        return out

    def ask(self, spec: NearDuplicateSpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        out = []
        for group in groups:
            book = group[0].value.split("=")[0]
            values = [s.value.split("=")[1] for s in group]
            for k, (span, value) in enumerate(zip(group, values, strict=True)):
                fill = {"ordinal": ORDINALS[k], "book": book}
                out.append(
                    Question(
                        f"{book}#{k + 1}",
                        spec.query.format(**fill),
                        spec.chat_query.format(**fill),
                        spec.query.format(**fill),
                        f" {value}",
                        [span],
                        values,
                        {"ordinal": k + 1, "duplicates": len(group)},
                    )
                )
        return out


register(NearDuplicateProbe())
