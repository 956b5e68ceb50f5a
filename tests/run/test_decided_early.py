"""A default run decides the moment the group-sequential looks of --until-decided would
(kvprobe.run.decided): it prints the Recommendation and writes a partial result then, and goes
on measuring the rest of the curve; Ctrl-C after that point keeps the decision, Ctrl-C before it
behaves as it always has. The runs are on the real llama.cpp with the tiny model, the quick
scenario at 4,096 tokens (checkpoints 1,024, 2,048 and 4,096: q4_0 is decided worse after its
first unit, two units are left), one on the default model."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from kvprobe.result.journal import journal_path
from kvprobe.result.store import Result
from kvprobe.run.decided import EarlyDecision, differs_line
from kvprobe.run.pace import Pace, StepShape
from kvprobe.run.progress import RunProgress
from kvprobe.run.until_decided import Stopped, UntilDecided
from kvprobe.stats.equivalence import WORSE
from kvprobe.stats.sequential import Design
from tests.helpers import kvprobe

DECIDED = re.compile(r"^decided after (\d+) s: (.+)$", re.MULTILINE)
GOING_ON = re.compile(r"^completing the curve(, about [^,]+ left)?, Ctrl-C keeps the decision")


# --- the rule, watching ---------------------------------------------------------------------------


def _items(per: dict[tuple[int, int], list[float]]) -> list[dict[str, Any]]:
    """Needle items of f16 (log-prob 0) and q (log-prob `diff`), per (document, checkpoint)."""
    items = []
    for (doc, ctx), diffs in per.items():
        for k, diff in enumerate(diffs):
            base = {"probe": "needle", "doc": doc, "ctx": ctx, "key": f"k{doc}-{ctx}-{k}", "position": k,
                    "correct": True}  # fmt: skip
            items += [{**base, "config": "f16", "logprob": 0.0}, {**base, "config": "q", "logprob": diff}]
    return items


def test_watching_decides_as_until_decided_but_stops_nothing() -> None:
    rng = np.random.default_rng(6)
    per = {
        (0, 1024): list(-2.0 + 0.05 * rng.standard_normal(16)),
        (0, 2048): list(0.2 * rng.standard_normal(16)),
    }
    heard: list[int] = []
    watch = UntilDecided(Design(4), "f16", ["q"], [1024, 2048], {"answer_logprob": 0.25}, seed=0, watch=True)
    watch.on_decided = lambda: heard.append(len(heard))
    stopping = UntilDecided(Design(4), "f16", ["q"], [1024, 2048], {"answer_logprob": 0.25}, seed=0)
    assert [s.status for s in watch.after_unit(0, _items(per), {})] == [WORSE]
    assert stopping.after_unit(0, _items(per), {})[0] == watch.stopped["q"]  # the same decision
    assert watch.all_decided
    assert heard == [0]
    assert watch.active("q", 0)
    assert watch.active("q", 1)
    assert not stopping.active("q", 0)
    per[(1, 1024)] = list(0.01 * rng.standard_normal(16))
    assert watch.after_unit(1, _items(per), {}) == []  # decided once: the first decision stays
    assert heard == [0]
    assert watch.stopped["q"].look == 1
    assert watch.to_json()["stopped"] == {}  # nothing was stopped: a watched file is no --until-decided one


def test_the_progress_says_the_decision_from_then_on() -> None:
    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    pace = Pace([StepShape(0, 1024), StepShape(1024, 2048)], scored_docs=set())
    with RunProgress(
        console, 3000, pace, [(0, 0, 0), (0, 1, 0)], interval=60.0, clock=lambda: now[0]
    ) as shown:
        now[0] = 27.0
        shown.unit_done((0, 0, 0), 27.0)
        shown.decided("decided after 27 s: q4_0 worse from the start")
        now[0] = 90.0
        shown.advance(500, "f16 doc 0 L=2048 needles")
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("progress: completing the curve after the decision, about ")
    assert "q4_0 worse" not in line  # the decision was said once, when made
    assert "left, Ctrl-C keeps the decision (f16 doc 0 L=2048 needles: 500 of about 3,000 tokens" in line
    bar = Console(file=io.StringIO(), force_terminal=True, width=300)
    with RunProgress(bar, 3000, pace, [(0, 1, 0)]) as shown:
        shown.decided("decided after 27 s: q4_0 worse")
        assert shown.bar is not None
        task = shown.bar.tasks[0]
        assert task.description == "decided after 27 s: q4_0 worse; completing the curve"
        assert str(task.fields["eta"]).endswith("Ctrl-C keeps the decision")


# --- runs on the real llama.cpp ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def args(tiny_model_path: Path) -> list[str]:
    return ["--model", str(tiny_model_path), "--scenario", "quick", "--cache", "q4_0", "--ctx", "4096",
            "--threads", "2", "--no-html"]  # fmt: skip


@pytest.fixture(scope="module")
def full(args: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("full") / "full.json"
    proc = kvprobe("run", *args, "--out", str(out), env={"COLUMNS": "80"})  # a narrow terminal
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(out.read_text())), proc.stdout


def _decided_line(stdout: str, width: int = 160) -> tuple[int, re.Match[str]]:
    lines = stdout.splitlines()
    found = [(i, m) for i, line in enumerate(lines) if (m := DECIDED.match(line))]
    assert len(found) == 1, stdout
    at = found[0][0]
    assert GOING_ON.match(lines[at + 1]), lines[at + 1]  # what the run does now, on a line of its own
    assert all(len(line) <= width for line in lines[at : at + 2]), lines[at : at + 2]  # wrapped to fit
    return found[0]


def _said_once(lines: list[str], heading: int, at: int) -> None:
    """Every line of the decision printed at `heading` (up to the decided line `at`) is printed once."""
    block = [line for line in lines[heading + 1 : at] if line.strip()]
    assert block, lines
    assert all(lines.count(line) == 1 for line in block), [line for line in block if lines.count(line) > 1]


def test_the_decision_is_printed_before_the_end_and_the_run_completes_the_curve(
    full: tuple[dict[str, Any], str], args: list[str], tmp_path: Path
) -> None:
    doc, stdout = full
    lines = stdout.splitlines()
    at, match = _decided_line(stdout, width=80)
    assert match.group(2).startswith("q4_0 ")
    # the Recommendation came with the decision; the report at the end says it stands, no line twice
    heading = lines.index("Recommendation")
    assert heading < at
    assert lines.count("Recommendation") == 1
    assert "Recommendation: as printed at the decision above" in lines[at:]
    _said_once(lines, heading, at)
    assert lines[-1].startswith("result: ")
    decided = doc["run"]["decided"]
    assert decided["configs"] == {"q4_0": {"status": WORSE, "ctx": 1024}}
    assert decided["look"] == 1
    assert abs(decided["after_s"] - int(match.group(1))) <= 1  # the line says the seconds on record
    # the run went on: more units after the decision than before it, and a complete result
    units = doc["timing"]["units"]
    assert decided["units"] == 1
    assert len(units) - decided["units"] > decided["units"]
    assert {it["ctx"] for it in doc["items"] if it["config"] == "q4_0"} == {1024, 2048, 4096}
    assert doc["complete"] is True
    assert doc["missing"] == []
    # the complete verdict is the fixed-sample one, from all the data
    assert "until_decided" not in doc["run"]
    assert doc["verdict"]["until_decided"] is None
    assert decided["recommendation"] == doc["verdict"]["recommendation"]["config"] == "f16"
    assert "Recommendation is" not in stdout  # it did not change: no line says so
    # --until-decided decides the same, at the same look, and stops there
    stopped = tmp_path / "stopped.json"
    proc = kvprobe("run", *args, "--until-decided", "--out", str(stopped))
    assert proc.returncode == 0, proc.stderr
    stop = json.loads(stopped.read_text())["run"]["until_decided"]["stopped"]["q4_0"]
    assert (stop["status"], stop["ctx"], stop["look"]) == (WORSE, 1024, decided["look"])
    assert not DECIDED.search(proc.stdout)


def test_a_complete_recommendation_other_than_the_early_one_is_said(
    full: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    path = tmp_path / "full.json"
    path.write_text(json.dumps(full[0]))
    result = Result.load(path).doc
    stop = Stopped("q4_0", WORSE, 1024, 0, 1, 0)
    same = EarlyDecision(27.0, 1, 1, {"q4_0": stop}, {}, recommendation="f16", words="q4_0 worse")
    assert differs_line(same, result) is None
    other = replace(same, recommendation="q4_0")
    assert differs_line(other, result) == (
        "note: with the whole curve the Recommendation is f16, not the q4_0 printed when the run "
        "decided early (decided after 27 s: q4_0 worse)"
    )


def test_a_partial_result_keeps_the_decision_while_the_run_goes_on(
    args: list[str], full: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    """Killed right after the unit that follows the decision: the file is the partial result
    written at the decision (the group-sequential verdict of the first unit); --resume completes it."""
    out = tmp_path / "r.json"
    killed = kvprobe("run", *args, "--out", str(out), stop="0,1:kill")
    assert killed.returncode == -9
    _decided_line(killed.stdout)
    partial = Result.load(out).doc  # checked against the schema
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert doc["stopped"] == "decided early"
    assert doc["statistics"] == {"complete": True, "errors": []}
    assert doc["missing"] == [[0, 1], [0, 2]]
    assert {it["ctx"] for it in doc["items"]} == {1024}
    assert doc["run"]["decided"]["configs"] == {"q4_0": {"status": WORSE, "ctx": 1024}}
    early = doc["run"]["until_decided"]
    assert early["stopped"] == {}
    assert early["looks"] == 1
    q4 = doc["verdict"]["configs"]["q4_0"]["equivalence"]
    assert q4["status"] == WORSE
    assert q4["checkpoints"][0]["look"] == 1  # tested look by look
    assert doc["verdict"]["recommendation"]["config"] == full[0]["run"]["decided"]["recommendation"]
    assert partial.run.decided is not None
    report = kvprobe("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "Decided early (O'Brien–Fleming alpha spending over 1 looks" in report.stdout
    resumed = kvprobe("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    whole = json.loads(out.read_text())
    assert whole["complete"] is True
    assert whole["items"] == full[0]["items"]


@pytest.mark.parametrize("signal_name", ["int", "term"])
def test_ctrl_c_after_the_decision_keeps_it_with_the_curve_so_far(
    args: list[str], full: tuple[dict[str, Any], str], tmp_path: Path, signal_name: str
) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe("run", *args, "--out", str(out), stop=f"0,1:{signal_name}")
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"interrupted after the decision; {out} keeps it (decided after " in last
    assert ": q4_0 " in last
    assert "(complete: false, 1 unit missing)" in last
    assert last.endswith(f"`kvprobe run --resume {journal_path(out)}`")
    lines = proc.stdout.splitlines()  # at the decision; at the end, only what changed
    assert lines.count("Recommendation") == 1
    _said_once(lines, lines.index("Recommendation"), _decided_line(proc.stdout)[0])
    doc = json.loads(out.read_text())
    early = full[0]["run"]["decided"]["recommendation"]
    assert doc["complete"] is False
    assert doc["stopped"] == "interrupted"
    assert doc["statistics"] == {"complete": True, "errors": []}
    assert doc["verdict"]["recommendation"]["config"] == early
    assert doc["run"]["decided"]["recommendation"] == early
    assert doc["run"]["until_decided"]["stopped"] == {}
    assert doc["verdict"]["configs"]["q4_0"]["equivalence"]["status"] == WORSE
    assert {it["ctx"] for it in doc["items"]} == {1024, 2048}  # the curve measured so far
    report = kvprobe("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "Recommendation" in report.stdout
    assert "partial result: interrupted, 1 units not measured" in report.stdout
    resumed = kvprobe("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    whole = json.loads(out.read_text())
    assert whole["complete"] is True
    assert whole["items"] == full[0]["items"]
    assert whole["verdict"]["recommendation"]["config"] == early


def test_ctrl_c_before_the_decision_is_as_it_was(args: list[str], tmp_path: Path) -> None:
    """Interrupted at the first unit's journal line, before its look: the measurements only, no
    statistics, and the line that says how to resume."""
    out = tmp_path / "r.json"
    proc = kvprobe("run", *args, "--out", str(out), stop="0,0:int")
    assert proc.returncode == 130
    assert not DECIDED.search(proc.stdout)
    assert "Recommendation" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert "units are missing from the partial result" in last
    assert "--resume" in last
    doc = json.loads(out.read_text())
    assert doc["stopped"] == "interrupted"
    assert doc["verdict"] is None
    assert "decided" not in doc["run"]


@pytest.mark.slow
def test_default_model_prints_the_decision_before_the_end(default_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--model", str(default_model_path), "--scenario", "quick", "--cache", "q4_0", "--ctx", "2048",
        "--threads", "2", "--no-html", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    at, match = _decided_line(proc.stdout)
    assert match.group(2).startswith("q4_0 ")
    lines = proc.stdout.splitlines()  # the report at the end says the decision stands, or what changed
    assert at < max(i for i, line in enumerate(lines) if line.startswith("Recommendation"))
    _said_once(lines, lines.index("Recommendation"), at)
    doc = json.loads(out.read_text())
    assert doc["run"]["decided"]["configs"]["q4_0"]["status"] == WORSE
    assert len(doc["timing"]["units"]) > doc["run"]["decided"]["units"]
    assert doc["complete"] is True
