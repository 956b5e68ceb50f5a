"""The prompt form a probe frames its questions in (kvprobe.plan.prompt decides it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFrame:
    """The choice in tokens: the document is fed after `lead`; in chat form each question is
    followed by `turn_end` (end of the user turn, the assistant header)."""

    format: str
    lead: list[int] | None  # None: the tokenizer's BOS, as raw text has always been fed
    turn_end: list[int]
    bos: str  # where the one BOS comes from: "template", "tokenizer" or "none"

    @property
    def chat(self) -> bool:
        return self.format == "chat"


RAW_FRAME = PromptFrame("raw", None, [], "tokenizer")
