"""`kvprobe report`: saved results, one as at the end of its run, several side by side, or a
sweep folder merged (kvprobe.sweep.view)."""

from __future__ import annotations

import argparse
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from kvprobe.api.result import ResultDoc
from kvprobe.cli.options import Subparsers, margin_option
from kvprobe.infra.errors import UserError
from kvprobe.result.journal import journal_path
from kvprobe.result.store import Result
from kvprobe.run.validate import parse_margins
from kvprobe.stats.verdict import build_verdict
from kvprobe.sweep.collect import SweepReport, collect
from kvprobe.sweep.manifest import MANIFEST, is_sweep_folder
from kvprobe.sweep.view import cell_page_links, every_figure, print_sweep, sweep_page
from kvprobe.views.figures import write_png
from kvprobe.views.pictures import check_pictures, png_figures, save_page, write_pictures
from kvprobe.views.terminal import print_matrix, print_run_report

SWEEP_PAGE = "report.html"  # a sweep's merged page, in its folder unless --html says elsewhere


def add_parser(subparsers: Subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="show saved results: one as at the end of its run, several side by side, or a sweep folder",
    )
    report.add_argument(
        "results",
        nargs="+",
        metavar="RESULT",
        help="result files (JSON from kvprobe run), or one sweep folder",
    )
    report.add_argument(
        "--html", metavar="PAGE", help="also write one self-contained HTML page with the figures (a sweep: "
        f"default <SWEEP_DIR>/{SWEEP_PAGE})",
    )  # fmt: skip
    report.add_argument("--png", metavar="DIR", help="also write every figure as a PNG file into DIR")
    report.add_argument("--force", action="store_true", help="overwrite an existing page or PNG files")
    report.add_argument(
        "--details", action="store_true", help="also the intervals, p-values and fits behind the decision "
        "(the recommendation's and the verdict's sentences, the probes' lines, the cost)",
    )  # fmt: skip
    margin_option(report)


def _rebuild(args: argparse.Namespace, margins: dict[str, float]) -> Callable[[ResultDoc], None]:
    def rebuild(doc: ResultDoc) -> None:  # other margins than the file's: the verdict again
        if args.margin and doc.get("verdict") is not None and doc["verdict"].get("margins") != margins:
            doc["verdict"] = build_verdict(doc, doc["run"]["seed"], margins)

    return rebuild


def cmd_report(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    """One file: its tables and verdict, as at the end of `kvprobe run` (the same function);
    several: the matrix across runs; a sweep folder: the sweep merged. Only the files are read,
    never the model."""
    margins = parse_margins(args.margin)
    folders = [p for p in args.results if Path(p).is_dir()]
    if folders:
        if len(args.results) > 1 or not is_sweep_folder(Path(folders[0])):
            raise UserError(
                f"{folders[0]} is a folder: give result files, or one folder that `kvprobe sweep` wrote"
            )
        return report_sweep(Path(folders[0]), args, margins, console)
    inputs = [Path(p) for p in args.results]
    check_pictures(args.html, args.png, inputs, force=args.force)  # the paths alone, before reading
    loaded = [Result.load(path) for path in inputs]
    rebuild = _rebuild(args, margins)
    for r in loaded:
        rebuild(r.doc)
    named = [(r.path.name, r.doc) for r in loaded]
    figures = png_figures(named) if args.png else []
    check_pictures(args.html, args.png, inputs, force=args.force, figures=figures)  # each PNG file too
    if len(loaded) == 1:
        console.print(f"{loaded[0].path}: {loaded[0].doc.get('command', '')}", markup=False, highlight=False)
        print_run_report(loaded[0].doc, console, details=args.details, path=str(loaded[0].path))
    else:
        print_matrix(named, console)
    write_pictures(named, args.html, args.png, console, force=args.force, figures=figures)
    return 0


def report_sweep(folder: Path, args: argparse.Namespace, margins: dict[str, float], console: Console) -> int:
    """The sweep's tables; its page (in the folder by default, replaced: it is made from the
    files) and PNG files where asked."""
    default_page = folder / SWEEP_PAGE
    has_plot = importlib.util.find_spec("matplotlib") is not None
    page = Path(args.html) if args.html else (default_page if has_plot else None)
    own_page = page is not None and page.absolute() == default_page.absolute()  # made from the files
    check = functools.partial(check_pictures, page, args.png, force=args.force, page_may_exist=own_page)
    check([folder / MANIFEST])  # the paths alone, before reading
    report = collect(folder, _rebuild(args, margins))
    figures = every_figure(report) if args.png else []
    check(sweep_inputs(folder, report), figures=figures)
    print_sweep(report, console)
    if page is not None:
        save_page(page, sweep_page(report, cell_page_links(report, page)), console)
    if args.png:
        paths = write_png(figures, args.png, force=args.force)
        console.print(f"figures: {len(paths)} PNG files in {args.png}", markup=False, highlight=False)
    return 0


def sweep_inputs(folder: Path, report: SweepReport) -> list[Path]:
    """What `report` reads of a sweep folder, which its --html and --png never replace: the
    manifest, and each cell's result and journal."""
    outs = [folder / record.out for record in report.manifest.cells.values()]
    return [folder / MANIFEST, *outs, *(journal_path(out) for out in outs)]
