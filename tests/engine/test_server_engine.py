"""The llama-server engine through `kvprobe run`, against the real llama-server on the tiny GGUF:
spawned per cache type and attached to servers already running; the same needles as the
in-process engine; refusals in one line; no server left behind when the run is signalled or one
of its servers dies."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvprobe.engine.server.process import ServerProcess, free_port, server_version
from kvprobe.infra.test_hooks import STOP_AFTER
from kvprobe.result.arrays import decode_array
from tests.helpers import (
    NEEDLES,
    RUN_TIMEOUT_S,
    assert_one_line_error,
    attached_servers,
    kill_left,
    kvprobe,
    llama_server_pids,
    nvml_gpus,
    user_server,
    wait_frozen,
    wait_gone,
    write_tiny_model,
)

# Two documents (a unit each at --ctx 1024): a run stopped after the first has work left.
TWO_DOCUMENTS = """
name = "two-documents"
probes = ["needle"]
[needle]
per_segment = 2
[plan]
documents = 2
chunk = 256
"""
# Answer log-probs, server vs in-process, per needle item (a sum over the answer's ~8 tokens):
# measured at most 7.1e-3 for f16 and 5e-6 for q8_0 and q4_0. The server forces each answer token
# in a request of its own, in-process the answer is one batch: for f16 K/V llama.cpp's CPU flash
# attention takes another path for one row than for a tile (docs/server-notes.md §3), for a
# quantized K the same. Allowed: 0.05 nats, a tenth of q4_0's effect on this model (0.4-0.6).
LOGPROB_TOLERANCE = 0.05


@dataclass(frozen=True)
class Work:
    binary: Path  # the real llama-server
    model: Path  # the tiny GGUF (tests that look for their own servers load a copy: own_model)
    folder: Path  # the scenarios

    @property
    def needles(self) -> Path:
        return self.folder / "needles.toml"


@pytest.fixture(scope="module")
def work(llama_server: Path, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Work:
    folder = tmp_path_factory.mktemp("server-engine")
    (folder / "needles.toml").write_text(NEEDLES)
    (folder / "two.toml").write_text(TWO_DOCUMENTS)
    return Work(llama_server, tiny_model_path, folder)


def own_model(work: Work, where: Path) -> Path:
    """A copy of the tiny model that only this test loads: its path finds this test's servers."""
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(work.model, where / "tiny.gguf")).resolve()


def run_args(model: Path, scenario: Path, out: Path, ctx: int = 512) -> list[str]:
    return [
        "--model", str(model), "--scenario", str(scenario), "--ctx", str(ctx), "--threads", "2",
        "--no-html", "--out", str(out),
    ]  # fmt: skip


def journal_units(out: Path) -> list[Any]:
    lines = Path(f"{out}.journal.jsonl").read_text().splitlines()
    return [json.loads(ln).get("unit") for ln in lines[1:]]


# --- spawn ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spawned(work: Work) -> dict[str, Any]:
    """`kvprobe run --llama-server` on the needles, f16 and q4_0; the servers found after it."""
    model = own_model(work, work.folder / "spawn")
    out = work.folder / "spawn" / "r.json"
    proc = kvprobe(
        "run", "--llama-server", str(work.binary), "--cache", "q4_0", *run_args(model, work.needles, out)
    )
    left = llama_server_pids(work.binary, marker=str(model))
    kill_left(left)
    return {"proc": proc, "out": out, "model": model, "left": left}


def test_spawn_runs_one_server_per_cache_and_leaves_none(spawned: dict[str, Any], work: Work) -> None:
    proc, out = spawned["proc"], spawned["out"]
    assert proc.returncode == 0, proc.stderr
    assert not spawned["left"], f"llama-server processes left after the run: {spawned['left']}"
    doc = json.loads(out.read_text())
    runtime = doc["runtime"]
    assert runtime["engine"] == "llama-server"
    assert runtime["server_version"] == server_version(work.binary)
    server = runtime["server"]
    assert server["mode"] == "spawn"
    assert server["binary"] == str(work.binary)
    assert set(server["configs"]) == {"f16", "q4_0"}
    logs = out.parent / "r.server-logs"
    for cache, record in server["configs"].items():
        assert record["applied"]["type_k"] == [cache]
        assert record["applied"]["type_v"] == [cache]
        assert record["applied"]["flash_attn"] == "enabled"
        assert record["applied"]["n_slots"] == 1
        assert record["args"][record["args"].index("-m") + 1] == str(spawned["model"])
        assert Path(record["log"]).resolve() == (logs / f"llama-server-{cache}.log").resolve()
        assert "listening on" in (logs / f"llama-server-{cache}.log").read_text()
        props = record["props"]  # what the server itself says (/props)
        assert props["model_path"] == str(spawned["model"])
        assert props["total_slots"] == 1
        assert props["n_ctx"] >= doc["runtime"]["n_ctx"]
        assert props["build_info"].endswith(runtime["server_version"].split("commit ")[1].rstrip(")"))
        assert len(props["chat_template_sha256"]) == 64
    assert (logs / "llama-server-tokenizer.log").is_file()
    assert doc["complete"] is True
    assert {item["config"] for item in doc["items"]} == {"f16", "q4_0"}


def test_the_report_names_the_server_build(spawned: dict[str, Any], work: Work) -> None:
    """What a user reads says where the numbers come from: the run's header line and the
    report name the server's build; the page's provenance too."""
    assert spawned["proc"].returncode == 0, spawned["proc"].stderr
    version = server_version(work.binary)
    assert f"through llama-server {version}" in " ".join(spawned["proc"].stdout.split())  # lines wrap
    report = kvprobe("report", str(spawned["out"]))
    assert report.returncode == 0, report.stderr
    said = " ".join(report.stdout.split())
    assert f"engine: llama-server {version} (started by kvprobe, one per cache type)" in said
    page = spawned["out"].with_suffix(".html")
    assert kvprobe("report", str(spawned["out"]), "--html", str(page)).returncode == 0
    assert f"llama-server {version} (spawn)" in page.read_text()


def test_the_report_speaks_of_the_server_s_memory_and_speed(spawned: dict[str, Any], work: Work) -> None:
    """Each server's record holds its timings and its GPU memory as NVML saw it (None without a
    GPU); the decision table and the speed sentence then give the server's figures, its build named."""
    assert spawned["proc"].returncode == 0, spawned["proc"].stderr
    doc = json.loads(spawned["out"].read_text())
    for record in doc["runtime"]["server"]["configs"].values():
        assert "vram_mib" in record
        if not nvml_gpus():
            assert record["vram_mib"] is None
        assert record["prefill_tps"] > 0
    said = " ".join(kvprobe("report", str(spawned["out"])).stdout.split())
    assert f"Speed of the llama-server {server_version(work.binary)} by its own timings" in said
    assert "as each server allocated it in this run (the server's log)" in said  # the table's legend


def test_server_and_in_process_agree_on_the_needles(spawned: dict[str, Any], work: Work) -> None:
    """The same model and needles in-process: the same items, the same answers, the answer
    log-probs within LOGPROB_TOLERANCE, the same verdict."""
    assert spawned["proc"].returncode == 0, spawned["proc"].stderr
    out = work.folder / "spawn" / "in-process.json"
    proc = kvprobe("run", "--cache", "q4_0", *run_args(spawned["model"], work.needles, out))
    assert proc.returncode == 0, proc.stderr
    server, local = json.loads(spawned["out"].read_text()), json.loads(out.read_text())
    assert local["runtime"].get("engine") != "llama-server"

    def items(doc: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(i["config"], i["doc"], i["ctx"], i["position"], i["key"]): i for i in doc["items"]}

    ours, theirs = items(server), items(local)
    assert ours.keys() == theirs.keys()
    assert len(ours) >= 8
    for key, item in ours.items():
        other = theirs[key]
        same = ("correct", "first_wrong_token", "output")
        assert [item[k] for k in same] == [other[k] for k in same], key
        assert abs(item["logprob"] - other["logprob"]) < LOGPROB_TOLERANCE, key
    for cid, verdict in server["verdict"]["configs"].items():
        assert verdict["equivalence"]["status"] == local["verdict"]["configs"][cid]["equivalence"]["status"]


@pytest.mark.parametrize(
    "case",
    [
        ("--server-arg=-ctk", "--server-arg -ctk", "the K cache type", "drop that --server-arg"),
        ("--server-arg=-c=4096", "--server-arg -c=4096", "the context size", "drop that --server-arg"),
        ("--server-arg=--cache-type-v=q8_0", "the V cache type"),
        ("--server-arg=--port=8080", "the address"),
    ],
    ids=["ctk", "c", "cache-type-v", "port"],
)
def test_server_args_that_set_what_kvprobe_sets_are_refused(
    work: Work, tmp_path: Path, case: tuple[str, ...]
) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--llama-server", str(work.binary), case[0], "--cache", "q4_0",
        *run_args(work.model, work.needles, out),
    )  # fmt: skip
    assert_one_line_error(proc, *case[1:])
    assert not out.exists()


def test_a_llama_server_that_is_not_executable_is_refused(work: Work, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    out = tmp_path / "r.json"
    proc = kvprobe("run", "--llama-server", str(binary), *run_args(work.model, work.needles, out))
    assert_one_line_error(proc, f"--llama-server {binary}", "not an executable file", "llama-server binary")
    assert not out.exists()


def test_divergence_through_the_server(work: Work, tmp_path: Path) -> None:
    """Needles and divergence through the server: KL at every 8th position (the scenario's
    server_stride) from both servers' top n plus a tail bucket, said to be that; the tiny
    model's vocabulary (412) is smaller than n_probs, so every list is the whole vocabulary
    and the KL equals the in-process full KL at the same positions."""
    scenario = tmp_path / "s.toml"
    quick = (Path(__file__).parents[2] / "scenarios" / "quick.toml").read_text()
    scenario.write_text(
        quick.replace('name = "quick"', 'name = "quick-stride8"') + "\n[divergence]\nserver_stride = 8\n"
    )
    out, inproc = tmp_path / "r.json", tmp_path / "in.json"
    common = ("--cache", "q4_0", "--model", str(work.model), "--scenario", str(scenario), "--ctx", "512",
              "--threads", "2", "--no-html", "--no-until-decided")  # fmt: skip
    proc = kvprobe("run", "--llama-server", str(work.binary), *common, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert kvprobe("run", *common, "--out", str(inproc)).returncode == 0
    doc, ref = json.loads(out.read_text()), json.loads(inproc.read_text())
    section = doc["divergence"]
    assert section["kl"] == "top_n_tail"
    assert section["stride"] == 8
    assert 1 <= section["n_probs"] <= 412
    assert {row["config"] for row in section["positions"]} == {"f16", "q4_0"}
    server_kl = next(decode_array(r["kld"]) for r in section["positions"] if r["config"] == "q4_0")
    full_kl = next(decode_array(r["kld"]) for r in ref["divergence"]["positions"] if r["config"] == "q4_0")
    at = 8 * np.arange(len(server_kl))  # position 1 + 8j is row 8j of the dense array
    assert len(server_kl) == len(range(1, 512, 8))
    # Batch shapes differ (the server evaluates 8 tokens per request): close, not identical.
    assert abs(server_kl.mean() - full_kl[at].mean()) < 0.1 * full_kl[at].mean()


# --- attach --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attached(work: Work) -> Iterator[dict[str, ServerProcess]]:
    with attached_servers(work.binary, work.model, work.folder) as servers:
        yield servers


def test_attach_measures_running_servers(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--server", attached["q4_0"].url, "--server-cache", "q4_0", "--reference-server",
        attached["f16"].url, *run_args(work.model, work.needles, out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    server = doc["runtime"]["server"]
    assert doc["runtime"]["engine"] == "llama-server"
    assert server["mode"] == "attach"
    assert server["binary"] is None
    for cache, process in attached.items():
        record = server["configs"][cache]
        assert record["url"] == process.url
        assert record["stated_cache"] == cache
        assert record["n_ctx"] == 2048
        assert record["model_path"] == str(work.model)
        assert record["build_info"] == process.client.props().build_info
    assert {item["config"] for item in doc["items"]} == {"f16", "q4_0"}
    for process in attached.values():  # attached servers are the user's: still running
        assert process.client.health()


def test_attach_with_the_in_process_reference_checks_the_build_first(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path
) -> None:
    """`--reference in-process`: the reference server's f16 against kvprobe's own on the same
    batches (the same llama.cpp: rounding only), said before the recommendation."""
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--server", attached["q4_0"].url, "--server-cache", "q4_0", "--reference-server",
        attached["f16"].url, "--reference", "in-process", *run_args(work.model, work.needles, out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    check = doc["runtime"]["build_check"]
    assert check["status"] == "matches"
    assert check["kl_ci"][1] < check["noise_floor"]
    assert check["top1_agreement"] == 1.0
    assert check["positions"] == len(range(1, check["tokens"], check["stride"])) == 128
    assert check["in_process"]["llama_cpp_python"] == importlib.metadata.version("llama_cpp_python")
    lines = proc.stdout.splitlines()
    said = next(i for i, ln in enumerate(lines) if ln.startswith("Build check: the server's f16 matches"))
    assert said < next(i for i, ln in enumerate(lines) if "Recommendation" in ln)
    assert sum(ln.startswith("Build check:") for ln in lines) == 1
    report = kvprobe("report", str(out))
    assert "Build check: the server's f16 matches kvprobe's own llama.cpp f16" in report.stdout


def test_a_server_that_computes_otherwise_fails_the_build_check(work: Work, tmp_path: Path) -> None:
    """Spawned with another RoPE base (a server whose numbers are not llama.cpp's for this model,
    as a faulty build's): the check says the server itself differs, beyond the margin."""
    model = own_model(work, tmp_path)
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--llama-server", str(work.binary), "--server-arg=--rope-freq-base", "--server-arg=100",
        "--reference", "in-process", "--cache", "q4_0", *run_args(model, work.needles, out),
    )  # fmt: skip
    kill_left(llama_server_pids(work.binary, marker=str(model)))
    assert proc.returncode == 0, proc.stderr
    check = json.loads(out.read_text())["runtime"]["build_check"]
    assert check["status"] == "differs_beyond_margin"
    assert check["kl_ci"][0] > check["margin"]
    assert "Build check: the server itself (its build or arguments) differs" in proc.stdout


def test_a_build_check_the_run_stopped_before_is_recorded_not_made(work: Work, tmp_path: Path) -> None:
    """--time-budget ends the run before its build check: the result says the check was not
    made, and why, instead of leaving it out silently; the measurements are kept."""
    model = own_model(work, tmp_path)
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--llama-server", str(work.binary), "--reference", "in-process", "--cache", "q4_0",
        "--time-budget", "0.001s", *run_args(model, work.needles, out),
    )  # fmt: skip
    kill_left(llama_server_pids(work.binary, marker=str(model)))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert doc["runtime"]["build_check"] == {
        "status": "failed",
        "reason": "the run stopped (time budget) before it",
    }
    assert "Build check: not made (the run stopped (time budget) before it)" in proc.stdout


def test_the_in_process_reference_needs_a_server(work: Work, tmp_path: Path) -> None:
    proc = kvprobe(
        "run", "--reference", "in-process", *run_args(work.model, work.needles, tmp_path / "r.json")
    )
    assert_one_line_error(proc, "--reference in-process", "--llama-server PATH or --server URL")


@pytest.mark.parametrize(
    "case",
    [
        (["--server", "{q4_0}", "--reference-server", "{f16}"], ["--server needs --server-cache"]),
        (
            ["--server", "{q4_0}", "--server-cache", "q4_0", "--reference-server", "{f16}", "--cache=q8_0"],
            ["--server runs q4_0", "--llama-server PATH"],
        ),
        (["--server", "{q4_0}", "--server-cache", "q4_0"], ["--reference-server URL"]),
        (
            ["--server", "{q4_0}", "--server-cache", "q4_0", "--reference", "in-process"],
            ["--reference-server URL", "--reference in-process checks that server"],
        ),
        (
            ["--server", "http://10.1.2.3:8080", "--server-cache", "q4_0", "--reference-server", "{f16}"],
            ["llama-server at http://10.1.2.3:8080", "not a loopback address"],
        ),
        (
            ["--server", "{nothing}", "--server-cache", "q4_0", "--reference-server", "{f16}"],
            ["llama-server at {nothing}", "connection refused"],
        ),
    ],
    ids=[
        "no-server-cache",
        "other-cache",
        "no-reference",
        "in-process-alone",
        "remote",
        "nothing-listens",
    ],
)
def test_attach_options_that_do_not_fit_are_refused(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path, case: tuple[list[str], list[str]]
) -> None:
    urls = {cache: process.url for cache, process in attached.items()}
    urls["nothing"] = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "r.json"
    proc = kvprobe("run", *[a.format(**urls) for a in case[0]], *run_args(work.model, work.needles, out))
    assert_one_line_error(proc, *[w.format(**urls) for w in case[1]])
    assert not out.exists()


def test_the_null_check_on_an_attached_server_is_refused(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path
) -> None:
    """The null check's second f16 context would share the attached f16 server's one slot."""
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--server", attached["q4_0"].url, "--server-cache", "q4_0", "--reference-server",
        attached["f16"].url, "--null-check", "--model", str(work.model), "--ctx", "512", "--no-html",
        "--out", str(out),
    )  # fmt: skip
    assert_one_line_error(proc, "--null-check needs a second f16 context", "--llama-server PATH")
    assert not out.exists()


def test_a_server_of_another_model_is_refused(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path
) -> None:
    other = write_tiny_model(tmp_path / "other.gguf", seed=7)
    out = tmp_path / "r.json"
    with user_server(work.binary, other, tmp_path / "s.log", "q4_0") as odd:
        proc = kvprobe(
            "run", "--server", odd.url, "--server-cache", "q4_0", "--reference-server", attached["f16"].url,
            *run_args(work.model, work.needles, out),
        )  # fmt: skip
    line = assert_one_line_error(proc, odd.url)
    assert "model" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "case",
    [
        (["-c", "4096", "-np", "2"], ["has 2 slots", "restart it with --parallel 1"]),
        (["-c", "512"], ["holds 512 tokens per slot", "needs 1024", "restart it with -c 1024"]),
    ],
    ids=["two-slots", "small-context"],
)
def test_a_server_that_cannot_hold_the_run_is_refused(
    attached: dict[str, ServerProcess], work: Work, tmp_path: Path, case: tuple[list[str], list[str]]
) -> None:
    """Started by the user with more slots (other clients' tokens would share kvprobe's batches)
    or a smaller context than the run needs (--ctx plus room for the questions)."""
    out = tmp_path / "r.json"
    with user_server(work.binary, work.model, tmp_path / "s.log", "q4_0", *case[0]) as odd:
        proc = kvprobe(
            "run", "--server", odd.url, "--server-cache", "q4_0", "--reference-server", attached["f16"].url,
            *run_args(work.model, work.needles, out),
        )  # fmt: skip
    assert_one_line_error(proc, odd.url, *case[1])
    assert not out.exists()


# --- signals and a dying server ------------------------------------------------------------------


def start_frozen(work: Work, model: Path, out: Path) -> subprocess.Popen[str]:
    """`kvprobe run --llama-server` on two documents, frozen (SIGSTOP) once the first is
    journaled: its servers are up, with work left."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "kvprobe", "run", "--llama-server", str(work.binary), "--cache", "q4_0",
            *run_args(model, work.folder / "two.toml", out, ctx=1024),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, STOP_AFTER: "0,0:stop"},
    )  # fmt: skip
    wait_frozen(proc)
    return proc


def finish(proc: subprocess.Popen[str], servers: list[int]) -> str:
    """Let the frozen run go on to its end; its stderr. Fails if one of `servers` outlives it."""
    try:
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert not wait_gone(servers), f"llama-server outlived the run (exit {proc.returncode})"
    finally:
        kill_left(servers)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_orphan_when_the_run_is_signalled(work: Work, tmp_path: Path, sig: signal.Signals) -> None:
    model = own_model(work, tmp_path)
    out = tmp_path / "r.json"
    proc = start_frozen(work, model, out)
    servers = llama_server_pids(work.binary, parent=proc.pid)
    assert len(servers) == 3, servers  # the tokenizer's, f16's and q4_0's
    proc.send_signal(sig)  # a stopped process acts on SIGTERM once continued (finish)
    err = finish(proc, servers)
    assert not llama_server_pids(work.binary, marker=str(model))
    assert journal_units(out) == [[0, 0]]  # what was written is kept
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    # as Ctrl-C: the partial result, and one line saying how to resume
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "interrupted" in lines[0]
    assert f"--resume {out}.journal.jsonl" in lines[0]
    assert json.loads(out.read_text())["complete"] is False


def test_a_server_that_dies_mid_run_ends_it_in_one_line_and_resumes(work: Work, tmp_path: Path) -> None:
    model = own_model(work, tmp_path)
    out = tmp_path / "r.json"
    proc = start_frozen(work, model, out)
    servers = llama_server_pids(work.binary, parent=proc.pid)
    q4 = llama_server_pids(work.binary, parent=proc.pid, marker="q4_0")
    assert len(q4) == 1, q4
    os.kill(q4[0], signal.SIGKILL)  # as a crash or the OOM killer would
    err = finish(proc, servers)
    line = assert_one_line_error(
        subprocess.CompletedProcess(proc.args, proc.returncode, "", err),
        "llama-server at http://127.0.0.1:",
        "exited with code -9",
        "llama-server-q4_0.log",
    )
    assert ";" in line  # then the fix
    assert journal_units(out) == [[0, 0]]
    resumed = kvprobe("run", "--resume", f"{out}.journal.jsonl")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    assert doc["runtime"]["engine"] == "llama-server"
    assert not llama_server_pids(work.binary, marker=str(model))
