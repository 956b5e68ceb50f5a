"""Runs that survive interruption: the journal, --resume, Ctrl-C and --time-budget, on the real
llama.cpp with the tiny model. A test switch stops the run right after a given unit with SIGKILL
(nothing of kvprobe runs after it) or SIGINT (Ctrl-C)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvprobe.result.journal import CHECKSUM, checksummed
from tests.helpers import RESUME_SCENARIO, kvprobe

CHECKSUM_KEY = next(iter(json.loads(CHECKSUM.decode() + '"}')))  # the checksum's own field

FIELDS = ("items", "text_items", "summary", "verdict", "divergence")


def fields(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    return {f: doc.get(f) for f in FIELDS}


@pytest.fixture(scope="module")
def run_args(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    scenario = tmp_path_factory.mktemp("scenario") / "resume.toml"
    scenario.write_text(RESUME_SCENARIO)
    return ["--model", str(tiny_model_path), "--scenario", str(scenario), "--cache", "q8_0",
            "--ctx", "1536", "--threads", "2", "--null-check"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(run_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "full.json"
    proc = kvprobe("run", *run_args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not Path(str(out) + ".journal.jsonl").exists()  # a whole result leaves no journal
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    assert doc["missing"] == []
    assert [u[:2] for u in doc["timing"]["units"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    return out


@pytest.mark.parametrize("after", ["0,0", "0,1", "1,0"])
def test_a_killed_run_resumes_to_identical_results(
    run_args: list[str], uninterrupted: Path, tmp_path: Path, after: str
) -> None:
    out = tmp_path / "r.json"
    killed = kvprobe("run", *run_args, "--out", str(out), stop=f"{after}:kill")
    assert killed.returncode == -9  # SIGKILL: no handler ran, only the journal is left
    journal = Path(str(out) + ".journal.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + ["0,0", "0,1", "1,0"].index(after) + 1
    resumed = kvprobe("run", "--resume", str(journal))  # the options come from the journal
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert fields(out) == fields(uninterrupted)
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    resume = doc["timing"]["resume"]
    assert resume["units_restored"] == ["0,0", "0,1", "1,0"].index(after) + 1
    # The lockstep state is rebuilt by feeding the prefix again, only where a later unit needs it.
    assert resume["refeed_tokens"] == {"0,0": 2 * 1024 + 1024, "0,1": 0, "1,0": 2 * 1024}[after]
    assert not journal.exists()


def test_a_journal_from_before_the_ladder_resumes_the_reference_alone(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A run without --cache once measured f16 alone (now: q8_0 and q4_0 against it); its journal
    resumes as it was started, not as a request for other caches."""
    out = tmp_path / "r.json"
    args = ["--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "2048", "--threads", "2"]
    killed = kvprobe("run", *args, "--cache", "f16", "--no-html", "--out", str(out), stop="0,0:kill")
    assert killed.returncode == -9
    journal = Path(str(out) + ".journal.jsonl")
    header, *units = journal.read_text().splitlines()
    old = {k: v for k, v in json.loads(header).items() if k != CHECKSUM_KEY}
    old["argv"] = [a for a in old["argv"] if a not in ("--cache", "f16")]  # as such a run wrote it
    assert "--cache" not in old["argv"]
    assert old["identity"]["configs"] == ["f16"]
    journal.write_text("\n".join([checksummed(old), *units]) + "\n")
    resumed = kvprobe("run", "--resume", str(journal))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    assert sorted({it["config"] for it in doc["items"]}) == ["f16"]


@pytest.mark.parametrize("signal_name", ["int", "term"])
def test_ctrl_c_or_sigterm_writes_a_partial_result_and_says_how_to_resume(
    run_args: list[str], uninterrupted: Path, tmp_path: Path, signal_name: str
) -> None:
    out = tmp_path / "r.json"
    stopped = kvprobe("run", *run_args, "--out", str(out), stop=f"0,1:{signal_name}")
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr
    journal = Path(str(out) + ".journal.jsonl")
    assert f"kvprobe run --resume {journal}" in stopped.stderr
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    assert partial["stopped"] == "interrupted"
    assert partial["missing"] == [[1, 0], [1, 1]]
    full = json.loads(uninterrupted.read_text())
    assert partial["items"] == [it for it in full["items"] if it["doc"] == 0]
    # a fresh run onto the same --out must not silently drop the journal
    again = kvprobe("run", *run_args, "--out", str(out))
    assert again.returncode == 2
    assert "--resume" in again.stderr
    assert kvprobe("run", "--resume", str(out)).returncode == 0  # the result file's name works too
    assert fields(out) == fields(uninterrupted)


def test_a_torn_last_line_is_cut_off_before_the_run_goes_on(
    run_args: list[str], uninterrupted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    assert kvprobe("run", *run_args, "--out", str(out), stop="0,0:kill").returncode == -9
    journal = Path(str(out) + ".journal.jsonl")
    with journal.open("a") as fh:
        fh.write('{"unit": [0, 1], "items": [{"probe": "nee')  # a kill in the middle of a write
    assert kvprobe("run", "--resume", str(out), stop="0,1:kill").returncode == -9
    lines = journal.read_text().splitlines()
    assert [json.loads(ln).get("unit") for ln in lines] == [None, [0, 0], [0, 1]]  # every line whole
    assert kvprobe("run", "--resume", str(out)).returncode == 0
    assert fields(out) == fields(uninterrupted)


def test_resume_refuses_another_out(run_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert kvprobe("run", *run_args, "--out", str(out), stop="0,0:kill").returncode == -9
    other = kvprobe("run", *run_args, "--out", str(tmp_path / "other.json"), "--resume", str(out))
    assert other.returncode == 2
    assert "drop --out" in other.stderr


def test_a_journal_of_another_request_is_refused(run_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert kvprobe("run", *run_args, "--out", str(out), stop="0,0:kill").returncode == -9
    other = kvprobe("run", *run_args, "--seed", "7", "--out", str(out), "--resume", str(out))
    assert other.returncode == 2
    assert "journal of another request" in other.stderr
    assert "seed (0 then, 7 now)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_a_time_budget_ends_cleanly_and_the_rest_can_follow(
    run_args: list[str], uninterrupted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    # No unit fits in a millisecond: creating the contexts alone takes longer.
    short = kvprobe("run", *run_args, "--out", str(out), "--time-budget", "0.001s")
    assert short.returncode == 0, short.stderr
    assert "time budget reached" in short.stdout
    assert "--resume" in short.stdout
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert doc["stopped"] == "time budget"
    assert len(doc["missing"]) == 4
    assert doc["items"] == []
    assert doc["statistics"]["complete"]  # the statistics work from the items there are (none)
    assert kvprobe("run", "--resume", str(out)).returncode == 0
    assert fields(out) == fields(uninterrupted)


@pytest.fixture(scope="module")
def three_caches(run_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """f16, q8_0 and q4_0 (with the null check: four contexts) in one group."""
    args = [*run_args, "--cache", "q4_0"]
    out = tmp_path_factory.mktemp("single") / "single.json"
    proc = kvprobe("run", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "groups" not in proc.stdout
    assert "groups" not in json.loads(out.read_text())["timing"]
    return args, out


def grouped_fields(path: Path) -> dict[str, Any]:
    """The fields a single group has; a grouped run also records how far its repeated
    reference strayed from the first (on CPU: not at all)."""
    got = fields(path)
    assert got["divergence"].pop("reference_repeat_max_nll_gap") == 0.0
    return got


def test_configuration_groups_give_the_numbers_of_one_group(
    three_caches: tuple[list[str], Path], tmp_path: Path
) -> None:
    args, single = three_caches
    out = tmp_path / "g.json"
    proc = kvprobe("run", *args, "--max-contexts", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "in 3 groups of at most 2 contexts (the reference again in each)" in proc.stdout
    doc = json.loads(out.read_text())
    # The null check goes with the reference alone; then the reference beside each cache.
    assert doc["timing"]["groups"] == [["f16"], ["f16", "q8_0"], ["f16", "q4_0"]]
    assert [c["id"] for c in doc["configs"]] == ["f16", "q8_0", "q4_0"]
    assert grouped_fields(out) == fields(single)
    assert doc["divergence"]["null_check"]["passed"] is True
    # The reference's document is fed once more per extra group; its rows are not repeated.
    one = json.loads(single.read_text())["timing"]
    # (only on the document the divergence probe scores: the other needs no reference logits)
    assert doc["timing"]["tokens_evaluated"] == one["tokens_evaluated"] + 2 * 1536


def test_a_grouped_run_killed_in_a_later_group_resumes_to_the_same_numbers(
    three_caches: tuple[list[str], Path], tmp_path: Path
) -> None:
    args, single = three_caches
    out = tmp_path / "g.json"
    killed = kvprobe("run", *args, "--max-contexts", "2", "--out", str(out), stop="0,1,1:kill")
    assert killed.returncode == -9
    journal = Path(str(out) + ".journal.jsonl")
    units = [json.loads(ln).get("unit") for ln in journal.read_text().splitlines()[1:]]
    assert units == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 0, 1], [0, 1, 1]]
    resumed = kvprobe("run", "--resume", str(journal))  # the groups come from the journal
    assert resumed.returncode == 0, resumed.stderr
    assert grouped_fields(out) == fields(single)
    out = tmp_path / "other.json"
    other = kvprobe("run", *args, "--max-contexts", "3", "--out", str(out), stop="0,0:kill")
    assert other.returncode == -9
    refused = kvprobe("run", *args, "--max-contexts", "2", "--resume", str(out))
    assert refused.returncode == 2
    assert "max_contexts (3 then, 2 now)" in refused.stderr


def test_too_few_contexts_for_a_group_is_one_line(run_args: list[str]) -> None:
    proc = kvprobe("run", *run_args, "--max-contexts", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "--max-contexts 1 is too few: give at least 2" in proc.stderr


def test_a_grouped_run_stopped_early_names_every_cache(
    three_caches: tuple[list[str], Path], tmp_path: Path
) -> None:
    args, single = three_caches
    out = tmp_path / "g.json"
    stopped = kvprobe("run", *args, "--max-contexts", "2", "--out", str(out), stop="1,1:int")
    assert stopped.returncode == 130
    partial = json.loads(out.read_text())
    # Only the first group (the reference and the null check) ran; the others are still named.
    assert [(c["id"], c.get("started", True)) for c in partial["configs"]] == [
        ("f16", True),
        ("q8_0", False),
        ("q4_0", False),
    ]
    assert len(partial["missing"]) == 8
    assert {it["config"] for it in partial["items"]} == {"f16"}
    assert kvprobe("run", "--resume", str(out)).returncode == 0
    assert grouped_fields(out) == fields(single)
