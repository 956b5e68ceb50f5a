"""Every terminal view readable at 80 and at 200 columns: rendered from the committed example
results, no line wider than the terminal and no value or header cut ("…", rich's mark for a
cell too narrow for its text); and the decision first, one line per configuration."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from kvprobe.stats.compare import compare
from kvprobe.views.decision import decision_lines, print_frontier_table
from kvprobe.views.fit import fit_table
from kvprobe.views.terminal import print_comparison, print_matrix, print_run_report
from tests.helpers import examples, kvprobe

EXAMPLES = examples("results/examples/*.json")
WIDTHS = (80, 200)


def rendered(show: Any, width: int) -> str:
    out = io.StringIO()
    show(Console(file=out, width=width, force_terminal=False, color_system=None))
    return out.getvalue()


def assert_fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert "…" not in line, f"a value or header cut at {width} columns: {line!r}"
        assert cell_len(line.rstrip()) <= width, f"wider than {width} columns: {line!r}"


@pytest.fixture(scope="module")
def docs() -> dict[str, Any]:
    """The files as committed (`kvprobe report` shows an older file's verdict rebuilt, slow;
    tests/views/test_report.py covers that)."""
    return {p.name: json.loads(p.read_text()) for p in EXAMPLES}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("details", [False, True], ids=["report", "details"])
def test_every_example_s_report_fits(docs: dict[str, Any], width: int, details: bool) -> None:
    for name, doc in docs.items():
        text = rendered(lambda c, d=doc, n=name: print_run_report(d, c, details=details, path=n), width)
        assert_fits(text, width)
        assert ("Verdict" in text) == (details and bool(doc["verdict"]["sentences"])), name


def test_the_decision_comes_first_one_line_per_configuration(docs: dict[str, Any]) -> None:
    """The first lines: the Recommendation, what to use, then each configuration by name with
    what its verdict means, the KV memory it saves and its flags, before any table."""
    doc = docs["divergence-f16-q8_0-q4_0-8192.json"]
    lines = rendered(lambda c: print_run_report(doc, c), 200).splitlines()
    assert lines[0] == "Recommendation"
    assert lines[1] == "  At 8,192 tokens, use q8_0: the cheapest cache shown equivalent"
    ref = doc["verdict"]["recommendation"]["memory_at_ctx"]["reference_bytes"]
    first_worse = doc["verdict"]["configs"]["q4_0"]["equivalence"]["first_worse"]
    assert lines[2].split() == "f16 the reference · -ctk f16 -ctv f16 (llama.cpp's default)".split()
    q8 = 100 * (1 - doc["verdict"]["recommendation"]["memory_at_ctx"]["bytes"] / ref)
    assert (
        lines[3].split()
        == (
            f"q8_0 equivalent to f16 up to 8,192 · saves {q8:.0f}% of KV memory · -ctk q8_0 -ctv q8_0 -fa on"
        ).split()
    )
    assert lines[4].split()[:6] == ["q4_0", "worse", "than", "f16", "from", f"{first_worse:,}"]
    assert all("┏" not in line for line in lines[:5])


def test_the_decision_wraps_between_its_parts_at_80_columns(docs: dict[str, Any]) -> None:
    doc = docs["default-f16-q4_0-8192.json"]
    text = rendered(lambda c: print_run_report(doc, c), 80)
    parts = decision_lines(doc)[1]  # q4_0: name, meaning, saving, flags
    assert parts[0] == "q4_0"
    joined = " ".join(text.split())
    assert " · ".join(parts[2:]) in joined  # the saving and the flags, whole, on one line
    assert any(line.strip() == " · ".join(parts[2:]) for line in text.splitlines())


def test_details_move_out_of_the_default_report(docs: dict[str, Any]) -> None:
    """Intervals, Holm p-values, fits and the grid's cost only with --details."""
    doc = docs["default-f16-q4_0-8192.json"]
    short = rendered(lambda c: print_run_report(doc, c, path="x.json"), 200)
    long = rendered(lambda c: print_run_report(doc, c, details=True), 200)
    for detail in ("one-prompt-per-cell grid", "Holm", "[95%:", "per doubling", "q4_0: mean KL"):
        assert detail not in short, detail
        assert detail in long or detail == "Holm", detail
    assert "kvprobe report x.json --details" in short
    assert doc["verdict"]["recommendation"]["sentence"][:40] in " ".join(long.split())


def test_the_details_command_is_never_broken_at_80_columns(docs: dict[str, Any]) -> None:
    """A long result path: the command goes whole onto a line of its own."""
    doc = docs["default-f16-q4_0-8192.json"]
    path = "results/runs/a-long-folder-name/default-f16-q4_0-8192-2026-12-07.json"
    lines = rendered(lambda c: print_run_report(doc, c, path=path), 80).splitlines()
    assert f"kvprobe report {path} --details" in lines
    assert "intervals, p-values and fits:" in lines
    spaced = rendered(lambda c: print_run_report(doc, c, path="my runs/[r].json"), 200)
    assert "fits: kvprobe report 'my runs/[r].json' --details\n" in spaced  # one word, as typed


def test_the_prompt_is_said_once_at_the_end_of_a_run(docs: dict[str, Any]) -> None:
    doc = docs["default-f16-q4_0-8192.json"]
    assert "prompt: raw text" in rendered(lambda c: print_run_report(doc, c), 200)
    assert "prompt:" not in rendered(lambda c: print_run_report(doc, c, from_run=True), 200)


PAIRS = [
    ("onepass-f16-q4_0-4096.json", "classic-f16-q4_0-4096.json"),
    ("splitkv-f16-q8_0-q4_0-8192-max4.json", "splitkv-f16-q8_0-q4_0-8192.json"),
]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_compare_fits(docs: dict[str, Any], width: int, old: str, new: str) -> None:
    report = compare(docs[old], docs[new])
    text = rendered(lambda c: print_comparison(report, c), width)
    assert_fits(text, width)
    rows = report["rows"]
    marks = [line for line in text.splitlines() if any(f" {r['mark'].split()[0]}" in line for r in rows)]
    assert len(marks) >= len(rows)  # every row's mark is shown, whole or wrapped between words


@pytest.mark.parametrize("width", WIDTHS)
def test_the_matrix_fits(docs: dict[str, Any], width: int) -> None:
    named = [(n, docs[n]) for n in ("quick-f16-q8_0-1024.json", "ruler-f16-q8_0-q4_0-8192.json")]
    text = rendered(lambda c: print_matrix(named, c), width)
    assert_fits(text, width)
    assert text.count("1.00 [0.51, 1.00]") == 2  # quick's two configurations, each value whole


def test_a_wide_table_goes_in_parts_that_repeat_its_keys() -> None:
    """Values stay whole (an interval never breaks); the key columns start every part."""
    table = Table(title="Wide (values)")
    for header in ("context", "config", *(f"metric {i}" for i in range(6))):
        table.add_column(header, justify="right")
    table.add_row("8,192", "q4_0", *(f"+0.{i}1 [-0.{i}2, +0.{i}3]" for i in range(6)))
    parts = fit_table(table, 80)
    assert len(parts) > 1
    for part in parts:
        assert [str(c.header) for c in part.columns[:2]] == ["context", "config"]
    text = rendered(lambda c: [c.print(p) for p in parts], 80)
    assert_fits(text, 80)
    for i in range(6):
        assert f"+0.{i}1 [-0.{i}2, +0.{i}3]" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_doctor_fits(tiny_model_path: Path, width: int) -> None:
    """`kvprobe doctor` (the findings' table and the build line) at the terminal's width."""
    proc = kvprobe("doctor", "--model", str(tiny_model_path), "--vram", "24", env={"COLUMNS": str(width)})
    assert proc.returncode == 0, proc.stderr
    assert "llama.cpp build" in proc.stdout
    assert_fits(proc.stdout, width)


def test_a_table_too_narrow_for_any_column_is_kept_whole() -> None:
    table = Table("a-header-wider-than-the-terminal-" * 3)
    table.add_row("a-value-wider-than-the-terminal-" * 3)
    assert fit_table(table, 40) == [table]


SIZE = re.compile(r"\d[\d,]*\.\d+ [MG]iB")


@pytest.mark.parametrize("width", WIDTHS)
def test_doctor_fits_on_a_model_with_sliding_window_layers(default_model_path: Path, width: int) -> None:
    """The default model (gemma3) has sliding-window layers: each KV cell holds two sizes and
    whether they fit; at 80 columns a size never parts from its unit, none is cut."""
    proc = kvprobe("doctor", "--model", str(default_model_path), "--vram", "24", env={"COLUMNS": str(width)})
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout, width)
    title, kv = proc.stdout.split("KV cache memory", 1)[1].split("llama.cpp build", 1)[0].split("┡", 1)
    assert "--swa-full" in title  # the sizes in parentheses: with --swa-full
    assert kv.count("(train)") == 1
    assert len(SIZE.findall(kv)) == 3 * 3 * 2  # 4,096, 8,192, the training context; 3 caches; 2 sizes
    assert kv.count(" yes ") == 3 * 3


def test_the_frontier_table_never_parts_a_flag_from_its_value(docs: dict[str, Any]) -> None:
    """At 80 columns the llama.cpp flags wrap between "flag value" pairs only."""
    for name in ("default-f16-q4_0-8192.json", "server-default-f16-q4_0-8192.json"):
        text = rendered(lambda c, d=docs[name]: print_frontier_table(d, c), 80)
        assert_fits(text, 80)
        assert not re.search(r"\s-[a-z]+\s*│", text), text  # a flag at a cell's line end, its value below
        for flag in ("-ctk f16", "-ctv f16", "-ctk q4_0", "-ctv q4_0", "-fa on"):
            assert flag in text, (name, flag)
        titles = [line.strip() for line in text.splitlines() if "per configuration" in line]
        assert titles[0].startswith("Quality, memory and speed per configuration (● on the frontier")
        assert "Quality, memory and speed per configuration, continued" in titles
