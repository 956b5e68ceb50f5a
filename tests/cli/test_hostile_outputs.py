"""Hostile outputs and failures of the system (issue 38, sections 1, 4 and 6), as a user or an
attacker meets them: the real kvprobe CLI, the real llama.cpp on the tiny model.

Outputs are written only where they were meant to go: never through a link (the lock, the
journal, a page), never onto an input of the same command, whatever --force says. A failure
of the system (a path too long, a full disk, standard output closed, full or gone, Ctrl-C while
the modules load) is one line and exit 2 (130 for Ctrl-C), and a run it stops keeps what it
measured for `--resume`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvprobe.result.journal import journal_path, read_journal
from tests.helpers import assert_one_line_error, default_signals, kvprobe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "results" / "examples" / "quick-f16-q8_0-1024.json"
SWEEP_EXAMPLE = ROOT / "results" / "examples" / "sweep-default-smollm2"
# Two documents, chunk 64, ctx 2048 on the tiny model: journal lines of about 37 KB per unit, so
# a 48 KiB disk holds the header and the first unit and is full at the second.
SEVERAL_UNITS = """
name = "several"
probes = ["needle", "divergence"]
[plan]
documents = 2
chunk = 64
"""


def quick(model: Path, out: Path, *more: str) -> list[str]:
    return ["run", "--model", str(model), "--scenario", "quick", "--ctx", "1024", "--cache", "q8_0",
            "--threads", "1", "--no-html", "--out", str(out), *more]  # fmt: skip


def child(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "kvprobe", *args], **kwargs)


def finished(proc: subprocess.Popen[bytes], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, (err or b"").decode()


def one_line(code: int, stderr: str, *words: str, exit_code: int = 2) -> None:
    """As assert_one_line_error, for a process run here with Popen (and Ctrl-C's 130)."""
    assert code == exit_code, stderr
    assert_one_line_error(subprocess.CompletedProcess([], 2, "", stderr), *words)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `where`: a real full disk (root only; skipped elsewhere)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Write into `folder` until its disk is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"x" * 4096):
                pass
    finally:
        os.close(fd)


# --- section 1: the lock file, and every output, never written through a link ------------------


def _lock_kinds() -> dict[str, Callable[[Path, Path], None]]:
    """Ways a `<out>.lock` path can be something kvprobe must not write (lock, protected)."""
    return {
        "a link to another result": lambda lock, protected: lock.symlink_to(protected),
        "a broken link": lambda lock, protected: lock.symlink_to(lock.parent / "nowhere"),
        "a link to /dev/zero": lambda lock, protected: lock.symlink_to("/dev/zero"),
        "a hard link to another result": lambda lock, protected: os.link(protected, lock),
        "a folder": lambda lock, protected: lock.mkdir(),
        "a FIFO": lambda lock, protected: os.mkfifo(lock),
    }


@pytest.mark.parametrize("kind", sorted(_lock_kinds()))
def test_a_lock_path_kvprobe_would_write_through_is_refused(
    kind: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    protected = tmp_path / "protect" / "base.json"
    protected.parent.mkdir()
    shutil.copy(EXAMPLE, protected)
    out = tmp_path / "lk" / "s.json"
    out.parent.mkdir()
    lock = out.with_name(out.name + ".lock")
    _lock_kinds()[kind](lock, protected)
    proc = kvprobe(*quick(tiny_model_path, out))
    assert_one_line_error(proc, f"lock file {lock}")
    assert protected.read_bytes() == EXAMPLE.read_bytes()  # was: the 180-byte lock text, exit 0
    assert not out.exists()
    assert not (tmp_path / "lk" / "nowhere").exists()  # nothing created through a broken link


def test_a_lock_that_cannot_be_written_is_one_line(tmp_path: Path, tiny_model_path: Path) -> None:
    """An immutable lock file (chattr +i; root on a file system that has the flag)."""
    out = tmp_path / "s.json"
    lock = out.with_name(out.name + ".lock")
    lock.touch()
    chattr = shutil.which("chattr")
    if (
        chattr is None
        or subprocess.run([chattr, "+i", str(lock)], capture_output=True, check=False).returncode
    ):
        pytest.skip("chattr +i is not available here")
    try:
        assert_one_line_error(kvprobe(*quick(tiny_model_path, out)), "cannot be written", str(lock))
    finally:
        subprocess.run([chattr, "-i", str(lock)], check=False)
    assert not out.exists()


def test_sweep_takes_the_same_lock(tmp_path: Path) -> None:
    """`kvprobe sweep --resume` locks its manifest with the same class: a link there is refused."""
    protected = tmp_path / "base.json"
    shutil.copy(EXAMPLE, protected)
    folder = tmp_path / "sweep"
    shutil.copytree(SWEEP_EXAMPLE, folder)
    (folder / "sweep.json.lock").symlink_to(protected)
    assert_one_line_error(kvprobe("sweep", "--resume", str(folder)), "lock file", "symbolic link")
    assert protected.read_bytes() == EXAMPLE.read_bytes()


def test_force_replaces_a_link_never_its_target(tmp_path: Path, tiny_model_path: Path) -> None:
    """--force replaces the earlier outputs at their paths; a link there is replaced, never
    written through (the journal was opened through one with O_TRUNC)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    page = tmp_path / "r.html"
    links = {out: tmp_path / "p1.json", journal_path(out): tmp_path / "p2.json", page: tmp_path / "p3.json"}
    for link, protected in links.items():
        shutil.copy(EXAMPLE, protected)
        link.symlink_to(protected)
    args = [a for a in quick(tiny_model_path, out, "--force") if a != "--no-html"]
    proc = kvprobe(*args, "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    for link, protected in links.items():
        assert protected.read_bytes() == EXAMPLE.read_bytes(), link
    assert json.loads(out.read_text())["complete"] is True
    assert not out.is_symlink()
    assert not page.is_symlink()


# --- section 1: report and quantize never write over their own inputs ------------------------------


@pytest.fixture
def sweep_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sw" / "A"
    shutil.copytree(SWEEP_EXAMPLE, folder)
    return folder


def _cell(folder: Path) -> Path:
    return sorted((folder / "cells").glob("*.json"))[0]


@pytest.mark.parametrize("target", ["the manifest", "a cell's result", "a cell's journal"])
def test_report_of_a_sweep_never_writes_over_its_inputs(target: str, sweep_folder: Path) -> None:
    """`--force` may replace an earlier page, never a file the report reads (it passed none)."""
    cell = _cell(sweep_folder)
    journal_path(cell).write_text("a journal the sweep keeps\n")
    page = {
        "the manifest": sweep_folder / "sweep.json",
        "a cell's result": cell,
        "a cell's journal": journal_path(cell),
    }
    before = {p: p.read_bytes() for p in sweep_folder.rglob("*") if p.is_file()}
    proc = kvprobe("report", str(sweep_folder), "--html", str(page[target]), "--force")
    assert_one_line_error(proc, "--html", "also an input")
    assert {p: p.read_bytes() for p in sweep_folder.rglob("*") if p.is_file()} == before


def test_report_png_never_writes_over_the_result_it_reads(tmp_path: Path) -> None:
    """A result named as a figure of --png DIR: the files inside the folder are outputs too."""
    folder = tmp_path / "pdir"
    folder.mkdir()
    result = folder / "frontier.png"
    shutil.copy(EXAMPLE, result)
    proc = kvprobe("report", str(result), "--png", str(folder), "--force")
    assert_one_line_error(proc, "--png", "also an input")
    assert result.read_bytes() == EXAMPLE.read_bytes()
    assert [p.name for p in folder.iterdir()] == ["frontier.png"]


def test_report_html_and_png_never_write_one_file_twice(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    shutil.copy(EXAMPLE, result)
    folder = tmp_path / "figs"
    proc = kvprobe("report", str(result), "--html", str(folder / "frontier.png"), "--png", str(folder))
    assert_one_line_error(proc, "--png", "--html")
    assert not folder.exists()


def test_quantize_force_onto_a_folder_of_the_variants_name(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "v"
    (out / "tiny-Q8_0.gguf").mkdir(parents=True)
    (out / "tiny-Q8_0.gguf" / "mine.txt").write_text("kept")
    proc = kvprobe("quantize", str(tiny_model_path), "--type", "q8_0", "--out-dir", str(out), "--force")
    assert_one_line_error(proc, "tiny-Q8_0.gguf", "is a folder")
    assert sorted(p.name for p in out.iterdir()) == ["tiny-Q8_0.gguf"]  # no .partial left behind
    assert (out / "tiny-Q8_0.gguf" / "mine.txt").read_text() == "kept"


def test_quantize_never_writes_through_a_partial_left_as_a_link(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    protected = tmp_path / "base.json"
    shutil.copy(EXAMPLE, protected)
    out = tmp_path / "v"
    out.mkdir()
    (out / ".tiny-Q8_0.gguf.partial").symlink_to(protected)
    proc = kvprobe("quantize", str(tiny_model_path), "--type", "q8_0", "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert protected.read_bytes() == EXAMPLE.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["tiny-Q8_0.gguf"]


# --- section 4: paths longer than the system allows -------------------------------------------------

LONG = "/".join(["abcdefgh"] * 600)  # 5,399 bytes: ENAMETOOLONG from any stat of it


def _long_path_cases(model: Path, result: Path) -> dict[str, list[str]]:
    run = quick(model, result.with_name("new.json"))
    return {
        "run --out": [*run[:-1], LONG],
        "run --html": [*[a for a in run if a != "--no-html"], "--html", LONG],
        "run --scenario": [*run, "--scenario", LONG],
        "run --resume": ["run", "--resume", LONG],
        "report FILE": ["report", LONG],
        "report --html": ["report", str(result), "--html", LONG],
        "report --png": ["report", str(result), "--png", LONG],
        "compare --html": ["compare", str(result), str(result), "--html", LONG],
        "quantize --out-dir": ["quantize", str(model), "--type", "q8_0", "--out-dir", LONG],
        "sweep --out": ["sweep", "--model", str(model), "--cache", "q8_0", "--ctx", "1024", "--out", LONG],
        "sweep --resume": ["sweep", "--resume", LONG],
        "sweep --model": [
            "sweep",
            "--model",
            LONG,
            "--cache",
            "q8_0",
            "--ctx",
            "1024",
            "--out",
            str(result.with_name("sw")),
        ],
    }


@pytest.mark.parametrize("case", sorted(_long_path_cases(Path("m"), Path("r")).keys()))
def test_a_path_longer_than_the_system_allows_is_one_line(
    case: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    result = tmp_path / "r.json"
    shutil.copy(EXAMPLE, result)
    proc = kvprobe(*_long_path_cases(tiny_model_path, result)[case], cwd=tmp_path)
    assert_one_line_error(proc)  # was: OSError: [Errno 36] File name too long, a traceback
    if case.rsplit(maxsplit=1)[-1] in OUTPUT_OPTIONS:  # checked by paths.check_outputs and the lock
        assert_one_line_error(proc, "too long")
        assert len(proc.stderr) < 1000  # the path is shown cut in the middle


OUTPUT_OPTIONS = {"--out", "--html", "--png", "--out-dir"}


# --- section 4: a full disk ----------------------------------------------------------------------


def _size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        default_signals()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # EFBIG past it

    return apply


@pytest.mark.parametrize("fault", ["a full disk", "a file size limit"])
def test_a_journal_that_cannot_grow_keeps_whole_units_for_resume(
    fault: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    scenario = tmp_path / "several.toml"
    scenario.write_text(SEVERAL_UNITS)
    args = ["run", "--model", str(tiny_model_path), "--scenario", str(scenario), "--ctx", "2048",
            "--cache", "q8_0", "--threads", "1", "--no-html"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        if fault == "a full disk":
            folder = stack.enter_context(small_disk(tmp_path / "disk", "48k"))
            start: Callable[[], None] = default_signals
        else:
            folder, start = tmp_path / "limited", _size_limit(60_000)
            folder.mkdir()
        out = folder / "r.json"
        stopped = subprocess.run([sys.executable, "-m", "kvprobe", *args, "--out", str(out)],
                                 capture_output=True, text=True, check=False, timeout=600,
                                 preexec_fn=start)  # fmt: skip
        assert_one_line_error(
            stopped, "cannot write the journal", f"kvprobe run --resume {journal_path(out)}"
        )
        saved = read_journal(journal_path(out))  # every line whole and verified
        assert len(saved.units) == 1
        assert not out.with_name("r.json.lock").exists()
        if fault == "a full disk":
            subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)
        resumed = kvprobe("run", "--resume", str(journal_path(out)))
        assert resumed.returncode == 0, resumed.stderr
        doc = json.loads(out.read_text())
    assert doc["complete"] is True
    assert not doc["missing"]


def test_a_lock_on_a_full_disk_is_one_line_and_leaves_no_lock(tmp_path: Path, tiny_model_path: Path) -> None:
    with small_disk(tmp_path / "disk", "64k") as folder:
        fill(folder)
        out = folder / "r.json"
        proc = kvprobe(*quick(tiny_model_path, out))
        assert_one_line_error(proc, "cannot write the lock file", "No space left")
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]  # was: an empty r.json.lock


# --- section 4: standard output that fails ---------------------------------------------------------


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write is EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("how", ["a closed pipe", "/dev/full", "closed"])
@pytest.mark.parametrize("command", ["doctor --json", "report", "compare --json"])
def test_standard_output_that_fails_is_one_line(
    how: str, command: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    result = tmp_path / "r.json"
    shutil.copy(EXAMPLE, result)
    args = {
        "doctor --json": ["doctor", str(tiny_model_path), "--json"],
        "report": ["report", str(result)],
        "compare --json": ["compare", str(result), str(result), "--json"],
    }[command]
    with contextlib.ExitStack() as stack:
        if how == "a closed pipe":
            stdout: object = _closed_pipe()
            stack.callback(os.close, stdout)  # type: ignore[arg-type]
        elif how == "/dev/full":
            stdout = stack.enter_context(open("/dev/full", "wb"))
        else:
            stdout = subprocess.DEVNULL
        start = (lambda: os.close(1)) if how == "closed" else None  # `kvprobe report X >&-`
        proc = child(*args, stdout=stdout, stderr=subprocess.PIPE, preexec_fn=start)
        code, err = finished(proc)
    one_line(code, err, "standard output")


def test_a_run_goes_on_when_its_output_pipe_closes(tmp_path: Path, tiny_model_path: Path) -> None:
    """`kvprobe run ... | head -1`: the result and its journal do not depend on the terminal."""
    out = tmp_path / "r.json"
    proc = child(*quick(tiny_model_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 preexec_fn=default_signals)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # head -1 has its line and exits
    code, err = finished(proc)
    one_line(code, err, "standard output", str(out))
    assert json.loads(out.read_text())["complete"] is True  # was: exit 1, no result, no journal
    assert not journal_path(out).exists()
    assert not out.with_name("r.json.lock").exists()


def test_a_run_into_a_full_standard_output_keeps_its_result(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "r.json"
    with open("/dev/full", "wb") as full:
        code, err = finished(child(*quick(tiny_model_path, out), stdout=full, stderr=subprocess.PIPE))
    one_line(code, err, "No space left", str(out))
    assert json.loads(out.read_text())["complete"] is True


# --- section 4 and 6: Ctrl-C while starting, and after the result is written ------------------------


def _seconds(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, *args], capture_output=True, check=False, timeout=120)
    return time.monotonic() - started


def test_ctrl_c_while_the_modules_load_is_one_line() -> None:
    light = _seconds("-c", "import kvprobe.cli")  # the interpreter and kvprobe.cli: the handler is set
    whole = _seconds("-m", "kvprobe", "scenarios")  # and every module a command needs
    proc = child("scenarios", stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals)
    time.sleep((light + whole) / 2)  # in the middle of the imports
    proc.send_signal(signal.SIGINT)
    code, err = finished(proc, timeout=60)
    one_line(code, err, "interrupted", exit_code=130)  # was: a KeyboardInterrupt traceback


def test_ctrl_c_after_the_result_is_written_names_it(tmp_path: Path, tiny_model_path: Path) -> None:
    """The report after the result blocks on a small pipe nobody reads: Ctrl-C lands there."""
    out = tmp_path / "r.json"
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: room for the lines before the result only
    proc = child(
        *quick(tiny_model_path, out), stdout=write, stderr=subprocess.PIPE, preexec_fn=default_signals
    )
    os.close(write)
    deadline = time.monotonic() + 300
    while not _with_statistics(out):
        assert proc.poll() is None, proc.stderr
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None  # blocked printing the report
    proc.send_signal(signal.SIGINT)
    with os.fdopen(read, "rb") as drained:
        drained.read()
    code, err = finished(proc)
    one_line(code, err, "interrupted", str(out), exit_code=130)
    assert "no result file" not in err
    assert json.loads(out.read_text())["complete"] is True


def _with_statistics(out: Path) -> bool:
    try:
        return json.loads(out.read_text())["statistics"]["complete"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False
