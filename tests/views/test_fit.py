"""views.fit: cells of units that wrap between units only, and tables split in parts by blocks of
columns that go together, the later parts under their own title."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.table import Table

from kvprobe.views.fit import Units, fit_table


def rendered(tables: list[Table], width: int) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    for table in tables:
        console.print(table)
    return out.getvalue().splitlines()


def test_units_wrap_between_units_only() -> None:
    """The narrowest width is the longest unit, and there every unit stays on one line."""
    table = Table("config", "flags", "other")
    flags = ["-ctk q8_0", "-ctv q8_0", "-fa on"]
    table.add_row("q8_0", Units(flags), "a fairly long text that must wrap " * 3)
    lines = rendered(fit_table(table, 40), 40)
    assert all(len(line) <= 40 for line in lines)
    cells = [line.split("│")[2].strip() for line in lines if line.startswith("│")]
    assert [c for c in cells if c] == flags  # one pair a line, none parted from its value
    assert "-ctk q8_0 -ctv q8_0 -fa on" in "\n".join(rendered(fit_table(table, 200), 200))


def test_blocks_go_whole_in_their_order_and_later_parts_take_the_title_given() -> None:
    table = Table(title="Wide: a title (with a qualifier)")
    headers = ["config", "a1", "a2", "b1", "c1", "c2"]
    for header in headers:
        table.add_column(header)
    table.add_row("q4_0", *(f"value-of-{h}-{'x' * 12}" for h in headers[1:]))
    blocks = [[4, 5], [1, 2], [3]]  # c, then a, then b
    parts = fit_table(table, 80, blocks=blocks, continued="Wide, continued")
    names = [[str(c.header) for c in part.columns] for part in parts]
    assert names == [["config", "c1", "c2"], ["config", "a1", "a2"], ["config", "b1"]]
    assert [p.title for p in parts] == [
        "Wide: a title (with a qualifier)",
        "Wide, continued",
        "Wide, continued",
    ]
    assert [p.title for p in fit_table(table, 80)][1:] == ["Wide, continued"] * 2  # its head, by default


def test_columns_that_cannot_stand_side_by_side_become_records() -> None:
    """A name wider than the terminal leaves no room beside it: each row as a record, a line per
    column, every value whole (the name folds onto the next line, never cut)."""
    name = "a-model-label+another-model-label_f16+q8_0-splitkv_32768_a-scenario_chat"
    table = Table(title="Cells")
    for header in ("cell", "memory", "time"):
        table.add_column(header, justify="left" if header == "cell" else "right")
    table.add_row(name, Units(["4.54 GiB"]), Units(["54 s"]))
    table.add_row("short", Units(["0.25 GiB"]), Units(["2 h 05 min"]))
    lines = rendered(fit_table(table, 60), 60)
    text = "\n".join(lines)
    assert "…" not in text
    assert all(len(line) <= 60 for line in lines)
    rows = [[c.strip() for c in line.split("│")[1:3]] for line in lines if line.count("│") == 3]
    assert name in "".join(value for _, value in rows)  # folded, whole
    for record in (["memory", "4.54 GiB"], ["time", "54 s"], ["cell", "short"], ["time", "2 h 05 min"]):
        assert record in rows


def test_a_flag_and_its_value_are_one_unit_on_the_terminal_and_on_the_page() -> None:
    from kvprobe.views.fit import flag_units
    from kvprobe.views.layout import flag_pairs

    text = "-ctk f16 -ctv f16 (llama.cpp's default); add --split-kv --cache q8_0, not -0.5 or x-ray"
    units = flag_units(text)
    assert units == ["-ctk f16", "-ctv f16", "(llama.cpp's", "default);", "add", "--split-kv",
                     "--cache q8_0,", "not", "-0.5", "or", "x-ray"]  # fmt: skip
    assert " ".join(units) == text
    spans = re.findall(r'<span class="pair">(.*?)</span>', str(flag_pairs(text)))
    assert spans == ["-ctk f16", "-ctv f16", "--split-kv", "--cache q8_0,"]
