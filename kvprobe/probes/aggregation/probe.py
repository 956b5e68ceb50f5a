"""Aggregation (RULER cwe/fwe): a tally's entries are spread over the document, a few common
words many times and the rest once (`The north harbour tally adds cedar.`); the question asks
for the most frequent words, from the most frequent down. The common words' counts differ, so
the order of the answer is fixed and can be teacher forced."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from kvprobe.api import HASHED_IF_SET, Insert, PlantedSpan, Tokenizer, register
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.kit.probe import QuestionProbe
from kvprobe.probes.kit.questions import Question, group_key
from kvprobe.probes.kit.words import NOUNS, PLACES, distinct, group_targets
from kvprobe.result.blocks import Schema, integer

SIDES = ("north", "south", "east", "west", "upper", "lower", "old", "new")


@dataclass(frozen=True)
class AggregationSpec:
    groups: int = 2  # tallies per checkpoint segment
    common: int = 3  # words asked for: counted common + 1, common, ..., 2 times
    rare: int = 2  # words counted once
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    template: str = field(default="The {tally} tally adds {word}.", metadata=HASHED_IF_SET)
    query: str = field(
        default="The {count} words the {tally} tally adds most often, from the most frequent, are",
        metadata=HASHED_IF_SET,
    )
    chat_query: str = field(
        default="Which {count} words does the {tally} tally add most often? List them from the most "
        "frequent, separated by commas.",
        metadata=HASHED_IF_SET,
    )
    answer_prefix: str = field(
        default="The {count} words the {tally} tally adds most often are", metadata=HASHED_IF_SET
    )


def counts(spec: AggregationSpec) -> list[int]:
    """How often each word of a tally is entered: the common ones common + 1, ..., 2; the rare once."""
    return [spec.common + 1 - j for j in range(spec.common)] + [1] * spec.rare


def tally_name(rng: random.Random) -> str:
    return f"{rng.choice(SIDES)} {rng.choice(PLACES)}"


class AggregationProbe(QuestionProbe):
    name = "aggregation"
    order = 14
    sections: ClassVar[dict[str, type]] = {"aggregation": AggregationSpec}
    spec_type = AggregationSpec
    title = "Aggregation"
    about = (
        "Aggregation (RULER cwe/fwe): a tally's entries are spread over the document, a few common words "
        "several times and the rest once; the question asks for the most frequent words, from the most "
        "frequent down (their counts differ, so the answer's order is fixed)."
    )
    logprob_margin = 0.5
    row_fields: ClassVar[dict[str, Schema]] = {"entries": integer("entries of the tally", lo=1)}

    def groups(self, spec: AggregationSpec) -> int:
        return spec.groups

    def capacity(self, spec: AggregationSpec) -> int:
        return len(SIDES) * len(PLACES)

    def check_spec(self, spec: AggregationSpec, source: str) -> None:
        within(source, "aggregation.groups", spec.groups, 1, 8)
        within(source, "aggregation.common", spec.common, 1, 6)
        within(source, "aggregation.rare", spec.rare, 0, 12)
        if "{tally}" not in spec.template or "{word}" not in spec.template:
            raise bad(source, "aggregation.template", "must contain {tally} and {word}")
        for key in ("query", "chat_query", "answer_prefix"):
            if "{tally}" not in getattr(spec, key):
                raise bad(source, f"aggregation.{key}", "must contain {tally}")

    def plant(
        self, tok: Tokenizer, spec: AggregationSpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        n = len(checkpoints) * spec.groups
        tallies = distinct(n, tally_name, rng, "tally names", self.capacity(spec))
        entries = sum(counts(spec))
        out = []
        for g, aims in enumerate(group_targets(checkpoints, [entries] * n, margin=48, rng=rng)):
            words = rng.sample(NOUNS, spec.common + spec.rare)
            entered = [w for w, c in zip(words, counts(spec), strict=True) for _ in range(c)]
            rng.shuffle(entered)
            for word, aim in zip(entered, aims, strict=False):
                tokens = tok.tokenize(" " + spec.template.format(tally=tallies[g], word=word))
                out.append(
                    Insert(group_key(g, len(aims)), f"{tallies[g]}={word}", tokens, aim, probe=self.name)
                )
        return out

    def ask(self, spec: AggregationSpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        out = []
        for group in groups:
            tally = group[0].value.split("=")[0]
            seen = Counter(s.value.split("=")[1] for s in group)
            top = [w for w, _ in sorted(seen.items(), key=lambda wc: -wc[1])[: spec.common]]
            words = f"{spec.common}" if spec.common > 1 else "one"
            fill = {"count": words, "tally": tally}
            out.append(
                Question(
                    tally,
                    spec.query.format(**fill),
                    spec.chat_query.format(**fill),
                    spec.answer_prefix.format(**fill),
                    " " + ", ".join(top),
                    group,
                    fields={"entries": len(group)},
                )
            )
        return out


register(AggregationProbe())
