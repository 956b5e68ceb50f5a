"""A cell as an executor sees it: its name, its `kvprobe run` words, its result file, and the
resources it asks a scheduler for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CellJob:
    cell: str
    argv: list[str]
    out: Path
    resumes: bool = False  # a journal of an earlier attempt waits
    memory_bytes: int | None = None  # the pre-flight estimate (host memory)
    threads: int | None = None  # --threads of its run, where the sweep sets it
    on_gpu: bool = False
