"""Run one cell: `kvprobe run` in a child process, its output in the cell's log, resumed from
its journal when an earlier attempt was cut short. The local executor calls it in the sweep's
process; the Ray executor calls it inside a Ray task, on whichever node Ray placed the cell.

The child dies with the process that started it (PR_SET_PDEATHSIG on Linux): a sweep killed
with SIGKILL, or a Ray worker lost with its node, leaves no run behind to race the retry; the
cell's journal is what carries its progress over. Ctrl-C reaches the child once (it runs in a
session of its own), so it ends after its last whole unit and leaves a journal to resume."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvprobe.infra.display import visible
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_bytes, write_atomically
from kvprobe.infra.test_hooks import cell_env
from kvprobe.result.journal import journal_path
from kvprobe.result.store import MAX_RESULT_BYTES
from kvprobe.sweep.results import own_result, place_problem, result_state

__all__ = ["CellOutcome", "attempt_path", "log_path", "result_state", "run_cell"]

DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
LOG_TAIL_BYTES = 1 << 20  # the child's last `kvprobe:` line is at the end of its log
INTERRUPT_GRACE_S = 120.0  # a child asked to stop finishes its unit's bookkeeping; then it is killed


@dataclass(frozen=True)
class CellOutcome:
    """How one attempt at a cell ended: done, failed (with its one-line error) or interrupted."""

    cell: str
    status: str
    seconds: float
    host: str
    error: str | None = None
    resumed: bool = False  # continued from an earlier attempt's journal
    summary: str = ""  # the decision in a few words, for the progress line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decision_summary(out: Path) -> str:
    """The cell's decision in a few words: 'q8_0 equivalent, q4_0 worse; use q8_0'."""
    try:
        doc = json.loads(read_input_bytes(out, "result file", "", max_bytes=MAX_RESULT_BYTES))
        verdict = doc.get("verdict") or {}
        parts = [
            f"{cid} {(v.get('equivalence') or {}).get('status', 'undecided')}"
            for cid, v in (verdict.get("configs") or {}).items()
        ]
        rec = verdict.get("recommendation") or {}
        keep = rec.get("config") == doc.get("baseline")
        use = f"; {'keep' if keep else 'use'} {rec['config']}" if rec.get("config") else ""
        return ", ".join(parts) + use
    except (UserError, ValueError, RecursionError, AttributeError, TypeError, KeyError):
        return ""


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function that asks the kernel to SIGKILL the child when its parent dies
    (Linux); the C function is looked up before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _error_line(log: Path, offset: int, returncode: int) -> str:
    """The child's one-line error (the last `kvprobe:` line it wrote), or how it died."""
    try:  # its own log, opened without following a link; only its end can hold the last line
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            fh.seek(max(offset, os.fstat(fd).st_size - LOG_TAIL_BYTES))
            text = fh.read(LOG_TAIL_BYTES).decode("utf-8", "replace")
    except OSError:
        text = ""
    said = [line for line in text.splitlines() if line.startswith("kvprobe:")]
    if said:
        line = said[-1].removeprefix("kvprobe: ").removeprefix("error: ")
        return line[:1000]
    if returncode < 0:
        name = (
            signal.Signals(-returncode).name
            if -returncode in signal.Signals._value2member_map_
            else "a signal"
        )
        why = " (out of memory? the kernel's OOM killer sends it)" if returncode == -signal.SIGKILL else ""
        return f"kvprobe run was killed by {name}{why}; see {log}"
    return f"kvprobe run ended with exit code {returncode} and no message; see {log}"


def _write_attempt(path: Path, record: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(record) + "\n").encode(), "the cell's attempt record")


def read_attempt(out: Path) -> dict[str, Any] | None:
    """The cell's attempt record, or None (none yet, or not one: it is read bounded)."""
    try:
        record = json.loads(read_input_bytes(attempt_path(out), "attempt record", "", max_bytes=1 << 16))
    except (UserError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def cell_words(argv: list[str], out: Path) -> list[str]:
    """The cell's `kvprobe run` words with its result file where its sweep folder is now: the
    manifest's --out is relative to the folder (a copied folder writes into itself)."""
    words: list[str] = []
    rest = iter(argv)
    for word in rest:
        if word == "--out":
            next(rest, None)
        elif not word.startswith("--out="):
            words.append(word)
    return [*words, "--out", str(out)]


def _open_log(log: Path) -> int:
    """The cell's log, appended to; never through a link, never a FIFO or a device."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:  # ELOOP: a link; ENXIO: a named pipe no process reads
        odd = exc.errno in (errno.ELOOP, errno.ENXIO)
        raise OSError(exc.errno, "a link or a named pipe, not a file" if odd else exc.strerror) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def attempt_path(out: Path) -> Path:
    """Who is running the cell now: host, pid, attempt, start (written as each attempt starts)."""
    return out.with_name(out.stem + ".attempt.json")


def log_path(out: Path) -> Path:
    return out.with_suffix(".log")


def _replaceable(out: Path, argv: list[str]) -> str | None:
    """Why the cell's earlier files may not be replaced, or None (none there, or its own)."""
    problem = place_problem(out)
    if problem is None and os.path.lexists(out):
        problem = own_result(out, argv)
    page = out.with_suffix(".html")
    if problem is None and (page.is_symlink() or (page.exists() and not page.is_file())):
        problem = f"{page} is not a regular file"
    if problem is None:
        return None
    return f"{problem}: kvprobe replaces only the cell's own earlier files; move it away, then resume"


def run_cell(cell_id: str, argv: list[str], out: Path) -> CellOutcome:
    """One attempt at a cell: skipped if its result is already complete (an attempt that ended
    just as its worker was lost), resumed from its journal if one waits, else started; with
    --force only where what stands in its place is the cell's own earlier result."""
    host = socket.gethostname()
    started = time.monotonic()
    state = result_state(out)
    if state == "done":
        return CellOutcome(cell_id, DONE, 0.0, host, summary=decision_summary(out))
    resumed = state == "partial"
    if not resumed and (why := _replaceable(out, argv)) is not None:
        return CellOutcome(cell_id, FAILED, 0.0, host, why)
    out.parent.mkdir(parents=True, exist_ok=True)
    force = os.path.lexists(out) or os.path.lexists(out.with_suffix(".html"))
    again = ["--resume", str(journal_path(out))] if resumed else ["--force"] if force else []
    words = ["run", *cell_words(argv, out), *again]
    previous = (read_attempt(out) or {}).get("attempt")
    attempts = previous if isinstance(previous, int) and 0 <= previous < 2**31 else 0
    record = {
        "cell": cell_id,
        "host": host,
        "pid": os.getpid(),
        "attempt": attempts + 1,
        "started": time.time(),
        "resumed": resumed,
    }
    env = cell_env(os.environ, cell_id)  # a test's stop switch reaches the cell it names only
    log = log_path(out)
    try:
        _write_attempt(attempt_path(out), record)
        fh = os.fdopen(_open_log(log), "ab")
    except OSError as exc:
        why = f"cannot write the cell's log {log} ({exc.strerror}): move what is there away, then resume"
        return CellOutcome(cell_id, FAILED, 0.0, host, why)
    except UserError as exc:  # write_atomically's own line
        return CellOutcome(cell_id, FAILED, 0.0, host, str(exc))
    with fh:
        offset = fh.tell()
        # The words hold file names: written out as the terminal shows them (a log is read in one).
        fh.write(visible(f"--- attempt {attempts + 1} on {host}: kvprobe {' '.join(words)}").encode() + b"\n")
        fh.flush()
        child = subprocess.Popen(
            [sys.executable, "-m", "kvprobe", *words],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            # Safe with threads about (a Ray worker's): it only calls a C function found before the fork.
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
        )
        try:
            returncode = child.wait()
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, or Ray cancelling the task: the child stops cleanly
            _stop(child)
            return CellOutcome(cell_id, INTERRUPTED, time.monotonic() - started, host, resumed=resumed)
    seconds = time.monotonic() - started
    if returncode == 0 and result_state(out) == "done":
        return CellOutcome(cell_id, DONE, seconds, host, resumed=resumed, summary=decision_summary(out))
    if returncode == 130:
        return CellOutcome(cell_id, INTERRUPTED, seconds, host, resumed=resumed)
    return CellOutcome(cell_id, FAILED, seconds, host, _error_line(log, offset, returncode), resumed)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Ask the child to stop as Ctrl-C does; kill it if it does not within the grace period."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=INTERRUPT_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()
