"""`kvprobe report`: saved results, one as at the end of its run, several side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kvprobe.cli.options import Subparsers, margin_option
from kvprobe.result.store import Result
from kvprobe.run import parse_margins
from kvprobe.stats.verdict import build_verdict
from kvprobe.views.pictures import check_pictures, write_pictures
from kvprobe.views.terminal import print_matrix, print_run_report


def add_parser(subparsers: Subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="show saved results: one as at the end of its run, several side by side"
    )
    report.add_argument("results", nargs="+", metavar="RESULT", help="result files (JSON from kvprobe run)")
    report.add_argument(
        "--html", metavar="PAGE", help="also write one self-contained HTML page with the figures"
    )
    report.add_argument("--png", metavar="DIR", help="also write every figure as a PNG file into DIR")
    report.add_argument("--force", action="store_true", help="overwrite an existing page or PNG files")
    margin_option(report)


def cmd_report(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    """One file: its tables and verdict, as at the end of `kvprobe run` (the same function);
    several: the matrix across runs. Only the files are read, never the model."""
    margins = parse_margins(args.margin)
    check_pictures(args.html, args.png, [Path(p) for p in args.results], force=args.force)
    loaded = [Result.load(Path(p)) for p in args.results]
    for r in loaded:  # other margins than the file's: the verdict again, from the file's own data
        if args.margin and r.doc.get("verdict") is not None and r.doc["verdict"].get("margins") != margins:
            r.doc["verdict"] = build_verdict(r.doc, r.doc["run"]["seed"], margins)
    named = [(r.path.name, r.doc) for r in loaded]
    if len(loaded) == 1:
        console.print(f"{loaded[0].path}: {loaded[0].doc.get('command', '')}", markup=False, highlight=False)
        print_run_report(loaded[0].doc, console)
    else:
        print_matrix(named, console)
    write_pictures(named, args.html, args.png, console, force=args.force)
    return 0
