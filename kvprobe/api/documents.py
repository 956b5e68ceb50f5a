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
    """A span a probe wants planted: its tokens, and the position it should land just after."""

    key: str
    value: str
    tokens: list[int]
    target: int


@dataclass(frozen=True)
class PlantedSpan:
    """A span as planted (a needle, a variable, a fact: whatever a probe inserted)."""

    doc: int
    key: str
    value: str
    position: int  # token index of the span's first token in the document
    n_tokens: int

    @property
    def end(self) -> int:
        return self.position + self.n_tokens


@dataclass(frozen=True)
class Document:
    index: int
    tokens: list[int]
    spans: list[PlantedSpan]
