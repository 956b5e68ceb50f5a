"""A TOML table read into a frozen dataclass by the dataclass's own type hints, every key and
value checked: what scenarios (kvprobe.plan.scenario) and sweep files (kvprobe.sweep.spec)
both do. A bad key or value is one UserError naming the file, the key's path
(`plan.checkpoints[2]`) and the fix; an unknown key gets a did-you-mean.

The hints it reads: str, int, float (an int is taken as it is written, so a hash of the value
does not change), bool, Any, Literal[...] (the choices), X | None (None only as a default: TOML
has no null), unions of different kinds (text or a table), list[X], tuple[X, ...], dict[str, X]
and nested dataclasses. What a type cannot say is field metadata, as pydantic's `Field(ge=,
le=)` states a bound beside the field:

    bounds=(low, high)    a number, or each number of a list, within [low, high]
    items=(low, high)     how many values a list holds
    chars=N               the longest text (each text of a list)
    one_or_list=True      a single value stands for a list of one (a sweep's axes)
    expects="…"           what the message says the value must be, where the type's words don't do
    missing="…"           the fix when a key without a default is missing
    too_many="…"          the fix when a list holds more than `items` allows
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from kvprobe.infra.errors import UserError, did_you_mean

T = TypeVar("T")
Meta = Mapping[str, Any]
_NO_META: Meta = {}


@dataclasses.dataclass(frozen=True)
class Where:
    """Who reads the tables: every message starts with it ("scenario s.toml", "sweep s.toml")."""

    what: str

    def bad(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.what}: key '{key}' {problem}")

    def unknown(self, key: str, word: str, allowed: list[str]) -> UserError:
        return self.bad(key, f"is unknown{did_you_mean(word, allowed)} (allowed: {', '.join(allowed)})")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def shown(value: object) -> str:
    """A value as a message quotes it: short (a file may hold a 50,000-deep list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {int: "a whole number", float: "a number", str: "text", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """The types a union allows, None left out (a default only); one type alone otherwise."""
    if get_origin(hint) in (Union, types.UnionType):
        return tuple(a for a in get_args(hint) if a is not type(None))
    return (hint,)


def describe(hint: Any) -> str:
    """What a value of `hint` is, in the words of a message."""
    alternatives = _alternatives(hint)
    if len(alternatives) > 1:
        return " or ".join(describe(a) for a in alternatives)
    hint = alternatives[0]
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a table"
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text"}.get(hint, str(hint))


def _accepts(hint: Any, value: object) -> bool:
    """Whether `value` is of the kind `hint` takes (its contents are checked after)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return isinstance(value, str | int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return type(value) is hint
    raise TypeError(f"toml_check cannot read {hint!r}")  # a section's own mistake, not the user's


def read_value(hint: Any, value: object, where: Where, key: str, meta: Meta = _NO_META) -> Any:
    """`value` checked against `hint` and the field's metadata; returned as the dataclass holds it."""
    if meta.get("one_or_list") and not isinstance(value, list):
        value = [value]
    fits = [a for a in _alternatives(hint) if _accepts(a, value)]
    if not fits:
        raise where.bad(key, f"must be {meta.get('expects') or describe(hint)}, got {shown(value)}")
    hint = fits[0]
    origin = get_origin(hint)
    if origin is Literal:
        choices = [str(c) for c in get_args(hint)]
        if value not in get_args(hint):
            raise where.bad(
                key,
                f"must be one of {', '.join(choices)}, got {shown(value)}{did_you_mean(str(value), choices)}",
            )
    elif origin in (list, tuple):
        return _sequence(hint, value, where, key, meta)
    elif origin is dict:
        assert isinstance(value, dict)
        return {
            k: read_value(get_args(hint)[1], v, where, join(key, k), _each(meta)) for k, v in value.items()
        }
    elif dataclasses.is_dataclass(hint):
        return read_table(hint, value, where, key)  # type: ignore[arg-type]
    _check_scalar(value, where, key, meta)
    return value


def _sequence(hint: Any, value: Any, where: Where, key: str, meta: Meta) -> Any:
    low, high = meta.get("items", (0, None))
    if low and not value:
        raise where.bad(key, "is empty: give at least one value" + meta.get("or_default", ""))
    if len(value) < low:
        raise where.bad(key, f"has {len(value)} values, fewer than {low}")
    if high is not None and len(value) > high:
        raise where.bad(
            key, f"has {len(value):,} values, more than {high:,}: {meta.get('too_many', 'give fewer')}"
        )
    each = get_args(hint)[0]
    values = [read_value(each, v, where, f"{key}[{i}]", _each(meta)) for i, v in enumerate(value)]
    return tuple(values) if get_origin(hint) is tuple else values


def _each(meta: Meta) -> Meta:
    """What a list's or a table's metadata says of each of its values."""
    return {k: v for k, v in meta.items() if k in ("bounds", "chars", "expects")}


def _check_scalar(value: object, where: Where, key: str, meta: Meta) -> None:
    if "bounds" in meta and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = meta["bounds"]
        if not low <= value <= high:  # NaN is never within
            raise where.bad(key, f"must be between {low:,} and {high:,}, got {value:,}")
    if "chars" in meta and isinstance(value, str) and len(value) > meta["chars"]:
        raise where.bad(key, f"must be at most {meta['chars']:,} characters, got {len(value):,}")


def read_table(cls: type[T], raw: object, where: Where, path: str = "", base: T | None = None) -> T:
    """The dataclass `cls` from a TOML table: every key known, every value of its field's type
    and within its metadata's bounds; keys not given keep `base`'s value, else the default."""
    if not isinstance(raw, dict):
        raise where.bad(path, f"must be a table, got {_kind(raw)}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = join(path, key)
        if key not in known:
            raise where.unknown(full, key, list(known))
        meta = _with_default(known[key])
        values[key] = read_value(get_type_hints(cls)[key], value, where, full, meta)
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    for name, f in known.items():
        if name not in values and _no_default(f):
            raise where.bad(join(path, name), f"is missing: {f.metadata.get('missing', 'give it')}")
    return cls(**values)


def _no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _with_default(f: dataclasses.Field[Any]) -> Meta:
    """The field's metadata; an empty list's message then says the key may be left out."""
    return (
        f.metadata
        if _no_default(f)
        else {**f.metadata, "or_default": ", or leave the key out for its default"}
    )
