"""Scenario files: TOML data describing documents, needles and checkpoints.

A scenario is data, never code. Every key is checked; a bad file raises a
one-line UserError that names the file and the key.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import asdict
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
from kvprobe.infra.errors import UserError, did_you_mean
from kvprobe.infra.paths import read_input_text
from kvprobe.plan.chat import PROMPT_FORMATS
from kvprobe.plan.prompt import MAX_SYSTEM_CHARS

__all__ = ["HASHED_IF_SET", "HaystackSpec", "PlanSpec", "PromptSpec", "Scenario", "load_scenario"]


def _scenario_dir() -> Path:
    """scenarios/ of the source tree (editable install), else the copy a wheel installs."""
    source = Path(__file__).resolve().parents[2] / "scenarios"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "kvprobe" / "scenarios"


SCENARIO_DIR = _scenario_dir()
HAYSTACK_KINDS = ("prose", "noise", "file")


def probe_sections() -> dict[str, type]:
    """Every scenario section a registered probe owns: name -> dataclass."""
    return {name: cls for p in all_probes() for name, cls in p.sections.items()}


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in probe_sections().items()}


_CORE_SECTIONS: dict[str, type] = {"haystack": HaystackSpec, "plan": PlanSpec, "prompt": PromptSpec}


def _sections() -> dict[str, type]:
    return {**_CORE_SECTIONS, **probe_sections()}


def bad(source: str, key: str, problem: str) -> UserError:
    return UserError(f"scenario {source}: key '{key}' {problem}")


def _check_type(source: str, key: str, value: Any, expected: Any) -> None:
    ok: bool
    if isinstance(expected, bool):
        ok = isinstance(value, bool)
    elif isinstance(expected, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(expected, str):
        ok = isinstance(value, str)
    elif isinstance(expected, list):
        ok = isinstance(value, list)
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(expected)
    if not ok:
        raise bad(source, key, f"must be {type(expected).__name__}, got {value!r}")


def _build_section(source: str, section: str, raw: Any) -> Any:
    cls = _sections()[section]
    if not isinstance(raw, dict):
        raise bad(source, section, "must be a table")
    defaults = cls()
    values = {}
    for key, value in raw.items():
        full = f"{section}.{key}"
        if not hasattr(defaults, key):
            allowed = ", ".join(asdict(defaults))
            raise bad(source, full, f"is unknown{did_you_mean(key, asdict(defaults))} (allowed: {allowed})")
        _check_type(source, full, value, getattr(defaults, key))
        values[key] = value
    return cls(**values)


MAX_CHECKPOINT = 1 << 20  # the longest --ctx
MAX_SCENARIO_BYTES = 1 << 20  # a scenario is a page of TOML, not a data file


def within(source: str, key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise bad(source, key, f"must be between {low:,} and {high:,}, got {value:,}")


def _validate(source: str, s: Scenario) -> None:
    if s.haystack.kind not in HAYSTACK_KINDS:
        raise bad(source, "haystack.kind", f"must be one of {', '.join(HAYSTACK_KINDS)}")
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
    # Upper bounds: a typo (documents = 40000) must be refused at once, not become a plan that
    # runs for days or a loop that never ends.
    if s.prompt.format not in PROMPT_FORMATS:
        raise bad(source, "prompt.format", f"must be one of {', '.join(PROMPT_FORMATS)}")
    if len(s.prompt.system) > MAX_SYSTEM_CHARS:
        raise bad(source, "prompt.system", f"must be at most {MAX_SYSTEM_CHARS:,} characters")
    within(source, "plan.documents", s.plan.documents, 1, 256)
    within(source, "plan.chunk", s.plan.chunk, 16, 4096)
    if any(
        isinstance(c, bool) or not isinstance(c, int) or not 256 <= c <= MAX_CHECKPOINT
        for c in s.plan.checkpoints
    ):
        raise bad(source, "plan.checkpoints", f"must be whole numbers from 256 to {MAX_CHECKPOINT:,}")
    if len(s.plan.checkpoints) > 64:
        raise bad(source, "plan.checkpoints", "must list at most 64 lengths")
    for each in all_probes():  # every section is checked, also of probes this scenario skips
        each.validate(s, source)
    for key in ("name", "description"):
        if len(getattr(s, key)) > 1000:
            raise bad(source, key, "must be at most 1,000 characters")


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Build a Scenario from parsed TOML, checking every key."""
    top: dict[str, Any] = {}
    sections = _sections()
    probe_owned: dict[str, Any] = _default_sections()
    for key, value in data.items():
        if key in _CORE_SECTIONS:
            top[key] = _build_section(source, key, value)
        elif key in sections:
            probe_owned[key] = _build_section(source, key, value)
        elif key in ("name", "description"):
            _check_type(source, key, value, "")
            top[key] = value
        elif key == "probes":
            _check_type(source, key, value, [])
            top[key] = value
        else:
            allowed = ", ".join(["name", "description", "probes", *sections])
            raise bad(source, key, f"is unknown (allowed: {allowed})")
    top.setdefault("name", Path(source).stem)
    top.setdefault("probes", [p.name for p in all_probes() if p.by_default])
    optional = {name: p.name for p in all_probes() if not p.hashed_always for name in p.sections}
    scenario = Scenario(**top, sections=probe_owned, optional_sections=optional)
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
