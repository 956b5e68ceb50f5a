"""Scenario files: TOML data describing documents, needles and checkpoints.

A scenario is data, never code. Every key is checked; a bad file raises a
one-line UserError that names the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from kvprobe.errors import UserError, did_you_mean


def _scenario_dir() -> Path:
    """scenarios/ of the source tree (editable install), else the copy a wheel installs."""
    source = Path(__file__).resolve().parents[2] / "scenarios"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "kvprobe" / "scenarios"


SCENARIO_DIR = _scenario_dir()
HAYSTACK_KINDS = ("prose", "noise", "file")


@dataclass(frozen=True)
class HaystackSpec:
    kind: str = "prose"
    path: str = ""  # only for kind = "file"


# A key added after scenarios were first hashed carries this metadata: it is hashed only where
# it differs from its default, so every scenario that does not set it keeps its sha256 (and its
# results stay comparable with earlier ones).
HASHED_IF_SET = {"hash": "if_set"}


def hashed(section: Any) -> dict[str, Any]:
    """A section's keys as the scenario hash covers them (see HASHED_IF_SET)."""
    out = asdict(section)
    for f in fields(section):
        if f.metadata.get("hash") == "if_set" and out[f.name] == asdict(type(section)())[f.name]:
            del out[f.name]
    return out


@dataclass(frozen=True)
class PromptSpec:
    """[prompt]: the form the model is spoken to in (kvprobe.plan.prompt)."""

    format: str = field(default="auto", metadata=HASHED_IF_SET)  # auto | chat | raw
    system: str = field(default="", metadata=HASHED_IF_SET)  # a system message ("": none)


@dataclass(frozen=True)
class PlanSpec:
    documents: int = 4
    checkpoints: list[int] = field(default_factory=list)  # empty: 1024, 2048, ... up to --ctx
    chunk: int = 512  # tokens per llama_decode call, identical for every configuration


T = TypeVar("T")


def probe_sections() -> dict[str, type]:
    """Every scenario section a registered probe owns: name -> dataclass."""
    from kvprobe.probes import all_probes

    return {name: cls for p in all_probes() for name, cls in p.sections.items()}


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in probe_sections().items()}


@dataclass(frozen=True)
class Scenario:
    """What to measure: the probes, the haystack, the plan, and each probe's own section
    (every registered probe's, with its defaults where the file gives none)."""

    name: str
    description: str = ""
    probes: list[str] = field(default_factory=lambda: ["needle"])
    haystack: HaystackSpec = HaystackSpec()
    plan: PlanSpec = PlanSpec()
    prompt: PromptSpec = PromptSpec()
    sections: dict[str, Any] = field(default_factory=_default_sections)

    def spec(self, cls: type[T]) -> T:
        """The section whose dataclass is `cls`, typed (the probes' way to read their own)."""
        for value in self.sections.values():
            if type(value) is cls:
                return value
        raise KeyError(f"scenario has no {cls.__name__} section: is its probe registered?")

    def to_dict(self) -> dict[str, Any]:
        """What the scenario hash covers: the built-in probes' sections always (so the hash of
        a scenario does not change with the plug-ins installed), a plug-in's only when the
        scenario runs it."""
        from kvprobe.probes import all_probes
        from kvprobe.probes.registry import BUILT_IN

        owner = {name: p for p in all_probes() for name in p.sections}
        kept = {
            name: value
            for name, value in self.sections.items()
            if name not in owner
            or type(owner[name]).__module__ in BUILT_IN
            or owner[name].name in self.probes
        }
        out = {
            "name": self.name,
            "description": self.description,
            "probes": list(self.probes),
            "haystack": asdict(self.haystack),
            "plan": asdict(self.plan),
        }
        if hashed(self.prompt):
            out["prompt"] = hashed(self.prompt)
        out.update({name: hashed(value) for name, value in kept.items()})
        return out

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


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
    from kvprobe.probes import all_probes, probe_names

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
    from kvprobe.plan.chat import PROMPT_FORMATS
    from kvprobe.plan.prompt import MAX_SYSTEM_CHARS

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
    scenario = Scenario(**top, sections=probe_owned)
    _validate(source, scenario)
    return scenario


def bundled_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def load_scenario(name_or_path: str) -> Scenario:
    """Load a bundled scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    bundled = bundled_scenarios()
    if name_or_path in bundled:
        path = bundled[name_or_path]
    elif path.is_dir():
        raise UserError(f"scenario {name_or_path!r} is a folder: give a TOML file inside it")
    elif not path.exists():
        known = ", ".join(bundled) or "none"
        raise UserError(
            f"scenario {name_or_path!r} not found{did_you_mean(name_or_path, bundled)}: "
            f"give a TOML file path or one of: {known}"
        )
    from kvprobe.paths import read_input_text

    text = read_input_text(path, "scenario", "give a TOML file", max_bytes=MAX_SCENARIO_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"scenario {path}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise UserError(f"scenario {path}: nested too deeply to be a scenario; fix the file") from None
    return parse_scenario(data, str(path))
