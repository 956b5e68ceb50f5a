"""A question probe's scenario section, declared once as data: each count with its bounds, each
text with the placeholders it must contain (as pydantic's `Field(ge=, le=)` states a bound beside
the field). The kit checks every section the same way (`check`), so a probe writes no checks."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, ClassVar, Protocol

from kvprobe.api import HASHED_IF_SET
from kvprobe.plan.scenario import bad, within

# The names the built-in question probes' texts may fill in; a plug-in's texts may also use
# those its texts declare (`text(..., *needs)`).
PLACEHOLDERS = ("key", "value", "keys", "count", "tally", "word", "book", "ordinal")


def count(default: int, low: int, high: int) -> int:
    """A whole-number key of a section and the bounds a scenario must keep it within. Hashed
    always, as the counts were from the start."""
    return field(default=default, metadata={"bounds": (low, high)})


def text(default: str, *needs: str) -> str:
    """A template key of a section and the placeholders it must contain. Hashed only where a
    scenario sets it (HASHED_IF_SET), as every template was."""
    return field(default=default, metadata={**HASHED_IF_SET, "needs": needs})


class QuestionSpec(Protocol):
    """What the kit reads of every question probe's section (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def generate(self) -> bool: ...  # a wrong answer's greedy output is kept

    @property
    def query(self) -> str: ...  # the question in raw text; ends where the answer starts

    @property
    def chat_query(self) -> str: ...  # the question in chat form


def needs(spec: QuestionSpec, key: str) -> tuple[str, ...]:
    """The placeholders the section's text `key` must contain, as `text` declared them."""
    return tuple(next(f for f in fields(spec) if f.name == key).metadata.get("needs", ()))


def check(spec: QuestionSpec, section: str, source: str) -> None:
    """Refuse, in one line naming the key, a text with a stray brace or an unknown placeholder
    (here, not mid-run), then a count out of its bounds, then a text without a placeholder it
    needs."""
    declared = fields(spec)
    known = {*PLACEHOLDERS, *(name for f in declared for name in f.metadata.get("needs", ()))}
    for f in declared:
        value = getattr(spec, f.name)
        if isinstance(value, str):
            try:
                value.format(**dict.fromkeys(known, "x"))
            except (KeyError, IndexError, ValueError) as exc:
                raise bad(
                    source, f"{section}.{f.name}", f"has an unknown placeholder or a stray brace ({exc})"
                ) from None
    for f in declared:
        if "bounds" in f.metadata:
            within(source, f"{section}.{f.name}", getattr(spec, f.name), *f.metadata["bounds"])
    for f in declared:
        needs = [f"{{{name}}}" for name in f.metadata.get("needs", ())]
        if any(n not in getattr(spec, f.name) for n in needs):
            raise bad(source, f"{section}.{f.name}", f"must contain {' and '.join(needs)}")
