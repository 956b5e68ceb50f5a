"""Plain records handed from running to the result file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass
class RunOutcome:
    """What a run measured, as plain data: the only thing the runner hands on."""

    checkpoints: list[int]
    items: list[Row]
    text_items: list[Row]
    sections: dict[str, Any]  # per probe with a section of its own, as measured
    measured: dict[str, Any]  # per probe, in-memory data its statistics read (kvprobe.api)
    applied: list[dict[str, Any]]  # per configuration, the settings llama.cpp reported
    n_ctx: int
    n_seq_max: int
    chunk: int
    timing: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)  # statistics that failed while measuring
    stopped: str | None = None  # "interrupted" or "time budget" when the run ended early
    missing: list[list[int]] = field(default_factory=list)  # units not measured: [doc, step(, group)]
    prompt: dict[str, Any] = field(default_factory=dict)  # the prompt format that took effect
    until_decided: dict[str, Any] | None = None  # --until-decided: its design and what it stopped
