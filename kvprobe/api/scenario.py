"""A scenario as data: what to measure (kvprobe.plan.scenario parses and checks the files)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

# Bounds a scenario's keys keep (field metadata, read by kvprobe.infra.toml_check): a typo
# (documents = 40000) is refused at once, not a plan that runs for days or a loop that never ends.
MAX_CHECKPOINT = 1 << 20  # the longest --ctx
HaystackKind = Literal["prose", "noise", "file"]
PromptFormat = Literal["auto", "chat", "raw"]


@dataclass(frozen=True)
class HaystackSpec:
    kind: HaystackKind = "prose"
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

    format: PromptFormat = field(default="auto", metadata=HASHED_IF_SET)
    system: str = field(default="", metadata=HASHED_IF_SET)  # a system message ("": none)


@dataclass(frozen=True)
class PlanSpec:
    documents: int = field(default=4, metadata={"bounds": (1, 256)})
    # Empty: 1024, 2048, ... up to --ctx.
    checkpoints: list[int] = field(
        default_factory=list, metadata={"bounds": (256, MAX_CHECKPOINT), "items": (0, 64)}
    )
    # Empty checkpoints: the first of the doubling series (256 measures short lengths, not infers them).
    first_checkpoint: int = field(default=1024, metadata={"bounds": (256, 65536), **HASHED_IF_SET})
    # Tokens per llama_decode call, identical for every configuration.
    chunk: int = field(default=512, metadata={"bounds": (16, 4096)})
    # Stop measuring a configuration once decided (--until-decided, kvprobe.run.until_decided).
    until_decided: bool = field(default=False, metadata=HASHED_IF_SET)


T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    """What to measure: the probes, the haystack, the plan, and each probe's own section
    (every registered probe's, with its defaults where the file gives none)."""

    name: str
    description: str = ""
    probes: list[str] = field(default_factory=list)  # the parser's default: Probe.by_default
    haystack: HaystackSpec = HaystackSpec()
    plan: PlanSpec = PlanSpec()
    prompt: PromptSpec = PromptSpec()
    sections: dict[str, Any] = field(default_factory=dict)  # the parser gives every probe's
    # Sections hashed only when the scenario runs their probe (name -> its probe): those of every
    # probe but the first built-in ones (Probe.hashed_always), so a scenario's sha256 does not
    # change with the probes installed or added since.
    optional_sections: dict[str, str] = field(default_factory=dict, compare=False)

    def spec(self, cls: type[T]) -> T:
        """The section whose dataclass is `cls`, typed (the probes' way to read their own)."""
        for value in self.sections.values():
            if type(value) is cls:
                return value
        raise KeyError(f"scenario has no {cls.__name__} section: is its probe registered?")

    def to_dict(self) -> dict[str, Any]:
        """What the scenario hash covers: the sections of the first built-in probes always, any
        other probe's only when the scenario runs it (so the hash of a scenario does not change
        with the probes installed)."""
        kept = {
            name: value
            for name, value in self.sections.items()
            if name not in self.optional_sections or self.optional_sections[name] in self.probes
        }
        out = {
            "name": self.name,
            "description": self.description,
            "probes": list(self.probes),
            "haystack": asdict(self.haystack),
            "plan": hashed(self.plan),
        }
        if hashed(self.prompt):
            out["prompt"] = hashed(self.prompt)
        out.update({name: hashed(value) for name, value in kept.items()})
        return out

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
