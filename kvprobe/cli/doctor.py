"""`kvprobe doctor`: a GGUF file's weights and its KV cache memory, from the header."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from kvprobe.cli.options import Subparsers
from kvprobe.infra.errors import UserError
from kvprobe.views.doctor import print_doctor
from kvprobe.weights.doctor import diagnose

MAX_VRAM_GB = 100_000  # more GPU memory than any node has: a typo


def add_parser(subparsers: Subparsers) -> None:
    doctor = subparsers.add_parser("doctor", help="diagnose a GGUF file's weights and its KV cache memory")
    doctor.add_argument("model", help="GGUF model file")
    doctor.add_argument(
        "--vram", type=float, metavar="GB", help="GPU memory: which cache type and context fit"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_doctor(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    if args.vram is not None and not 0 < args.vram <= MAX_VRAM_GB:  # also refuses nan and inf
        raise UserError(f"--vram must be a number of GB above 0 and at most {MAX_VRAM_GB:,}, e.g. --vram 24")
    report = diagnose(Path(args.model).expanduser(), args.vram)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_doctor(report, console)
    return 0
