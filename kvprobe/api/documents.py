"""A run's documents as probes see them: token lists with the spans probes planted at known
positions (kvprobe.plan.documents builds them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...

    def piece(self, token: int) -> str: ...

    @property
    def bos(self) -> int | None: ...


@dataclass(frozen=True)
class Insert:
    """A span a probe wants planted: its tokens, and the position it should land just after.
    `probe` names the probe that asked for it: several probes plant into one document."""

    key: str
    value: str
    tokens: list[int]
    target: int
    probe: str = ""
    payload: object = None  # the probe's own structured data about the span, carried to PlantedSpan


@dataclass(frozen=True)
class PlantedSpan:
    """A span as planted (a needle, a variable, a fact: whatever a probe inserted)."""

    doc: int
    key: str
    value: str
    position: int  # token index of the span's first token in the document
    n_tokens: int
    probe: str = ""  # the probe that planted it
    payload: object = None  # as the Insert gave it (the question probes': kit.questions.Planted)

    @property
    def end(self) -> int:
        return self.position + self.n_tokens


@dataclass(frozen=True)
class Document:
    index: int
    tokens: list[int]
    spans: list[PlantedSpan]

    def spans_of(self, probe: str) -> list[PlantedSpan]:
        """The spans `probe` planted, in document order."""
        return [s for s in self.spans if s.probe == probe]
