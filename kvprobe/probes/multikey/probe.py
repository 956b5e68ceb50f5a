"""Multi-key needles (RULER niah_multikey_3): look-alike keys, every needle asked for by its key."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Fact, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import CODES, chunks, code, distinct, numbers
from kvprobe.result.blocks import integer


@dataclass(frozen=True)
class MultiKeySpec:
    groups: int = count(1, 1, 16)  # groups of look-alike keys per checkpoint segment
    keys: int = count(4, 2, 16)  # needles per group
    value_digits: int = count(7, 4, 12)
    generate: bool = True  # a wrong answer's greedy output, to tell which planted answer it gave
    template: str = text("The access code for vault {key} is {value}.", "key", "value")
    query: str = text("The access code for vault {key} is", "key")
    chat_query: str = text("What is the access code for vault {key}? Answer with the number only.", "key")


class MultiKeyProbe(QuestionProbe[MultiKeySpec]):
    """Multi-key needles (RULER niah_multikey): groups of needles share one attribute and keys that look alike
    (codes with the same first half, "a3f9-17c2", "a3f9-8e04"); each needle is asked for by its key, every
    other needle a distractor."""

    name, order, title = "multikey", 10, "Multi-key needles"
    row_fields = row(distractors=integer("the probe's other needles planted before the question"))

    def capacity(self, spec: MultiKeySpec) -> int:
        return CODES // 4

    def draw(self, spec: MultiKeySpec, n: int, rng: random.Random) -> Drawn:
        stems = distinct(n, lambda r: code(r).split("-")[0], rng, "code stems", CODES)
        values = chunks(numbers(n * spec.keys, spec.value_digits, rng), spec.keys)

        def group(g: int, rng: random.Random) -> list[Fact]:  # its codes are drawn once it is placed
            keys = distinct(spec.keys, functools.partial(code, stem=stems[g]), rng, "codes", CODES)
            return [self.fact(spec, key, value) for key, value in zip(keys, values[g], strict=True)]

        return Drawn([spec.keys] * n, group)

    def ask(self, spec: MultiKeySpec, groups: list[Group]) -> list[Question]:
        planted = sum(len(g.spans) for g in groups)
        return [self.pose(spec, g, key=f.subject, fill={"key": f.subject}, answer=f.value, spans=[s],
                          candidates=g.values, distractors=planted - 1)
                for g in groups for s, f in zip(g.spans, g.facts, strict=True)]  # fmt: skip


register(MultiKeyProbe())
