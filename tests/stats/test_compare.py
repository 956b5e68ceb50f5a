"""`kvprobe compare` on real result files (a tiny-model run), edited where a test needs a
regression; exit codes as CI would see them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.stats.compare import FailRule, compare, match_configs
from tests.helpers import assert_one_line_error, kvprobe


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "r.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "default", "--ctx", "512",
        "--cache", "q8_0", "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def edited(doc: dict[str, Any], path: Path, **changes: Any) -> Path:
    new = copy.deepcopy(doc)
    for key, value in changes.items():
        new[key] = value
    path.write_text(json.dumps(new))
    return path


def all_right(result: Path) -> dict[str, Any]:
    """The result with every needle answered right, so a regression shows in pass/fail too."""
    doc: dict[str, Any] = json.loads(result.read_text())
    for it in doc["items"]:
        if it["probe"] == "needle":
            it["correct"] = True
    return doc


def with_regression(doc: dict[str, Any], config: str, rename: str | None = None) -> dict[str, Any]:
    """The test configuration loses every needle the baseline got right (and every other one)."""
    new = copy.deepcopy(doc)
    for i, it in enumerate(new["items"]):
        if it["config"] == config and it["probe"] == "needle":
            it["correct"] = False
            it["logprob"] = it["logprob"] - 5.0 - 0.01 * i
        if rename and it["config"] == config:
            it["config"] = rename
    if rename:
        for c in new["configs"]:
            if c["id"] == config:
                c["id"] = rename
    return new


def test_a_result_against_itself_changes_nothing(result: Path) -> None:
    proc = kvprobe("compare", str(result), str(result), "--fail-on", "accuracy:-0.05")
    assert proc.returncode == 0, proc.stderr
    assert "paired" in proc.stdout
    report = json.loads(kvprobe("compare", str(result), str(result), "--json").stdout)
    assert report["paired"]
    assert report["rows"]
    assert {r["mark"] for r in report["rows"]} == {"no significant change"}
    assert all(r["diff"] == 0 for r in report["rows"])


def test_regression_is_marked_and_gates(result: Path, tmp_path: Path) -> None:
    base = all_right(result)
    old = edited(base, tmp_path / "old.json")
    new = tmp_path / "new.json"
    new.write_text(json.dumps(with_regression(base, "q8_0", rename="q4_0")))
    report = json.loads(kvprobe("compare", str(old), str(new), "--json").stdout)
    assert report["configs"] == [["f16", "f16"], ["q8_0", "q4_0"]]  # matched by role
    acc = [r for r in report["rows"] if r["metric"] == "accuracy" and r["config_new"] == "q4_0"]
    assert acc
    assert all(r["mark"] == "worse" for r in acc)
    assert all(r["diff"] == -1.0 for r in acc)
    gate = kvprobe("compare", str(old), str(new), "--fail-on", "accuracy:-0.05")
    assert gate.returncode == 1, gate.stdout
    assert "FAIL accuracy:-0.05" in gate.stdout
    # a threshold beyond the change does not fail
    assert kvprobe("compare", str(old), str(new), "--fail-on", "accuracy:-1.5").returncode == 0


def test_unpaired_when_the_scenario_differs(result: Path, tmp_path: Path) -> None:
    doc = json.loads(result.read_text())
    scenario = {**doc["scenario"], "sha256": "0" * 64}
    other = edited(doc, tmp_path / "other.json", scenario=scenario)
    report = json.loads(kvprobe("compare", str(result), str(other), "--json").stdout)
    assert not report["paired"]
    assert "scenario" in report["pairing"]
    assert {r["test"] for r in report["rows"] if r["metric"] == "accuracy"} == {"Fisher exact"}
    assert_one_line_error(kvprobe("compare", str(result), str(other), "--paired"), "--paired", "scenario")


def test_bad_files_exit_2_with_one_line(result: Path, tmp_path: Path) -> None:
    doc = json.loads(result.read_text())
    assert_one_line_error(kvprobe("compare", str(result), str(tmp_path / "none.json")), "not found")
    broken = tmp_path / "broken.json"
    broken.write_text(result.read_text()[:500])
    assert_one_line_error(kvprobe("compare", str(result), str(broken)), "not valid JSON")
    future = edited(doc, tmp_path / "future.json", schema_version=99)
    assert_one_line_error(kvprobe("compare", str(result), str(future)), "schema_version 99")
    partial = copy.deepcopy(doc)
    del partial["items"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    assert_one_line_error(kvprobe("compare", str(result), str(tmp_path / "partial.json")), "missing items")
    assert_one_line_error(kvprobe("compare", str(result), str(result), "--fail-on", "speed:1"), "--fail-on")


def test_fail_rule_parsing_and_direction() -> None:
    rule = FailRule.parse("kld_mean:+0.01")
    assert rule.threshold == pytest.approx(0.01)
    assert rule.violated_by({"metric": "kld_mean", "diff": 0.02, "p": 0.001})
    assert not rule.violated_by({"metric": "kld_mean", "diff": 0.02, "p": 0.2})  # not significant
    assert not rule.violated_by({"metric": "kld_mean", "diff": 0.005, "p": 0.001})
    with pytest.raises(UserError):
        FailRule.parse("accuracy")


def test_match_configs_by_id_then_role() -> None:
    old = {"configs": [{"id": "f16"}, {"id": "q8_0"}], "baseline": "f16"}
    assert match_configs(old, copy.deepcopy(old)) == ([("f16", "f16"), ("q8_0", "q8_0")], [], [])
    new = {"configs": [{"id": "f16"}, {"id": "q4_0"}, {"id": "q5_0"}], "baseline": "f16"}
    # two candidates: no guess, and both sides' leftovers are named
    assert match_configs(old, new) == ([("f16", "f16")], ["q8_0"], ["q4_0", "q5_0"])
    assert match_configs(old, new, ["q8_0=q5_0"]) == ([("q8_0", "q5_0"), ("f16", "f16")], [], ["q4_0"])
    split = {"configs": [{"id": "f16"}, {"id": "k=q4_0,v=f16"}], "baseline": "f16"}
    assert match_configs(old, split, ["q8_0=k=q4_0,v=f16"])[0][0] == ("q8_0", "k=q4_0,v=f16")


def test_a_gate_with_no_test_configuration_compared_is_an_error(result: Path, tmp_path: Path) -> None:
    """OLD f16 + q8_0 against NEW f16 + q4_0 + its K-only and V-only halves (--split-kv): only the
    f16 rows matched, and the gate passed ("0 worse") while q4_0 was clearly worse."""
    base = all_right(result)
    old = edited(base, tmp_path / "old.json")
    worse = with_regression(base, "q8_0", rename="q4_0")
    for extra in ("k=q4_0,v=f16", "k=f16,v=q4_0"):  # two more test configurations: no role match
        worse["configs"].append({**worse["configs"][-1], "id": extra})
    new = tmp_path / "new.json"
    new.write_text(json.dumps(worse))

    listing = kvprobe("compare", str(old), str(new))
    assert listing.returncode == 0, listing.stderr
    assert "not compared (old): q8_0" in listing.stdout
    assert "not compared (new): q4_0, k=q4_0,v=f16, k=f16,v=q4_0" in listing.stdout
    assert_one_line_error(
        kvprobe("compare", str(old), str(new), "--fail-on", "accuracy:-0.05"), "nothing to judge", "--map"
    )
    mapped = kvprobe("compare", str(old), str(new), "--map", "q8_0=q4_0", "--fail-on", "accuracy:-0.05")
    assert mapped.returncode == 1, mapped.stdout
    assert "FAIL accuracy:-0.05" in mapped.stdout


def test_nan_is_not_testable_and_fails_a_gate(result: Path, tmp_path: Path) -> None:
    """A NaN p-value was marked "better" and never failed a gate."""
    doc = json.loads(result.read_text())
    nan_doc = copy.deepcopy(doc)
    for it in nan_doc["items"]:
        if it["probe"] == "needle" and it["config"] == "q8_0":
            it["logprob"] = float("nan")
    report = compare(doc, nan_doc)
    rows = [r for r in report["rows"] if r["metric"] == "answer_logprob" and r["config_new"] == "q8_0"]
    assert rows
    assert {r["mark"] for r in rows} == {"not testable"}
    assert FailRule.parse("answer_logprob:-1").violated_by(rows[0])
    from kvprobe.result.store import write_result

    path = tmp_path / "nan.json"
    write_result(nan_doc, path)  # as kvprobe writes it: every NaN stored as null
    assert json.loads(path.read_text())["non_finite"]
    gate = kvprobe("compare", str(result), str(path), "--fail-on", "answer_logprob:-1")
    assert gate.returncode == 1, gate.stdout
    assert "not testable" in gate.stdout
    strict = kvprobe("compare", str(result), str(path), "--json").stdout
    rows = json.loads(strict, parse_constant=lambda c: pytest.fail(f"--json printed {c}"))["rows"]
    assert "not testable" in {r["mark"] for r in rows}
    raw = tmp_path / "raw-nan.json"
    raw.write_text(json.dumps(nan_doc))  # as another tool might: a bare NaN, which is not JSON
    bare = kvprobe("compare", str(result), str(raw), "--fail-on", "answer_logprob:-1")
    assert bare.returncode == 2  # refused, so a gate never passes on it
    assert "NaN is not JSON" in bare.stderr
    assert len(bare.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("attn_rotation", False, "Hadamard rotation"),
        ("flash_attn", False, "flash attention"),
        ("llama_cpp_python", "0.3.99", "llama-cpp-python version"),
        ("extra_bufts", False, "extra buffer types"),
    ],
)
def test_files_with_other_numerics_are_not_paired(result: Path, key: str, value: Any, shown: str) -> None:
    doc = json.loads(result.read_text())
    other = copy.deepcopy(doc)
    other["runtime"][key] = value
    report = compare(doc, other)
    assert not report["paired"]
    assert shown in report["pairing"]


def test_compare_refuses_results_without_common_configs(result: Path) -> None:
    doc = json.loads(result.read_text())
    other = copy.deepcopy(doc)
    for c in other["configs"]:
        c["id"] = "x" + c["id"]
    other["configs"].append({**other["configs"][-1], "id": "xq4_0"})  # two candidates: no role match
    other["baseline"] = "xf16"
    with pytest.raises(UserError, match="no configuration"):
        compare(doc, other)


def test_an_equivalence_gate_passes_what_is_shown_within_the_margin(result: Path, tmp_path: Path) -> None:
    """--fail-on METRIC:±MARGIN fails unless the change is shown equivalent (TOST): the same
    file passes; a file whose log-prob moved by 5 nats fails, and so does one whose change
    is small but too noisy to show within a tight margin."""
    assert kvprobe("compare", str(result), str(result), "--fail-on", "answer_logprob:±0.25").returncode == 0
    base = all_right(result)
    old = edited(base, tmp_path / "old.json")
    new = tmp_path / "new.json"
    new.write_text(json.dumps(with_regression(base, "q8_0")))
    proc = kvprobe("compare", str(old), str(new), "--fail-on", "answer_logprob:+-0.25")
    assert proc.returncode == 1, proc.stdout
    assert "FAIL answer_logprob:±0.25" in proc.stdout
    assert "equivalence interval" in proc.stdout
    report = json.loads(kvprobe("compare", str(old), str(new), "--json").stdout)
    row = next(r for r in report["rows"] if r["metric"] == "answer_logprob" and r["config_new"] == "q8_0")
    assert row["ci_equivalence"][1] < -0.25  # the interval the gate read lies beyond the margin
    assert FailRule.parse("answer_logprob:±0.25").violated_by(row)
    assert not FailRule.parse("answer_logprob:±100").violated_by(row)


@pytest.mark.parametrize("text", ["answer_logprob:±0", "answer_logprob:±-1", "answer_logprob:±x"])
def test_a_bad_margin_is_one_line(result: Path, text: str) -> None:
    proc = kvprobe("compare", str(result), str(result), "--fail-on", text)
    assert_one_line_error(proc, "positive margin")
