"""Multi-query needles (RULER niah_multiquery): several keys, one value each, planted apart; one
question names them all, and the answer gives their values in the order the question names them
(alphabetical, not the order of the document)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from kvprobe.api import HASHED_IF_SET, Insert, PlantedSpan, Tokenizer, register
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.kit.probe import QuestionProbe
from kvprobe.probes.kit.questions import Question, group_key
from kvprobe.probes.kit.words import (
    PAIRS_OF_WORDS,
    distinct,
    group_targets,
    number,
    pair_of_words,
    value_count,
)
from kvprobe.result.blocks import Schema, integer


@dataclass(frozen=True)
class MultiQuerySpec:
    groups: int = 2  # questions per checkpoint segment
    keys: int = 3  # keys each question names
    value_digits: int = 7
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = field(
        default="The tracking number of the {key} parcel is {value}.", metadata=HASHED_IF_SET
    )
    query: str = field(
        default="The tracking numbers of the {keys} parcels are, in that order,", metadata=HASHED_IF_SET
    )
    chat_query: str = field(
        default="What are the tracking numbers of the {keys} parcels? Answer with the numbers only, in that "
        "order, separated by commas.",
        metadata=HASHED_IF_SET,
    )
    answer_prefix: str = field(
        default="The tracking numbers of the {keys} parcels are", metadata=HASHED_IF_SET
    )


def named(keys: list[str]) -> str:
    """ "a, b and c"."""
    return ", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else keys[0]


class MultiQueryProbe(QuestionProbe):
    name = "multiquery"
    order = 12
    sections: ClassVar[dict[str, type]] = {"multiquery": MultiQuerySpec}
    spec_type = MultiQuerySpec
    title = "Multi-query needles"
    about = (
        "Multi-query needles (RULER niah_multiquery): several keys, one value each, planted apart; one "
        "question names them all and the answer gives every value, in the order the question names the keys."
    )
    logprob_margin = 0.5
    row_fields: ClassVar[dict[str, Schema]] = {"keys": integer("keys the question names", lo=1)}

    def groups(self, spec: MultiQuerySpec) -> int:
        return spec.groups

    def capacity(self, spec: MultiQuerySpec) -> int:
        return PAIRS_OF_WORDS // (2 * spec.keys)

    def check_spec(self, spec: MultiQuerySpec, source: str) -> None:
        within(source, "multiquery.groups", spec.groups, 1, 16)
        within(source, "multiquery.keys", spec.keys, 2, 8)
        within(source, "multiquery.value_digits", spec.value_digits, 4, 12)
        if "{key}" not in spec.template or "{value}" not in spec.template:
            raise bad(source, "multiquery.template", "must contain {key} and {value}")
        for key in ("query", "chat_query", "answer_prefix"):
            if "{keys}" not in getattr(spec, key):
                raise bad(source, f"multiquery.{key}", "must contain {keys}")

    def plant(
        self, tok: Tokenizer, spec: MultiQuerySpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        n = len(checkpoints) * spec.groups * spec.keys
        keys = distinct(n, pair_of_words, rng, "keys", PAIRS_OF_WORDS)
        values = distinct(n, number(spec.value_digits), rng, "values", value_count(spec.value_digits))
        out = []
        for g, aims in enumerate(
            group_targets(checkpoints, [spec.keys] * spec.groups * len(checkpoints), margin=64, rng=rng)
        ):
            for j, aim in enumerate(aims):
                key, value = keys[g * spec.keys + j], values[g * spec.keys + j]
                tokens = tok.tokenize(" " + spec.template.format(key=key, value=value))
                out.append(Insert(group_key(g, len(aims)), f"{key}={value}", tokens, aim, probe=self.name))
        return out

    def ask(self, spec: MultiQuerySpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        out = []
        for group in groups:
            pairs = sorted(tuple(s.value.split("=")) for s in group)
            keys = named([k for k, _ in pairs])
            out.append(
                Question(
                    "+".join(k for k, _ in pairs),
                    spec.query.format(keys=keys),
                    spec.chat_query.format(keys=keys),
                    spec.answer_prefix.format(keys=keys),
                    " " + ", ".join(v for _, v in pairs),
                    group,
                    fields={"keys": len(pairs)},
                )
            )
        return out


register(MultiQueryProbe())
