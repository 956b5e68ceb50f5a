"""`kvprobe sweep`, once its options are read: plan the cells (each checked as `kvprobe run`
checks its options), print them for --dry-run, or take the sweep folder's lock, write the
manifest, and run the cells that are not finished with the chosen executor."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvprobe.infra.display import plain, visible
from kvprobe.infra.errors import Interrupted, UserError
from kvprobe.infra.paths import OutputLock, check_folder_writable
from kvprobe.infra.signals import sigterm_as_interrupt
from kvprobe.result.document import utc_now
from kvprobe.run.pace import format_duration
from kvprobe.sweep.cell_run import FAILED
from kvprobe.sweep.cells import Cell, expand
from kvprobe.sweep.jobs import CellJob
from kvprobe.sweep.local import run_local
from kvprobe.sweep.manifest import MANIFEST, CellRecord, Manifest, is_sweep_folder, load_manifest
from kvprobe.sweep.preflight import Calibration, CellCheck, Headers, check_cells, memory_bytes
from kvprobe.sweep.progress import SweepProgress
from kvprobe.sweep.ray_executor import run_ray
from kvprobe.sweep.results import read_cells, result_state
from kvprobe.sweep.spec import SweepSpec
from kvprobe.views.fit import Units, fits_whole, print_fitted

GiB = 2**30


@dataclass(frozen=True)
class SweepOptions:
    """How to run the sweep (not what it measures)."""

    executor: str = "local"  # local | ray
    address: str | None = None  # Ray: auto, HOST:PORT, ray://HOST:10001; None: a local Ray instance
    retries: int = 3  # Ray: attempts after a lost worker
    gpus_per_cell: float | None = None  # Ray: None decides from the cluster and --gpu-layers
    dry_run: bool = False


def default_folder(spec: SweepSpec, created: str) -> Path:
    stamp = created.replace("-", "").replace(":", "").replace("Z", "")
    return Path("results") / "sweeps" / f"{stamp}-{spec.name.replace(' ', '_').replace('/', '-')}"


def check_new_folder(folder: Path) -> None:
    """A new sweep goes into a folder that does not exist yet, or an empty one."""
    if is_sweep_folder(folder):
        raise UserError(
            f"{folder} holds a sweep already: continue it with `kvprobe sweep --resume {folder}`, "
            "or choose another --out"
        )
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: give a folder for the sweep")
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(f"--out {folder} is not empty: give a new or empty folder for the sweep")
    check_folder_writable(folder, "--out", folder)


def _records(checks: Sequence[CellCheck]) -> dict[str, CellRecord]:
    """The new manifest's cells: their words and result file relative to the sweep folder."""
    return {c.cell.id: CellRecord(argv=c.argv, out=c.cell.out_name, axes=c.cell.axes()) for c in checks}


def _size(n: int | None) -> str:
    return f"{n / GiB:.2f} GiB" if n is not None else "?"


def _memory(checks: Sequence[CellCheck], headers: Headers) -> dict[str, int | str]:
    """Each cell's memory estimate, or the reason it has none (a model file that is not GGUF)."""
    out: dict[str, int | str] = {}
    for c in checks:
        try:
            out[c.cell.id] = memory_bytes(c, headers)
        except UserError as exc:
            out[c.cell.id] = str(exc)
    return out


STATES = {"partial": "resumes", "done": "done", "absent": "to run", "new": "to run"}
NAMED = ("model", "caches", "ctx", "scenario", "format")  # what a cell's name says (sweep.cells.cell_id)
# Said once under the table where every cell's is the same, not in a column.
SAID_ONCE = ("model", "server", "caches", "ctx", "scenario", "format", "state")


def _dry_table(title: str, rows: list[dict[str, str | Units]], columns: list[str]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in ("ctx", "memory", "time") else "left")
    for row in rows:
        table.add_row(*(plain(v) if isinstance(v, str) else v for v in (row[k] for k in columns)))
    return table


def print_dry_run(
    checks: Sequence[CellCheck],
    memory: dict[str, int | str],
    calibration: Calibration,
    folder: Path,
    console: Console,
) -> None:
    """A row per cell; an axis (or state) that is the same in every cell said once under the
    table, not in a column; fitted to the terminal (views.fit: a size or a time never wraps)."""
    servers = any(c.cell.server.spawned for c in checks)
    total, measured_any = 0.0, False
    rows: list[dict[str, str | Units]] = []
    problems = []
    for c in checks:
        seconds, measured = calibration.seconds(c)
        total += seconds
        measured_any |= measured
        mem = memory[c.cell.id]
        if isinstance(mem, str):
            problems.append(f"{c.cell.id}: {mem}")
        state = result_state(c.cell.out(folder)) if folder.exists() else "new"
        server = c.cell.server.name + (f" ({c.server_version})" if c.server_version else "")
        rows.append({  # the cells' own text: escaped where it is printed
            "cell": c.cell.id,
            "model": c.cell.model.label,
            **({"server": server} if servers else {}),
            "caches": "+".join(c.cell.caches) + (" split-kv" if c.cell.split_kv else ""),
            "ctx": f"{c.cell.ctx:,}",
            "scenario": c.cell.scenario_name,
            "format": c.cell.format,
            "memory": Units([_size(mem)]) if not isinstance(mem, str) else "cannot tell",
            "time": Units([format_duration(seconds)]),
            "state": Units([STATES[state]]),
        })  # fmt: skip
    same = [k for k in SAID_ONCE if rows and k in rows[0] and len({str(r[k]) for r in rows}) == 1]
    title = f"kvprobe sweep --dry-run: {len(checks)} cells into {plain(folder)}"
    columns = [k for k in (rows[0] if rows else ()) if k not in same]
    table = _dry_table(title, rows, columns)
    if not fits_whole(table, console.width):  # the cell's name says its axes: not again where room is short
        table = _dry_table(title, rows, [k for k in columns if k not in NAMED])
    print_fitted(table, console)
    if same:  # markup off: the cells' text as it is, controls written out
        state = f" {rows[0]['state']}" if "state" in same else ""
        said = ", ".join(f"{k} {visible(rows[0][k])}" for k in same if k != "state")
        console.print(f"every cell{state}{': ' if said else ''}{said}", markup=False, highlight=False)
    how = (
        "from the finished cells' speed"
        if measured_any
        else "rough, from the models' sizes and this host's cores"
    )
    console.print(
        f"about {format_duration(total)} one cell after another ({how})", markup=False, highlight=False
    )
    for line in problems:
        console.print(f"cannot run: {line}", markup=False, highlight=False, soft_wrap=True)


def _calibrated(checks: Sequence[CellCheck], manifest: Manifest | None) -> Calibration:
    """Calibration from cells an earlier part of this sweep finished (their measured seconds)."""
    calibration = Calibration()
    if manifest is not None:
        for c in checks:
            rec = manifest.cells.get(c.cell.id)
            if rec is not None and rec.status == "done" and rec.seconds:
                calibration.observe(c, rec.seconds)
    return calibration


def run_sweep(
    spec: SweepSpec,
    folder: Path,
    options: SweepOptions,
    console: Console,
    *,
    resume: Manifest | None,
    command: str,
) -> int:
    """Plan, then --dry-run's table, or the sweep itself."""
    cells: list[Cell] = expand(spec)
    if resume is not None and [c.id for c in cells] != list(resume.cells):
        raise UserError(f"sweep manifest {resume.path} does not match its own spec: start a new sweep")
    checks = check_cells(cells, spec, folder)
    if resume is not None:  # the words the sweep started with, not today's spelling of them
        checks = [CellCheck(**{**vars(c), "argv": resume.cells[c.cell.id].argv}) for c in checks]
    calibration = _calibrated(checks, resume)
    needs_memory = options.dry_run or options.executor == "ray"
    memory = _memory(checks, Headers()) if needs_memory else {}
    if options.dry_run:
        print_dry_run(checks, memory, calibration, folder, console)
        return 0
    if resume is None:
        check_new_folder(folder)
    owner = {"pid": os.getpid(), "started": utc_now(), "command": command}
    folder.mkdir(parents=True, exist_ok=True)
    with OutputLock(folder / MANIFEST, owner):
        manifest = resume or Manifest(folder, spec, _records(checks), command=command)
        manifest.executor = options.executor
        return _run_locked(
            manifest, checks=checks, memory=memory, calibration=calibration, options=options, console=console
        )


def _run_locked(
    manifest: Manifest,
    *,
    checks: Sequence[CellCheck],
    memory: dict[str, int | str],
    calibration: Calibration,
    options: SweepOptions,
    console: Console,
) -> int:
    folder = manifest.folder
    # Every result already there read back once: a file in a cell's place that is not that
    # cell's is refused now, before anything is written (kvprobe.sweep.results).
    found = read_cells(folder, manifest.cells, shown=False, resume=f"kvprobe sweep --resume {folder}")
    todo: list[CellCheck] = []
    for c in checks:
        record = manifest.cells[c.cell.id]
        state = found[c.cell.id].state
        if isinstance(mem := memory.get(c.cell.id), int):
            record.memory_bytes = mem
        record.estimate_s = round(calibration.seconds(c)[0], 1)
        if state == "done":
            record.status = "done"
        else:
            record.status = "pending" if record.status in ("running", "done") else record.status
            todo.append(c)
    manifest.save()
    done = len(checks) - len(todo)
    progress = SweepProgress(console, manifest, todo, calibration)
    progress.say(
        f"sweep {folder}: {len(checks)} cell{'s' if len(checks) != 1 else ''} ({_shape(manifest.spec)}), "
        f"{done} done before, "
        f"{len(todo)} to run with the {options.executor} executor; about "
        f"{format_duration(progress.eta())} one after another"
    )
    jobs = [
        CellJob(
            c.cell.id,
            c.argv,
            c.cell.out(folder),
            found[c.cell.id].state == "partial",
            memory_bytes=mem if isinstance(mem := memory.get(c.cell.id), int) else None,
            threads=manifest.spec.run.threads,
            on_gpu=manifest.spec.run.gpu_layers != 0,
        )
        for c in todo
    ]
    try:
        with sigterm_as_interrupt():  # a scheduler's stop ends the sweep as Ctrl-C does
            if options.executor == "ray":
                run_ray(
                    jobs,
                    progress,
                    folder,
                    address=options.address,
                    retries=options.retries,
                    gpus_per_cell=options.gpus_per_cell,
                )
            else:
                run_local(jobs, progress)
    except KeyboardInterrupt:
        manifest.save()
        counts = manifest.counts()
        raise Interrupted(
            f"interrupted; {counts['done']} of {len(checks)} cells done, the rest in {folder}: continue with "
            f"`kvprobe sweep --resume {folder}`"
        ) from None
    return _final(manifest, console)


def _shape(spec: SweepSpec) -> str:
    parts = [
        (len(spec.models), "model"),
        (len(spec.servers), "server"),
        (len(spec.caches), "cache set"),
        (len(spec.split_kv), "split"),
        (len(spec.contexts), "context"),
        (len(spec.scenarios), "scenario"),
        (len(spec.formats), "format"),
    ]
    shown = [
        f"{n} {word}{'s' if n != 1 else ''}" for n, word in parts if n > 1 or word in ("model", "context")
    ]
    cut = f", {len(spec.exclude)} exclusions" if spec.exclude else ""
    return " × ".join(shown) + cut


def _final(manifest: Manifest, console: Console) -> int:
    counts = manifest.counts()
    failed = [cid for cid, r in manifest.cells.items() if r.status == FAILED]
    console.print(
        f"sweep: {counts['done']} of {len(manifest.cells)} cells done"
        + (
            f", {len(failed)} failed ({', '.join(failed[:5])}{', …' if len(failed) > 5 else ''})"
            if failed
            else ""
        )
        + f"; the merged report: kvprobe report {manifest.folder}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"sweep: {manifest.folder}", markup=False, highlight=False)
    return 1 if failed else 0


def load_for_resume(folder: Path) -> Manifest:
    if not folder.is_dir():
        raise UserError(f"--resume {folder}: no such folder; give the folder `kvprobe sweep` wrote")
    return load_manifest(folder)


def command_line() -> str:
    return " ".join(["kvprobe", *sys.argv[1:]])
