"""Scenario files: TOML data describing documents, needles and checkpoints.

A scenario is data, never code. Every key is checked; a bad file raises a
one-line UserError that names the file and the key.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kvprobe.api import (
    HASHED_IF_SET,
    HaystackSpec,
    PlanSpec,
    PromptSpec,
    Scenario,
    all_probes,
    probe_names,
)
from kvprobe.api.scenario import MAX_CHECKPOINT
from kvprobe.infra.errors import UserError, did_you_mean
from kvprobe.infra.paths import read_input_text
from kvprobe.infra.toml_check import Where, read_table
from kvprobe.plan.prompt import MAX_SYSTEM_CHARS

__all__ = [
    "HASHED_IF_SET",
    "MAX_CHECKPOINT",
    "HaystackSpec",
    "PlanSpec",
    "PromptSpec",
    "Scenario",
    "bad",
    "load_scenario",
    "parse_scenario",
    "within",
]


def _scenario_dir() -> Path:
    """scenarios/ of the source tree (editable install), else the copy a wheel installs."""
    source = Path(__file__).resolve().parents[2] / "scenarios"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "kvprobe" / "scenarios"


SCENARIO_DIR = _scenario_dir()
MAX_SCENARIO_BYTES = 1 << 20  # a scenario is a page of TOML, not a data file


@dataclass(frozen=True)
class ScenarioFile:
    """A scenario file's own keys (each probe's section sits beside them, by the probe's name)."""

    name: str | None = field(default=None, metadata={"chars": 1000})  # None: the file's stem
    description: str = field(default="", metadata={"chars": 1000})
    probes: list[str] | None = None  # None: every Probe.by_default
    haystack: HaystackSpec = field(default_factory=HaystackSpec)
    plan: PlanSpec = field(default_factory=PlanSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)


_OWN_KEYS = [f.name for f in fields(ScenarioFile)]


def probe_sections() -> dict[str, type]:
    """Every scenario section a registered probe owns: name -> dataclass."""
    return {name: cls for p in all_probes() for name, cls in p.sections.items()}


def bad(source: str, key: str, problem: str) -> UserError:
    """The one-line refusal of a key of scenario `source` (the probes' checks say it this way too)."""
    return Where(f"scenario {source}").bad(key, problem)


def within(source: str, key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise bad(source, key, f"must be between {low:,} and {high:,}, got {value:,}")


def _validate(source: str, s: Scenario) -> None:
    """What the keys' types and bounds cannot say: a file haystack names its file, the probes
    are registered ones, and each probe's own checks of its section."""
    if s.haystack.kind == "file" and not s.haystack.path:
        raise bad(source, "haystack.path", "is required when haystack.kind = 'file'")
    known = probe_names()
    if not s.probes:
        raise bad(source, "probes", f"must name at least one probe ({', '.join(known)})")
    for probe in s.probes:
        if probe not in known:
            raise bad(
                source,
                "probes",
                f"names unknown probe {probe!r}{did_you_mean(str(probe), known)} (known: {', '.join(known)})",
            )
    if len(s.prompt.system) > MAX_SYSTEM_CHARS:
        raise bad(source, "prompt.system", f"must be at most {MAX_SYSTEM_CHARS:,} characters")
    for each in all_probes():  # every section is checked, also of probes this scenario skips
        each.validate(s, source)


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Build a Scenario from parsed TOML, checking every key (kvprobe.infra.toml_check)."""
    where = Where(f"scenario {source}")
    owned = probe_sections()
    for key in data:
        if key not in _OWN_KEYS and key not in owned:
            raise where.unknown(key, key, [*_OWN_KEYS, *owned])
    top = read_table(ScenarioFile, {k: v for k, v in data.items() if k in _OWN_KEYS}, where)
    sections: dict[str, Any] = {
        name: read_table(cls, data.get(name, {}), where, name) for name, cls in owned.items()
    }
    optional = {name: p.name for p in all_probes() if not p.hashed_always for name in p.sections}
    scenario = Scenario(
        name=top.name if top.name is not None else Path(source).stem,
        description=top.description,
        probes=top.probes if top.probes is not None else [p.name for p in all_probes() if p.by_default],
        haystack=top.haystack,
        plan=top.plan,
        prompt=top.prompt,
        sections=sections,
        optional_sections=optional,
    )
    _validate(source, scenario)
    return scenario


def bundled_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def _is(path: Path, test: str) -> bool:
    """Path.exists or is_dir, False where the path cannot be looked at (a name too long): the
    reader then says why in one line."""
    try:
        return bool(getattr(path, test)())
    except (OSError, ValueError):
        return test == "exists"


def load_scenario(name_or_path: str) -> Scenario:
    """Load a bundled scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    bundled = bundled_scenarios()
    if name_or_path in bundled:
        path = bundled[name_or_path]
    elif _is(path, "is_dir"):
        raise UserError(f"scenario {name_or_path!r} is a folder: give a TOML file inside it")
    elif not _is(path, "exists"):
        known = ", ".join(bundled) or "none"
        raise UserError(
            f"scenario {name_or_path!r} not found{did_you_mean(name_or_path, bundled)}: "
            f"give a TOML file path or one of: {known}"
        )
    text = read_input_text(path, "scenario", "give a TOML file", max_bytes=MAX_SCENARIO_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"scenario {path}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise UserError(f"scenario {path}: nested too deeply to be a scenario; fix the file") from None
    return parse_scenario(data, str(path))
