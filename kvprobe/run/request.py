"""What `kvprobe run`'s validation hands to its execution: the typed request, every
precondition checked (kvprobe.run.validate), and the settings the runner runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprobe.api import Scenario
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import EngineOptions
from kvprobe.plan.prompt import RAW_CHOICE, PromptChoice


@dataclass(frozen=True)
class RunSettings:
    ctx: int
    seed: int
    mode: str  # "onepass" | "classic"
    flash_attn: bool
    attn_rotation: bool
    prompt: PromptChoice = RAW_CHOICE  # raw text or the chat template (kvprobe.plan.prompt)


@dataclass(frozen=True)
class RunRequest:
    """A `kvprobe run` whose every precondition has been checked, before any model file is
    hashed or loaded."""

    configs: list[CacheConfig]
    baseline: str | None
    scenario: Scenario
    model_paths: list[Path]
    facts: list[dict[str, Any]]  # doctor facts per model (headers only)
    gpu_layers: int
    out_path: Path
    created: str
    settings: RunSettings
    null_check: bool
    threads: int | None
    no_repack: bool
    warnings: list[str]
    memory: str  # the pre-flight estimate, in words
    max_contexts: int | None  # contexts alive at once, when the configurations go in groups
    page: Path | None  # the HTML page to write beside the result
    margins: dict[str, float]  # equivalence margins the verdict uses (--margin)
    time_budget: float | None  # seconds (--time-budget), counted from the command's start
    until_decided: bool = False  # --until-decided: stop each configuration once decided
    engine: str = "llamacpp"  # the registry name (kvprobe.engine.ENGINES)
    engine_options: EngineOptions = field(default_factory=EngineOptions)  # a llama-server's binary or URLs
    reference: str | None = None  # "in-process": the build check (kvprobe.run.build_check)
    ladder: bool = False  # no --cache named: the usual q8_0 and q4_0 (kvprobe.run.validate.LADDER)
    verbose: bool = False  # --verbose: host notices in full (kernels, memory) and the report's details
