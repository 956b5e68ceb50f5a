"""A sweep folder read back for its report: the manifest, every finished cell's result file
(through the validated loader), and for every other cell why it has none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvprobe.errors import UserError
from kvprobe.result.store import Result
from kvprobe.sweep.cell_run import result_state
from kvprobe.sweep.manifest import Manifest, load_manifest
from kvprobe.sweep.merge import Problem, SweepRow, merge


@dataclass(frozen=True)
class SweepReport:
    manifest: Manifest
    results: dict[str, dict[str, Any]]  # cell -> result document
    rows: list[SweepRow]
    problems: list[Problem]


def collect(folder: Path, rebuild: Callable[[dict[str, Any]], None] | None = None) -> SweepReport:
    """The folder's manifest and results; `rebuild` is applied to each result document first
    (`kvprobe report --margin`: the verdict again with other margins)."""
    manifest = load_manifest(folder)
    results: dict[str, dict[str, Any]] = {}
    problems: dict[str, Problem] = {}
    for cell, record in manifest.cells.items():
        out = folder / record.out
        state = result_state(out)
        if state == "done":
            try:
                results[cell] = Result.load(out).doc
                if rebuild is not None:
                    rebuild(results[cell])
            except UserError as exc:
                problems[cell] = Problem(cell, "unreadable", str(exc))
        elif state == "partial":
            problems[cell] = Problem(
                cell, "cut short", f"a journal waits: continue with `kvprobe sweep --resume {folder}`"
            )
        elif record.status == "failed":
            problems[cell] = Problem(cell, "failed", record.error or "no message (see its log)")
        elif record.status == "interrupted":
            problems[cell] = Problem(cell, "interrupted", f"continue with `kvprobe sweep --resume {folder}`")
    rows, missing = merge(manifest.cells, results, problems)
    return SweepReport(manifest, results, rows, missing)
