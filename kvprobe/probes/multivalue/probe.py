"""Multi-value needles (RULER niah_multivalue): one key holds several values, planted apart;
the question asks for all of them, in the order they appear, and the answer lists them all."""

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
class MultiValueSpec:
    groups: int = 1  # keys per checkpoint segment
    values: int = 4  # values per key (RULER: 4)
    value_digits: int = 7
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = field(
        default="One of the special magic numbers for {key} is {value}.", metadata=HASHED_IF_SET
    )
    query: str = field(
        default="The special magic numbers for {key} mentioned in the text, in the order they appear, are",
        metadata=HASHED_IF_SET,
    )
    chat_query: str = field(
        default="What are all the special magic numbers for {key} mentioned in the text? List them in the "
        "order they appear, separated by commas.",
        metadata=HASHED_IF_SET,
    )
    answer_prefix: str = field(default="The special magic numbers for {key} are", metadata=HASHED_IF_SET)


class MultiValueProbe(QuestionProbe):
    name = "multivalue"
    order = 11
    sections: ClassVar[dict[str, type]] = {"multivalue": MultiValueSpec}
    spec_type = MultiValueSpec
    title = "Multi-value needles"
    about = (
        'Multi-value needles (RULER niah_multivalue): one key ("amber-falcon") holds several values '
        "planted apart; the question asks for all of them in the order they appear, and the answer must "
        "list them all."
    )
    logprob_margin = 0.5
    row_fields: ClassVar[dict[str, Schema]] = {
        "values": integer("values the key holds, all in the answer", lo=1)
    }

    def groups(self, spec: MultiValueSpec) -> int:
        return spec.groups

    def capacity(self, spec: MultiValueSpec) -> int:
        return PAIRS_OF_WORDS // 2

    def check_spec(self, spec: MultiValueSpec, source: str) -> None:
        within(source, "multivalue.groups", spec.groups, 1, 16)
        within(source, "multivalue.values", spec.values, 2, 8)
        within(source, "multivalue.value_digits", spec.value_digits, 4, 12)
        for key in ("template", "query", "chat_query", "answer_prefix"):
            if "{key}" not in getattr(spec, key):
                raise bad(source, f"multivalue.{key}", "must contain {key}")
        if "{value}" not in spec.template:
            raise bad(source, "multivalue.template", "must contain {value}")

    def plant(
        self, tok: Tokenizer, spec: MultiValueSpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        n = len(checkpoints) * spec.groups
        keys = distinct(n, pair_of_words, rng, "keys", PAIRS_OF_WORDS)
        values = distinct(
            n * spec.values, number(spec.value_digits), rng, "values", value_count(spec.value_digits)
        )
        out = []
        for g, aims in enumerate(
            group_targets(checkpoints, [spec.values] * spec.groups * len(checkpoints), margin=64, rng=rng)
        ):
            for j, aim in enumerate(aims):
                value = values[g * spec.values + j]
                tokens = tok.tokenize(" " + spec.template.format(key=keys[g], value=value))
                out.append(
                    Insert(group_key(g, len(aims)), f"{keys[g]}={value}", tokens, aim, probe=self.name)
                )
        return out

    def ask(self, spec: MultiValueSpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        out = []
        for group in groups:
            key = group[0].value.split("=")[0]
            values = [s.value.split("=")[1] for s in group]
            out.append(
                Question(
                    key,
                    spec.query.format(key=key),
                    spec.chat_query.format(key=key),
                    spec.answer_prefix.format(key=key),
                    " " + ", ".join(values),
                    group,
                    fields={"values": len(values)},
                )
            )
        return out


register(MultiValueProbe())
