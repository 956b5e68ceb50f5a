"""A result document's statistics: each probe's summary rows, then the verdict, each guarded
so that what fails is listed in `statistics.errors` and the rest is still computed
(`add_statistics`, which `kvprobe run` calls once the measurements are on disk); and what an
older file needs recomputed when it is read (`rebuild`, the hook kvprobe.stats registers with
kvprobe.result.migrations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvprobe.api import Probe, all_probes
from kvprobe.api.record import SummaryRow
from kvprobe.api.result import KvLayout, ResultDoc, StatError, Statistics
from kvprobe.api.verdict import Verdict
from kvprobe.infra.errors import guarded
from kvprobe.result.migrations import Rebuild
from kvprobe.stats.verdict import build_verdict
from kvprobe.weights.doctor import kv_layout_from_metadata


def add_statistics(
    result: ResultDoc, measured: Mapping[str, Any] | None = None, margins: Mapping[str, float] | None = None
) -> ResultDoc:
    """Summary rows (each probe's), the onsets and the verdict, from the document's own items
    and sections; `measured` is the run's in-memory data per probe (RunOutcome.measured), read
    in place of the file's rounded copies; `margins` are the equivalence margins (--margin).
    What failed while measuring stays on record."""
    labels = {p.summary_label for p in all_probes()} | {"verdict"}
    errors = [{"what": e.what, "error": e.error} for e in result.statistics.errors if e.what not in labels]
    result.statistics = Statistics(complete=False, errors=[StatError(**e) for e in errors])
    seed = result.run.seed
    summary: list[SummaryRow] = []
    for probe in all_probes():

        def rows(p: Probe = probe) -> list[SummaryRow]:
            return p.summary(result, seed, (measured or {}).get(p.name))

        summary += guarded(errors, probe.summary_label, rows) or []
    result.summary = summary
    result.verdict = guarded(errors, "verdict", lambda: typed_verdict(result, seed, margins))
    result.statistics = Statistics(complete=not errors, errors=[StatError(**e) for e in errors])
    return result


def typed_verdict(result: ResultDoc, seed: int, margins: Mapping[str, float] | None = None) -> Verdict | None:
    """The verdict build_verdict makes (a plain document while it is built), typed as the file
    holds it."""
    found = build_verdict(result, seed, margins)
    return None if found is None else Verdict.model_validate(found)


def rebuild(doc: ResultDoc, pending: Rebuild) -> None:
    """An older file brought up to date by what only the statistics compute: the KV layout from
    the recorded metadata, the verdict rebuilt (schema 2: with equivalence, the recommendation and
    the rules of thumb; 3: with level and growth), or, for a file from before statistics were
    recorded, the verdict it lacks from its own rows."""
    if pending.kv_layout:
        layout = kv_layout_from_metadata(str(doc.model.architecture), doc.model.metadata)
        doc.model.kv_layout = None if layout is None else KvLayout.model_validate(layout)
    errors: list[dict[str, str]] = []
    if pending.verdict:
        # With the margins the file was judged by (a run's --margin), and the old verdict kept if
        # the new one cannot be made (the error is recorded).
        used = dict(doc.verdict.margins) if doc.verdict is not None and doc.verdict.margins else None
        verdict = guarded(errors, "verdict", lambda: typed_verdict(doc, doc.run.seed, used))
        if verdict is not None:
            verdict.migrated_from_schema = pending.read_version
            doc.verdict = verdict
    if pending.missing_verdict:
        doc.verdict = guarded(errors, "verdict", lambda: typed_verdict(doc, doc.run.seed))
        doc.statistics = Statistics(complete=not errors, errors=[StatError(**e) for e in errors])
    elif pending.record_errors:
        doc.statistics.errors += [StatError(**e) for e in errors]
