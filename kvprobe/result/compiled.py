"""The schema's keywords compiled to plain Python checks: whether a document is valid, about
ten times faster than jsonschema walks it. jsonschema stays the reference: it names the field
whenever this says no, and tests/result/test_result_schema.py checks that both agree. Only the keywords
kvprobe.result.schema uses are compiled; any other one is an error here, so that a schema edit
can never be silently ignored."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]
ANNOTATIONS = frozenset({"description", "$schema", "$id", "title", "$defs"})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


TYPES: dict[str, Check] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


class Compiler:
    """Compiles a schema and its `$defs`; a `$ref` is looked up when first checked."""

    def __init__(self, defs: dict[str, Any]):
        self.defs = defs
        self.compiled: dict[str, Check] = {}

    def ref(self, target: str) -> Check:
        name = target.removeprefix("#/$defs/")

        def check(v: Any) -> bool:
            if name not in self.compiled:
                self.compiled[name] = self.compile(self.defs[name])
            return self.compiled[name](v)

        return check

    def compile(self, schema: dict[str, Any]) -> Check:
        if (fast := _number(schema)) is not None:
            return fast
        checks: list[Check] = []
        unknown = (
            set(schema) - ANNOTATIONS - set(KEYWORDS) - {"then", "additionalProperties", "patternProperties"}
        )
        if unknown:
            raise ValueError(f"keywords the compiled check does not know: {sorted(unknown)}")
        for keyword, build in KEYWORDS.items():
            if keyword in schema:
                checks.append(build(self, schema))
        if "additionalProperties" in schema or "patternProperties" in schema:
            checks.append(_additional(self, schema))
        return _all(checks)


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda v: a(v) and b(v)
    return lambda v: all(c(v) for c in checks)


def _number(s: dict[str, Any]) -> Check | None:
    """A bounded number or whole number (perhaps null) in one check: the most common field."""
    kinds = [s["type"]] if isinstance(s.get("type"), str) else s.get("type", [])
    if set(s) - ANNOTATIONS - {"type", "minimum", "maximum"} or not kinds:
        return None
    if not set(kinds) <= {"integer", "number", "null"} or len(set(kinds) - {"null"}) != 1:
        return None
    lo, hi = s.get("minimum", -math.inf), s.get("maximum", math.inf)
    allowed = (int,) if "integer" in kinds else (int, float)
    null = "null" in kinds
    # As jsonschema: a bound refuses only what compares beyond it, so NaN (a journal may hold it) passes.
    return lambda v: (null and v is None) or (type(v) in allowed and not (v < lo or v > hi))


def _type(c: Compiler, s: dict[str, Any]) -> Check:
    kinds = [s["type"]] if isinstance(s["type"], str) else s["type"]
    tests = [TYPES[k] for k in kinds]
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(t(v) for t in tests)


def _enum(c: Compiler, s: dict[str, Any]) -> Check:
    options = s["enum"]
    return lambda v: any(type(v) is type(o) and v == o for o in options)


def _const(c: Compiler, s: dict[str, Any]) -> Check:
    value = s["const"]
    return lambda v: type(v) is type(value) and v == value


def _bound(keyword: str, holds: Callable[[Any, Any], bool]) -> Callable[[Compiler, dict[str, Any]], Check]:
    def build(c: Compiler, s: dict[str, Any]) -> Check:
        limit = s[keyword]
        return lambda v: not _is_number(v) or holds(v, limit)

    return build


def _length(keyword: str, holds: Callable[[int, int], bool]) -> Callable[[Compiler, dict[str, Any]], Check]:
    def build(c: Compiler, s: dict[str, Any]) -> Check:
        limit = s[keyword]
        return lambda v: not isinstance(v, list) or holds(len(v), limit)

    return build


def _min_length(c: Compiler, s: dict[str, Any]) -> Check:
    limit = s["minLength"]
    return lambda v: not isinstance(v, str) or len(v) >= limit


def _required(c: Compiler, s: dict[str, Any]) -> Check:
    keys = s["required"]
    return lambda v: not isinstance(v, dict) or all(k in v for k in keys)


def _properties(c: Compiler, s: dict[str, Any]) -> Check:
    props = {k: c.compile(sub) for k, sub in s["properties"].items()}

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        return all(props[k](x) for k, x in v.items() if k in props)

    return check


def _additional(c: Compiler, s: dict[str, Any]) -> Check:
    """additionalProperties, with patternProperties: keys that neither names nor matches."""
    named = set(s.get("properties", {}))
    patterns = [(re.compile(p), c.compile(sub)) for p, sub in s.get("patternProperties", {}).items()]
    other = c.compile(s["additionalProperties"]) if "additionalProperties" in s else None

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for k, x in v.items():
            matched = False
            for pattern, sub in patterns:
                if pattern.search(k):
                    matched = True
                    if not sub(x):
                        return False
            if other is not None and not matched and k not in named and not other(x):
                return False
        return True

    return check


def _items(c: Compiler, s: dict[str, Any]) -> Check:
    each = c.compile(s["items"])
    return lambda v: not isinstance(v, list) or all(each(x) for x in v)


def _all_of(c: Compiler, s: dict[str, Any]) -> Check:
    parts = [c.compile(sub) for sub in s["allOf"]]
    return lambda v: all(p(v) for p in parts)


def _if_then(c: Compiler, s: dict[str, Any]) -> Check:
    condition = c.compile(s["if"])
    then = c.compile(s.get("then", {}))
    return lambda v: not condition(v) or then(v)


def _ref(c: Compiler, s: dict[str, Any]) -> Check:
    return c.ref(s["$ref"])


KEYWORDS: dict[str, Callable[[Compiler, dict[str, Any]], Check]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _bound("minimum", lambda v, lim: not v < lim),
    "maximum": _bound("maximum", lambda v, lim: not v > lim),
    "exclusiveMinimum": _bound("exclusiveMinimum", lambda v, lim: not v <= lim),
    "minItems": _length("minItems", lambda n, lim: n >= lim),
    "maxItems": _length("maxItems", lambda n, lim: n <= lim),
    "minLength": _min_length,
    "required": _required,
    "properties": _properties,
    "items": _items,
    "allOf": _all_of,
    "if": _if_then,
    "$ref": _ref,
}


def compile_schema(schema: dict[str, Any], defs: dict[str, Any]) -> Check:
    return Compiler(defs).compile(schema)
