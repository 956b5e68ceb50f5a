"""Test-only switches, behind one hook: production code calls `at(point, ...)` at a few named
points, and with no switch set nothing happens (an environment lookup). The tests set the
switches to stop a run, a sweep's cell or the kernel check at a known point, as a real crash or
signal would; they are documented in docs/development.md ("Test hooks") and read only here.

KVPROBE_TEST_STOP_AFTER="DOC,STEP[,GROUP]:HOW"
    at `unit_done` of that unit (once its journal line is written) the run sends itself HOW:
    `kill` (SIGKILL), `term` (SIGTERM), `stop` (SIGSTOP: frozen, for a test to kill what runs
    it: a sweep, a Ray worker) or `int` (SIGINT, as Ctrl-C).
KVPROBE_TEST_STOP_CELL="CELL"
    a sweep passes KVPROBE_TEST_STOP_AFTER to that cell's run only (`cell_env`).
KVPROBE_TEST_KERNEL_CHECK_CRASH="1" | "kill"
    at `kernel_check_decode` the kernel check's child dies where the kernels would: `1` by a
    real SIGSEGV (with the extra buffer types only), `kill` by SIGKILL, as under the OOM killer.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Literal

STOP_AFTER = "KVPROBE_TEST_STOP_AFTER"
STOP_CELL = "KVPROBE_TEST_STOP_CELL"
KERNEL_CHECK_CRASH = "KVPROBE_TEST_KERNEL_CHECK_CRASH"
SWITCHES = (STOP_AFTER, STOP_CELL, KERNEL_CHECK_CRASH)

Point = Literal["unit_done", "kernel_check_decode"]
_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP, "int": signal.SIGINT}


def switch(name: str) -> str:
    """A switch's value ("" when unset): the one place the environment is read for them."""
    assert name in SWITCHES, name
    return os.environ.get(name, "")


def at(point: Point, *, key: Sequence[object] = (), extra_bufts: bool = False) -> None:
    """The named point of production code: does what a switch set for it asks, else nothing.

    `unit_done`: a run's unit `key` (doc, step[, group]) has been journaled.
    `kernel_check_decode`: the kernel check's child is about to decode (`extra_bufts`: with
    llama.cpp's extra CPU buffer types)."""
    if point == "unit_done":
        stop = switch(STOP_AFTER)
        if stop.startswith(",".join(map(str, key)) + ":"):
            os.kill(os.getpid(), _SIGNALS.get(stop.rsplit(":", 1)[-1], signal.SIGINT))
    elif point == "kernel_check_decode":
        crash = switch(KERNEL_CHECK_CRASH)
        if crash == "1" and extra_bufts:
            ctypes.string_at(0)  # a real SIGSEGV, where llama.cpp's AMX kernels die
        elif crash == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no verdict on kernels


def armed(name: str) -> bool:
    """Whether a switch is set: what the kernel check's memo key records, so that an answer
    given under a test's crash is never reused by a real run."""
    return bool(switch(name))


def cell_env(env: Mapping[str, str], cell: str) -> dict[str, str]:
    """A sweep cell's environment: the run's stop switch only for the cell KVPROBE_TEST_STOP_CELL
    names, so a test stops one cell of many."""
    out = dict(env)
    if out.get(STOP_CELL) != cell:
        out.pop(STOP_AFTER, None)
    return out
