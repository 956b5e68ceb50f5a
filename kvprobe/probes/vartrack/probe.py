"""Variable tracking (RULER vt): chains of assignments spread over the document,
`VAR QPXAB = 48213.` ... `VAR KLMNO = VAR QPXAB.`; the question asks which variables hold
48213, and the answer names the chain's variables in the order they were assigned. Chains of
1 to `max_hops` hops take turns, so accuracy can be read by the number of hops."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import ClassVar

from kvprobe.api import HASHED_IF_SET, Insert, PlantedSpan, Tokenizer, register
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.kit.probe import QuestionProbe
from kvprobe.probes.kit.questions import Question, group_key
from kvprobe.probes.kit.words import LETTERS, distinct, group_targets, number, value_count
from kvprobe.result.blocks import Schema, integer

NAME_LETTERS = 5  # RULER's variables: five capital letters


@dataclass(frozen=True)
class VarTrackSpec:
    chains: int = 2  # chains per checkpoint segment
    max_hops: int = 4  # chains have 1, 2, ..., max_hops hops in turn
    value_digits: int = 5  # RULER: five digits
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    query: str = field(
        default="Question: Find all variables that are assigned the value {value} in the text above. Answer: "
        "According to the chain(s) of variables assignment in the text above, {count} variables are assigned "
        "the value {value}, they are:",
        metadata=HASHED_IF_SET,
    )
    chat_query: str = field(
        default="Find all variables that are assigned the value {value} in the text above.",
        metadata=HASHED_IF_SET,
    )
    answer_prefix: str = field(
        default="According to the chain(s) of variables assignment in the text above, {count} variables are "
        "assigned the value {value}, they are:",
        metadata=HASHED_IF_SET,
    )


def variable(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(NAME_LETTERS))


class VarTrackProbe(QuestionProbe):
    name = "vartrack"
    order = 13
    sections: ClassVar[dict[str, type]] = {"vartrack": VarTrackSpec}
    spec_type = VarTrackSpec
    title = "Variable tracking"
    about = (
        "Variable tracking (RULER vt): chains of assignments (VAR QPXAB = 48213. ... VAR KLMNO = VAR QPXAB.) "
        "spread over the document; the question asks which variables hold the value, and the answer names "
        "the chain's variables in the order they were assigned. Chains of 1 to 4 hops take turns."
    )
    logprob_margin = 0.5
    row_fields: ClassVar[dict[str, Schema]] = {"hops": integer("assignments after the first (1-4)", lo=1)}
    breakdown = "hops"

    def groups(self, spec: VarTrackSpec) -> int:
        return spec.chains

    def capacity(self, spec: VarTrackSpec) -> int:
        return value_count(spec.value_digits) // 2

    def check_spec(self, spec: VarTrackSpec, source: str) -> None:
        within(source, "vartrack.chains", spec.chains, 1, 16)
        within(source, "vartrack.max_hops", spec.max_hops, 1, 8)
        within(source, "vartrack.value_digits", spec.value_digits, 3, 12)
        for key, fields in (("query", ("{value}", "{count}")), ("chat_query", ("{value}",)),
                            ("answer_prefix", ("{value}", "{count}"))):  # fmt: skip
            if any(f not in getattr(spec, key) for f in fields):
                raise bad(source, f"vartrack.{key}", f"must contain {' and '.join(fields)}")

    def plant(
        self, tok: Tokenizer, spec: VarTrackSpec, checkpoints: list[int], rng: random.Random
    ) -> list[Insert]:
        n = len(checkpoints) * spec.chains
        hops = [1 + g % spec.max_hops for g in range(n)]
        names = distinct(sum(hops) + n, variable, rng, "variable names", len(LETTERS) ** NAME_LETTERS)
        values = distinct(n, number(spec.value_digits), rng, "values", value_count(spec.value_digits))
        sizes = [1 + h for h in hops]
        taken = 0
        out = []
        for g, aims in enumerate(group_targets(checkpoints, sizes, margin=48, rng=rng)):
            chain = names[taken : taken + 1 + hops[g]]
            taken += 1 + hops[g]
            if len(aims) != len(chain):
                continue
            statements = [f"VAR {chain[0]} = {values[g]}."] + [
                f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(chain)
            ]
            for j, (text, aim) in enumerate(zip(statements, aims, strict=True)):
                payload = f"{chain[j]}={values[g]}" if j == 0 else f"{chain[j]}={chain[j - 1]}"
                out.append(
                    Insert(group_key(g, len(aims)), payload, tok.tokenize(" " + text), aim, probe=self.name)
                )
        return out

    def ask(self, spec: VarTrackSpec, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        out = []
        for chain in groups:
            names = [s.value.split("=")[0] for s in chain]
            value = chain[0].value.split("=")[1]
            count = len(names)
            out.append(
                Question(
                    names[0],
                    spec.query.format(value=value, count=count),
                    spec.chat_query.format(value=value),
                    spec.answer_prefix.format(value=value, count=count),
                    " " + " ".join(names),
                    chain,
                    fields={"hops": count - 1},
                )
            )
        return out


register(VarTrackProbe())
