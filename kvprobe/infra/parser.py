"""The command line's parser class, which ends in one line (a UserError, exit 2) where argparse
would print its usage and exit, and `kvprobe`'s root parser that each command adds its section
to. Here, below every command's options, so that `kvprobe run`'s options (kvprobe.run.options)
can be read by a sweep as by the command line."""

from __future__ import annotations

import argparse
import re
from typing import Any, TypeAlias

from kvprobe import __version__
from kvprobe.infra.errors import UserError

Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"  # what each command adds its section to


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A value that starts with a minus and a digit (`--time-budget -5m`, `--seed -1`) is a
        # value to check, not an unknown option: its own check then names the real problem.
        # No option of kvprobe's looks like that.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{message} (see `{self.prog} --help`)")


def root_parser() -> tuple[Parser, Subparsers]:
    """`kvprobe` itself, and the subparsers each command adds its section to."""
    parser = Parser(
        prog="kvprobe", description="Measure long-context degradation from KV cache quantization."
    )
    parser.add_argument("--version", action="version", version=f"kvprobe {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True, parser_class=Parser)
