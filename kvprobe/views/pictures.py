"""--html PAGE and --png DIR on disk, for `run`, `report` and `compare`: checked before any
work, written at the end (matplotlib, from the plot extra, draws the figures)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from kvprobe.api import all_probes
from kvprobe.paths import Output, check_outputs, write_atomically
from kvprobe.views.decision import frontier_figure
from kvprobe.views.figures import Figure, write_png
from kvprobe.views.html import page


def check_pictures(html_path: str | None, png_dir: str | None, inputs: list[Path], *, force: bool) -> None:
    """--html PAGE and --png DIR, before any work: never onto an input, never over an existing
    page without --force, each into a folder that takes it."""
    outputs = [Output(Path(html_path), "--html")] if html_path else []
    if png_dir:
        outputs.append(Output(Path(png_dir), "--png", folder=True))
    check_outputs(outputs, inputs, force=force)


def save_page(target: Path, text: str, console: Console) -> None:
    write_atomically(target, text.encode("utf-8"), "--html")
    console.print(f"page: {target}", markup=False, highlight=False)


def every_figure(result: dict[str, Any]) -> list[Figure]:
    """The figures of one result: the frontier, then each probe's."""
    found = [frontier_figure(result), *(f for probe in all_probes() for f in probe.figures(result))]
    return [f for f in found if f is not None]


def write_pictures(
    named: list[tuple[str, dict[str, Any]]],
    html_path: str | None,
    png_dir: str | None,
    console: Console,
    *,
    force: bool,
) -> None:
    """--html PAGE and --png DIR for `report` (and `run`): matplotlib from the plot extra."""
    if not html_path and not png_dir:
        return
    if html_path:
        save_page(Path(html_path), page(named), console)
    if png_dir:
        figures = [
            # several results: each file's figures under its own name, none overwriting another's
            replace(f, key=f"{i + 1}-{Path(name).stem}-{f.key}") if len(named) > 1 else f
            for i, (name, result) in enumerate(named)
            for f in every_figure(result)
        ]
        paths = write_png(figures, png_dir, force=force)
        console.print(f"figures: {len(paths)} PNG files in {png_dir}", markup=False, highlight=False)
