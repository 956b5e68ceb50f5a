"""A sweep folder read back for its report: the manifest, every finished cell's result file
(through the validated loader), and for every other cell why it has none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.sweep.manifest import Manifest, load_manifest
from kvprobe.sweep.merge import Problem, SweepRow, merge
from kvprobe.sweep.results import DONE, PARTIAL, UNREADABLE, read_cells


@dataclass(frozen=True)
class SweepReport:
    manifest: Manifest
    results: dict[str, ResultDoc]  # cell -> result document
    rows: list[SweepRow]
    problems: list[Problem]


def collect(folder: Path, rebuild: Callable[[ResultDoc], None] | None = None) -> SweepReport:
    """The folder's manifest and results; `rebuild` is applied to each result document first
    (`kvprobe report --margin`: the verdict again with other margins). A result standing in a
    cell's place that is not that cell's is refused in one line (kvprobe.sweep.results)."""
    manifest = load_manifest(folder)
    resume = f"kvprobe sweep --resume {folder}"
    found = read_cells(folder, manifest.cells, shown=True, resume=resume)
    results: dict[str, ResultDoc] = {}
    problems: dict[str, Problem] = {}
    for cell, record in manifest.cells.items():
        got = found[cell]
        if got.state == DONE and got.doc is not None:
            try:
                if rebuild is not None:
                    rebuild(got.doc)
                results[cell] = got.doc
            except UserError as exc:
                problems[cell] = Problem(cell, "unreadable", str(exc))
        elif got.state == UNREADABLE:
            problems[cell] = Problem(cell, "unreadable", got.why)
        elif got.state == PARTIAL:
            problems[cell] = Problem(cell, "cut short", f"a journal waits: continue with `{resume}`")
        elif record.status == "failed":
            problems[cell] = Problem(cell, "failed", record.error or "no message (see its log)")
        elif record.status == "interrupted":
            problems[cell] = Problem(cell, "interrupted", f"continue with `{resume}`")
    rows, missing = merge(manifest.cells, results, problems)
    return SweepReport(manifest, results, rows, missing)
