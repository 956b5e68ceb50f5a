"""Property tests of three more readers (issue 38; `nox -s fuzz`, KVPROBE_FUZZ_EXAMPLES sets how
many examples): sweep manifests, kvprobe's disk cache, and long text in result files.

- Sweep manifests: valid ones are generated (any axes, statuses, times; the results of a real
  finished sweep where a cell matches), then mutated (a field's type, a value, nesting, a byte, a
  cut). Each is refused in one line with exit code 2 and nothing changed in the folder, or read
  whole: its report, its --resume pre-flight and its progress lines then run without an error.
- The disk cache (kvprobe.infra.memo): a mutated cache file is read as it was written or not at
  all (each entry carries its checksum), and a FIFO, a link to /dev/zero, a huge or a /proc file
  in its place is an empty cache: every command still ends, within seconds.
- Long text: a result whose free-text fields hold very long unbroken strings is reported within
  seconds, on the terminal and on the page."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvprobe.infra.display import SafeConsole
from kvprobe.infra.errors import UserError
from kvprobe.infra.memo import CACHE_DIR_ENV, read_memo
from kvprobe.sweep.cell_run import DONE, CellOutcome
from kvprobe.sweep.cells import expand
from kvprobe.sweep.collect import collect
from kvprobe.sweep.drive import SweepOptions, load_for_resume, run_sweep
from kvprobe.sweep.manifest import CellRecord, Manifest, load_manifest
from kvprobe.sweep.preflight import Calibration, check_cells
from kvprobe.sweep.progress import SweepProgress
from kvprobe.sweep.schema import STATUSES
from kvprobe.sweep.spec import RunOptions, from_command_line
from kvprobe.sweep.view import print_sweep, provenance_rows
from kvprobe.views.terminal import print_run_report
from tests.helpers import (
    HANG_S,
    every_path,
    kvprobe,
    mutated_text,
    result_mutations,
    snapshot,
    write_tiny_model,
)

pytestmark = pytest.mark.fuzz
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
_FOLDERS = itertools.count()


@pytest.fixture(scope="module")
def models(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_model_path, folder / "tiny.gguf")
    write_tiny_model(folder / "tiny2.gguf", seed=1)
    return folder


@pytest.fixture(scope="module")
def finished(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished sweep: its result files stand in for every generated cell they match."""
    folder = tmp_path_factory.mktemp("sweeps") / "done"
    both = f"{models / 'tiny.gguf'},{models / 'tiny2.gguf'}"
    proc = kvprobe("sweep", "--model", both, "--cache", "q8_0,q4_0", "--ctx", "512", "--scenario", "quick",
                   "--threads", "1", "--no-html", "--out", str(folder), timeout=HANG_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return folder


# --- sweep manifests ------------------------------------------------------------------------------


@st.composite
def valid_manifests(draw: st.DrawFn, models: Path, finished: Path, root: Path) -> Path:
    """A sweep folder as `kvprobe sweep` leaves it, of drawn axes and cell records; the finished
    sweep's results in it wherever a cell is one of those."""

    def some(values: list[str]) -> str:
        return ",".join(
            draw(st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True))
        )

    pair = f"{models / 'tiny.gguf'}+{models / 'tiny2.gguf'}"
    one_of_each = draw(st.booleans())  # the finished sweep's shape: most cells have a result
    axes = {
        "models": some([str(models / "tiny.gguf"), str(models / "tiny2.gguf"), pair]),
        "caches": some(["q8_0", "q4_0"] if one_of_each else ["q8_0", "q4_0", "q5_0"]),
        "contexts": some(["512"] if one_of_each else ["512", "1024"]),
        "scenarios": some(["quick"] if one_of_each else ["quick", "default"]),
        "formats": some(["auto", "raw"]),
    }
    run = RunOptions(
        threads=draw(st.sampled_from([None, 1, 2])), html=False, seed=draw(st.sampled_from([0, 7]))
    )
    spec = from_command_line(axes, draw(st.booleans()), run)
    finished_cells = json.loads((finished / "sweep.json").read_text())["cells"]
    folder = root / f"sw{next(_FOLDERS)}"
    (folder / "cells").mkdir(parents=True)
    records = {}
    for cell in expand(spec):
        records[cell.id] = CellRecord(
            cell.argv(spec),
            cell.out_name,
            cell.axes(),
            status=draw(st.sampled_from(STATUSES)),
            error=draw(st.none() | st.text(max_size=20)),
            seconds=draw(st.none() | st.floats(0, 1e6)),
            host=draw(st.none() | st.text(max_size=10)),
            attempts=draw(st.integers(0, 5)),
            estimate_s=draw(st.none() | st.floats(0, 1e6)),
            memory_bytes=draw(st.none() | st.integers(0, 2**40)),
            summary=draw(st.text(max_size=20)),
        )
        done = finished_cells.get(cell.id)
        if done is not None and spec.run.seed == 0 and cell.axes() == {**done["axes"], "format": cell.format}:
            shutil.copy(finished / cell.out_name, folder / cell.out_name)  # the same run: its result
    Manifest(folder, spec, records, command=draw(st.text(max_size=30))).save()
    return folder


def _read_whole(folder: Path) -> None:
    """Everything that reads an accepted manifest: the report, --resume's pre-flight (a dry
    run: the cells through `kvprobe run`'s checks, their memory, their time) and the progress
    lines of a cell that starts and ends (which write the manifest: it must read back)."""
    console = SafeConsole(file=io.StringIO(), width=160)
    report = collect(folder)
    print_sweep(report, console)
    provenance_rows(report)
    manifest = load_for_resume(folder)
    try:
        checks = check_cells(expand(manifest.spec), manifest.spec, folder)
    except UserError:  # a cell `kvprobe run` refuses (drawn axes it would not start): one line
        event("a cell kvprobe run refuses")
        return
    run_sweep(manifest.spec, folder, SweepOptions(dry_run=True), console, resume=manifest, command="x")
    if manifest.cells:
        progress = SweepProgress(console, manifest, checks, Calibration())
        cell = checks[0].cell.id
        progress.started(cell, "host")
        progress.finished(CellOutcome(cell, DONE, 1.5, "host"))
        assert load_manifest(folder).cells[cell].attempts == manifest.cells[cell].attempts
    event(f"read whole, {len(report.results)} of {len(manifest.cells)} cells with a result")


def _one_line(exc: UserError, *starts: str) -> None:
    """A refusal as the command line shows it: exit code 2, one line, saying what it is about."""
    assert exc.exit_code == 2
    assert "\n" not in str(exc)
    assert str(exc).startswith(starts)


def _refused_or_read(folder: Path) -> None:
    before = snapshot(folder)
    try:
        load_manifest(folder)
    except UserError as exc:
        _one_line(exc, "sweep manifest", f"{folder / 'sweep.json'} is not a kvprobe sweep")
        assert snapshot(folder) == before
        event("refused: the manifest")
        return
    try:
        _read_whole(folder)
    except UserError as exc:  # what only the results can say (one is not its cell's)
        _one_line(exc, f"sweep {folder}", "sweep cell")
        event("refused: a result")


@given(data=st.data())
@FIXTURES
def test_a_valid_manifest_is_read_whole(
    models: Path, finished: Path, tmp_path: Path, data: st.DataObject
) -> None:
    folder = data.draw(valid_manifests(models, finished, tmp_path))
    _read_whole(folder)


# Values of each JSON type that a manifest could hold: a mutant that keeps its types is often
# accepted (a status, a time, a host), and one that names a path must not lead anywhere.
LIKELY = {
    str: st.sampled_from(
        [*STATUSES, "", "x", "cells/../x.json", "/tmp/x.json", "q4_0", "chat", "default", "\u202e"]
    ),
    int: st.sampled_from([0, 1, -1, 511, 2**31, 2**63]),
    float: st.floats(-1, 1e9),
    bool: st.booleans(),
    type(None): st.sampled_from(["x", 0, 1.5, None]),
}


@st.composite
def manifest_mutants(draw: st.DrawFn, text: str) -> str:
    """The manifest with one field mutated (of another type, null, nested, NaN, ...), set to
    another value of its own type, one byte changed, or cut short."""
    doc = json.loads(text)
    how = draw(st.sampled_from(["field", "value", "byte", "cut"]))
    if how == "field":
        return mutated_text(doc, draw(result_mutations(doc)))
    if how == "value":
        path = draw(st.sampled_from(every_path(doc)))
        node = doc
        for step in path[:-1]:
            node = node[step]
        if type(node[path[-1]]) in LIKELY:
            node[path[-1]] = draw(LIKELY[type(node[path[-1]])])
        return json.dumps(doc)
    at = draw(st.integers(0, len(text) - 1))
    return (
        text[:at]
        if how == "cut"
        else text[:at] + draw(st.sampled_from(list('0{}[]",:.-e \\\x00'))) + text[at + 1 :]
    )


@given(data=st.data())
@FIXTURES
def test_a_mutated_manifest_is_refused_in_one_line_or_read_whole(
    models: Path, finished: Path, tmp_path: Path, data: st.DataObject
) -> None:
    folder = data.draw(valid_manifests(models, finished, tmp_path))
    path = folder / "sweep.json"
    path.write_text(data.draw(manifest_mutants(path.read_text())))
    _refused_or_read(folder)


# --- the disk cache -------------------------------------------------------------------------------


@contextlib.contextmanager
def cache_dir(folder: Path) -> Iterator[Path]:
    old = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            del os.environ[CACHE_DIR_ENV]
        else:
            os.environ[CACHE_DIR_ENV] = old


@pytest.fixture(scope="module")
def facts_cache(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str]:
    """The tiny model's facts, and the cache file that holds them."""
    from kvprobe.weights.doctor import read_facts
    from kvprobe.weights.facts import CACHE_NAME

    with cache_dir(tmp_path_factory.mktemp("cache")) as folder:
        facts = read_facts(tiny_model_path)
        return facts, (folder / CACHE_NAME).read_text()


@given(data=st.data())
@FIXTURES
def test_a_mutated_cache_file_is_read_as_written_or_not_at_all(
    tiny_model_path: Path, facts_cache: tuple[dict[str, Any], str], tmp_path: Path, data: st.DataObject
) -> None:
    from kvprobe.weights.doctor import read_facts
    from kvprobe.weights.facts import CACHE_NAME

    facts, text = facts_cache
    doc = json.loads(text)
    if data.draw(st.booleans()):
        mutant = mutated_text(doc, data.draw(result_mutations(doc)))
    else:
        at = data.draw(st.integers(0, len(text) - 1))
        mutant = text[:at] + data.draw(st.sampled_from(list('0{}[]",:.-e \\\x00'))) + text[at + 1 :]
    with cache_dir(tmp_path / f"c{next(_FOLDERS)}") as folder:
        folder.mkdir()
        (folder / CACHE_NAME).write_text(mutant)
        assert isinstance(read_memo(folder / CACHE_NAME), dict)
        assert read_facts(tiny_model_path) == facts  # a damaged entry is read again from the model


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with path.open("wb") as fh:
        fh.truncate(3 << 30)  # sparse: 3 GiB of zeros that take no disk


def _proc(path: Path) -> None:
    path.symlink_to("/proc/self/status")


def _folder(path: Path) -> None:
    path.mkdir()


ODD_FILES = {"a FIFO": _fifo, "a link to /dev/zero": _dev_zero, "a 3 GiB file": _huge,
             "a /proc file": _proc, "a folder": _folder}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(ODD_FILES))
def test_an_odd_file_in_the_cache_folder_is_an_empty_cache(
    kind: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    """doctor and run read model-facts.json and kernel-checks.json: each ends, as with no cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("model-facts.json", "kernel-checks.json"):
        ODD_FILES[kind](cache / name)
    env = {CACHE_DIR_ENV: str(cache)}
    doctor = kvprobe("doctor", str(tiny_model_path), env=env, timeout=HANG_S)
    assert doctor.returncode == 0, doctor.stderr
    assert "Tensor types" in doctor.stdout
    out = tmp_path / "r.json"
    run = kvprobe("run", "--model", str(tiny_model_path), "--cache", "q8_0", "--ctx", "512",
                  "--scenario", "quick", "--threads", "1", "--no-html", "--out", str(out), env=env,
                  timeout=HANG_S)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["complete"] is True


# --- long text ------------------------------------------------------------------------------------

FREE_TEXT = [("warnings", 0), ("stopped",), ("command",), ("model", "name"), ("model", "path"),
             ("scenario", "name"), ("verdict", "sentences", 0), ("created",), ("host", "cpu")]  # fmt: skip
SHOWN_WITHIN_S = 5.0


@given(
    where=st.sampled_from(FREE_TEXT),
    piece=st.sampled_from(["W", "ab/", "0123456789", "日本", "\u202e", "[bold]", "x\x1b", "é"]),
    length=st.integers(1_000, 60_000),
)
@FIXTURES
def test_a_result_with_long_unbroken_text_is_shown_within_seconds(
    tiny_quick_result: Path, tmp_path: Path, where: tuple[str | int, ...], piece: str, length: int
) -> None:
    from kvprobe.result.store import Result

    doc = json.loads(tiny_quick_result.read_text())
    doc["warnings"] = doc.get("warnings") or [""]
    node: Any = doc
    for step in where[:-1]:
        node = node.setdefault(step, {}) if isinstance(step, str) else node[step]
    node[where[-1]] = (piece * (length // len(piece) + 1))[:length]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(doc))
    try:
        loaded = Result.load(path).doc
    except UserError as exc:  # a field the schema bounds: refused, in one line
        _one_line(exc, f"result file {path}")
        return
    console = SafeConsole(file=io.StringIO(), width=160)
    started = time.monotonic()
    print_run_report(loaded, console)
    assert time.monotonic() - started < SHOWN_WITHIN_S


@pytest.mark.parametrize("field", ["warnings", "stopped", "command"])
def test_a_300k_character_word_is_reported_within_seconds(
    field: str, tiny_quick_result: Path, tmp_path: Path
) -> None:
    """The whole command, terminal and page, on a word long enough to take rich minutes if highlighted."""
    doc = json.loads(tiny_quick_result.read_text())
    doc[field] = ["W" * 300_000] if field == "warnings" else "W" * 300_000
    if field == "stopped":
        doc["complete"] = False
    path = tmp_path / "long.json"
    path.write_text(json.dumps(doc))
    started = time.monotonic()
    proc = kvprobe("report", str(path), "--html", str(tmp_path / "p.html"), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert len(proc.stdout) < 100_000  # clipped, saying how much was left out
