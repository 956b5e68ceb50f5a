"""The schema's building blocks (JSON Schema draft 2020-12 as plain dicts) for what the typed
models do not state (each probe's part of the result schema, `Probe.schema_part`; the sweep
manifest; a probe's journal data), and what checks a value against such a schema: fastjsonschema
compiles it to Python, and the first field it refuses is named in words. This module imports
only kvprobe.api's bounds: kvprobe.result.schema splices the probes' parts into the schema
generated from the models, and kvprobe.result.check checks a file with both."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastjsonschema import JsonSchemaValueException
from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft2019 import CodeGeneratorDraft2019
from fastjsonschema.ref_resolver import RefResolver

from kvprobe.api.bounds import MAX_CTX, MAX_DEPTH, MAX_LAYERS, MAX_TOKENS

Schema = dict[str, Any]
__all__ = ["MAX_CTX", "MAX_DEPTH", "MAX_LAYERS", "MAX_TOKENS"]  # the bounds, for the probes' parts


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
    """An object. Its refusals come in this order: what is missing first, then what a kind of
    row must hold (`allOf`), then the fields' own types. fastjsonschema checks `allOf` before
    `required`, so the required fields also lead the `allOf`."""
    out: Schema = {"type": "object"}
    if required:
        out["required"] = list(required)
    if "allOf" in more:
        out["allOf"] = ([{"required": list(required)}] if required else []) + more.pop("allOf")
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

Check = Callable[[Any], Any]  # raises JsonSchemaValueException at the first value it refuses


class _StrictIntegers(CodeGeneratorDraft2019):
    """Draft 2019-09/2020-12 keywords, but 1.0 is no whole number (as draft 4 has it): the
    readers index and loop with these."""

    generate_type = CodeGeneratorDraft04.generate_type


def checker(schema: Schema, defs: dict[str, Schema] | None = None) -> Check:
    """`schema` (whose `$ref`s may name `defs`) compiled to a Python function; first_problem says
    in words what it refuses. Compile once and keep it: compiling takes milliseconds."""
    whole = copy.deepcopy(schema if defs is None else {**schema, "$defs": defs})  # compiling edits refs
    whole.pop("$id", None)
    resolver = RefResolver.from_schema(whole, store={})
    generator = _StrictIntegers(whole, resolver=resolver)  # type: ignore[no-untyped-call]  # unannotated
    state = generator.global_state
    exec(generator.func_code, state)  # fastjsonschema.compile, with the strict integers above
    compiled: Check = state[resolver.get_scope_name()]
    return compiled


@dataclass(frozen=True)
class SchemaError:
    """The first value a schema refuses, named as jsonschema names its errors."""

    absolute_path: list[str | int]  # where, in the value checked
    validator: str  # the keyword it breaks: "type", "required", "minimum", ...
    validator_value: Any  # the keyword's value in the schema
    instance: Any  # the value refused
    schema: Schema  # the schema of that value
    message: str


def first_error(validating: Check, value: Any) -> SchemaError | None:
    try:
        validating(value)
    except JsonSchemaValueException as exc:
        definition = exc.definition if isinstance(exc.definition, dict) else {}
        return SchemaError(
            _path(value, exc.name or "data"),
            exc.rule or "",
            exc.rule_definition,
            exc.value,
            definition,
            exc.message,
        )
    return None


def first_problem(validating: Check, value: Any, root: str = "") -> str | None:
    """The first field of `value` that `validating` refuses, in words: "verdict must be an
    object or null, not a string", "missing items"; None when it is valid. `root` names
    `value` itself where it is part of something else ("probe_data.divergence")."""
    error = first_error(validating, value)
    return None if error is None else describe(error, root)


def _path(value: Any, name: str) -> list[str | int]:
    """fastjsonschema's name of a value ("data.configs.k=q4_0,v=f16.id", "data.items[3]") as a
    path, read against the value itself: a key may hold dots and brackets."""
    rest, node = name.removeprefix("data"), value
    path: list[str | int] = []
    while rest:
        step: str | int | None = None
        if isinstance(node, list) and (found := re.match(r"\[(\d+)\]", rest)):
            step, rest = int(found[1]), rest[found.end() :]
        elif isinstance(node, dict) and rest.startswith("."):
            keys: list[str] = [
                k for k in node if rest[1:].startswith(k) and rest[1 + len(k) : 2 + len(k)] in ("", ".", "[")
            ]
            if keys:
                step = max(keys, key=len)
                rest = rest[1 + len(step) :]
        if step is None:  # the rest names no value (a missing key): keep it as one step
            path.append(rest.lstrip("."))
            break
        path.append(step)
        node = node[step]
    return path


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


def describe(error: SchemaError, root: str = "") -> str:
    """One refusal in words, naming the JSON path of the field."""
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
    return f"{at} is not valid ({error.message.removeprefix('data')[:80]})"


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
