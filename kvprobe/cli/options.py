"""What the commands' parser sections share: the parser class that ends in one line, the
root parser, and option types and options more than one command takes."""

from __future__ import annotations

import argparse
import re
from typing import Any, TypeAlias

from kvprobe import __version__
from kvprobe.infra.errors import UserError

MIN_CTX = 256
MAX_CTX = 1 << 20  # the longest contexts GGUF models ship with; beyond it is a typo, not a plan

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


def ctx_tokens(text: str) -> int:
    """--ctx: a whole number of tokens from MIN_CTX to MAX_CTX."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ctx must be a whole number of tokens, got {text!r}") from None
    if value < MIN_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at least {MIN_CTX} tokens, got {value}")
    if value > MAX_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at most {MAX_CTX} tokens, got {value}")
    return value


def duration(text: str) -> float:
    """ "15m", "1h30m", "90s" or plain seconds -> seconds."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"--time-budget must be longer than zero, got {text!r}")
    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or parts is None or not any(parts.groups()):
        raise argparse.ArgumentTypeError(
            f"--time-budget takes a duration such as 15m, 2h or 90s, got {text!r}"
        )
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"--time-budget must be longer than zero, got {text!r}")
    return seconds


def margin_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--margin",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="equivalence margin for the verdict (repeatable; defaults accuracy=0.05, answer_logprob=0.25 "
        "nats, kld_mean=0.02 and kld_p999=0.5 nats, upper bounds for KL)",
    )
