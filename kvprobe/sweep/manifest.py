"""The sweep folder's manifest, `sweep.json`: what was asked (the spec), and per cell its
`kvprobe run` words, result file, status, error, host, attempts and time. Only the process
that drives the sweep writes it, whole, by rename; the result files stay the truth about
what finished (`--resume` checks each cell's files again)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprobe import __version__
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_bytes, write_atomically
from kvprobe.result.blocks import MAX_DEPTH, brief, too_deep, where
from kvprobe.result.document import utc_now
from kvprobe.result.store import parse_json
from kvprobe.sweep.cells import expand
from kvprobe.sweep.schema import KIND, STATUSES, VERSION, manifest_problem
from kvprobe.sweep.spec import SweepSpec

__all__ = ["KIND", "MANIFEST", "VERSION", "CellRecord", "Manifest", "is_sweep_folder", "load_manifest"]

MANIFEST = "sweep.json"
MAX_MANIFEST_BYTES = 64 << 20
PENDING, RUNNING = "pending", "running"


@dataclass
class CellRecord:
    argv: list[str]  # `kvprobe run` words; their --out relative to the sweep folder
    out: str  # relative to the sweep folder
    axes: dict[str, Any]
    status: str = PENDING
    error: str | None = None
    seconds: float | None = None  # of the last attempt
    host: str | None = None
    attempts: int = 0
    estimate_s: float | None = None
    memory_bytes: int | None = None
    summary: str = ""


@dataclass
class Manifest:
    folder: Path
    spec: SweepSpec
    cells: dict[str, CellRecord]
    created: str = field(default_factory=utc_now)
    command: str = ""
    executor: str = "local"

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema_version": VERSION,
            "kvprobe_version": __version__,
            "created": self.created,
            "updated": utc_now(),
            "command": self.command,
            "executor": self.executor,
            "spec": self.spec.to_dict(),
            "cells": {k: vars(v) for k, v in self.cells.items()},
        }

    def save(self) -> None:
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        write_atomically(self.path, text.encode("utf-8"), "the sweep manifest")

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for record in self.cells.values():
            out[record.status] = out.get(record.status, 0) + 1
        return out


def is_sweep_folder(path: Path) -> bool:
    """A folder with a manifest, of whatever kind: load_manifest says what is wrong with it."""
    return path.is_dir() and os.path.lexists(path / MANIFEST)


FIX = "restore the sweep.json kvprobe wrote (or fix that value), or start a new sweep with another --out"


def load_manifest(folder: Path) -> Manifest:
    """A sweep folder's manifest, read with the bounded reader, checked against its schema
    (kvprobe.sweep.schema) and against its own spec (`_check_cells`); a one-line UserError
    naming the JSON path of what is wrong otherwise. Every reader after this trusts it."""
    path = folder / MANIFEST
    fix = "point at a folder `kvprobe sweep` wrote, or start a new sweep with another --out"
    raw = read_input_bytes(path, "sweep manifest", fix, max_bytes=MAX_MANIFEST_BYTES)
    try:
        data = parse_json(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"sweep manifest {path} is not valid JSON ({str(exc)[:100]}): {fix}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"{path} is not a kvprobe sweep manifest: {fix}")
    if data.get("schema_version") != VERSION:
        raise UserError(
            f"sweep manifest {path} has schema version {brief(data.get('schema_version'))}; this kvprobe "
            f"reads {VERSION}: use the kvprobe that wrote it"
        )
    problem = f"it nests deeper than {MAX_DEPTH} levels" if too_deep(data) else manifest_problem(data)
    if problem is not None:
        raise UserError(f"sweep manifest {path}: {problem}: {FIX}")
    spec = SweepSpec.from_dict(data["spec"])
    cells = {cid: CellRecord(**rec) for cid, rec in data["cells"].items()}
    _check_cells(path, spec, cells)
    return Manifest(folder, spec, cells, data["created"], data.get("command", ""), data["executor"])


def _check_cells(path: Path, spec: SweepSpec, records: dict[str, CellRecord]) -> None:
    """The cells are the spec's, in its order, each with the `kvprobe run` words, result file
    (`cells/ID.json`, relative to the folder) and axes the spec gives it: no cell can name
    another's file or a file outside the folder. Schema 1 manifests stored an absolute --out
    in the words: it is read as the cell's own relative one."""
    try:
        cells = expand(spec)
    except UserError as exc:
        raise UserError(f"sweep manifest {path}: spec is not a sweep kvprobe runs ({exc}): {FIX}") from None
    if [c.id for c in cells] != list(records):
        raise UserError(f"sweep manifest {path}: its cells are not the cells of its spec: {FIX}")
    for cell in cells:
        record, words = records[cell.id], cell.argv(spec)
        at = where(["cells", cell.id])
        if record.out != cell.out_name:
            raise UserError(
                f"sweep manifest {path}: {at}.out is {brief(record.out)}, not the cell's own file "
                f"{cell.out_name}: {FIX}"
            )
        if record.argv[:-1] != words[:-1]:  # the last word, --out's value, is the cell's own (below)
            i = next((i for i, (a, b) in enumerate(zip(record.argv, words, strict=False)) if a != b), None)
            i = min(len(record.argv), len(words)) if i is None else i  # one list longer than the other
            raise UserError(
                f"sweep manifest {path}: {at}.argv[{i}] is {brief(record.argv[i : i + 1])}, not "
                f"{brief(words[i : i + 1])} (a cell's `kvprobe run` words follow from spec): {FIX}"
            )
        if record.axes != cell.axes():
            raise UserError(
                f"sweep manifest {path}: {at}.axes are not the cell's ({brief(cell.axes())}); {FIX}"
            )
        record.argv = words  # the relative --out, whatever a schema-1 manifest stored
