"""A probe's part of the result file's schema (`Probe.schema_part`): kvprobe.result.schema
assembles the whole JSON Schema (draft 2020-12), and the tables of docs/result-schema.md, from
the parts of the registered probes. Schemas are plain JSON-able dicts (kvprobe.result.blocks
builds them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class SchemaPart:
    """What a probe adds to the result schema. Each field is optional."""

    # Definitions it adds to the schema's `$defs` (its item rows, its section and what they
    # refer to); a name another probe defines too is an error.
    defs: Mapping[str, Schema] = field(default_factory=dict)
    item: str | None = None  # the definition (in `defs`) every item row with `probe` = its name keeps
    # Rules of its summary rows: `if`/`then` clauses (kvprobe.result.blocks.when) that the
    # summary row's `allOf` adds, each naming its own `probe` in the condition.
    summary_rules: tuple[Schema, ...] = ()
    summary_fields: Mapping[str, Schema] = field(default_factory=dict)  # fields only its summary rows have
    section: Schema | None = None  # its top-level section (`has_section`): schema with description
    spec: Mapping[str, Schema] = field(default_factory=dict)  # `scenario.spec.<section>` a reader indexes
    # What it adds, in words, to the descriptions of fields every probe shares, by table and
    # field: "summary_row.metric" (its metrics), "summary_row.ctx", "result.text_items", ...
    notes: Mapping[str, str] = field(default_factory=dict)
    statistics: tuple[str, ...] = ()  # what else than `summary_label` it guards into `statistics.errors`
    tables: Mapping[str, Schema] = field(default_factory=dict)  # the doc's tables: name -> record listed
    # Its sections of docs/result-schema.md (markdown; `<!-- table: NAME -->` marks where a
    # table of `tables` goes), and its rows of the doc's migration table (from, to, change).
    doc: str = ""
    migrations: tuple[tuple[str, str, str], ...] = ()
