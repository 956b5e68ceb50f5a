"""Older result files brought up to the current schema, in memory (kvprobe.result.store reads
them through here): the file's own parts here, each probe's parts by the probe itself
(`Probe.migrate`). What each change is, is the migration table of docs/result-schema.md."""

from __future__ import annotations

from typing import Any

from kvprobe.api import ResultDoc, all_probes
from kvprobe.infra.errors import guarded

SCHEMA_VERSION = 3

# What the file's own migrations change, for docs/result-schema.md (python -m
# kvprobe.result.schema writes the table, with each probe's rows: SchemaPart.migrations).
MIGRATION_NOTES = (
    ("1, no `statistics`", "2", "files from before statistics were recorded: `statistics` is added; where "
     "the verdict is missing too, it is computed from the file's own summary rows"),
    ("2", "3", "`model.kv_layout` from the recorded metadata; the verdict rebuilt with equivalence, the "
     "recommendation and the rules of thumb (`verdict.migrated_from_schema: 2`). Items and existing "
     "summary rows are unchanged; `timing.prefill` stays absent (speed \"not measured\")"),
)  # fmt: skip


def migrate(doc: ResultDoc, read_version: int) -> None:
    """`doc`, a valid file of schema `read_version`, brought up to SCHEMA_VERSION in place: the KV
    layout (from the recorded metadata), every probe's parts, then the verdict rebuilt from them
    with equivalence, the recommendation and the rules of thumb; and `statistics` where the file
    has none. Items and existing rows stay."""
    if read_version < 3:
        _add_kv_layout(doc)
    errors: list[dict[str, str]] = (doc.get("statistics") or {}).get("errors", [])
    for probe in all_probes():
        probe.migrate(doc, read_version, errors)
    if read_version < 3 and doc.get("verdict") is not None:
        doc["verdict"] = guarded(errors, "verdict", lambda: _verdict(doc))
        if doc["verdict"] is not None:
            doc["verdict"]["migrated_from_schema"] = 2
    doc["schema_version"] = SCHEMA_VERSION
    if "statistics" not in doc:  # written before statistics were guarded and recorded
        if doc.get("verdict") is None:  # ... and before the verdict: add it from the file's rows
            errors = []
            doc["verdict"] = guarded(errors, "verdict", lambda: _verdict(doc))
            doc["statistics"] = {"complete": not errors, "errors": errors}
        else:  # a verdict was written only when every statistic had succeeded
            doc["statistics"] = {"complete": True, "errors": []}


def _add_kv_layout(doc: ResultDoc) -> None:
    # kvprobe.weights loads the gguf package: only a file from before schema 3 needs it
    from kvprobe.weights.doctor import kv_layout_from_metadata

    model = doc.get("model") or {}
    if "kv_layout" not in model and isinstance(model.get("metadata"), dict):
        model["kv_layout"] = kv_layout_from_metadata(str(model.get("architecture")), model["metadata"])


def _verdict(doc: ResultDoc) -> dict[str, Any] | None:
    # the statistics load scipy: only an old file whose verdict is rebuilt pays for it
    from kvprobe.stats.verdict import build_verdict

    return build_verdict(doc, doc["run"]["seed"])
