"""The local executor: one cell after another in this process's child, no scheduler."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from kvprobe.sweep.cell_run import INTERRUPTED, run_cell
from kvprobe.sweep.jobs import CellJob
from kvprobe.sweep.progress import SweepProgress


def run_local(jobs: Sequence[CellJob], progress: SweepProgress) -> None:
    """Each cell in turn; a failed cell is recorded and the next one starts. Ctrl-C stops the
    running cell cleanly (its journal stays) and ends the sweep with KeyboardInterrupt."""
    host = socket.gethostname()
    for job in jobs:
        progress.started(job.cell, host, attempt=2 if job.resumes else 1)
        outcome = run_cell(job.cell, job.argv, job.out)
        progress.finished(outcome)
        if outcome.status == INTERRUPTED:
            raise KeyboardInterrupt
