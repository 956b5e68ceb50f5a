"""The result schema's building blocks (JSON Schema draft 2020-12 as plain dicts) and what
checks a value against a schema made of them, naming the first bad field in words. This module
imports nothing of kvprobe: kvprobe.result.schema assembles the result file's schema from these,
and the probes build their parts of it (`Probe.schema_part`) and the checks of their journal data
with them."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

Schema = dict[str, Any]

# Bounds that keep every reader's arithmetic finite and its loops short.
MAX_TOKENS = 2**31 - 1  # positions, token counts: llama.cpp's int32
MAX_CTX = 2**24  # --ctx (kvprobe takes up to 2**20): bounds what a per-position array may decompress to
MAX_LAYERS = 100_000  # kv_cache_bytes loops over the layers
MAX_DEPTH = 64  # nesting: the deepest real file is about 10 levels deep


# --- building blocks ------------------------------------------------------------------------------


def of(kind: str | list[str], doc: str = "", **more: Any) -> Schema:
    out: Schema = {"type": kind, **more}
    if doc:
        out["description"] = doc
    return out


def integer(doc: str = "", lo: int = 0, hi: int = MAX_TOKENS, **more: Any) -> Schema:
    return of("integer", doc, minimum=lo, maximum=hi, **more)


def number(doc: str = "", **more: Any) -> Schema:
    return of("number", doc, **more)


def text(doc: str = "", **more: Any) -> Schema:
    return of("string", doc, **more)


def flag(doc: str = "") -> Schema:
    return of("boolean", doc)


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    out = {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


def listing(items: Schema, doc: str = "", **more: Any) -> Schema:
    return of("array", doc, items=items, **more)


def pair(items: Schema, doc: str = "") -> Schema:
    return listing(items, doc, minItems=2, maxItems=2)


def record(properties: dict[str, Schema], required: Sequence[str] = (), doc: str = "", **more: Any) -> Schema:
    """An object. jsonschema reports in the order of the keywords: what is missing first, then
    what a kind of row must hold (`allOf`), then the fields' own types."""
    out: Schema = {"type": "object"}
    if required:
        out["required"] = list(required)
    if "allOf" in more:
        out["allOf"] = more.pop("allOf")
    out |= {"properties": properties, **more}
    if doc:
        out["description"] = doc
    return out


def mapping(values: Schema, doc: str = "") -> Schema:
    """An object whose keys are names (config ids, probes, ...), each with a value of `values`."""
    return of("object", doc, additionalProperties=values)


def ref(name: str, doc: str = "") -> Schema:
    out: Schema = {"$ref": f"#/$defs/{name}"}
    if doc:
        out["description"] = doc
    return out


def when(condition: Schema, then: Schema) -> Schema:
    return {"if": {"properties": condition, "required": list(condition)}, "then": then}


NUM = number()
ANY_NUM = nullable(number())  # a value that may have been NaN (stored as null)
INT = integer()
STR = text()
INTERVAL = pair(NUM)  # [lo, hi]
OPEN_INTERVAL = pair(ANY_NUM)  # an end may be missing (too little data)
STATUS = text(enum=["equivalent", "undecided", "worse"])
SHARE = number(minimum=0, maximum=1)


# --- checking ------------------------------------------------------------------------------------------


def _whole_number(_checker: Any, value: Any) -> bool:
    """JSON Schema counts 1.0 as an integer; the readers index and loop with these."""
    return isinstance(value, int) and not isinstance(value, bool)


@functools.cache
def _validator_class() -> Any:
    # jsonschema takes about 80 ms to import: only what reads a file or a journal pays for it
    import jsonschema  # type: ignore[import-untyped]

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _whole_number),
    )


def checker(schema: Schema, defs: dict[str, Schema] | None = None) -> Any:
    """jsonschema's validator of `schema` (whole numbers are ints, not 1.0), whose `$ref`s may
    name `defs`; first_problem says in words what it refuses."""
    return _validator_class()(schema if defs is None else {**schema, "$defs": defs})


def first_problem(validating: Any, value: Any, root: str = "") -> str | None:
    """The first field of `value` that `validating` refuses, in words: "verdict must be an
    object or null, not a string", "missing items"; None when it is valid. `root` names
    `value` itself where it is part of something else ("probe_data.divergence")."""
    error = next(iter(validating.iter_errors(value)), None)
    if error is None:
        return None
    return describe(error, root)


def where(path: Sequence[Any], root: str = "") -> str:
    """A JSON path as the user reads it: `verdict.configs["k=q4_0,v=f16"].sentence`, `items[3]`."""
    out = root
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", step):
            out += f".{step}" if out else step
        else:
            out += f"[{brief(step)}]"
    return out


def brief(value: Any) -> str:
    """A value in one short line: JSON escapes every control character."""
    try:
        shown = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        shown = type(value).__name__
    return shown if len(shown) <= 40 else shown[:37] + "..."


_KINDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def _kind(value: Any) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return brief(value)
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def describe(error: Any, root: str = "") -> str:
    """One jsonschema error in words, naming the JSON path of the field."""
    path = list(error.absolute_path)
    at = where(path, root) or "the file"
    value, limit, keyword = error.instance, error.validator_value, error.validator
    if keyword == "type":
        kinds = [limit] if isinstance(limit, str) else list(limit)
        return f"{at} must be {' or '.join(_KINDS.get(k, k) for k in kinds)}, not {_kind(value)}"
    if keyword == "required":
        missing = next((k for k in limit if isinstance(value, dict) and k not in value), limit[0])
        return f"missing {where([*path, missing], root)}"
    if keyword in ("enum", "const"):
        options = limit if keyword == "enum" else [limit]
        return f"{at} must be {' or '.join(brief(o) for o in options)}, not {brief(value)}"
    bounds = {
        "minimum": "at least",
        "maximum": "at most",
        "exclusiveMinimum": "above",
        "exclusiveMaximum": "below",
    }
    if keyword in bounds:
        return f"{at} must be {bounds[keyword]} {limit:,}, not {brief(value)}"
    if keyword == "minLength":
        return f"{at} must not be empty"
    if keyword in ("minItems", "maxItems"):
        most = "at least" if keyword == "minItems" else "at most"
        return f"{at} must hold {most} {limit:,} entries, not {len(value):,}"
    return f"{at} is not valid ({error.message[:80]})"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests deeper than `limit` lists and objects (no recursion: a hostile file
    must not exhaust the stack of whatever reads it next)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
