"""`kvprobe report`: saved results shown without the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvprobe.cli import main
from kvprobe.result.store import Result
from kvprobe.stats.decision import kv_bytes
from kvprobe.stats.verdict import build_verdict
from kvprobe.views.decision import frontier_cells
from tests.helpers import examples

EXAMPLES = examples("results/examples/*.json")


def squeezed(text: str) -> str:
    """Text without whitespace: the terminal wraps long sentences."""
    return "".join(text.split())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_shown_with_the_verdict_its_items_give(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The decision on screen is the one the statistics make from the file's items today: a
    change to the verdict's code that changes an example's decision fails here."""
    doc = Result.load(path).doc
    rebuilt = build_verdict(doc, doc["run"]["seed"], doc["verdict"]["margins"])
    assert rebuilt is not None
    assert main(["report", str(path), "--details"]) == 0  # the sentences with their intervals
    out = squeezed(capsys.readouterr().out)
    assert squeezed(rebuilt["recommendation"]["sentence"]) in out
    for sentence in rebuilt["sentences"]:
        assert squeezed(sentence) in out
    assert f"{doc['timing']['tokens_evaluated']:,}tokensevaluated" in out


def test_several_results_make_a_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    quick = next(p for p in EXAMPLES if p.name.startswith("quick"))
    default = next(p for p in EXAMPLES if p.name.startswith("default"))
    assert main(["report", str(quick), str(default)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = json.loads(default.read_text())
    acc = next(
        r for r in doc["summary"] if r["metric"] == "accuracy" and r["config"] == "q4_0" and r["ctx"] == 8192
    )
    kl = next(
        r for r in doc["summary"]
        if r["metric"] == "kld_mean" and r["config"] == "q4_0" and r["ctx"] == 8192 and r["scope"] == "bin"
    )  # fmt: skip
    cells = [[c.strip() for c in ln.split("│")] for ln in lines]
    row = next(
        "│".join(c)
        for c in cells
        if len(c) > 4 and c[1] == default.name and c[3] == "q4_0" and c[4] == "8,192"
    )
    assert f"{acc['value']:.2f} [{acc['ci'][0]:.2f}, {acc['ci'][1]:.2f}]" in row
    assert f"{1e3 * kl['value']:.3g}" in row
    assert sum(quick.name in ln for ln in lines) == 2  # f16 and q8_0 at 1,024


def test_a_file_that_is_not_a_result_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "schema_version" in err
    assert len(err.strip().splitlines()) == 1


SPLIT = next(p for p in EXAMPLES if p.name.startswith("splitkv"))


def test_the_recommendation_comes_first_with_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(SPLIT), "--details"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(SPLIT.read_text())
    rec = doc["verdict"]["recommendation"]
    flat = out.replace("\n", " ")
    assert rec["sentence"][:60] in flat
    assert out.index("Recommendation") < out.index("Needle accuracy") < out.index("Verdict")
    # The table under it is computed as it is shown: the saving from the KV layout and the flags
    # from the types of the configuration recommended.
    ctx = doc["run"]["ctx"]
    chosen, reference = kv_bytes(doc, "q8_0", "q4_0", ctx), kv_bytes(doc, "f16", "f16", ctx)
    assert chosen is not None
    assert reference is not None
    header, cells = frontier_cells(Result.load(SPLIT).doc)  # as shown: an older file's verdict rebuilt
    row = next(r for r in cells if r[0] == rec["config"])
    assert row[header.index("saves")] == f"{100 * (1 - chosen / reference):.0f}%"
    assert row[header.index("llama.cpp flags")] == "-ctk q8_0 -ctv q4_0 -fa on"
    shown = next((line for line in out.splitlines() if line.startswith(f"│ {rec['config']} ")), "")
    assert shown, f"no row of the table starts with {rec['config']}"
    first_line = [c.strip() for c in shown.strip("│").split("│")][:4]
    assert first_line[0] == row[0]
    assert row[1].startswith(first_line[1])  # the status words may wrap
    assert first_line[2:] == row[2:4]
    assert "Rules of thumb" in out


def test_report_margins_rebuild_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    """A tighter KL bound (0.01) rules out the pair whose KL is 0.013; the next cheapest
    equivalent cache, q8_0 (KL 0.008), is recommended instead. The file is not changed."""
    before = SPLIT.read_text()
    assert main(["report", str(SPLIT), "--margin", "kld_mean=0.01", "--details"]) == 0
    tight = " ".join(capsys.readouterr().out.split())  # a wrapped line may end in a space
    assert main(["report", str(SPLIT), "--details"]) == 0
    default = " ".join(capsys.readouterr().out.split())
    assert "use k=q8_0,v=q4_0 (" in default
    assert "use q8_0 (" in tight
    assert "k=q8_0,v=q4_0 (worse from the start" in tight
    assert SPLIT.read_text() == before


@pytest.mark.parametrize("margin", ["kld=0.1", "kld_mean", "kld_mean=0", "kld_mean=-1", "kld_mean=nan"])
def test_a_bad_margin_is_one_line_exit_2(margin: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(SPLIT), "--margin", margin]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1
    assert "--margin" in err[0]
