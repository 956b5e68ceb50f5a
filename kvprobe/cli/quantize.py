"""`kvprobe quantize`: weight variants of a GGUF file, with llama.cpp's quantizer."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from kvprobe import engine
from kvprobe.cli.options import Subparsers
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import Output, check_outputs, note_written
from kvprobe.run.validate import MAX_THREADS
from kvprobe.weights.doctor import KNOWN_FILE_TYPES
from kvprobe.weights.quantize import Job, load_imatrix, plan_jobs, provenance_metadata


def add_parser(subparsers: Subparsers) -> None:
    quantize = subparsers.add_parser("quantize", help="make weight variants with llama.cpp's quantizer")
    quantize.add_argument("source", help="GGUF model file to quantize (ideally f16/bf16)")
    quantize.add_argument(
        "--type", action="append", required=True, metavar="T", dest="types",
        help="target type, repeatable: F16 BF16 F32 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K ...",
    )  # fmt: skip
    quantize.add_argument("--out-dir", help="folder for the variants (default: the source's folder)")
    quantize.add_argument("--imatrix", help="importance matrix (GGUF, from llama-imatrix)")
    quantize.add_argument(
        "--allow-requantize", action="store_true", help="quantize an already quantized source anyway"
    )
    quantize.add_argument(
        "--pure", action="store_true", help="every tensor to the same type (no protected embedding/output)"
    )
    quantize.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    quantize.add_argument("--force", action="store_true", help="overwrite existing output files")


def cmd_quantize(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    src = Path(args.source).expanduser()
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be from 1 to {MAX_THREADS} (GGML_MAX_N_THREADS), got {args.threads}")
    out_dir = Path(args.out_dir).expanduser() if args.out_dir else src.parent

    inputs = [src, *([Path(args.imatrix).expanduser()] if args.imatrix else [])]
    check_outputs([Output(out_dir, "--out-dir", folder=True)], inputs, force=args.force)
    quantizer = engine.quantizer()  # the engine loads here, once the paths are checked
    ftype_of = {name: i for name in KNOWN_FILE_TYPES if (i := quantizer.ftype_id(name)) is not None}
    jobs, origin = plan_jobs(
        src,
        args.types,
        out_dir,
        allow_requantize=args.allow_requantize,
        ftype_of=ftype_of,
        pure=args.pure,
    )
    # Every file a job writes, its partial too, checked as any output is: never an input, a
    # folder, a FIFO or a broken link, and not there without --force (a partial is ours to replace).
    variants = Output(out_dir, "--out-dir", folder=True, files=tuple(j.dst.name for j in jobs))
    partials = Output(out_dir, "--out-dir", folder=True, files=tuple(partial(j.dst).name for j in jobs))
    check_outputs([variants], inputs, force=args.force)
    check_outputs([replace(partials, may_exist=True)], inputs, force=True)
    imatrix, metadata = load_imatrix(Path(args.imatrix).expanduser()) if args.imatrix else (None, {})
    threads = args.threads or max(1, os.cpu_count() or 1)
    out_dir.mkdir(parents=True, exist_ok=True)  # checked writable above; created only now
    for job in jobs:
        console.print(f"{src.name} -> {job.dst} ({job.type_name}: {job.note})", markup=False, highlight=False)
        quantize_one(job, src, threads, imatrix, {**metadata, **provenance_metadata(origin)}, pure=args.pure)
        console.print(
            f"  wrote {job.dst} ({job.dst.stat().st_size / 2**20:.1f} MiB)", markup=False, highlight=False
        )
    return 0


def partial(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.partial")


def quantize_one(
    job: Job,
    src: Path,
    threads: int,
    imatrix: dict[str, Any] | None,
    metadata: dict[str, str | int],
    *,
    pure: bool,
) -> None:
    """One variant: llama.cpp writes a partial file (made new here, so no link or hard link at
    its name is written through), renamed onto the variant when whole; whatever fails, no
    partial is left behind and variants already written stay."""
    tmp = partial(job.dst)
    try:
        tmp.unlink(missing_ok=True)  # one left by a killed run (a link: the link, not its target)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        engine.quantizer().quantize(
            src,
            tmp,
            job.ftype,
            allow_requantize=True,  # plan_jobs has already refused what the user did not allow
            pure=pure,
            n_threads=threads,
            imatrix=imatrix,
            metadata=metadata,
        )
        tmp.replace(job.dst)  # a finished file or none: an interrupted run leaves no half model
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    note_written(job.dst)
