"""A fourth probe, registered from this test module alone, runs end to end on the tiny model:
scenario section, plan, engine, items, summary, terminal table, result file and compare. No
file under kvprobe/ names it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from rich.table import Table

from kvprobe.api import (
    Budget,
    Metric,
    Probe,
    ProbeRun,
    ResultDoc,
    Row,
    RunSetup,
    by_config_and_ctx,
    get_probe,
    register,
    registered,
)
from kvprobe.cli import main
from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import bad, load_scenario
from kvprobe.probes.rows import rate_row

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document
    from kvprobe.api.engine import Context
    from kvprobe.plan.scenario import Scenario


@dataclass(frozen=True)
class EchoSpec:
    prompt: str = "\n\nThe word is"
    answer: str = " apple"


def echo_key(item: Row) -> tuple[Any, ...]:
    return (item["doc"], item["ctx"])


class EchoRun(ProbeRun):
    """At every checkpoint, teacher-force one short answer on a fork of the document."""

    label = "echo"

    def __init__(self, setup: RunSetup):
        spec = setup.scenario.spec(EchoSpec)
        self.prompt, self.answer = setup.model.tokenize(spec.prompt), setup.model.tokenize(spec.answer)
        per_checkpoint = len(self.prompt) + len(self.answer) - 1
        n = len(setup.documents) * len(setup.checkpoints)
        self.budget = Budget(fork_cells=per_checkpoint + 1, sequences=1, tokens=n * per_checkpoint)
        self.calls = 0

    def at_checkpoint(self, context: Context, config: str, document: Document, length: int) -> list[Row]:
        self.calls += 1
        scored = context.score(self.prompt, self.answer)
        return [
            {"probe": "echo", "config": config, "doc": document.index, "ctx": length,
             "hit": scored.argmax_match, "logprob": round(scored.logprob, 6)}
        ]  # fmt: skip

    def section(self, errors: list[dict[str, str]]) -> Row:
        return {"calls": self.calls}


class EchoProbe(Probe):
    name = "echo"
    sections: ClassVar[dict[str, type]] = {"echo": EchoSpec}
    has_section = True
    summary_label = "echo summary"

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (
            Metric(
                "echo", "echo_hit", binary=True, lower_is_worse=True, field="hit", key=echo_key, compared=True
            ),
        )

    def validate(self, scenario: Scenario, source: str) -> None:
        if not scenario.spec(EchoSpec).answer.strip():
            raise bad(source, "echo.answer", "must not be empty")

    def start(self, setup: RunSetup) -> EchoRun:
        return EchoRun(setup)

    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[Row]:
        return [
            rate_row("echo", "echo_hit", config, ctx, hits=sum(it["hit"] for it in group), n=len(group))
            for (config, ctx), group in by_config_and_ctx(result["items"], "echo")
        ]

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        rows = [r for r in result["summary"] if r["probe"] == "echo"]
        if not rows:
            return []
        table = Table(title="Echo probe")
        for col in ("context", "config", "hit rate"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r["ctx"]), r["config"], f"{r['value']:.2f}")
        return [table]


@pytest.fixture
def echo() -> Iterator[Probe]:
    with registered(EchoProbe()) as probe:
        yield probe


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "echo.toml"
    path.write_text(
        'name = "echo"\nprobes = ["echo", "needle"]\n[plan]\ndocuments = 2\n[needle]\nper_segment = 1\n'
        '[echo]\nanswer = " apple"\n' + extra
    )
    return path


def test_a_probe_registered_here_runs_end_to_end(
    echo: Probe, tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = _scenario(tmp_path)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        code = main(["run", "--model", str(tiny_model_path), "--scenario", str(scenario), "--cache", "q8_0",
                     "--ctx", "1536", "--threads", "2", "--out", str(out)])  # fmt: skip
        assert code == 0
    printed = capsys.readouterr().out
    assert "Echo probe" in printed  # its terminal table
    assert "hit rate" in printed
    assert "Needle accuracy" in printed  # and the built-in probe beside it

    doc = json.loads(outs[0].read_text())
    echo_items = [it for it in doc["items"] if it["probe"] == "echo"]
    # 2 documents x checkpoints 1024, 1536 x configurations f16, q8_0
    assert sorted((it["config"], it["doc"], it["ctx"]) for it in echo_items) == sorted(
        (c, d, L) for c in ("f16", "q8_0") for d in (0, 1) for L in (1024, 1536)
    )
    assert doc["echo"] == {"calls": 8}  # its own section of the result file
    assert doc["scenario"]["spec"]["echo"] == {"prompt": "\n\nThe word is", "answer": " apple"}
    summary = [r for r in doc["summary"] if r["probe"] == "echo"]
    assert {(r["config"], r["ctx"], r["n"]) for r in summary} == {
        (c, L, 2) for c in ("f16", "q8_0") for L in (1024, 1536)
    }
    assert doc["statistics"] == {"complete": True, "errors": []}

    # compare pairs its items like any built-in per-item metric, and gates on it
    assert main(["compare", str(outs[0]), str(outs[1]), "--json", "--fail-on", "echo_hit:-0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    echo_rows = [r for r in report["rows"] if r["metric"] == "echo_hit"]
    assert report["paired"]
    assert {(r["config_old"], r["ctx"]) for r in echo_rows} == {
        (c, L) for c in ("f16", "q8_0") for L in (1024, 1536)
    }
    assert all(r["diff"] == 0 and r["mark"] == "no significant change" for r in echo_rows)


def test_a_registered_probe_validates_its_own_section(echo: Probe, tmp_path: Path) -> None:
    assert load_scenario(str(_scenario(tmp_path))).spec(EchoSpec).answer == " apple"
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('probes = ["echo"]\n[echo]\nanswer = " "\n')
    with pytest.raises(UserError, match=r"key 'echo.answer' must not be empty"):
        load_scenario(str(bad_file))
    typo = tmp_path / "typo.toml"
    typo.write_text('probes = ["echo"]\n[echo]\nanwser = "x"\n')
    with pytest.raises(UserError, match=r"echo.anwser' is unknown \(did you mean answer\?\)"):
        load_scenario(str(typo))


def test_unknown_probe_names_get_a_did_you_mean(echo: Probe, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown probe 'ecko' \(did you mean echo\?\)"):
        get_probe("ecko")
    path = tmp_path / "s.toml"
    path.write_text('probes = ["needel"]\n')
    with pytest.raises(
        UserError,
        match=r"unknown probe 'needel' \(did you mean needle\?\) "
        r"\(known: needle, repetition, divergence, multikey, multivalue, multiquery, vartrack, aggregation, "
        r"nearduplicate, echo\)",
    ):
        load_scenario(str(path))


def test_a_probe_name_is_registered_once(echo: Probe) -> None:
    with pytest.raises(ValueError, match="registered already"):
        register(EchoProbe())


def test_a_plug_in_leaves_other_scenarios_hashes_alone(tmp_path: Path) -> None:
    quick = load_scenario("quick").sha256
    with registered(EchoProbe()):
        assert load_scenario("quick").sha256 == quick  # identical runs still pair in compare
        assert (
            "echo" in load_scenario(str(_scenario(tmp_path))).to_dict()
        )  # a scenario that runs it hashes it


def test_unregistered_the_probe_is_gone() -> None:
    with registered(EchoProbe()):
        assert get_probe("echo").name == "echo"
    with pytest.raises(UserError, match="unknown probe 'echo'"):
        get_probe("echo")
    assert "echo" not in load_scenario("quick").sections  # nor in the scenario's hashed spec
