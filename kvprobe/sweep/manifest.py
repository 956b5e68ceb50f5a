"""The sweep folder's manifest, `sweep.json`: what was asked (the spec), and per cell its
`kvprobe run` words, result file, status, error, host, attempts and time. Only the process
that drives the sweep writes it, whole, by rename; the result files stay the truth about
what finished (`--resume` checks each cell's files again)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprobe import __version__
from kvprobe.errors import UserError
from kvprobe.paths import read_input_bytes, write_atomically
from kvprobe.result.document import utc_now
from kvprobe.sweep.spec import SweepSpec

MANIFEST = "sweep.json"
KIND = "kvprobe-sweep"
VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20
PENDING, RUNNING = "pending", "running"
STATUSES = (PENDING, RUNNING, "done", "failed", "interrupted")


@dataclass
class CellRecord:
    argv: list[str]
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
    return path.is_dir() and (path / MANIFEST).is_file()


def load_manifest(folder: Path) -> Manifest:
    """A sweep folder's manifest, checked; a one-line UserError naming the folder otherwise."""
    path = folder / MANIFEST
    fix = "point at a folder `kvprobe sweep` wrote, or start a new sweep with another --out"
    raw = read_input_bytes(path, "sweep manifest", fix, max_bytes=MAX_MANIFEST_BYTES)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"sweep manifest {path} is not valid JSON ({str(exc)[:100]}): {fix}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"{path} is not a kvprobe sweep manifest: {fix}")
    if data.get("schema_version") != VERSION:
        raise UserError(
            f"sweep manifest {path} has schema version {data.get('schema_version')!r}; this kvprobe reads "
            f"{VERSION}: use the kvprobe that wrote it"
        )
    try:
        spec = SweepSpec.from_dict(data["spec"])
        cells = {}
        for cid, rec in data["cells"].items():
            record = CellRecord(**rec)
            if record.status not in STATUSES or not isinstance(record.argv, list):
                raise ValueError(f"cell {cid}: status {record.status!r}")
            cells[str(cid)] = record
        return Manifest(
            folder, spec, cells, str(data["created"]), str(data.get("command", "")), str(data["executor"])
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"sweep manifest {path} is damaged ({type(exc).__name__}: {str(exc)[:100]}): {fix}"
        ) from None
