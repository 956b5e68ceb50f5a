"""Command line: `entry`, the console script and `python -m kvprobe`. It makes Ctrl-C one line
before anything slow loads, then loads the commands (kvprobe.cli.app: `main`, the parser, one
module per command, asv's way) and runs one.

The package imports only the standard library here: the commands take 0.7 s to import, and a
Ctrl-C among those imports would otherwise be a traceback. `main`, `build_parser` and
`COMMANDS` are kvprobe.cli.app's, loaded when first asked for.
"""

from __future__ import annotations

import os
import signal
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvprobe.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "entry", "main"]


def _app() -> ModuleType:
    from kvprobe.cli import app  # the commands' 0.7 s of imports: only once Ctrl-C is one line (entry)

    return app


def __getattr__(name: str) -> Any:
    if name in ("main", "build_parser", "COMMANDS"):  # the app's, loaded when first asked for
        return getattr(_app(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while the modules load: nothing has been written yet; one line, and out (no
    exception that an import could turn into a traceback)."""
    try:
        os.write(2, b"kvprobe: interrupted while starting; no file was written\n")
    finally:
        os._exit(130)


def _standard_fds() -> None:
    """A closed standard stream (`kvprobe report X >&-`) gets /dev/null under its number: else
    the first file kvprobe opens would take it, and a print or llama.cpp's log would land there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def entry() -> None:
    """The console script and `python -m kvprobe`: Ctrl-C is one line from here on."""
    _standard_fds()
    starting = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when SIGINT is ignored
    if starting:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    app = _app()  # the slow imports, under the start-up handler
    if starting:  # loaded: Ctrl-C is Python's KeyboardInterrupt again, which `main` catches
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app.main()
    except KeyboardInterrupt:  # in the few instructions between main's handlers
        app.say(app.interrupted())
        code = 130
    sys.exit(code)
