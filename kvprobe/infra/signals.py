"""SIGTERM as Ctrl-C: what `kill`, systemd or a scheduler sends to stop a run or a sweep ends
it the way Ctrl-C does (the finished units kept, one line saying how to resume), not as an
abrupt death that leaves a journal's last unit half written."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def _as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt; the handler before it is put back
    after. (Python sets handlers in the main thread only, where kvprobe's commands run.)"""
    previous = signal.signal(signal.SIGTERM, _as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
