"""`kvprobe doctor`: a GGUF file's weights and its KV cache memory, from the header."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.console import Console

from kvprobe.cli.options import Subparsers
from kvprobe.infra.errors import UserError
from kvprobe.infra.provenance import default_model_path
from kvprobe.views.doctor import print_doctor
from kvprobe.weights.doctor import diagnose

MAX_VRAM_GB = 100_000  # more GPU memory than any node has: a typo
DEFAULT = "default"  # the embedded default model, as `kvprobe run` uses it without --model


def add_parser(subparsers: Subparsers) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="diagnose a GGUF file's weights and its KV cache memory",
        description="What a GGUF file is (types, importance matrix, re-quantization), its findings, and its "
        "KV memory per cache type and context. Without a path, or with 'default', the embedded default "
        "model (whose path it prints).",
    )
    doctor.add_argument(
        "model", nargs="?", help="GGUF model file, or 'default' (the default: the embedded default model)"
    )
    doctor.add_argument("--model", dest="model_option", metavar="PATH", help="the same as the MODEL argument")
    doctor.add_argument(
        "--vram", type=float, metavar="GB", help="GPU memory: which cache type and context fit"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")


def model_path(args: argparse.Namespace) -> Path:
    """The file to examine: the argument or --model (not both), else the default model."""
    if args.model is not None and args.model_option is not None:
        raise UserError(f"give the model once: {args.model} or --model {args.model_option}, not both")
    given = args.model if args.model is not None else args.model_option
    if given is None or given == DEFAULT:
        return default_model_path()
    return Path(given).expanduser()


def build_line() -> str:
    """This host's llama.cpp build in one line: its backends, whether it offloads to a GPU,
    and whether it has flash attention for mixed K/V types (how to check a CUDA build took)."""
    from kvprobe.engine import get_engine  # llama.cpp loads only here, after the header is read

    info = get_engine().runtime_info()
    build = str(info.get("llama_cpp_build", ""))
    backends = re.findall(r"(?:^|\|)\s*([A-Za-z][\w-]*) :", build)
    line = f"llama.cpp build (llama-cpp-python {info.get('llama_cpp_python')}): {', '.join(backends) or '?'}"
    if not info.get("gpu_offload_supported"):
        return line + "; no GPU offload: runs on the CPU (a CUDA build: docs/hardware.md)"
    pairs = "every K/V pair" if "FA_ALL_QUANTS = 1" in build else "matching K/V types only (no FA_ALL_QUANTS)"
    return line + f"; GPU offload; flash attention for {pairs}"


def cmd_doctor(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    if args.vram is not None and not 0 < args.vram <= MAX_VRAM_GB:  # also refuses nan and inf
        raise UserError(f"--vram must be a number of GB above 0 and at most {MAX_VRAM_GB:,}, e.g. --vram 24")
    report = diagnose(model_path(args), args.vram)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if report["fit"] is not None:  # what matters most on that card, before the details
        console.print(report["fit"], markup=False, highlight=False)
    print_doctor(report, console)
    console.print(build_line(), markup=False, highlight=False)  # wrapped at the terminal's width
    return 0
