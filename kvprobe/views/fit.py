"""Any rich table made to fit the terminal without cutting a value: where its columns do not fit
side by side, they go into several tables, each repeating the row's key columns (context,
configuration, ...); each column gets at least its longest word, so rich wraps between words and
never ends a value with "…". A cell whose words must stay together (a flag and its value, a size
and its unit) is made of `Units`: it wraps between them only, so its longest one is the column's
narrowest width."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

# The leading columns that name a row: repeated in every part of a split table.
KEY_HEADERS = frozenset({"context", "config", "n", "positions", "probe", "name", "run", "model"})

_MEASURE = Console(width=10_000, color_system=None)  # measures only, prints nothing


VALUE = re.compile(r"[^A-Za-z]*")  # a number, an interval, a count: no letters


# A command-line flag with its value where it has one ("-ctk q4_0", "-fa on", "--split-kv"): a
# unit on the terminal and a span that never wraps on the page (kvprobe.views.layout.flag_pairs).
FLAG = re.compile(r"(?<!\S)(--?[A-Za-z][\w-]*(?: [^\s(-]\S*)?)")


def flag_units(text: str) -> list[str]:
    """The text's words, each flag with its value as one."""
    return [u for i, part in enumerate(FLAG.split(text)) for u in ([part] if i % 2 else part.split())]


class Units:
    """A cell of units that never break inside ("-ctk q8_0", "1.56 GiB"): it wraps between
    them only, as many on a line as its width holds, so its narrowest width is its longest unit.
    A unit is plain text (no markup: a name from a file prints as it is) or a styled Text."""

    def __init__(self, units: Sequence[str | Text]) -> None:
        self.units = [Text(u) if isinstance(u, str) else u for u in units]

    def __str__(self) -> str:
        return " ".join(u.plain for u in self.units)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        longest = max((u.cell_len for u in self.units), default=0)
        return Measurement(longest, cell_len(str(self)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines: list[Text] = []
        for unit in self.units:
            if lines and lines[-1].cell_len + 1 + unit.cell_len <= options.max_width:
                lines[-1].append(" ")
                lines[-1].append_text(unit)
            else:
                lines.append(unit.copy())
        yield Text("\n").join(lines)  # justified as the column says (rich's options)


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


def _groups(
    bounds: list[tuple[int, int]], keys: int, width: int, blocks: Sequence[Sequence[int]]
) -> list[list[int]]:
    """The blocks of other columns, in their order, each whole into the last table where it fits
    `width` beside the keys or else a new one; each table's columns in the table's order."""
    groups: list[list[int]] = []
    for block in blocks:
        if groups and _need([bounds[j] for j in (*range(keys), *groups[-1], *block)]) <= width:
            groups[-1].extend(block)
        else:
            groups.append(list(block))
    return [sorted(g) for g in groups]


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


def _stacked(table: Table) -> Table:
    """Each row as a record, a line per column, its header beside its value (the keys first):
    where the columns cannot stand side by side. A value wider than the terminal folds onto the
    next line, never cut."""
    stacked = Table(
        title=table.title, caption=table.caption, box=table.box, show_header=False,
        title_justify=table.title_justify, title_style=table.title_style,
    )  # fmt: skip
    stacked.add_column(justify="right", style=table.header_style, overflow="fold")
    stacked.add_column(overflow="fold")
    cells = [list(c.cells) for c in table.columns]
    last = len(table.columns) - 1
    for r in range(table.row_count):
        for i, column in enumerate(table.columns):
            stacked.add_row(column.header, cells[i][r], end_section=i == last)
    return stacked


def _continued(title: str | Text | None) -> str | None:
    """A part's title: the first's up to its first qualifier, continued."""
    if title is None:
        return None
    head = re.split(r"\s*[(:;]|,\s", str(title), maxsplit=1)[0].strip()
    return f"{head}, continued"


def fits_whole(table: Table, width: int) -> bool:
    """Whether every column fits side by side in `width`, none cut (at its narrowest)."""
    return _need([_bounds(c) for c in table.columns]) <= width


def fit_table(
    table: Table, width: int, *, blocks: Sequence[Sequence[int]] | None = None, continued: str | None = None
) -> list[Table]:
    """The table as it is where it fits `width` at its natural size; otherwise with widths that
    cut no word, in parts where its columns do not fit side by side, or as records where not even
    two fit (_stacked). `blocks`: the columns after the keys that go together into a part, in the
    order they fill parts (by default each column on its own, in order; together they name every
    column after the keys); `continued`: the other parts' title (by default the first's head)."""
    bounds = [_bounds(c) for c in table.columns]
    if not bounds or sum(hi for _, hi in bounds) + 3 * len(bounds) + 1 <= width:
        return [table]
    keys = _keys(table)
    whole = [list(range(keys, len(bounds)))]
    blocks = blocks if blocks is not None else [[i] for i in range(keys, len(bounds))]
    groups = whole if _need(bounds) <= width else _groups(bounds, keys, width, blocks)
    if not groups:  # not even one column beside the keys fits: the table as it is, never nothing
        return [table]
    if any(_need([bounds[i] for i in (*range(keys), *g)]) > width for g in groups):
        return [_stacked(table)]  # a key or a value too wide to stand beside another column
    later = continued if continued is not None else _continued(table.title)
    parts = []
    for n, group in enumerate(groups):
        indices = [*range(keys), *group]
        widths = fitted_widths([bounds[i] for i in indices], width)
        parts.append(_part(table, indices, widths, table.title if n == 0 else later))
    return parts


def print_fitted(table: Table, console: Console, *, markup: bool = True) -> None:
    """The table at the terminal's width (fit_table), each part printed; `markup` False: its
    cells' text as it is."""
    for part in fit_table(table, console.width):
        console.print(part, markup=markup, highlight=None if markup else False)
