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
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvprobe.request import STOP_SWITCH_ENV
from kvprobe.result.journal import journal_path

DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
STOP_CELL_ENV = "KVPROBE_TEST_STOP_CELL"  # tests: the run's stop switch applies to this cell only
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


def result_state(out: Path) -> str:
    """'partial' where a journal waits to be resumed, 'done' where a complete result stands
    alone, else 'absent'."""
    if journal_path(out).exists():
        return "partial"
    try:
        with out.open("rb") as fh:
            doc = json.loads(fh.read(256 << 20))
    except (OSError, ValueError):
        return "absent"
    return "done" if isinstance(doc, dict) and doc.get("complete") is True else "absent"


def decision_summary(out: Path) -> str:
    """The cell's decision in a few words: 'q8_0 equivalent, q4_0 worse; use q8_0'."""
    try:
        doc = json.loads(out.read_bytes())
        verdict = doc.get("verdict") or {}
        parts = [
            f"{cid} {(v.get('equivalence') or {}).get('status', 'undecided')}"
            for cid, v in (verdict.get("configs") or {}).items()
        ]
        rec = verdict.get("recommendation") or {}
        keep = rec.get("config") == doc.get("baseline")
        use = f"; {'keep' if keep else 'use'} {rec['config']}" if rec.get("config") else ""
        return ", ".join(parts) + use
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
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
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def attempt_path(out: Path) -> Path:
    """Who is running the cell now: host, pid, attempt, start (written as each attempt starts)."""
    return out.with_name(out.stem + ".attempt.json")


def log_path(out: Path) -> Path:
    return out.with_suffix(".log")


def run_cell(cell_id: str, argv: list[str], out: Path) -> CellOutcome:
    """One attempt at a cell: skipped if its result is already complete (an attempt that ended
    just as its worker was lost), resumed from its journal if one waits, else started."""
    host = socket.gethostname()
    started = time.monotonic()
    state = result_state(out)
    if state == "done":
        return CellOutcome(cell_id, DONE, 0.0, host, summary=decision_summary(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    resumed = state == "partial"
    words = ["run", *argv, *(["--resume", str(journal_path(out))] if resumed else ["--force"])]
    attempt_file = attempt_path(out)
    attempts = 0
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        attempts = int(json.loads(attempt_file.read_text(encoding="utf-8"))["attempt"])
    record = {
        "cell": cell_id,
        "host": host,
        "pid": os.getpid(),
        "attempt": attempts + 1,
        "started": time.time(),
        "resumed": resumed,
    }
    _write_attempt(attempt_file, record)
    env = dict(os.environ)
    if env.get(STOP_CELL_ENV) != cell_id:
        env.pop(STOP_SWITCH_ENV, None)
    log = log_path(out)
    with log.open("ab") as fh:
        offset = fh.tell()
        fh.write(f"--- attempt {attempts + 1} on {host}: kvprobe {' '.join(words)}\n".encode())
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
