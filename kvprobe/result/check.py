"""Checking a result file, and the item rows of a run's journal: the typed document by its
models (pydantic-core, strictly: 1.0 is no whole number, "7" no number, true no 1), what each
probe defines for itself by the probe's part of the generated schema (fastjsonschema, compiled
once: an item row against its own probe's definition, a summary row against its own probe's
rules, as the schema's `if probe = ...` says), then the ties between fields
(kvprobe.result.ties). A failure is one line naming the JSON path of the first bad field, in the
words of the schema at that path."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kvprobe.api.result import ResultDoc
from kvprobe.result.blocks import MAX_DEPTH, Check, Schema, SchemaError, describe, first_error, too_deep
from kvprobe.result.schema import Built, built, item_common, sections, spec_schema, summary_common
from kvprobe.result.ties import first_tie_problem

DEEP = f"it nests lists and objects deeper than {MAX_DEPTH} levels"


def checked(doc: Any, *, shown: bool = True) -> ResultDoc | str:
    """`doc` (parsed JSON) typed, or the first thing it breaks in words naming its JSON path:
    too deep, a field of the wrong type or missing, a broken tie between fields (`shown`: also
    those of the report's tables, kvprobe.result.ties)."""
    if too_deep(doc):
        return DEEP
    try:
        typed = ResultDoc.model_validate(doc, strict=True)
    except ValidationError as exc:
        return model_problem(exc.errors(include_url=False)[0], doc, built().schema)
    problem = parts_problem(doc)
    if problem is None:
        problem = first_tie_problem(typed, shown=shown)
    return typed if problem is None else problem


# --- what the probes define: their parts of the schema -------------------------------------------------


class Parts:
    """The compiled checks of the probes' parts of one Built schema, by probe."""

    def __init__(self, assembled: Built):
        self.assembled = assembled
        parts = assembled.parts
        items = {p.name: part.item for p, part in parts if part.item}
        self.item_common = assembled.check("item_common", item_common)
        self.items = {
            name: assembled.check(
                f"item/{name}",
                functools.partial(lambda d: {"allOf": [item_common(), {"$ref": f"#/$defs/{d}"}]}, d),
            )
            for name, d in items.items()
        }
        common = summary_common(assembled.probes, parts)
        rules = {p.name: list(part.summary_rules) for p, part in parts if part.summary_rules}
        self.summary_common = assembled.check("summary_common", lambda: common)
        self.summary = {
            name: assembled.check(f"summary/{name}", functools.partial(lambda r: {"allOf": [common, *r]}, r))
            for name, r in rules.items()
        }
        self.sections = {
            name: assembled.check(f"section/{name}", functools.partial(lambda s: s, s))
            for name, s in sections(assembled.probes, parts).items()
        }
        self.spec = assembled.check("spec", lambda: spec_schema(parts))
        self.metadata = assembled.check(
            "metadata", lambda: assembled.defs["model_info"]["properties"]["metadata"]
        )

    def item(self, row: Any) -> Check:
        probe = row.get("probe") if isinstance(row, dict) else None
        return self.items.get(probe, self.item_common) if isinstance(probe, str) else self.item_common

    def summary_row(self, row: Any) -> Check:
        probe = row.get("probe") if isinstance(row, dict) else None
        return self.summary.get(probe, self.summary_common) if isinstance(probe, str) else self.summary_common


@functools.cache
def _parts(assembled: Built) -> Parts:
    return Parts(assembled)


def rows_problem(rows: Any, at: str, *, summary: bool = False) -> str | None:
    """The first row of `rows` (the file's `items`, `text_items` or `summary`, a journal unit's
    items) its probe's part refuses, in words rooted at `at`."""
    if not isinstance(rows, list):
        return _words(SchemaError([], "type", "array", rows, {}, ""), at)
    parts = _parts(built())
    pick = parts.summary_row if summary else parts.item
    for i, row in enumerate(rows):
        if (error := first_error(pick(row), row)) is not None:
            return _words(error, f"{at}[{i}]")
    return None


def parts_problem(doc: dict[str, Any]) -> str | None:
    """What a document the models accept breaks of the probes' parts (and the GGUF metadata)."""
    parts = _parts(built())
    for field, summary in (("items", False), ("text_items", False), ("summary", True)):
        if field in doc and (problem := rows_problem(doc[field], field, summary=summary)) is not None:
            return problem
    values = [(parts.sections[name], doc[name], name) for name in parts.sections if name in doc]
    values.append((parts.spec, doc["scenario"].get("spec", {}), "scenario.spec"))
    models = [("model", doc["model"])] + [(f"models.{k}", m) for k, m in (doc.get("models") or {}).items()]
    values += [(parts.metadata, m["metadata"], f"{k}.metadata") for k, m in models if "metadata" in m]
    for check, value, at in values:
        if (error := first_error(check, value)) is not None:
            return _words(error, at)
    return None


def _words(error: SchemaError, root: str) -> str:
    return describe(error, root)


# --- what the models refuse, in the schema's words -----------------------------------------------------

_KEYWORDS = {
    "missing": "required",
    "literal_error": "enum",
    "greater_than_equal": "minimum",
    "less_than_equal": "maximum",
    "greater_than": "exclusiveMinimum",
    "less_than": "exclusiveMaximum",
    "too_short": "minItems",
    "too_long": "maxItems",
    "string_too_short": "minLength",
}
_LIMITS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}


def model_problem(error: ErrorDetails, doc: Any, schema: Schema) -> str:
    """pydantic's first error, worded as the schema says it (kvprobe.result.blocks.describe)."""
    path = list(error["loc"])
    at = _schema_at(schema, path)
    kind = error["type"]
    keyword = _KEYWORDS.get(kind, "type" if kind.endswith("_type") else "")
    ctx = error.get("ctx") or {}
    if keyword == "required":
        return describe(SchemaError(path[:-1], "required", [path[-1]], {}, {}, ""))
    if keyword == "type":
        limit: Any = _kinds(at, schema) or [_PYDANTIC_KINDS.get(kind, "object")]
    elif keyword == "enum":
        limit = _resolved(at, schema).get("enum") or []
    elif keyword in _LIMITS:
        limit = ctx.get(_LIMITS[keyword])
    elif keyword in ("minItems", "maxItems"):
        limit = ctx.get("min_length" if keyword == "minItems" else "max_length")
    else:
        limit = None
    return describe(SchemaError(path, keyword or kind, limit, error["input"], at or {}, error["msg"]))


_PYDANTIC_KINDS = {
    "int_type": "integer",
    "float_type": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
}


def _resolved(node: Schema | None, schema: Schema) -> Schema:
    """A schema with its `$ref` followed; for a nullable one (`anyOf` with null), its other option."""
    while node is not None and ("$ref" in node or "anyOf" in node):
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        else:
            node = next((o for o in node["anyOf"] if o != {"type": "null"}), None)
    return node or {}


def _schema_at(schema: Schema, path: Sequence[str | int]) -> Schema | None:
    """The schema of the value at `path` (as the models' errors name it), None if none says."""
    node: Schema | None = schema
    for step in path:
        current = _resolved(node, schema)
        if isinstance(step, int):
            node = current.get("items")
        elif step in current.get("properties", {}):
            node = current["properties"][step]
        elif isinstance(current.get("additionalProperties"), dict):
            node = current["additionalProperties"]
        else:
            node = next(
                (s for p, s in current.get("patternProperties", {}).items() if re.search(p, step)), None
            )
        if node is None:
            return None
    return node


def _kinds(node: Schema | None, schema: Schema) -> list[str]:
    """The JSON types `node` admits, null included where it is nullable."""
    if node is None:
        return []
    if "anyOf" in node:
        return [k for option in node["anyOf"] for k in _kinds(option, schema)]
    resolved = _resolved(node, schema)
    kind = resolved.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)
