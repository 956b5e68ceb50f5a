"""Command line: `main`, and the parser every command adds its own section to. Each command is
a module here (asv's way): `add_parser(subparsers)` for its options, and the command itself.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from kvprobe.cli import compare, doctor, quantize, report, run, scenarios, sweep
from kvprobe.cli.options import Subparsers, root_parser
from kvprobe.display import SafeConsole
from kvprobe.errors import EngineError, Interrupted, UserError

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


def main(argv: list[str] | None = None) -> int:
    # Redirected to a file, rich would wrap tables at 80 columns; a log reads better wide.
    console = SafeConsole(stderr=False, width=None if sys.stdout.isatty() else 160)
    err = SafeConsole(stderr=True)
    try:
        args = parse(build_parser(), argv)
        _, command = COMMANDS[args.command]
        return command(args, console, list(argv if argv is not None else sys.argv[1:]))
    except Interrupted as exc:
        err.print(f"kvprobe: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except UserError as exc:
        err.print(f"kvprobe: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except EngineError as exc:
        err.print(f"kvprobe: llama.cpp error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("kvprobe: interrupted; no result file was written", markup=False)
        return 130


def entry() -> None:
    sys.exit(main())
