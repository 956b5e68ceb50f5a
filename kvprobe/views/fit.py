"""Any rich table made to fit the terminal without cutting a value: where its columns do not fit
side by side, they go into several tables, each repeating the row's key columns (context,
configuration, ...); each column gets at least its longest word, so rich wraps between words and
never ends a value with "…"."""

from __future__ import annotations

import re
from dataclasses import replace

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

# The leading columns that name a row: repeated in every part of a split table.
KEY_HEADERS = frozenset({"context", "config", "n", "positions", "probe", "name", "run", "model"})

_MEASURE = Console(width=10_000, color_system=None)  # measures only, prints nothing


VALUE = re.compile(r"[^A-Za-z]*")  # a number, an interval, a count: no letters


def _narrowest(cell: RenderableType) -> int:
    """A value stays on one line (a wide gap may part two values); words wrap between words."""
    text = _MEASURE.render_str(cell).plain if isinstance(cell, str) else getattr(cell, "plain", None)
    if text is not None and VALUE.fullmatch(text):
        return max(cell_len(part) for part in re.split(r"\s{2,}", text.strip()) or [""])
    return Measurement.get(_MEASURE, _MEASURE.options, cell).minimum


def _bounds(column: Column) -> tuple[int, int]:
    """Its narrowest width (its longest word or value; its longest text where it never wraps)
    and its widest."""
    lo, hi = 1, 1
    for n, cell in enumerate([column.header, *column.cells]):
        found = Measurement.get(_MEASURE, _MEASURE.options, cell)
        lo = max(lo, found.minimum if n == 0 else _narrowest(cell))
        hi = max(hi, found.maximum)
    return (hi if column.no_wrap else lo), hi


def _need(bounds: list[tuple[int, int]]) -> int:
    """The narrowest table of these columns: their words, one space each side, the rules."""
    return sum(lo for lo, _ in bounds) + 3 * len(bounds) + 1


def fitted_widths(bounds: list[tuple[int, int]], width: int) -> list[int]:
    """Each column's width: its narrowest, and of the room left a share by how much wider its
    text would be (every column at its widest where the room allows)."""
    room = width - _need(bounds)
    wants = [hi - lo for lo, hi in bounds]
    if room >= sum(wants):
        return [hi for _, hi in bounds]
    return [
        lo + (want * max(room, 0)) // max(sum(wants), 1) for (lo, _), want in zip(bounds, wants, strict=True)
    ]


def _keys(table: Table) -> int:
    """How many leading columns name the row (at least one)."""
    n = 0
    for column in table.columns:
        if str(column.header).strip().lower() not in KEY_HEADERS:
            break
        n += 1
    return max(1, min(n, len(table.columns) - 1))


def _groups(bounds: list[tuple[int, int]], keys: int, width: int) -> list[list[int]]:
    """The other columns, in order, packed into as few tables as fit `width` beside the keys."""
    groups: list[list[int]] = []
    for i in range(keys, len(bounds)):
        if groups and _need([bounds[j] for j in (*range(keys), *groups[-1], i)]) <= width:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _part(table: Table, indices: list[int], widths: list[int], title: str | Text | None) -> Table:
    part = Table(
        title=title, caption=table.caption, box=table.box, show_header=table.show_header,
        show_lines=table.show_lines, title_justify=table.title_justify, header_style=table.header_style,
        title_style=table.title_style,
    )  # fmt: skip
    for n, (i, w) in enumerate(zip(indices, widths, strict=True)):
        part.columns.append(replace(table.columns[i], width=w, min_width=None, max_width=None, _index=n))
    part.rows = list(table.rows)
    return part


def _continued(title: str | Text | None) -> str | None:
    """A part's title: the first's up to its first qualifier, continued."""
    if title is None:
        return None
    head = re.split(r"\s*[(:;]|,\s", str(title), maxsplit=1)[0].strip()
    return f"{head}, continued"


def fit_table(table: Table, width: int) -> list[Table]:
    """The table as it is where it fits `width` at its natural size; otherwise with widths that
    cut no word, in parts where its columns do not fit side by side."""
    bounds = [_bounds(c) for c in table.columns]
    if not bounds or sum(hi for _, hi in bounds) + 3 * len(bounds) + 1 <= width:
        return [table]
    keys = _keys(table)
    whole = [list(range(keys, len(bounds)))]
    groups = whole if _need(bounds) <= width else _groups(bounds, keys, width)
    if not groups:  # not even one column beside the keys fits: the table as it is, never nothing
        return [table]
    parts = []
    for n, group in enumerate(groups):
        indices = [*range(keys), *group]
        widths = fitted_widths([bounds[i] for i in indices], width)
        parts.append(_part(table, indices, widths, table.title if n == 0 else _continued(table.title)))
    return parts
