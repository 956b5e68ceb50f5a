"""The command line, once loaded (kvprobe.cli's `entry` loads it after making Ctrl-C one line):
`main`, the parser every command adds its own section to, and the table of commands. Each
command is a module beside this one (asv's way): `add_parser(subparsers)` for its options, and
the command itself.

Whatever ends a command is one line on stderr, never a traceback: bad input (exit 2), a
failure of the system (a full disk, a path too long, standard output closed or full: exit 2),
Ctrl-C (130, naming the files written)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable
from typing import TextIO, cast

from rich.console import Console

from kvprobe.cli import compare, doctor, quantize, report, run, scenarios, sweep
from kvprobe.infra.display import SafeConsole, visible
from kvprobe.infra.errors import EngineError, Interrupted, UserError
from kvprobe.infra.parser import Subparsers, root_parser
from kvprobe.infra.paths import forget_written, shown_path, system_fix, written_files

__all__ = ["COMMANDS", "GuardedOutput", "build_parser", "interrupted", "main", "parse", "say"]

# A command: its options, the console, and the command line's words (argv without the program).
Command = Callable[[argparse.Namespace, Console, list[str]], int]

# Each command's parser section and the command, in the order `kvprobe --help` lists them.
COMMANDS: dict[str, tuple[Callable[[Subparsers], None], Command]] = {
    "run": (run.add_parser, run.cmd_run),
    "scenarios": (scenarios.add_parser, scenarios.cmd_scenarios),
    "report": (report.add_parser, report.cmd_report),
    "compare": (compare.add_parser, compare.cmd_compare),
    "doctor": (doctor.add_parser, doctor.cmd_doctor),
    "quantize": (quantize.add_parser, quantize.cmd_quantize),
    "sweep": (sweep.add_parser, sweep.cmd_sweep),
}


def build_parser() -> argparse.ArgumentParser:
    parser, subparsers = root_parser()
    for add_parser, _ in COMMANDS.values():
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
    try:
        if sys.stderr is not None:
            sys.stderr.write(visible(line) + "\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _written(before: str) -> str:
    """The files this command wrote that are still there ('; written ...: a, b'), or ''."""
    files = written_files()
    return f"; {before}: {files}" if files else ""


def _system_failure(exc: OSError) -> str:
    """An error of the system (ENOSPC, ENAMETOOLONG, EIO, EROFS ...) as one line: what, where,
    what to do, and what was written before it."""
    where = f" ({shown_path(exc.filename)})" if exc.filename is not None else ""
    return f"kvprobe: error: {exc.strerror or exc}{where}: {system_fix(exc)}{_written('written before it')}"


def _output_lost(shown: GuardedOutput) -> str:
    return (
        f"kvprobe: error: cannot write to standard output ({shown.failure}), so part of what kvprobe "
        f"printed was lost{_written('written in full')}; send the output to a file or to a program "
        "that reads it all"
    )


def interrupted() -> str:
    """Ctrl-C's line, naming the files written before it (a run's result, its journal)."""
    return f"kvprobe: interrupted{_written('written before it') or '; no file was written'}"


def _command(argv: list[str] | None, shown: GuardedOutput) -> tuple[int, str | None]:
    """The command's exit code, and the one line that ends it (None: it ended well)."""
    try:
        forget_written()
        # Redirected to a file, rich would wrap tables at 80 columns; a log reads better wide,
        # unless COLUMNS says how wide (rich reads it when given no width).
        wide = shown.isatty() or bool(os.environ.get("COLUMNS", "").isdigit())
        console = SafeConsole(stderr=False, width=None if wide else 160)
        args = parse(build_parser(), argv)
        code = COMMANDS[args.command][1](args, console, list(argv if argv is not None else sys.argv[1:]))
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
        return 130, interrupted()
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
