"""Figures as plain data (what is drawn: series, intervals, markers): probes build them
(`Probe.figures`), kvprobe.views.figures draws them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]
    lo: list[float] | None = None  # 95% interval, drawn as a band
    hi: list[float] | None = None
    reference: bool = False


@dataclass(frozen=True)
class Marker:
    """A point to mark on a series: an onset."""

    series: str
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class LineFigure:
    key: str  # file name stem for --png
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    markers: list[Marker] = field(default_factory=list)
    log2_x: bool = False
    level: tuple[float, str] | None = None  # a horizontal reference line (y, label)
    zero_line: bool = False
    levels: list[tuple[float, str]] = field(default_factory=list)  # more such lines: a ± margin


@dataclass(frozen=True)
class Heatmap:
    key: str
    title: str
    xlabel: str
    ylabel: str
    x_labels: list[str]
    y_labels: list[str]
    values: list[list[float | None]]  # rows (y) x columns (x); None: no item there
    colour_label: str
    diverging: bool = False  # a difference: centred on 0
    vmin: float = 0.0
    vmax: float = 1.0
    # Categories instead of a scale: each value is an index into them, drawn in its colour
    # (GROUP_COLOURS), and `text` is written in the cells instead of the numbers. On a scale,
    # `text` names the cells without a value (None): "not measured: decided earlier".
    categories: list[str] = field(default_factory=list)
    text: list[list[str]] | None = None


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    group: str  # the legend entry, and the colour: see GROUP_COLOURS
    note: str = ""  # written beside the point


@dataclass(frozen=True)
class Scatter:
    key: str
    title: str
    xlabel: str
    ylabel: str
    points: list[Point]
    level: tuple[float, str] | None = None
    # Logarithmic y. A point at exactly 0 (the reference's KL) has no place on it: it is drawn on
    # the bottom edge as a triangle, and its label says "= 0"; no negative region is invented.
    log_y: bool = False


Figure = LineFigure | Heatmap | Scatter


def margin_lines(margin: float | None) -> list[tuple[float, str]]:
    """The verdict's equivalence margin on a paired difference, both sides: what it is judged by."""
    if not margin:
        return []
    label = f"margin ±{margin:g} (the verdict's)"
    return [(-float(margin), label), (float(margin), label)]


def summary_series(
    summary: Sequence[dict[str, Any]], metric: str, config: str, *, reference: bool = False,
    label: str | None = None, scope: str | None = None,
) -> Series | None:  # fmt: skip
    """One configuration's summary rows of `metric` as a series with its intervals, by ctx."""
    rows = sorted(
        (r for r in summary if r["metric"] == metric and r["config"] == config
         and (scope is None or r.get("scope") == scope) and r.get("value") is not None),
        key=lambda r: int(r["ctx"]),
    )  # fmt: skip
    if not rows:
        return None
    cis = [[r["value"] if c is None else c for c in (r.get("ci") or [r["value"], r["value"]])] for r in rows]
    return Series(
        label or config,
        [float(r["ctx"]) for r in rows],
        [float(r["value"]) for r in rows],
        [float(c[0]) for c in cis],
        [float(c[1]) for c in cis],
        reference,
    )
