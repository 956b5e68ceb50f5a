"""Command line: `main`, and the parser every command adds its own section to. Each command is
a module here (asv's way): `add_parser(subparsers)` for its options, and the command itself.

Whatever ends a command is one line on stderr, never a traceback: bad input (exit 2), a
failure of the system (a full disk, a path too long, standard output closed or full: exit 2),
Ctrl-C (130, naming the files written). This module imports only the standard library: the
commands (0.7 s of imports) load inside `main`, after `entry` has made Ctrl-C one line.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO, cast

if TYPE_CHECKING:
    from rich.console import Console

    from kvprobe.cli.options import Subparsers

    # A command: its options, the console, and the command line's words (argv without the program).
    Command = Callable[[argparse.Namespace, Console, list[str]], int]


@functools.cache
def commands() -> dict[str, tuple[Callable[[Subparsers], None], Command]]:
    """Each command's parser section and the command, in the order `kvprobe --help` lists them."""
    from kvprobe.cli import compare, doctor, quantize, report, run, scenarios, sweep

    return {
        "run": (run.add_parser, run.cmd_run),
        "scenarios": (scenarios.add_parser, scenarios.cmd_scenarios),
        "report": (report.add_parser, report.cmd_report),
        "compare": (compare.add_parser, compare.cmd_compare),
        "doctor": (doctor.add_parser, doctor.cmd_doctor),
        "quantize": (quantize.add_parser, quantize.cmd_quantize),
        "sweep": (sweep.add_parser, sweep.cmd_sweep),
    }


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":  # the table, loaded when first asked for (see the module's docstring)
        return commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    from kvprobe.cli.options import root_parser

    parser, subparsers = root_parser()
    for add_parser, _ in commands().values():
        add_parser(subparsers)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The options; words no command knows are refused by that command's own parser, so the
    line names its help (`kvprobe run --help`), not the root's."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        action.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


class GuardedOutput:
    """Standard output while a command runs: a write that fails (the reader of a pipe gone, a
    full disk under a redirect, no standard output at all) is dropped and remembered, never
    raised, so a run goes on to its result and journal when what it prints to goes away; `main`
    says so in one line at the end. (rich would exit on a broken pipe: it never sees one.)"""

    closed = False

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self.encoding: str = getattr(stream, "encoding", None) or "utf-8"
        self.failure = "it is closed" if stream is None else ""
        self.lost = False  # some output was not shown

    def write(self, text: str) -> int:
        self._do(lambda stream: stream.write(text))
        self.lost = self.lost or (bool(self.failure) and bool(text))
        return len(text)

    def flush(self) -> None:
        self._do(lambda stream: stream.flush())

    def _do(self, act: Callable[[TextIO], object]) -> None:
        if self.failure or self._stream is None:
            return
        try:
            act(self._stream)
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
            self.failure = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.lost = True
            self._to_devnull()

    def _to_devnull(self) -> None:
        """What is still buffered for the broken stream goes nowhere at exit, without an error."""
        try:
            fd = cast(TextIO, self._stream).fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture)
            pass

    def isatty(self) -> bool:
        try:
            return not self.failure and self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.failure or self._stream is None:
            raise io.UnsupportedOperation("standard output failed")
        return self._stream.fileno()

    def writable(self) -> bool:
        return True


def say(line: str) -> None:
    """One line on stderr, control characters written out; a stderr that fails is let be."""
    from kvprobe.infra.display import visible

    try:
        if sys.stderr is not None:
            sys.stderr.write(visible(line) + "\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _written(before: str) -> str:
    """The files this command wrote that are still there ('; written ...: a, b'), or ''."""
    from kvprobe.infra.paths import written_files

    files = written_files()
    return f"; {before}: {files}" if files else ""


def _system_failure(exc: OSError) -> str:
    """An error of the system (ENOSPC, ENAMETOOLONG, EIO, EROFS ...) as one line: what, where,
    what to do, and what was written before it."""
    from kvprobe.infra.paths import shown_path, system_fix

    where = f" ({shown_path(exc.filename)})" if exc.filename is not None else ""
    return f"kvprobe: error: {exc.strerror or exc}{where}: {system_fix(exc)}{_written('written before it')}"


def _output_lost(shown: GuardedOutput) -> str:
    return (
        f"kvprobe: error: cannot write to standard output ({shown.failure}), so part of what kvprobe "
        f"printed was lost{_written('written in full')}; send the output to a file or to a program "
        "that reads it all"
    )


def _interrupted() -> str:
    """Ctrl-C's line, naming the files written before it (a run's result, its journal)."""
    return f"kvprobe: interrupted{_written('written before it') or '; no file was written'}"


def _command(argv: list[str] | None, shown: GuardedOutput) -> tuple[int, str | None]:
    """The command's exit code, and the one line that ends it (None: it ended well)."""
    from kvprobe.infra.errors import EngineError, Interrupted, UserError

    try:
        table = commands()  # the slow imports, under entry's start-up handler
        _started()
        from kvprobe.infra.display import SafeConsole
        from kvprobe.infra.paths import forget_written

        forget_written()
        # Redirected to a file, rich would wrap tables at 80 columns; a log reads better wide.
        console = SafeConsole(stderr=False, width=None if shown.isatty() else 160)
        args = parse(build_parser(), argv)
        code = table[args.command][1](args, console, list(argv if argv is not None else sys.argv[1:]))
        shown.flush()  # a full disk under a redirect shows here
        return code, None
    except SystemExit:  # --help, or argparse's usage line
        shown.flush()
        if shown.lost:
            return 2, _output_lost(shown)
        raise
    except Interrupted as exc:
        return exc.exit_code, f"kvprobe: {exc}"
    except UserError as exc:
        return exc.exit_code, f"kvprobe: error: {exc}"
    except EngineError as exc:
        return 1, f"kvprobe: llama.cpp error: {exc}"
    except KeyboardInterrupt:
        return 130, _interrupted()
    except OSError as exc:
        return 2, _system_failure(exc)


def main(argv: list[str] | None = None) -> int:
    """Run one command with standard output guarded (GuardedOutput); whatever ends it badly
    is one line on stderr, and the exit code is returned."""
    shown = GuardedOutput(sys.stdout)
    real = sys.stdout
    sys.stdout = cast(TextIO, shown)
    try:
        code, line = _command(argv, shown)
    finally:
        sys.stdout = real
    if line is None and shown.lost:
        code, line = 2, _output_lost(shown)
    if line is not None:
        say(line)
    return code


# Set while entry's start-up handler stands in for Python's Ctrl-C handler.
_STARTING: list[bool] = []


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while the modules load: nothing has been written yet; one line, and out (no
    exception that an import could turn into a traceback)."""
    try:
        os.write(2, b"kvprobe: interrupted while starting; no file was written\n")
    finally:
        os._exit(130)


def _started() -> None:
    """The modules are loaded: Ctrl-C is Python's KeyboardInterrupt again, which `main` catches."""
    if _STARTING:
        _STARTING.clear()
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        _STARTING.append(True)
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        code = main()
    except KeyboardInterrupt:  # in the few instructions between main's handlers
        say(_interrupted())
        code = 130
    sys.exit(code)
