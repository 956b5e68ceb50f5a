"""A sweep's cells' result files read back, for the report and for --resume: every read through
the bounded reader (a FIFO, a /proc file or a huge file in a sweep folder must not hang either),
every file in its cell's own place (the `cells` folder a real folder of the sweep, no result a
link, no file two cells share), and every complete result checked to be its cell's (the model,
caches, context, scenario, prompt format and llama-server the cell's words asked for; one model
path, one file; one llama-server path, one build). A result in the wrong place is one
UserError naming it and the fix."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_text
from kvprobe.result.journal import journal_path
from kvprobe.result.store import MAX_RESULT_BYTES, Result
from kvprobe.sweep.identity import asked, mismatch, model_sha256, server_binary

DONE, PARTIAL, ABSENT, UNREADABLE = "done", "partial", "absent", "unreadable"


def result_state(out: Path) -> str:
    """'partial' where a journal waits to be resumed, 'done' where a complete result stands
    alone, else 'absent'. Read with the bounded reader: anything but a regular file of a
    result's size is not a result."""
    if journal_path(out).exists():
        return PARTIAL
    try:
        text = read_input_text(out, "result file", "", max_bytes=MAX_RESULT_BYTES)
        doc = json.loads(text)
    except (UserError, ValueError, RecursionError):
        return ABSENT
    return DONE if isinstance(doc, dict) and doc.get("complete") is True else ABSENT


def place_problem(out: Path) -> str | None:
    """Why `out` is not a cell's own place in its sweep folder (its `cells` folder a link or not
    a folder, the file itself a link or not a regular file), or None."""
    for path in (out.parent, out):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None  # nothing there yet: the cell's run creates it
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror})"
        if stat.S_ISLNK(mode):
            return f"{path} is a link (to {os.readlink(path)}), not the sweep's own"
        wanted = stat.S_ISDIR if path == out.parent else stat.S_ISREG
        if not wanted(mode):
            return f"{path} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}"
    return None


_KINDS = {
    stat.S_IFDIR: "a folder, not a file",
    stat.S_IFREG: "a file, not a folder",
    stat.S_IFIFO: "a named pipe (FIFO), not a file",
    stat.S_IFCHR: "a device, not a file",
    stat.S_IFBLK: "a device, not a file",
    stat.S_IFSOCK: "a socket, not a file",
}


def own_result(out: Path, argv: list[str]) -> str | None:
    """Why the file at `out` is not the result (complete or partial) of the cell these words
    ask for, or None when it is: only such a file may be replaced (`kvprobe run --force`)."""
    problem = place_problem(out)
    if problem is not None:
        return problem
    try:
        doc = Result.load(out, shown=False).doc
    except UserError as exc:
        return str(exc)
    why = mismatch(asked(argv), doc)
    return None if why is None else f"{out} is another run's result: {why}"


@dataclass(frozen=True)
class Found:
    """A cell's result as read back: its state, the validated document where done, or why
    the file in its place is not a result (UNREADABLE)."""

    state: str
    doc: ResultDoc | None = None
    why: str = ""


def _read(out: Path, shown: bool) -> Found:
    state = result_state(out)
    if state == PARTIAL or (state == ABSENT and not os.path.lexists(out)):
        return Found(state)
    try:
        doc = Result.load(out, shown=shown).doc  # the loader names what is wrong with it
    except UserError as exc:
        return Found(UNREADABLE, why=str(exc))
    return Found(state, doc if state == DONE else None)  # ABSENT: a partial result, no journal


def read_cells(folder: Path, records: Mapping[str, Any], *, shown: bool, resume: str) -> dict[str, Found]:
    """Each cell's result (records: the manifest's cells, with `out` and `argv`); a UserError
    when a result stands in a cell's place that is not that cell's. `shown`: validated for the
    report's tables too; `resume`: the command that continues the sweep, for the fix."""
    fix = f"put each cell's own result back, or move the file away and run `{resume}`"
    found: dict[str, Found] = {}
    files: dict[tuple[int, int], str] = {}
    models: dict[str, tuple[str, str]] = {}  # model path -> (sha256, the first cell that measured it)
    builds: dict[str, tuple[str, str]] = {}  # llama-server path -> (its --version, the first cell)
    for cell, record in records.items():
        out = folder / record.out
        if (problem := place_problem(out)) is not None:
            raise UserError(f"sweep {folder}: cell {cell}'s result: {problem}: {fix}")
        found[cell] = _read(out, shown)
        if found[cell].doc is None:
            continue
        st = out.stat()
        if (other := files.setdefault((st.st_dev, st.st_ino), cell)) != cell:
            raise UserError(f"sweep {folder}: cells {other} and {cell} share one result file ({out}): {fix}")
        if (why := mismatch(asked(record.argv), found[cell].doc or {})) is not None:
            raise UserError(f"sweep {folder}: {out} is not cell {cell}'s result ({why}): {fix}")
        for path, sha in model_sha256(found[cell].doc or {}):
            seen, first = models.setdefault(path, (sha, cell))
            if seen != sha:
                raise UserError(
                    f"sweep {folder}: model {path} was not the same file in cells {first} and {cell} (sha256 "
                    f"{seen[:12]}… and {sha[:12]}…): it changed during the sweep; move away the results "
                    f"measured with the old file and run `{resume}`"
                )
        _same_build(folder, cell, found[cell].doc or {}, builds, resume)
    return found


def _same_build(
    folder: Path,
    cell: str,
    doc: ResultDoc | Mapping[str, Any],
    builds: dict[str, tuple[str, str]],
    resume: str,
) -> None:
    """A llama-server binary is one build throughout a sweep: one rebuilt at its path between
    cells would set two builds' numbers side by side under one name."""
    binary = server_binary(doc)
    if binary is None:
        return
    version = str((doc.get("runtime") or {}).get("server_version"))
    seen, first = builds.setdefault(binary, (version, cell))
    if seen != version:
        raise UserError(
            f"sweep {folder}: llama-server {binary} was not the same build in cells {first} and {cell} "
            f"({seen} and {version}): it was rebuilt during the sweep; move away the results measured "
            f"with the old build and run `{resume}`"
        )
