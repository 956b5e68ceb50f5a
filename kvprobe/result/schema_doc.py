"""The tables of docs/result-schema.md, written from the generated schema's descriptions
(kvprobe.result.schema: the models' attribute docstrings and the probes' parts):

    python -m kvprobe.result.schema_doc docs/result-schema.md           # regenerate the tables
    python -m kvprobe.result.schema_doc docs/result-schema.md --check   # exit 1 if they are stale
    python -m kvprobe.result.schema_doc --json                          # the schema itself
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from kvprobe.result.blocks import Schema
from kvprobe.result.migrations import MIGRATION_NOTES
from kvprobe.result.schema import Built, built, documented

MARKER = re.compile(r"^<!-- table: (?P<name>[a-z_]+) -->$")
# Between these two lines the doc holds every probe's own sections (SchemaPart.doc), in order.
PROBES_BEGIN = "<!-- the probes' sections (SchemaPart.doc) -->"
PROBES_END = "<!-- end of the probes' sections -->"
TYPE_NAMES = {
    "integer": "int",
    "number": "number",
    "string": "str",
    "boolean": "bool",
    "object": "object",
    "array": "list",
    "null": "null",
}


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    return defs[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _types(schema: Schema, defs: dict[str, Schema]) -> list[str]:
    """The JSON types a value of `schema` may have (a reference or a nullable one resolved)."""
    if "anyOf" in schema:
        return [t for option in schema["anyOf"] for t in _types(option, defs)]
    resolved = _resolve(schema, defs)
    kind = resolved.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def type_name(schema: Schema, defs: dict[str, Schema]) -> str:
    """`int`, `str or null`, `list of str`, ... for the top-level table."""
    names = []
    for kind in _types(schema, defs):
        name = TYPE_NAMES[kind]
        if kind == "array" and _types(_resolve(schema, defs).get("items", {}), defs) == ["string"]:
            name = "list of str"
        names.append(name)
    return " or ".join(names)


def _description(schema: Schema, defs: dict[str, Schema]) -> str:
    if "description" in schema:
        return str(schema["description"])
    options = schema.get("anyOf", [schema])
    return next((str(d) for o in options if (d := _resolve(o, defs).get("description"))), "")


def _rows(properties: dict[str, Schema], defs: dict[str, Schema]) -> Iterator[tuple[list[str], str, Schema]]:
    """Neighbouring fields with the same description share a row."""
    names: list[str] = []
    last = ""
    first: Schema = {}
    for name, schema in properties.items():
        doc = _description(schema, defs)
        if not doc:
            continue
        if names and doc == last:
            names.append(name)
            continue
        if names:
            yield names, last, first
        names, last, first = [name], doc, schema
    if names:
        yield names, last, first


def migration_rows(assembled: Built) -> list[tuple[str, str, str]]:
    """The file's own migrations and the probes', by the version they start from (a plain step
    before one with a condition)."""
    rows = [*MIGRATION_NOTES, *(row for _, part in assembled.parts for row in part.migrations)]
    return sorted(rows, key=lambda row: (row[0][:1], row[0] != row[0][:1]))  # 1, then 1 with a condition


def table(name: str, assembled: Built | None = None) -> list[str]:
    """One table of the doc, as markdown lines."""
    assembled = assembled or documented()
    if name == "migrations":
        lines = ["| from | to | change |", "|---|---|---|"]
        return lines + [f"| {a} | {b} | {change} |" for a, b, change in migration_rows(assembled)]
    schema, typed = assembled.tables[name]
    head = ["| field | type | meaning |", "|---|---|---|"] if typed else ["| field | meaning |", "|---|---|"]
    body = []
    for names, doc, first in _rows(schema["properties"], assembled.defs):
        label = ", ".join(f"`{n}`" for n in names)
        body.append(
            f"| {label} | {type_name(first, assembled.defs)} | {doc} |" if typed else f"| {label} | {doc} |"
        )
    return head + body


def _probe_sections(lines: list[str], assembled: Built) -> list[str]:
    """`lines` with what stands between PROBES_BEGIN and PROBES_END written afresh from the
    probes' docs."""
    if PROBES_BEGIN not in lines:
        return lines
    begin = lines.index(PROBES_BEGIN)
    end = lines.index(PROBES_END, begin)
    docs = [part.doc.strip("\n") for _, part in assembled.parts if part.doc.strip()]
    return [*lines[: begin + 1], "", *"\n\n".join(docs).splitlines(), "", *lines[end:]]


def render_doc(markdown: str) -> str:
    """`markdown` with the probes' sections, and every table after a `<!-- table: NAME -->`
    marker, generated afresh."""
    assembled = documented()
    out: list[str] = []
    lines = _probe_sections(markdown.splitlines(), assembled)
    i = 0
    while i < len(lines):
        out.append(lines[i])
        found = MARKER.match(lines[i])
        i += 1
        if found:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1  # the table as it was
            out += table(found["name"], assembled)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    if "--json" in argv:
        print(json.dumps(built().schema, indent=1, ensure_ascii=False))
        return 0
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: python -m kvprobe.result.schema_doc DOC.md [--check] | --json", file=sys.stderr)
        return 2
    path = Path(paths[0])
    old = path.read_text(encoding="utf-8")
    new = render_doc(old)
    if "--check" in argv:
        if new != old:
            print(f"{path} is stale: run python -m kvprobe.result.schema_doc {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
