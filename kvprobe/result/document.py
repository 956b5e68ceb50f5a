"""The result document: what a run measured (build_result), then its statistics
(add_statistics). The file is the only interface between running and reporting; its schema is
documented field by field in docs/result-schema.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kvprobe import __version__
from kvprobe.api import Probe, all_probes
from kvprobe.infra.errors import guarded
from kvprobe.plan.scenario import Scenario
from kvprobe.result.migrations import SCHEMA_VERSION
from kvprobe.result.records import RunOutcome
from kvprobe.result.store import ResultDoc


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_result(
    *,
    created: str,
    command: str,
    model: dict[str, Any],
    models: dict[str, dict[str, Any]] | None = None,
    runtime: dict[str, Any],
    host: dict[str, Any],
    outcome: RunOutcome,
    baseline: str | None,
    scenario: Scenario,
    run: dict[str, Any],
    warnings: list[str],
) -> ResultDoc:
    """The result document as measured: items, the probes' sections and provenance. `summary`,
    the onsets and `verdict` are empty until `add_statistics` fills them, so the measurements
    can be written before any statistic can fail."""
    result: ResultDoc = {
        "schema_version": SCHEMA_VERSION,
        "kvprobe_version": __version__,
        "created": created,
        "command": command,
        "model": model,
        "runtime": runtime,
        "host": host,
        "models": models,
        "configs": [
            {**a, "model_sha256": (models[a["model"]] if models else model)["sha256"]}
            for a in outcome.applied
        ],
        "baseline": baseline,
        "scenario": {"name": scenario.name, "sha256": scenario.sha256, "spec": scenario.to_dict()},
        "run": run,
        "prompt": outcome.prompt,  # raw text or chat form, and the template's framing
        "items": outcome.items,
        "text_items": outcome.text_items,
        "summary": [],
        **{p.name: outcome.sections.get(p.name) for p in all_probes() if p.has_section},
        "timing": outcome.timing,
        # A run ended early (Ctrl-C, a kill, --time-budget) holds the units it finished.
        "complete": outcome.stopped is None,
        "stopped": outcome.stopped,
        "missing": outcome.missing,
        "warnings": warnings,
        "verdict": None,
        "statistics": {"complete": False, "errors": list(outcome.errors)},
    }
    return result


def add_statistics(
    result: ResultDoc, measured: dict[str, Any] | None = None, margins: dict[str, float] | None = None
) -> ResultDoc:
    """Summary rows (each probe's), the onsets and the verdict, from the document's own items
    and sections; `measured` is the run's in-memory data per probe (RunOutcome.measured), read
    in place of the file's rounded copies; `margins` are the equivalence margins (--margin).
    Each statistic is guarded: what fails is listed in `statistics.errors` and the rest is
    still computed."""
    labels = {p.summary_label for p in all_probes()} | {"verdict"}
    earlier = [e for e in (result.get("statistics") or {}).get("errors", []) if e.get("what") not in labels]
    errors: list[dict[str, str]] = list(earlier)  # what failed while measuring stays on record
    result["statistics"] = {"complete": False, "errors": errors}
    seed = result["run"]["seed"]
    summary: list[dict[str, Any]] = []
    for probe in all_probes():

        def rows(p: Probe = probe) -> list[dict[str, Any]]:
            return p.summary(result, seed, (measured or {}).get(p.name))

        summary += guarded(errors, probe.summary_label, rows) or []
    result["summary"] = summary
    from kvprobe.stats.verdict import build_verdict  # the verdict reads the assembled document

    result["verdict"] = guarded(errors, "verdict", lambda: build_verdict(result, seed, margins))
    result["statistics"]["complete"] = not errors
    return result
