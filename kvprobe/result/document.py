"""The result document as measured (build_result): items, the probes' sections and provenance,
typed (kvprobe.api.result). The statistics follow once it is on disk (kvprobe.stats.statistics).
The file is the only interface between running and reporting; its schema is documented field by
field in docs/result-schema.md."""

from __future__ import annotations

from datetime import UTC, datetime

from kvprobe import __version__
from kvprobe.api import all_probes
from kvprobe.api.record import JsonObject
from kvprobe.api.result import SCHEMA_VERSION, ResultDoc
from kvprobe.plan.scenario import Scenario
from kvprobe.result.records import RunOutcome


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_result(
    *,
    created: str,
    command: str,
    model: JsonObject,
    models: dict[str, JsonObject] | None = None,
    runtime: JsonObject,
    host: JsonObject,
    outcome: RunOutcome,
    baseline: str | None,
    scenario: Scenario,
    run: JsonObject,
    warnings: list[str],
) -> ResultDoc:
    """The result document as measured: items, the probes' sections and provenance, typed (the
    provenance the run gathered is checked against the models here). `summary`, the onsets and
    `verdict` are empty until the statistics fill them (kvprobe.stats.statistics), so the
    measurements can be written before any statistic can fail."""
    measured: JsonObject = {
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
    return ResultDoc.model_validate(measured)
