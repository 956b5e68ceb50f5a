"""Variable tracking (RULER vt): chains of assignments, asked which variables hold a value."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from kvprobe.api import register
from kvprobe.probes.kit import Drawn, Fact, Group, Question, QuestionProbe, count, row, text
from kvprobe.probes.kit.words import VARIABLES, distinct, numbers, value_count, variable
from kvprobe.result.blocks import integer

QUESTION = "Find all variables that are assigned the value {value} in the text above."
ANSWER = ("According to the chain(s) of variables assignment in the text above, {count} variables are "
          "assigned the value {value}, they are:")  # fmt: skip


@dataclass(frozen=True)
class VarTrackSpec:
    chains: int = count(2, 1, 16)  # chains per checkpoint segment
    max_hops: int = count(4, 1, 8)  # chains have 1, 2, ..., max_hops hops in turn
    value_digits: int = count(5, 3, 12)  # RULER: five digits
    generate: bool = False  # greedy output of wrong answers (costs more than the scoring)
    query: str = text(f"Question: {QUESTION} Answer: {ANSWER}", "value", "count")  # RULER's template
    chat_query: str = text(QUESTION, "value")
    answer_prefix: str = text(ANSWER, "value", "count")


class VarTrackProbe(QuestionProbe[VarTrackSpec]):
    """Variable tracking (RULER vt): chains of assignments (VAR QPXAB = 48213. ... VAR KLMNO = VAR QPXAB.)
    spread over the document; the question asks which variables hold the value, and the answer names the
    chain's variables in the order they were assigned. Chains of 1 to 4 hops take turns."""

    name, order, title = "vartrack", 13, "Variable tracking"
    logprob_margin, group_count, margin, breakdown = 0.5, "chains", 48, "hops"
    row_fields = row(hops=integer("assignments after the first (1-4)", lo=1))

    def capacity(self, spec: VarTrackSpec) -> int:
        return value_count(spec.value_digits) // 2

    def draw(self, spec: VarTrackSpec, n: int, rng: random.Random) -> Drawn:
        hops = [1 + g % spec.max_hops for g in range(n)]
        names = iter(distinct(sum(hops) + n, variable, rng, "variable names", VARIABLES))
        chains = [[next(names) for _ in range(1 + h)] for h in hops]
        return Drawn.of([
            [Fact(chain[0], value, f"VAR {chain[0]} = {value}."),
             *(Fact(b, a, f"VAR {b} = VAR {a}.") for a, b in itertools.pairwise(chain))]
            for chain, value in zip(chains, numbers(n, spec.value_digits, rng), strict=True)
        ])  # fmt: skip

    def ask(self, spec: VarTrackSpec, groups: list[Group]) -> list[Question]:
        return [self.pose(spec, c, fill={"value": c.values[0], "count": len(c.spans)},
                          answer=" ".join(f.subject for f in c.facts), hops=len(c.spans) - 1)
                for c in groups]  # fmt: skip


register(VarTrackProbe())
