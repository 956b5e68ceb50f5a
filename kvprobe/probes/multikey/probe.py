"""Multi-key needles (RULER niah_multikey_3): groups of needles whose keys look alike (codes
that share their first half) and share one attribute; every needle is asked for, the others of
its group and of the document standing as distractors."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import ClassVar

from kvprobe.api import HASHED_IF_SET, Insert, PlantedSpan, Tokenizer, register
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.kit.probe import QuestionProbe
from kvprobe.probes.kit.questions import Question, group_key
from kvprobe.probes.kit.words import HEX, distinct, group_targets, number, value_count
from kvprobe.result.blocks import Schema, integer


@dataclass(frozen=True)
class MultiKeySpec:
    groups: int = 1  # groups of look-alike keys per checkpoint segment
    keys: int = 4  # needles per group
    value_digits: int = 7
    generate: bool = True  # a wrong answer's greedy output, to tell which planted answer it gave
    template: str = field(default="The access code for vault {key} is {value}.", metadata=HASHED_IF_SET)
    query: str = field(default="The access code for vault {key} is", metadata=HASHED_IF_SET)
    chat_query: str = field(
        default="What is the access code for vault {key}? Answer with the number only.",
        metadata=HASHED_IF_SET,
    )


def code(rng: random.Random, stem: str = "") -> str:
    """A code such as "a3f9-17c2"; a group's codes share the stem (their first half)."""

    def half() -> str:
        return "".join(rng.choice(HEX) for _ in range(4))

    return f"{stem or half()}-{half()}"


class MultiKeyProbe(QuestionProbe):
    name = "multikey"
    order = 10
    sections: ClassVar[dict[str, type]] = {"multikey": MultiKeySpec}
    spec_type = MultiKeySpec
    title = "Multi-key needles"
    about = (
        "Multi-key needles (RULER niah_multikey): groups of needles share one attribute and keys that "
        'look alike (codes with the same first half, "a3f9-17c2", "a3f9-8e04"); each needle is asked '
        "for by its key, every other needle a distractor."
    )
    row_fields: ClassVar[dict[str, Schema]] = {
        "distractors": integer("the probe's other needles planted before the question"),
    }

    def groups(self, spec: MultiKeySpec) -> int:
        return spec.groups

    def capacity(self, spec: MultiKeySpec) -> int:
        return 16**4 // 4

    def check_spec(self, spec: MultiKeySpec, source: str) -> None:
        within(source, "multikey.groups", spec.groups, 1, 16)
        within(source, "multikey.keys", spec.keys, 2, 16)
        within(source, "multikey.value_digits", spec.value_digits, 4, 12)
        for key, fields in (
            ("template", ("{key}", "{value}")),
            ("query", ("{key}",)),
            ("chat_query", ("{key}",)),
        ):
            if any(f not in getattr(spec, key) for f in fields):
                raise bad(source, f"multikey.{key}", f"must contain {' and '.join(fields)}")

    def plant(
        self, tok: Tokenizer, spec: MultiKeySpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        sizes = [spec.keys] * spec.groups * len(checkpoints)
        n = len(checkpoints) * spec.groups
        stems = distinct(n, lambda r: code(r).split("-")[0], rng, "code stems", 16**4)
        values = distinct(
            n * spec.keys, number(spec.value_digits), rng, "values", value_count(spec.value_digits)
        )
        targets = group_targets(checkpoints, sizes, margin=64, rng=rng)
        out = []
        for g, aims in enumerate(targets):
            keys = distinct(spec.keys, functools.partial(code, stem=stems[g]), rng, "codes", 16**4)
            for j, (key, aim) in enumerate(zip(keys, aims, strict=False)):
                value = values[g * spec.keys + j]
                tokens = tok.tokenize(" " + spec.template.format(key=key, value=value))
                out.append(Insert(group_key(g, len(aims)), f"{key}={value}", tokens, aim, probe=self.name))
        return out

    def ask(self, spec: MultiKeySpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        planted = sum(len(g) for g in groups)
        out = []
        for group in groups:
            values = [s.value.split("=")[1] for s in group]
            for span in group:
                key, value = span.value.split("=")
                out.append(
                    Question(
                        key,
                        spec.query.format(key=key),
                        spec.chat_query.format(key=key),
                        spec.query.format(key=key),
                        f" {value}",
                        [span],
                        values,
                        {"distractors": planted - 1},
                    )
                )
        return out


register(MultiKeyProbe())
