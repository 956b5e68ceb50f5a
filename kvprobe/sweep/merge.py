"""A sweep's cells merged: per model (and llama-server build) × cache configuration × context
the decision, effective context, mean KL, KV memory and prefill speed (each cell's own
frontier rows, read from its result file), and the cells that failed or never ran, with why.
Pure: the manifest's records and the loaded result documents in, rows out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvprobe.api.result import ResultDoc
from kvprobe.stats.decision import frontier
from kvprobe.sweep.identity import server_binary
from kvprobe.sweep.spec import IN_PROCESS

# Decisions from best to worst, as the heatmap colours them (the reference is its own colour).
DECISIONS = ("reference", "equivalent", "undecided", "worse")


@dataclass(frozen=True)
class SweepRow:
    cell: str
    model: str  # the model's label, with its server, scenario and format where the sweep has them
    config: str
    ctx: int
    status: str  # one of DECISIONS
    effective_context: int | None
    kld_mean: float | None
    kv_bytes: int | None
    prefill_tokens_per_s: float | None
    recommended: bool  # the cell's recommendation at its context


@dataclass(frozen=True)
class Problem:
    cell: str
    status: str  # failed | interrupted | cut short | never ran | unreadable
    why: str


def variant(axes: Mapping[str, Any], varied: set[str], build: str = "") -> str:
    """The cell's row name: its model; where any cell starts a llama-server, where it ran and the
    build its result names (two builds of one version stay two rows: their names differ); its
    scenario and prompt format where those vary."""
    parts = [str(axes["model"])]
    if "server" in varied:
        parts.append(str(axes.get("server", IN_PROCESS)) + (f" ({build})" if build else ""))
    if "scenario" in varied:
        parts.append(str(axes["scenario"]).rsplit("/", 1)[-1].removesuffix(".toml"))
    if "format" in varied:
        parts.append(str(axes["format"]))
    return " · ".join(parts)


def varied_axes(records: Mapping[str, Any]) -> set[str]:
    out = {"server"} if any("server" in r.axes for r in records.values()) else set()
    for key in ("scenario", "format"):
        if len({str(r.axes[key]) for r in records.values()}) > 1:
            out.add(key)
    return out


def build(doc: ResultDoc) -> str:
    """The llama.cpp a result measured: its llama-server's `--version`, or kvprobe's own."""
    runtime = doc.get("runtime") or {}
    if server_binary(doc) is not None:
        return str(runtime.get("server_version") or "version unknown")
    return f"llama-cpp-python {runtime.get('llama_cpp_python') or '?'}"


def cell_rows(cell: str, model: str, doc: ResultDoc) -> list[SweepRow]:
    """One finished cell's rows: its frontier (the reference and the configurations on the
    reference's weights), with the configuration it recommends marked."""
    verdict = doc.get("verdict") or {}
    if not verdict.get("configs") and not verdict.get("recommendation"):
        return []
    chosen = (verdict.get("recommendation") or {}).get("config")
    ctx = int(doc["run"]["ctx"])
    return [
        SweepRow(
            cell,
            model,
            r["config"],
            ctx,
            r["status"],
            r["effective_context"],
            r["kld_mean"],
            r["kv_bytes"],
            r["prefill_tokens_per_s"],
            r["config"] == chosen,
        )
        for r in frontier(doc, verdict)
    ]


def merge(
    records: Mapping[str, Any], results: Mapping[str, ResultDoc], problems: Mapping[str, Problem]
) -> tuple[list[SweepRow], list[Problem]]:
    """Every cell's rows in the manifest's order; the cells without a result, with why."""
    varied = varied_axes(records)
    rows: list[SweepRow] = []
    missing: list[Problem] = []
    for cell, record in records.items():
        if cell in results:
            doc = results[cell]
            rows += cell_rows(
                cell, variant(record.axes, varied, build(doc) if "server" in varied else ""), doc
            )
        elif cell in problems:
            missing.append(problems[cell])
        else:
            missing.append(Problem(cell, "never ran", "the sweep ended before this cell started"))
    return rows, missing
