"""Older result files brought up to the current schema, in memory (kvprobe.result.store reads
them through here). On the document as read: the file's own parts here, each probe's parts by
the probe itself (`Probe.migrate`). What only the statistics can recompute (a schema-2 file's
KV layout and verdict, a schema-1 file's missing verdict) is done on the typed document by the
hook the statistics register (`rebuild_with`: kvprobe.stats registers it when imported, and
every registered probe's package imports it), so that nothing here climbs to the statistics.
What each change is, is the migration table of docs/result-schema.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvprobe.api import all_probes
from kvprobe.api.record import JsonObject
from kvprobe.api.result import SCHEMA_VERSION, ResultDoc

# What the file's own migrations change, for docs/result-schema.md (python -m
# kvprobe.result.schema_doc writes the table, with each probe's rows: SchemaPart.migrations).
MIGRATION_NOTES = (
    ("1, no `statistics`", "2", "files from before statistics were recorded: `statistics` is added; where "
     "the verdict is missing too, it is computed from the file's own summary rows"),
    ("2", "3", "`model.kv_layout` from the recorded metadata; the verdict rebuilt with equivalence, the "
     "recommendation and the rules of thumb (`verdict.migrated_from_schema: 2`). Items and existing "
     "summary rows are unchanged; `timing.prefill` stays absent (speed \"not measured\")"),
    ("3", "4", "the verdict rebuilt from the file's items: each configuration's level and growth with "
     "context (`shape`), tests labelled with what they cover (`scope`), the rule of thumb \"degrades at "
     "4K+\" judged by growth (`verdict.migrated_from_schema: 3`)"),
)  # fmt: skip


@dataclass
class Rebuild:
    """What a migrated file needs recomputed once it is typed (by the statistics' hook)."""

    read_version: int
    kv_layout: bool = False  # model.kv_layout from the recorded metadata (schema 2)
    verdict: bool = False  # the verdict rebuilt (schema 2: equivalence and the decision; 3: shape)
    missing_verdict: bool = False  # no statistics, no verdict: computed from the file's rows (schema 1)
    record_errors: bool = False  # what fails is recorded (a file without `statistics` had nowhere to)

    @property
    def needed(self) -> bool:
        return self.kv_layout or self.verdict or self.missing_verdict


Rebuilder = Callable[[ResultDoc, Rebuild], None]
_REBUILDERS: list[Rebuilder] = []


def rebuild_with(rebuilder: Rebuilder) -> None:
    """Register what recomputes a migrated file's statistics (kvprobe.stats does, once)."""
    if rebuilder not in _REBUILDERS:
        _REBUILDERS.append(rebuilder)


def migrate(doc: JsonObject, read_version: int) -> Rebuild:
    """`doc`, a valid file of schema `read_version`, brought up to SCHEMA_VERSION in place: every
    probe's parts, and `statistics` where the file has none (complete where a verdict was written:
    it was written only when every statistic had succeeded). Items and existing rows stay. What
    the statistics must recompute on the typed document is returned (`rebuild`)."""
    has_statistics = isinstance(doc.get("statistics"), dict)
    errors: list[dict[str, str]] = doc["statistics"].setdefault("errors", []) if has_statistics else []
    for probe in all_probes():
        probe.migrate(doc, read_version, errors)
    doc["schema_version"] = SCHEMA_VERSION
    pending = Rebuild(read_version)
    if read_version < 3:
        model = doc.get("model") or {}
        pending.kv_layout = "kv_layout" not in model and isinstance(model.get("metadata"), dict)
        pending.verdict = doc.get("verdict") is not None
    if read_version < 4:  # level and growth (kvprobe.stats.shape) come from the items
        pending.verdict = doc.get("verdict") is not None
    if not has_statistics:  # written before statistics were guarded and recorded
        pending.missing_verdict = doc.get("verdict") is None
        doc["statistics"] = {"complete": not pending.missing_verdict, "errors": []}
    pending.record_errors = has_statistics
    return pending


def rebuild(doc: ResultDoc, pending: Rebuild) -> None:
    """The statistics a migrated file needs, recomputed in place by the registered hook."""
    if not pending.needed:
        return
    if not _REBUILDERS:  # a reader that never imported the statistics: a bug, not a stale verdict
        raise RuntimeError("a migrated result needs its statistics rebuilt: import kvprobe.stats first")
    for rebuilder in _REBUILDERS:
        rebuilder(doc, pending)
