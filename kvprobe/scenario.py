"""Scenario files: TOML data describing documents, needles and checkpoints.

A scenario is data, never code. Every key is checked; a bad file raises a
one-line UserError that names the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvprobe.errors import UserError, did_you_mean


def _scenario_dir() -> Path:
    """scenarios/ of the source tree (editable install), else the copy a wheel installs."""
    source = Path(__file__).resolve().parent.parent / "scenarios"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "kvprobe" / "scenarios"


SCENARIO_DIR = _scenario_dir()
HAYSTACK_KINDS = ("prose", "noise", "file")
DEFAULT_ATTRIBUTES = (
    "locker number",
    "passport number",
    "ticket number",
    "library card number",
    "invoice number",
    "account number",
    "badge number",
    "room number",
    "parcel number",
    "licence number",
    "seat number",
    "order number",
    "serial number",
    "permit number",
    "policy number",
    "receipt number",
    "voucher number",
    "claim number",
    "booking number",
    "visa number",
)


@dataclass(frozen=True)
class HaystackSpec:
    kind: str = "prose"
    path: str = ""  # only for kind = "file"


@dataclass(frozen=True)
class NeedleSpec:
    # The query repeats the needle's words up to the value, so the model only has to
    # find the key and copy what follows (RULER's niah_single, in completion form).
    # A key is a person's name and an attribute ("Vera Holm's locker number"): with one
    # shared frame for every needle the 270M default model confused needles; two cues
    # that no other needle shares keep the multi-needle confound small.
    template: str = "{key} is {value}."
    query: str = "{key} is"
    answer: str = " {value}"
    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    value_digits: int = 7
    per_segment: int = 4  # needles planted between consecutive checkpoints, per document
    generate_tokens: int = 12  # greedy tokens shown for a failed answer


@dataclass(frozen=True)
class PlanSpec:
    documents: int = 4
    checkpoints: list[int] = field(default_factory=list)  # empty: 1024, 2048, ... up to --ctx
    chunk: int = 512  # tokens per llama_decode call, identical for every configuration


@dataclass(frozen=True)
class RepetitionSpec:
    tokens: int = 128  # greedy continuation length G
    offsets: int = 4  # continuation points per checkpoint and document: L, L - stride, ...
    stride: int = 96  # tokens between continuation points


@dataclass(frozen=True)
class DivergenceSpec:
    documents: int = 1  # the plan's first N documents are scored at every position
    block: int = 32  # consecutive positions per unit of the bootstrap and the onset test
    onset_reference: int = 256  # positions below this are "the shortest bins" KL is tested against


@dataclass(frozen=True)
class ClassicSpec:
    depths: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    repeats: int = 4  # prompts per (length, depth) cell


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    probes: list[str] = field(default_factory=lambda: ["needle"])
    haystack: HaystackSpec = HaystackSpec()
    needle: NeedleSpec = NeedleSpec()
    plan: PlanSpec = PlanSpec()
    repetition: RepetitionSpec = RepetitionSpec()
    divergence: DivergenceSpec = DivergenceSpec()
    classic: ClassicSpec = ClassicSpec()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


KNOWN_PROBES = ("needle", "repetition", "divergence")
_SECTIONS: dict[str, type] = {
    "haystack": HaystackSpec,
    "needle": NeedleSpec,
    "plan": PlanSpec,
    "repetition": RepetitionSpec,
    "divergence": DivergenceSpec,
    "classic": ClassicSpec,
}


def _bad(source: str, key: str, problem: str) -> UserError:
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
        raise _bad(source, key, f"must be {type(expected).__name__}, got {value!r}")


def _build_section(source: str, section: str, raw: Any) -> Any:
    cls = _SECTIONS[section]
    if not isinstance(raw, dict):
        raise _bad(source, section, "must be a table")
    defaults = cls()
    values = {}
    for key, value in raw.items():
        full = f"{section}.{key}"
        if not hasattr(defaults, key):
            allowed = ", ".join(asdict(defaults))
            raise _bad(source, full, f"is unknown{did_you_mean(key, asdict(defaults))} (allowed: {allowed})")
        _check_type(source, full, value, getattr(defaults, key))
        values[key] = value
    return cls(**values)


MAX_CHECKPOINT = 1 << 20  # the longest --ctx


def _within(source: str, key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _bad(source, key, f"must be between {low:,} and {high:,}, got {value:,}")


def _validate(source: str, s: Scenario) -> None:
    if s.haystack.kind not in HAYSTACK_KINDS:
        raise _bad(source, "haystack.kind", f"must be one of {', '.join(HAYSTACK_KINDS)}")
    if s.haystack.kind == "file" and not s.haystack.path:
        raise _bad(source, "haystack.path", "is required when haystack.kind = 'file'")
    if not s.probes:
        raise _bad(source, "probes", f"must name at least one probe ({', '.join(KNOWN_PROBES)})")
    for probe in s.probes:
        if probe not in KNOWN_PROBES:
            raise _bad(
                source,
                "probes",
                f"names unknown probe {probe!r}{did_you_mean(str(probe), KNOWN_PROBES)} "
                f"(known: {', '.join(KNOWN_PROBES)})",
            )
    for key in ("template", "query"):
        text = getattr(s.needle, key)
        if "{key}" not in text:
            raise _bad(source, f"needle.{key}", "must contain {key}")
    if "{value}" not in s.needle.template or "{value}" not in s.needle.answer:
        raise _bad(source, "needle.template", "and needle.answer must contain {value}")
    for key, fields in (("template", {"key", "value"}), ("query", {"key"}), ("answer", {"value"})):
        try:
            getattr(s.needle, key).format(**dict.fromkeys(fields, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            allowed = " and ".join("{" + f + "}" for f in sorted(fields))
            raise _bad(
                source, f"needle.{key}", f"may hold only {allowed} in braces (write {{{{ for a brace): {exc}"
            ) from None
    if not 4 <= s.needle.value_digits <= 12:
        raise _bad(source, "needle.value_digits", "must be between 4 and 12")
    # Upper bounds: a typo (per_segment = 40000) must be refused at once, not become a plan that
    # runs for days or a loop that never ends.
    _within(source, "needle.per_segment", s.needle.per_segment, 1, 256)
    _within(source, "needle.generate_tokens", s.needle.generate_tokens, 1, 512)
    _within(source, "plan.documents", s.plan.documents, 1, 256)
    _within(source, "plan.chunk", s.plan.chunk, 16, 4096)
    if any(
        isinstance(c, bool) or not isinstance(c, int) or not 256 <= c <= MAX_CHECKPOINT
        for c in s.plan.checkpoints
    ):
        raise _bad(source, "plan.checkpoints", f"must be whole numbers from 256 to {MAX_CHECKPOINT:,}")
    if len(s.plan.checkpoints) > 64:
        raise _bad(source, "plan.checkpoints", "must list at most 64 lengths")
    _within(source, "repetition.tokens", s.repetition.tokens, 1, 2048)
    _within(source, "repetition.offsets", s.repetition.offsets, 1, 32)
    _within(source, "repetition.stride", s.repetition.stride, 1, 65536)
    if not 1 <= s.divergence.documents <= s.plan.documents:
        raise _bad(
            source, "divergence.documents", f"must be between 1 and plan.documents ({s.plan.documents})"
        )
    if not 1 <= s.divergence.block <= 1024:
        raise _bad(source, "divergence.block", "must be between 1 and 1024")
    _within(source, "divergence.onset_reference", s.divergence.onset_reference, 2, MAX_CHECKPOINT)
    if not s.needle.attributes or len(s.needle.attributes) > 1000:
        raise _bad(source, "needle.attributes", "must list between 1 and 1,000 attributes")
    if any(not isinstance(a, str) or not a.strip() for a in s.needle.attributes):
        raise _bad(source, "needle.attributes", "must be a list of non-empty strings")
    if len(set(s.needle.attributes)) != len(s.needle.attributes):
        raise _bad(source, "needle.attributes", "must not repeat an attribute")
    if not s.classic.depths or len(s.classic.depths) > 64:
        raise _bad(source, "classic.depths", "must list between 1 and 64 depths")
    if any(
        isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0 for d in s.classic.depths
    ):
        raise _bad(source, "classic.depths", "must be numbers in [0, 1)")
    _within(source, "classic.repeats", s.classic.repeats, 1, 256)
    for key in ("name", "description"):
        if len(getattr(s, key)) > 1000:
            raise _bad(source, key, "must be at most 1,000 characters")


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Build a Scenario from parsed TOML, checking every key."""
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            top[key] = _build_section(source, key, value)
        elif key in ("name", "description"):
            _check_type(source, key, value, "")
            top[key] = value
        elif key == "probes":
            _check_type(source, key, value, [])
            top[key] = value
        else:
            allowed = ", ".join(["name", "description", "probes", *_SECTIONS])
            raise _bad(source, key, f"is unknown (allowed: {allowed})")
    top.setdefault("name", Path(source).stem)
    scenario = Scenario(**top)
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
    elif not path.is_file():
        known = ", ".join(bundled) or "none"
        raise UserError(
            f"scenario {name_or_path!r} not found{did_you_mean(name_or_path, bundled)}: "
            f"give a TOML file path or one of: {known}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"scenario {path}: not valid TOML ({exc}); fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"scenario {path}: cannot read it ({exc})") from None
    return parse_scenario(data, str(path))
