"""Asking planted facts back: the run shared by the probes whose items are questions with one
fixed answer (multi-key, multi-value, multi-query, variable tracking, aggregation,
near-duplicates).

A probe plants groups of spans, each span carrying a typed payload (`Planted`: its group and
the `Fact` it states); at each checkpoint every group whose spans all lie before it is asked,
in a fork of the document, and its answer is teacher forced: the answer's log-probability, and
whether greedy decoding would produce it. Only failed answers pay for generation, to show what
the model said instead, and only in the probes whose `generate` is on (generation, token by
token, costs more than scoring).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvprobe.api import Budget, PlantedSpan, ProbeRun, Row, RunSetup

if TYPE_CHECKING:
    from kvprobe.api import Document
    from kvprobe.api.engine import Context, TeacherForced

MAX_FORKS = 32  # questions scored at once, each in its own fork sequence
GENERATE_EXTRA = 4  # a failed answer is shown for its own length and this many tokens more
GENERATE_CAP = 40  # ... and never longer than this


@dataclass(frozen=True, kw_only=True)
class Question:
    """One question about one group of planted spans, asked at one checkpoint. Raw text ends
    where the answer starts; chat form asks `chat`, ends the user's turn, and starts the reply
    with `prefix` (RULER's answer prefix), so a reply in a full sentence is scored on its answer."""

    key: str  # pairs the item across configurations (with doc and ctx)
    raw: str
    chat: str
    prefix: str
    answer: str  # teacher forced after the question; starts with a space
    spans: Sequence[PlantedSpan] = ()  # what it asks about: where the item's depth comes from
    candidates: Sequence[str] = ()  # every answer of its group, in order (the right one too)
    fields: Mapping[str, Any] = field(default_factory=dict)  # the probe's own row fields


@dataclass(frozen=True)
class Fact:
    """What one planted span states: `subject` holds `value` (a vault's code and its number, a
    variable and what it is assigned, a tally and a word it adds), in the sentence `text`."""

    subject: str
    value: str
    text: str


@dataclass(frozen=True)
class Planted:
    """The payload the kit puts on each span it plants: the span's group (its index among the
    document's groups, and how many spans it has) and the fact it states."""

    group: int
    size: int
    fact: Fact


@dataclass(frozen=True)
class Group:
    """A group whose every span lies before the checkpoint: its spans in document order, and the
    facts they state."""

    spans: list[PlantedSpan]
    facts: list[Fact]

    @property
    def subject(self) -> str:
        """What the group's first span is about (the key of a group that shares one)."""
        return self.facts[0].subject

    @property
    def values(self) -> list[str]:
        return [f.value for f in self.facts]


def group_key(index: int, size: int) -> str:
    """The Insert key of a group's spans, for a reader: its index and how many spans it has."""
    return f"g{index}/{size}"


def planted(span: PlantedSpan) -> Planted:
    if not isinstance(span.payload, Planted):
        raise TypeError(f"span {span.key!r} of {span.probe!r} carries no kit payload")
    return span.payload


def complete_groups(spans: Sequence[PlantedSpan], length: int) -> list[Group]:
    """The groups whose every span was planted and ends before `length`, in document order of
    their first span. A group the document had no room for at its end is never complete."""
    groups: dict[int, list[PlantedSpan]] = {}
    for s in spans:
        groups.setdefault(planted(s).group, []).append(s)
    out = [
        Group(members, [planted(s).fact for s in members])
        for members in groups.values()
        if len(members) == planted(members[0]).size and all(s.end <= length for s in members)
    ]
    return sorted(out, key=lambda g: g.spans[0].position)


def _normal(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


Asker = Callable[["Document", int], list[Question]]


def candidate(output: str, candidates: Sequence[str]) -> int | None:
    """Which of `candidates` (1: the first) the output gives: the first that its letters and
    digits start with; None where it gives none."""
    said = _normal(output)
    return next((i + 1 for i, c in enumerate(candidates) if said.startswith(_normal(c)) and _normal(c)), None)


class QuestionRun(ProbeRun):
    """Asks a probe's questions at every checkpoint, in every configuration."""

    def __init__(self, probe: str, setup: RunSetup, questions: Asker, *, generate: bool):
        self.probe, self.model, self.questions, self.generate = probe, setup.model, questions, generate
        self.chat, self.turn_end = setup.prompt.chat, setup.prompt.turn_end
        self.label = probe
        asked = [(d, L, q) for d in setup.documents for L in setup.checkpoints for q in questions(d, L)]
        self.tokens: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for _, _, q in asked:
            self.tokens.setdefault((q.key, q.answer), self.frame(q))
        per_checkpoint = max(
            (len(questions(d, L)) for d in setup.documents for L in setup.checkpoints), default=1
        )
        self.forks = max(1, min(MAX_FORKS, per_checkpoint))
        pairs = [self.tokens[(q.key, q.answer)] for _, _, q in asked]
        self.budget = Budget(
            # A pack of forks holds at most a chunk of question tokens; each fork may then
            # generate a failed answer's continuation.
            fork_cells=setup.scenario.plan.chunk + self.forks * (GENERATE_CAP + 1),
            sequences=self.forks,
            tokens=sum(len(p) + len(a) - 1 for p, a in pairs),
            naive_tokens=sum(L + len(p) + len(a) - 1 for (_, L, _), (p, a) in zip(asked, pairs, strict=True)),
        )

    def frame(self, q: Question) -> tuple[list[int], list[int]]:
        """The question's tokens after the document, and the answer's."""
        tok = self.model
        if self.chat:
            prompt = [*tok.tokenize("\n\n" + q.chat), *self.turn_end, *tok.tokenize(q.prefix)]
        else:
            prompt = tok.tokenize("\n\n" + q.raw)
        return prompt, tok.tokenize(q.answer)

    def at_checkpoint(self, context: Context, config: str, document: Document, length: int) -> list[Row]:
        asked = self.questions(document, length)
        if not asked:
            return []
        pairs = [self.tokens[(q.key, q.answer)] for q in asked]
        scored = context.score_many(pairs)
        failed = [j for j, s in enumerate(scored) if not s.argmax_match] if self.generate else []
        limits = [min(GENERATE_CAP, len(pairs[j][1]) + GENERATE_EXTRA) for j in failed]
        outputs = dict(zip(failed, context.generate_many([pairs[j][0] for j in failed], limits), strict=True))
        return [
            self.row(q, config, document, length, sc, outputs.get(j), pairs[j][1])
            for j, (q, sc) in enumerate(zip(asked, scored, strict=True))
        ]

    def row(  # noqa: PLR0917 - one item's every part
        self,
        q: Question,
        config: str,
        document: Document,
        length: int,
        scored: TeacherForced,
        generated: list[int] | None,
        answer: list[int],
    ) -> Row:
        if generated is None and not scored.argmax_match:
            output = None  # not generated: the probe's `generate` is off
        else:
            output = self.model.detokenize(answer if generated is None else generated)
        first = min((s.position for s in q.spans), default=0)
        last = max((s.end for s in q.spans), default=0)
        return {
            "probe": self.probe,
            "config": config,
            "doc": document.index,
            "ctx": length,
            "key": q.key,
            "expected": q.answer.strip(),
            "correct": scored.argmax_match,
            "logprob": round(scored.logprob, 6),
            "first_wrong_token": scored.first_mismatch,
            "answer_tokens": len(answer),
            "output": output,
            # Greedy decoding feeds a token at a time, teacher forcing the answer in one batch:
            # on a near-tie they can differ, so both are kept (the statistics use `correct`).
            "output_correct": None if output is None else _normal(output).startswith(_normal(q.answer)),
            "position": first,
            "depth": round(first / length, 4),
            "distance": length - last,
            **q.fields,
            # Which planted answer of the group the output gave: another one is a confusion.
            **({"output_candidate": candidate(output, q.candidates)} if q.candidates and output else {}),
            **({"output_ended_turn": generated == []} if self.chat else {}),
        }
