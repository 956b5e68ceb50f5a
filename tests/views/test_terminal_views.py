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

from kvprobe.stats.decision import kv_bytes
from kvprobe.views.decision import frontier_cells
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
    doc = load("quick-f16-q8_0-1024.json")
    timing = doc["timing"]
    out = printed(print_run_report, doc)
    ratio = timing["tokens_evaluated"] / timing["naive_tokens"]
    said = f"{timing['tokens_evaluated']:,} tokens evaluated in {timing['wall_s']:.0f} s ({ratio:.2f} of the "
    assert said + f"{timing['naive_tokens']:,}" in out
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


@pytest.mark.parametrize("name", ["until-decided-f16-q4_0-8192.json", "splitkv-f16-q8_0-q4_0-8192.json"])
def test_the_report_opens_with_the_recommendation(name: str) -> None:
    doc = load(name)
    out = printed(print_run_report, doc)
    assert (
        out.index("Recommendation") < out.index("Quality, memory and speed") < out.index("tokens evaluated")
    )
    assert out.index("tokens evaluated") < out.index("Verdict") < out.index("Rules of thumb")
