"""A sweep's progress: one line per cell start and finish, with the sweep's time left; each
finish recorded in the manifest at once, so an interruption loses nothing that finished."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console

from kvprobe.run.pace import format_duration
from kvprobe.sweep.cell_run import DONE, FAILED, CellOutcome
from kvprobe.sweep.manifest import RUNNING, Manifest
from kvprobe.sweep.preflight import Calibration, CellCheck


class SweepProgress:
    def __init__(
        self,
        console: Console,
        manifest: Manifest,
        todo: Sequence[CellCheck],
        calibration: Calibration,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.manifest, self.calibration, self.clock = console, manifest, calibration, clock
        self.checks = {c.cell.id: c for c in todo}
        self.left = [c.cell.id for c in todo]  # not finished yet
        self.running: dict[str, float] = {}  # cell -> when it started
        self.order: dict[str, int] = {}
        self.total = len(todo)

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def estimate(self, cell: str) -> float:
        return self.calibration.seconds(self.checks[cell])[0]

    def eta(self) -> float:
        """Seconds until the last cell ends: what is left of the running cells and the whole of
        the waiting ones, over the cells that run at once (one, locally)."""
        now = self.clock()
        left = 0.0
        for cell in self.left:
            expected = self.estimate(cell)
            left += max(0.0, expected - (now - self.running[cell])) if cell in self.running else expected
        return left / max(1, len(self.running))

    def started(self, cell: str, host: str, attempt: int = 1) -> None:
        self.running[cell] = self.clock()
        self.order.setdefault(cell, len(self.order) + 1)
        record = self.manifest.cells[cell]
        record.status, record.host, record.attempts = RUNNING, host, record.attempts + 1
        self.manifest.save()
        again = f" (attempt {attempt}, resuming from its journal)" if attempt > 1 else ""
        self.say(
            f"[{self.order[cell]}/{self.total}] start {cell} on {host}{again}; about "
            f"{format_duration(self.estimate(cell))}"
        )

    def finished(self, outcome: CellOutcome) -> None:
        cell = outcome.cell
        self.running.pop(cell, None)
        if cell in self.left:
            self.left.remove(cell)
        self.order.setdefault(cell, len(self.order) + 1)
        record = self.manifest.cells[cell]
        record.status, record.error, record.host = outcome.status, outcome.error, outcome.host
        record.seconds, record.summary = round(outcome.seconds, 2), outcome.summary
        if outcome.status == DONE and outcome.seconds > 0 and not outcome.resumed:
            self.calibration.observe(self.checks[cell], outcome.seconds)
        self.manifest.save()
        head = f"[{self.order[cell]}/{self.total}] {outcome.status} {cell}"
        if outcome.status == DONE:
            took = f" in {format_duration(outcome.seconds)}" if outcome.seconds > 0 else " (finished earlier)"
            what = f"{head}{took}" + (f": {outcome.summary}" if outcome.summary else "")
        elif outcome.status == FAILED:
            what = f"{head} after {format_duration(outcome.seconds)}: {outcome.error}; the sweep goes on"
        else:
            what = f"{head} after {format_duration(outcome.seconds)}"
        rest = (
            f"; sweep: about {format_duration(self.eta())} left" if self.left else "; sweep: every cell ended"
        )
        self.say(what + rest)
