"""The terminal views (kvprobe.views.terminal, kvprobe.views.decision), directly on result
documents: what each prints is computed from the document's numbers, not copied from it."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kvprobe.result.store import Result
from kvprobe.stats.decision import kv_bytes
from kvprobe.views.decision import decision_text, frontier_cells, print_decision, print_decision_lines
from kvprobe.views.terminal import matrix_rows, print_comparison, print_run_report

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return doc


def printed(show: Any, *args: Any) -> str:
    out = io.StringIO()
    show(*args, Console(file=out, width=200, force_terminal=False))
    return out.getvalue()


def test_the_frontier_table_computes_memory_and_savings_from_the_kv_layout() -> None:
    doc = load("splitkv-f16-q8_0-q4_0-8192.json")
    header, cells = frontier_cells(doc)
    ctx = doc["run"]["ctx"]
    assert header[4] == f"KV MiB at {ctx:,}"
    ref = kv_bytes(doc, "f16", "f16", ctx)
    assert ref is not None
    for row in cells:
        config = row[0]
        k, v = (config, config) if "=" not in config else (config.split(",")[0][2:], config.split(",")[1][2:])
        own = kv_bytes(doc, k, v, ctx)
        assert own is not None
        assert row[4] == f"{own / 2**20:,.1f}"
        assert row[5] == f"{100 * (1 - own / ref):.0f}%"
    assert [r[5] for r in cells if r[0] == "q8_0"] == ["47%"]  # 20.7 of 39.0 MiB: the README's figure


def test_a_configuration_stopped_early_says_where() -> None:
    _, cells = frontier_cells(load("until-decided-f16-q4_0-8192.json"))
    q4 = next(r for r in cells if r[0] == "q4_0")
    assert q4[1] == "worse (stopped: decided worse at 1,024)"


def test_the_run_report_says_its_cost_its_state_and_its_warnings() -> None:
    """The cost against a one-prompt-per-cell grid is a detail: with --details only."""
    doc = load("quick-f16-q8_0-1024.json")
    timing = doc["timing"]
    out = printed(detailed, doc)
    ratio = timing["tokens_evaluated"] / timing["naive_tokens"]
    said = f"{timing['tokens_evaluated']:,} tokens evaluated in {timing['wall_s']:.0f} s ({ratio:.2f} of the "
    assert said + f"{timing['naive_tokens']:,}" in out
    assert "tokens evaluated" not in printed(print_run_report, doc)
    assert "partial result" not in out
    partial = copy.deepcopy(doc) | {"complete": False, "stopped": "time budget", "missing": [[0, 0], [0, 1]],
                                     "warnings": ["--ctx 9 exceeds [b]the[/b] training context"]}  # fmt: skip
    out = printed(print_run_report, partial)
    assert "partial result: time budget, 2 units not measured" in out
    assert "warning: --ctx 9 exceeds [b]the[/b] training context" in out  # markup in a file stays text


def test_the_matrix_has_a_row_per_run_configuration_and_context_with_data() -> None:
    quick, default = load("quick-f16-q8_0-1024.json"), load("default-f16-q4_0-8192.json")
    rows = matrix_rows([("quick.json", quick), ("default.json", default)])
    assert {(r[0], r[2], r[3]) for r in rows} == {
        *(("quick.json", c, "1,024") for c in ("f16", "q8_0")),
        *(("default.json", c, f"{n:,}") for c in ("f16", "q4_0") for n in default["run"]["checkpoints"]),
    }
    acc = next(r for r in default["summary"] if r["metric"] == "accuracy" and r["config"] == "q4_0"
               and r["ctx"] == 4096)  # fmt: skip
    row = next(r for r in rows if r[0] == "default.json" and r[2] == "q4_0" and r[3] == "4,096")
    assert f"{acc['value']:.2f} [{acc['ci'][0]:.2f}, {acc['ci'][1]:.2f}]" in row


def test_the_comparison_counts_its_marks_and_names_its_failures() -> None:
    base = {"probe": "needle", "metric": "accuracy", "test": "exact McNemar", "config_old": "q8_0",
            "config_new": "q4_0", "ctx": 1024, "old": 0.9, "new": 0.7, "diff": -0.2, "ci": [-0.3, -0.1],
            "p": 0.001}  # fmt: skip
    report = {"pairing": "paired: same items", "rows": [{**base, "mark": "worse"},
              {**base, "ctx": 2048, "mark": "no significant change"},
              {**base, "ctx": 4096, "diff": float("nan"), "mark": "not testable"}],
              "failures": [{**base, "rule": "accuracy:-0.05", "ci_equivalence": [-0.28, -0.12]}]}  # fmt: skip
    out = printed(print_comparison, report)
    assert "1 worse, 0 better, 1 without a significant change, 1 not testable" in out
    assert "FAIL accuracy:-0.05: needle accuracy q8_0 → q4_0 at 1024: -0.2 (p = 0.001" in out


def detailed(doc: Any, console: Console) -> None:
    print_run_report(doc, console, details=True)


@pytest.mark.parametrize("name", ["until-decided-f16-q4_0-8192.json", "splitkv-f16-q8_0-q4_0-8192.json"])
def test_the_report_opens_with_the_recommendation(name: str) -> None:
    doc = load(name)
    out = printed(detailed, doc)
    assert (
        out.index("Recommendation") < out.index("Quality, memory and speed") < out.index("tokens evaluated")
    )
    assert out.index("tokens evaluated") < out.index("Verdict") < out.index("Rules of thumb")
    assert out.startswith("Recommendation\n")


# --- the frontier of a run through llama-server, and the table at 80 columns -----------------------

SERVER = "server-default-f16-q4_0-8192.json"
IN_PROCESS = "default-f16-q4_0-8192.json"


def column(header: list[str], cells: list[list[str]], starts: str) -> list[str]:
    """The cells of the one column whose header starts with `starts`."""
    found = [i for i, h in enumerate(header) if h.startswith(starts)]
    assert len(found) == 1, (starts, header)
    return [row[found[0]] for row in cells]


def speed(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def test_a_server_run_s_table_shows_what_the_server_allocated_and_timed() -> None:
    doc = load(SERVER)
    servers = doc["runtime"]["server"]["configs"]
    header, cells = frontier_cells(doc)
    configs = [row[0] for row in cells]
    cells_held = servers["f16"]["applied"]["n_ctx"]
    assert f"KV MiB allocated (server's log, {cells_held:,} cells, sliding-window layers full)" in header
    allocated = column(header, cells, "KV MiB allocated")
    assert allocated == [f"{servers[c]['applied']['kv_mib']:,.1f}" for c in configs]
    assert column(header, cells, "prefill tokens/s (server's timings)") == [
        speed(servers[c]["prefill_tps"]) for c in configs
    ]
    assert column(header, cells, "generation tokens/s (server's timings)") == [
        speed(servers[c]["generation_tps"]) for c in configs
    ]
    # The layout's figures stay, named as such: what a default llama-server allocates.
    ctx = doc["run"]["ctx"]
    layout = column(header, cells, f"KV MiB at {ctx:,} (GGUF layout)")
    assert layout == [f"{kv_bytes(doc, c, c, ctx) / 2**20:,.1f}" for c in configs]  # type: ignore[operator]
    assert not any(h.startswith("VRAM") for h in header)  # measured without a GPU: no empty column


def test_an_in_process_table_is_unchanged() -> None:
    doc = load(IN_PROCESS)
    header, cells = frontier_cells(doc)
    ctx, train = doc["run"]["ctx"], doc["model"]["n_ctx_train"]
    assert header == [
        "config", "vs reference", "effective context", "mean KL, nats (whole document)", f"KV MiB at {ctx:,}",
        "saves", f"KV MiB at {train:,}", "prefill tokens/s (depth)", "llama.cpp flags", "frontier",
    ]  # fmt: skip
    for row in cells:
        deepest = doc["timing"]["prefill"][row[0]][-1]
        lo, hi = deepest["depth"]
        assert row[7] == f"{deepest['tokens_per_s']:,.0f} ({lo:,}-{hi:,})"


def test_the_server_s_gpu_memory_gets_a_column_where_it_was_read() -> None:
    """A display check on the real file: the GPU memory a server's record holds (here its
    weights and KV cache, what a fully offloaded server holds at least) is shown as read."""
    doc = load(SERVER)
    servers = doc["runtime"]["server"]["configs"]
    for record in servers.values():
        applied = record["applied"]
        record["vram_mib"] = applied["kv_mib"] + sum(applied["weight_buffers"].values())
    header, cells = frontier_cells(doc)
    assert column(header, cells, "VRAM MiB") == [f"{servers[row[0]]['vram_mib']:,.0f}" for row in cells]
    out = printed(print_run_report, doc)
    assert "VRAM MiB" in out


@pytest.mark.parametrize("name", [SERVER, IN_PROCESS, "splitkv-f16-q8_0-q4_0-8192.json"])
def test_the_table_is_readable_at_80_columns(name: str) -> None:
    """No value cut ("…") and no line past 80 columns: the table goes in parts (quality and
    flags, then memory and speed), each starting with the configuration; at 200 columns, one."""
    doc = load(name)
    text = decision_at(doc, 80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    _, cells = frontier_cells(doc)
    for row in cells:  # every value whole, on its configuration's first line in one of the parts
        lines = " ".join(ln for ln in text.splitlines() if ln.startswith(f"│ {row[0]} "))
        for value in filter(None, row):
            assert f" {value.split()[-1] if value.startswith('≥') else value.split()[0]} " in lines, value
    assert text.count("┏") == 2
    assert decision_at(doc, 200).count("┏") == 1


def decision_at(doc: Any, width: int) -> str:
    """The Recommendation and the frontier table as a terminal `width` columns wide shows them."""
    out = io.StringIO()
    print_decision(doc, Console(file=out, width=width, force_terminal=False))
    return out.getvalue()


def _lines_of(show: Any, width: int) -> tuple[Any, list[str]]:
    out = io.StringIO()
    said = show(Console(file=out, width=width))
    return said, out.getvalue().splitlines()


def test_the_report_after_an_early_decision_prints_none_of_its_lines_again() -> None:
    """A run that printed its decision early: the report at the end says it stands (whatever the
    terminal's width now), or prints whole the entries the whole curve changed, and no other."""
    doc = Result.load(EXAMPLES / "splitkv-f16-q8_0-q4_0-8192.json").doc
    shown, early = _lines_of(lambda c: print_decision_lines(doc, c), 80)
    assert early[0] == "Recommendation"
    assert shown == [s.text for part in decision_text(doc, 80) for s in part]
    for width in (80, 100, 60):
        said, lines = _lines_of(lambda c, w=width: print_decision_lines(doc, c, shown=shown), width)
        assert said == []
        assert lines == ["Recommendation: as printed at the decision above"]


def test_an_entry_changed_since_the_early_decision_is_printed_whole() -> None:
    """Decided early on the --until-decided example's curve, completed as the main job's: the
    changed entries come whole (a wrapped tail printed before for another entry included)."""
    early = Result.load(EXAMPLES / "until-decided-f16-q4_0-8192.json").doc
    final = Result.load(EXAMPLES / "default-f16-q4_0-8192.json").doc
    shown, _ = _lines_of(lambda c: print_decision_lines(early, c), 60)
    said, lines = _lines_of(lambda c: print_decision_lines(final, c, shown=shown), 60)
    assert lines[0].startswith("Recommendation, what changed since the decision above")
    decided, extra = decision_text(final, 60)
    changed = [s for s in decided + extra if s.text not in shown]
    assert changed
    assert said == [s.text for s in changed]
    assert lines[1:] == [line for s in changed for line in s.lines]  # every line of each, in order
    assert not set(said) & set(shown)
