"""--html PAGE and --png DIR on disk, for `run`, `report` and `compare`: checked before any
work, written at the end (matplotlib, from the plot extra, draws the figures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from kvprobe.api import all_probes
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import SafeConsole
from kvprobe.infra.paths import Output, check_outputs, write_atomically
from kvprobe.views.decision import frontier_figure
from kvprobe.views.figures import Figure, write_png
from kvprobe.views.html import page


def png_name(figure: Figure) -> str:
    """The file write_png makes of a figure in its folder."""
    return f"{figure.key}.png"


def check_pictures(
    html_path: str | Path | None,
    png_dir: str | None,
    inputs: list[Path],
    *,
    force: bool,
    figures: Sequence[Figure] = (),
    page_may_exist: bool = False,
) -> None:
    """--html PAGE and --png DIR (with the files `figures` will make in it), before anything is
    written: never onto an input (by inode, whatever --force says), never over an existing
    file without --force, each into a folder that takes it (paths.check_outputs)."""
    outputs = [Output(Path(html_path), "--html", may_exist=page_may_exist)] if html_path else []
    if png_dir:
        outputs.append(Output(Path(png_dir), "--png", folder=True, files=tuple(png_name(f) for f in figures)))
    check_outputs(outputs, inputs, force=force)


def save_page(target: Path, text: str, console: Console) -> None:
    write_atomically(target, text.encode("utf-8"), "--html")
    console.print(f"page: {target}", markup=False, highlight=False)


def every_figure(result: ResultDoc) -> list[Figure]:
    """The figures of one result: the frontier, then each probe's."""
    found = [frontier_figure(result), *(f for probe in all_probes() for f in probe.figures(result))]
    return [f for f in found if f is not None]


def png_figures(named: list[tuple[str, ResultDoc]]) -> list[Figure]:
    """The figures --png writes for these results: several results' each under its file's name,
    none overwriting another's."""
    return [
        replace(f, key=f"{i + 1}-{Path(name).stem}-{f.key}") if len(named) > 1 else f
        for i, (name, result) in enumerate(named)
        for f in every_figure(result)
    ]


def progress(named: list[tuple[str, ResultDoc]], what: str) -> Callable[[int], None]:
    """A line on stderr as the figures of each of several results are drawn (about a second per
    figure): a report of many files says what it is doing."""
    err = SafeConsole(stderr=True)
    said: set[int] = set()

    def say(i: int) -> None:
        if len(named) > 1 and 0 <= i < len(named) and i not in said:
            said.add(i)
            err.print(f"{what}: figures of {named[i][0]} ({i + 1} of {len(named)})", markup=False)

    return say


def write_pictures(
    named: list[tuple[str, ResultDoc]],
    html_path: str | None,
    png_dir: str | None,
    console: Console,
    *,
    force: bool,
    figures: list[Figure] | None = None,
) -> None:
    """--html PAGE and --png DIR for `report` (and `run`): matplotlib from the plot extra.
    `figures`: the PNG figures already made (and checked) by the caller."""
    if not html_path and not png_dir:
        return
    if html_path:
        save_page(Path(html_path), page(named, on_result=progress(named, "page")), console)
    if png_dir:
        figures = figures if figures is not None else png_figures(named)
        said = progress(named, "png")
        # Several results' figures are keyed "<n>-<file>-..." (png_figures): n says whose it is.
        owner = [int(n) - 1 if (n := f.key.split("-", 1)[0]).isdigit() else -1 for f in figures]
        paths = write_png(figures, png_dir, force=force, on_figure=lambda i: said(owner[i]))
        console.print(f"figures: {len(paths)} PNG files in {png_dir}", markup=False, highlight=False)
