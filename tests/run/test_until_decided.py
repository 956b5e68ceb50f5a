"""--until-decided: group-sequential boundaries (kvprobe.stats.sequential), the look-by-look
verdict, and runs on the real llama.cpp that stop a configuration once decided: on the tiny
model (q4_0 clearly worse, q8_0 undecided), resumed after a kill, and on the default model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.sequential_calibration import LOOKS, logprob_draw, rates, real_differences
from kvprobe.result.store import Result
from kvprobe.run.until_decided import UntilDecided
from kvprobe.stats.equivalence import EQUIVALENT, UNDECIDED, WORSE
from kvprobe.stats.sequential import OBRIEN_FLEMING, POCOCK, Design, boundaries, spent
from kvprobe.stats.statistics import add_statistics
from kvprobe.stats.verdict import combine, sequential_tests
from kvprobe.views.decision import frontier_cells
from tests.helpers import kvprobe

# Published Lan–DeMets boundaries, one-sided alpha 0.025, four equally spaced looks (e.g.
# Jennison & Turnbull, table 7.6; gsDesign sfLDOF / sfLDPocock).
OBF_4 = (4.3326, 2.9631, 2.3590, 2.0141)
POCOCK_4 = (2.3683, 2.3675, 2.3582, 2.3500)
QUARTERS = (0.25, 0.5, 0.75, 1.0)


def test_boundaries_match_the_published_lan_demets_values() -> None:
    assert boundaries(QUARTERS, 0.025, OBRIEN_FLEMING) == pytest.approx(OBF_4, abs=2e-3)
    assert boundaries(QUARTERS, 0.025, POCOCK) == pytest.approx(POCOCK_4, abs=2e-3)
    assert boundaries((1.0,), 0.025, OBRIEN_FLEMING) == pytest.approx([1.95996], abs=1e-4)
    assert spent(1.0, 0.025, OBRIEN_FLEMING) == pytest.approx(0.025)
    assert spent(0.5, 0.025, POCOCK) < spent(1.0, 0.025, POCOCK)


def test_the_boundaries_keep_the_error_rate_over_all_looks() -> None:
    """Brownian paths under the null cross some look's boundary with probability alpha, while
    the fixed 1.96 at every look crosses far more often."""
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((200_000, 4)) * 0.5).cumsum(axis=1) / np.sqrt(QUARTERS)
    for kind in (OBRIEN_FLEMING, POCOCK):
        crossed = float((z >= np.array(boundaries(QUARTERS, 0.025, kind))).any(axis=1).mean())
        assert crossed == pytest.approx(0.025, abs=0.0015), kind
    assert float((z >= 1.96).any(axis=1).mean()) > 0.055


def test_design_levels_widen_early_and_end_near_the_fixed_test() -> None:
    d = Design(looks=4)
    levels = [d.level(j) for j in range(4)]
    assert levels == sorted(levels, reverse=True)
    assert levels[0] > 0.9999
    assert 0.95 < levels[-1] < 0.96
    assert Design(looks=1).level(0) == pytest.approx(0.95, abs=1e-6)
    assert Design.from_json(d.to_json()) == d


def _items(diffs_per_doc: list[list[float]], ctx: int = 1024) -> list[dict[str, Any]]:
    """Needle items of a reference (log-prob 0) and a test configuration, per document."""
    items = []
    for doc, diffs in enumerate(diffs_per_doc):
        for k, diff in enumerate(diffs):
            key = f"key{doc}-{k}"
            base = {"probe": "needle", "doc": doc, "ctx": ctx, "key": key, "position": k, "correct": True}
            items.append({**base, "config": "f16", "logprob": 0.0})
            items.append({**base, "config": "q", "logprob": diff})
    return items


def test_a_clear_loss_is_decided_worse_at_the_first_look_and_stays_decided() -> None:
    rng = np.random.default_rng(1)
    docs = [list(-2.0 + 0.05 * rng.standard_normal(16)) for _ in range(4)]
    margin = {"answer_logprob": 0.25}
    tests, looks = sequential_tests(_items(docs[:1]), "f16", "q", [], margin, design=Design(4))
    assert combine(tests[1024])[0] == WORSE
    assert looks[1024] == 0
    # later documents (even ones that would look equivalent) do not reopen a decided checkpoint
    later = docs[:1] + [list(0.001 * rng.standard_normal(16)) for _ in range(3)]
    tests, looks = sequential_tests(_items(later), "f16", "q", [], margin, design=Design(4))
    assert combine(tests[1024])[0] == WORSE
    assert looks[1024] == 0


def test_a_small_difference_is_not_decided_at_the_first_look_though_the_fixed_test_would() -> None:
    """Sixteen items 0.1 nats apart: the fixed 95% interval is inside ±0.25 already; O'Brien–
    Fleming's first look (z 4.33) waits for more documents."""
    rng = np.random.default_rng(2)
    docs = [list(-0.1 + 0.2 * rng.standard_normal(16)) for _ in range(4)]
    margin = {"answer_logprob": 0.25}
    first, _ = sequential_tests(_items(docs[:1]), "f16", "q", [], margin, design=Design(1))
    assert combine(first[1024])[0] == EQUIVALENT  # one look: the fixed test
    early, _ = sequential_tests(_items(docs[:1]), "f16", "q", [], margin, design=Design(4))
    assert combine(early[1024])[0] == UNDECIDED
    whole, looks = sequential_tests(_items(docs), "f16", "q", [], margin, design=Design(4))
    assert combine(whole[1024])[0] == EQUIVALENT
    assert looks[1024] > 0


def _checkpoint_items(per: dict[tuple[int, int], list[float]]) -> list[dict[str, Any]]:
    """Needle items of f16 (log-prob 0) and q, per (document, checkpoint)."""
    return [it for (doc, ctx), diffs in per.items() for it in _items([[]] * doc + [diffs], ctx=ctx)]


def test_a_checkpoint_is_tested_again_only_when_a_document_brings_items_there() -> None:
    """2,048 has document 0's items only: after document 1 reached 1,024 it keeps look 1's
    (strict) test, not the same items at look 2's looser level, which would call it equivalent."""
    rng = np.random.default_rng(5)
    spread = rng.standard_normal(32)
    at_2048 = list(0.35 * (spread - spread.mean()) / spread.std(ddof=1))  # mean 0, sd 0.35
    per = {(0, 1024): list(0.2 * rng.standard_normal(16)), (0, 2048): at_2048}
    per[(1, 1024)] = list(0.2 * rng.standard_normal(16))
    margin = {"answer_logprob": 0.25}
    tests, looks = sequential_tests(_checkpoint_items(per), "f16", "q", [], margin, design=Design(4))
    assert looks[2048] == 0
    assert combine(tests[2048])[0] == UNDECIDED
    assert looks[1024] == 1
    # the same items at the second look's level would have decided it
    second = sequential_tests(
        _checkpoint_items({(1, 2048): at_2048}), "f16", "q", [], margin, design=Design(4)
    )
    assert combine(second[0][2048])[0] == EQUIVALENT


def _rule(checkpoints: list[int]) -> UntilDecided:
    return UntilDecided(Design(4), "f16", ["q"], checkpoints, {"answer_logprob": 0.25}, seed=0)


def test_worse_at_a_later_checkpoint_keeps_measuring_below_it_then_stops() -> None:
    rng = np.random.default_rng(6)
    rule = _rule([1024, 2048])
    per = {
        (0, 1024): list(0.2 * rng.standard_normal(16)),
        (0, 2048): list(-2.0 + 0.05 * rng.standard_normal(16)),
    }
    stops = rule.after_unit(0, _checkpoint_items(per), {})
    assert [(s.status, s.ctx, s.step) for s in stops] == [(WORSE, 2048, 1)]
    assert rule.active("q", 0)
    assert not rule.active("q", 1)
    assert rule.active("f16", 1)  # the reference is not the rule's to stop
    for doc in (1, 2, 3):
        per[(doc, 1024)] = list(0.2 * rng.standard_normal(16))
        rule.after_unit(doc, _checkpoint_items(per), {})
        if rule.limits["q"] == 0:
            break
    assert rule.limits["q"] == 0
    assert rule.all_decided
    assert rule.stopped["q"].status == WORSE
    assert rule.stopped["q"].ctx == 2048


def test_an_equivalent_configuration_with_a_significant_loss_is_not_stopped() -> None:
    """Within ±0.25 nats at every look, yet 0.1 nats lower every time: the verdict gives it no
    effective context while the loss stands, so the run keeps measuring it."""
    rng = np.random.default_rng(8)
    rule = _rule([1024])
    per = {(doc, 1024): list(-0.1 + 0.01 * rng.standard_normal(16)) for doc in range(2)}
    items = _checkpoint_items(per)
    tests, _ = sequential_tests(items, "f16", "q", [], rule.margin, design=rule.design)
    assert combine(tests[1024])[0] == EQUIVALENT
    assert rule.after_unit(1, items, {}) == []
    assert rule.limits["q"] == 1
    calm = _rule([1024])  # the same spread around zero: stopped as equivalent
    zero = _checkpoint_items({k: [d + 0.1 for d in v] for k, v in per.items()})
    assert [s.status for s in calm.after_unit(1, zero, {})] == [EQUIVALENT]


def test_a_null_configuration_is_not_dropped_in_simulation_beyond_alpha() -> None:
    """No true difference (q8_0-shaped answer log-prob differences, and the reference against
    itself): called worse at most alpha = 2.5% of the time under --until-decided's design."""
    rng = np.random.default_rng(3)
    null = logprob_draw(real_differences("q8_0"), 0.3, 0.0)
    found = rates(null, 8, 0.25, binary=False, sims=120, rng=rng)
    assert found[OBRIEN_FLEMING]["worse"] <= 0.025
    assert found[OBRIEN_FLEMING]["documents"] < LOOKS  # and it stops early, called equivalent
    assert found[OBRIEN_FLEMING]["equivalent"] > 0.8

    def itself(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = rng.normal(size=n)
        return d, d.copy()

    assert rates(itself, 8, 0.25, binary=False, sims=40, rng=rng)[OBRIEN_FLEMING]["worse"] == 0.0


def test_at_the_margin_the_design_keeps_the_fixed_tests_error_where_naive_looks_inflate_it() -> None:
    rng = np.random.default_rng(4)
    edge = logprob_draw(real_differences("q4_0"), 0.3, -0.25)
    found = rates(edge, 8, 0.25, binary=False, sims=300, rng=rng)
    naive = found["naive"]["equivalent"] + found["naive"]["worse"]
    sequential = found[OBRIEN_FLEMING]["equivalent"] + found[OBRIEN_FLEMING]["worse"]
    assert sequential < naive
    assert found[OBRIEN_FLEMING]["equivalent"] <= found["fixed"]["equivalent"] + 0.03


# --- runs on the real llama.cpp ----------------------------------------------------------------

SCENARIO = """
name = "until"
probes = ["needle", "repetition", "divergence"]
[plan]
documents = 2
chunk = 256
[needle]
per_segment = 2
[repetition]
tokens = 16
offsets = 2
"""


@pytest.fixture(scope="module")
def args(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    scenario = tmp_path_factory.mktemp("scenario") / "until.toml"
    scenario.write_text(SCENARIO)
    return ["--model", str(tiny_model_path), "--scenario", str(scenario), "--cache", "q8_0",
            "--cache", "q4_0", "--ctx", "1536", "--threads", "2", "--no-html"]  # fmt: skip


@pytest.fixture(scope="module")
def full(args: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("full") / "full.json"
    proc = kvprobe("run", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def decided(args: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("decided") / "decided.json"
    proc = kvprobe("run", *args, "--until-decided", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def _key(it: dict[str, Any]) -> str:
    return json.dumps(it, sort_keys=True)


def test_a_clearly_worse_configuration_is_dropped_after_its_first_unit(
    decided: tuple[Path, str], full: dict[str, Any]
) -> None:
    out, stdout = decided
    doc = json.loads(out.read_text())
    assert "until decided: q4_0 decided worse at 1,024 tokens on document 1 of 2" in stdout
    stop = doc["run"]["until_decided"]["stopped"]
    assert set(stop) == {"q4_0"}  # q8_0 (undecided) runs on
    assert stop["q4_0"]["status"] == WORSE
    assert stop["q4_0"]["ctx"] == 1024
    assert stop["q4_0"]["measured_steps"] == 0
    assert stop["q4_0"]["look"] == 1
    q4 = [it for it in doc["items"] if it["config"] == "q4_0"]
    assert q4
    assert {(it["doc"], it["ctx"]) for it in q4} == {(0, 1024)}
    # the reference and q8_0 measured every unit, with exactly the items of a full run
    for config in ("f16", "q8_0"):
        mine = sorted(_key(it) for it in doc["items"] if it["config"] == config and it["probe"] == "needle")
        theirs = sorted(
            _key(it) for it in full["items"] if it["config"] == config and it["probe"] == "needle"
        )
        assert mine == theirs
    in_full = {_key(it) for it in full["items"] if it["probe"] == "needle"}
    assert all(_key(it) in in_full for it in q4 if it["probe"] == "needle")
    assert [u[:2] for u in doc["timing"]["units"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert doc["complete"] is True
    assert doc["missing"] == []
    # q4_0's divergence arrays end at its checkpoint: no bin or span past it
    spans = doc["divergence"]["spans"]["q4_0"]
    assert [s["ctx"] for s in spans] == [1024]
    bins = [r["bin"] for r in doc["summary"] if r["config"] == "q4_0" and r.get("scope") == "bin"]
    assert bins
    assert max(hi for _, hi in bins) <= 1024


def test_the_verdict_says_who_stopped_and_the_report_rebuilds_it(
    decided: tuple[Path, str], full: dict[str, Any]
) -> None:
    out, _ = decided
    doc = json.loads(out.read_text())
    verdict = doc["verdict"]
    q4 = verdict["configs"]["q4_0"]
    assert q4["equivalence"]["status"] == full["verdict"]["configs"]["q4_0"]["equivalence"]["status"] == WORSE
    assert q4["equivalence"]["checkpoints"][0]["look"] == 1
    assert any("Stopped early (--until-decided): decided worse at 1,024" in s for s in verdict["sentences"])
    assert verdict["recommendation"]["config"] == full["verdict"]["recommendation"]["config"]
    rebuilt = Result.load(out).doc
    rebuilt["summary"], rebuilt["verdict"] = [], None
    add_statistics(rebuilt)
    for config, v in verdict["configs"].items():
        again = rebuilt["verdict"]["configs"][config]["equivalence"]
        assert [(r["ctx"], r["status"], r["look"]) for r in again["checkpoints"]] == [
            (r["ctx"], r["status"], r["look"]) for r in v["equivalence"]["checkpoints"]
        ]
    assert rebuilt["verdict"]["recommendation"] == verdict["recommendation"]
    _, cells = frontier_cells(doc)
    assert cells[2][:2] == ["q4_0", "worse (stopped: decided worse at 1,024)"]
    report = kvprobe("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "Stopped early, once decided (O'Brien–Fleming alpha spending over 2 looks" in report.stdout


@pytest.mark.parametrize("after", ["0,0", "1,0"])
def test_resume_after_a_kill_gives_the_same_items(
    args: list[str], decided: tuple[Path, str], tmp_path: Path, after: str
) -> None:
    out = tmp_path / "r.json"
    killed = kvprobe("run", *args, "--until-decided", "--out", str(out), stop=f"{after}:kill")
    assert killed.returncode == -9
    resumed = kvprobe("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    mine, theirs = json.loads(out.read_text()), json.loads(decided[0].read_text())
    assert mine["items"] == theirs["items"]
    assert mine["run"]["until_decided"]["stopped"].keys() == theirs["run"]["until_decided"]["stopped"].keys()
    assert mine["verdict"]["recommendation"] == theirs["verdict"]["recommendation"]


def test_compare_says_it_compares_only_what_both_measured(
    decided: tuple[Path, str], full: dict[str, Any], tmp_path: Path
) -> None:
    whole = tmp_path / "full.json"
    whole.write_text(json.dumps(full))
    proc = kvprobe("compare", str(whole), str(decided[0]), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert any("q4_0 was stopped once decided worse at 1,024" in n for n in report["notes"])
    rows = [r for r in report["rows"] if r["config_new"] == "q4_0"]
    assert rows
    assert all(r["ctx"] <= 1024 or r.get("scope") == "pooled" for r in rows)
    pooled = [r for r in rows if r.get("scope") == "pooled"]
    assert all(r["n_old"] == r["n_new"] for r in pooled)  # the same blocks on both sides


def test_in_groups_the_reference_runs_on_for_the_later_groups(
    args: list[str], full: dict[str, Any], tmp_path: Path
) -> None:
    """--max-contexts 2: q4_0 beside the reference in the first group, q8_0 in the second. q4_0
    is dropped after the first unit; the first group still measures the reference in every
    unit, since the second group's q8_0 pairs with its rows."""
    out = tmp_path / "grouped.json"
    grouped = [a for a in args if a not in ("q8_0", "q4_0", "--cache")] + [
        "--cache",
        "q4_0",
        "--cache",
        "q8_0",
    ]
    proc = kvprobe("run", *grouped, "--until-decided", "--max-contexts", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["timing"]["groups"] == [["f16", "q4_0"], ["f16", "q8_0"]]
    assert set(doc["run"]["until_decided"]["stopped"]) == {"q4_0"}
    for config in ("f16", "q8_0"):
        mine = sorted(_key(it) for it in doc["items"] if it["config"] == config and it["probe"] == "needle")
        theirs = sorted(
            _key(it) for it in full["items"] if it["config"] == config and it["probe"] == "needle"
        )
        assert mine == theirs, config
    status = doc["verdict"]["configs"]["q8_0"]["equivalence"]["status"]
    assert status == full["verdict"]["configs"]["q8_0"]["equivalence"]["status"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--mode", "classic"], "--until-decided needs --mode onepass"),
        (["--baseline", "none"], "--until-decided needs a reference"),
    ],
)
def test_until_decided_without_what_it_needs_is_refused_in_one_line(
    args: list[str], tmp_path: Path, extra: list[str], needle: str
) -> None:
    needles = tmp_path / "needles.toml"
    needles.write_text('name = "needles"\nprobes = ["needle"]\n')
    proc = kvprobe(
        "run", *args, "--scenario", str(needles), "--until-decided", *extra, "--out", str(tmp_path / "r.json")
    )
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_default_model_drops_q4_0_after_the_first_unit_and_keeps_q8_0(
    default_model_path: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "short.toml"
    scenario.write_text(SCENARIO.replace("chunk = 256", "chunk = 512"))
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--model", str(default_model_path), "--scenario", str(scenario), "--cache", "q8_0",
        "--cache", "q4_0", "--ctx", "2048", "--threads", "2", "--no-html", "--until-decided",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    stop = doc["run"]["until_decided"]["stopped"]
    assert stop["q4_0"]["status"] == WORSE
    assert stop["q4_0"]["ctx"] == 1024
    assert stop["q4_0"]["look"] == 1
    assert "q8_0" not in stop or stop["q8_0"]["status"] == EQUIVALENT  # never dropped as worse
    assert {it["doc"] for it in doc["items"] if it["config"] == "q4_0"} == {0}
    assert {it["doc"] for it in doc["items"] if it["config"] == "f16"} == {0, 1} or "q8_0" in stop
    assert doc["verdict"]["configs"]["q4_0"]["equivalence"]["status"] == WORSE
    assert math.isfinite(stop["q4_0"]["saved_s"])
    assert stop["q4_0"]["saved_s"] > 0
