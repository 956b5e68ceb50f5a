"""`kvprobe sweep` as a user runs it, on real llama.cpp with the tests' tiny GGUFs: a 2 x 2
sweep (two models x two caches) locally, killed and resumed, stopped with Ctrl-C and resumed,
a cell that fails while the sweep goes on, the merged report; then the same sweep on a real
local Ray cluster (`ray start --head` on loopback) with a worker killed mid-cell. Every
interrupted sweep must end with items identical to the uninterrupted one's.

A test switch (kvprobe.infra.test_hooks: KVPROBE_TEST_STOP_AFTER, for the cell
KVPROBE_TEST_STOP_CELL names) freezes a cell's `kvprobe run` with SIGSTOP right after it
journaled a unit, so the test can kill what runs it at a known point."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra import test_hooks
from kvprobe.infra.errors import UserError
from kvprobe.sweep.cells import expand
from kvprobe.sweep.spec import RunOptions, from_command_line, parse_sweep
from tests.helpers import assert_one_line_error, default_signals, kvprobe, write_tiny_model

CELLS = ["tiny_q8_0_512", "tiny_q4_0_512", "tiny2_q8_0_512", "tiny2_q4_0_512"]
STOPPED = "tiny2_q8_0_512"  # the cell the tests interrupt: two cells are done by then
FIELDS = ("items", "text_items", "summary", "verdict")


@pytest.fixture(scope="module")
def models(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two tiny models of different weights (tiny.gguf, tiny2.gguf)."""
    folder = tmp_path_factory.mktemp("sweep-models")
    (folder / "tiny.gguf").write_bytes(tiny_model_path.read_bytes())
    write_tiny_model(folder / "tiny2.gguf", seed=1)
    return folder


def sweep_args(models: Path, out: Path, *extra: str) -> list[str]:
    # The default scenario at 512 tokens: 4 documents x 2 checkpoints (256, 512), 8 units per cell.
    return [
        "sweep",
        "--model",
        f"{models / 'tiny.gguf'},{models / 'tiny2.gguf'}",
        "--cache",
        "q8_0,q4_0",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-html",
        "--out",
        str(out),
        *extra,
    ]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvprobe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=default_signals,  # noqa: PLW1509 - the test process starts no threads
    )


def finish(proc: subprocess.Popen[str], timeout: float, hung: str) -> tuple[str, str]:
    """The process's stdout and stderr; killed and failed with `hung` if it outlives `timeout`."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(hung) from None


def frozen_after_unit(cell: str) -> dict[str, str]:
    """The switch: `cell`'s run freezes after journaling its second unit (document 0, checkpoint 1)."""
    return {test_hooks.STOP_CELL: cell, test_hooks.STOP_AFTER: "0,1:stop"}


def journal_units(out: Path) -> int:
    journal = out.with_name(out.name + ".journal.jsonl")
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


def run_pids(out: Path) -> list[int]:
    """The `kvprobe run` processes writing `out`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                words = (proc / "cmdline").read_bytes().split(b"\0")
                if b"run" in words and str(out).encode() in words:
                    found.append(int(proc.name))
    return found


def state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    return "gone"


def wait_frozen(out: Path, sweep: subprocess.Popen[str], limit: float = 300.0) -> int:
    """Wait until the cell's run has journaled its unit and frozen; its pid."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and sweep.poll() is None:
        pids = [p for p in run_pids(out) if state(p) == "T"]
        if pids and journal_units(out) == 2:
            return pids[0]
        time.sleep(0.05)
    sweep.kill()
    stdout, stderr = sweep.communicate()
    raise AssertionError(f"{out.name}'s run never froze after its unit: {stdout[-2000:]} {stderr[-2000:]}")


def fields(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    return {f: doc.get(f) for f in FIELDS}


def manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "sweep.json").read_text())
    return data


def assert_same_as(folder: Path, reference: Path) -> None:
    for cell in CELLS:
        assert fields(folder / "cells" / f"{cell}.json") == fields(reference / "cells" / f"{cell}.json"), cell


@pytest.fixture(scope="module")
def uninterrupted(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweeps") / "whole"
    proc = kvprobe(*sweep_args(models, folder))
    assert proc.returncode == 0, proc.stderr
    data = manifest(folder)
    assert list(data["cells"]) == CELLS
    assert {c["status"] for c in data["cells"].values()} == {"done"}
    starts = [line for line in proc.stdout.splitlines() if "] start " in line]
    ends = [line for line in proc.stdout.splitlines() if "] done " in line]
    assert len(starts) == len(ends) == 4  # one line per cell start and finish
    assert all("left" in line or "every cell ended" in line for line in ends)  # with the sweep's time left
    return folder


def test_each_cell_is_an_ordinary_run(uninterrupted: Path, tmp_path: Path) -> None:
    record = manifest(uninterrupted)["cells"]["tiny2_q4_0_512"]
    argv = [
        w if not w.endswith("tiny2_q4_0_512.json") else str(tmp_path / "plain.json") for w in record["argv"]
    ]
    proc = kvprobe("run", *argv)
    assert proc.returncode == 0, proc.stderr
    assert fields(tmp_path / "plain.json") == fields(uninterrupted / "cells" / "tiny2_q4_0_512.json")


def test_a_killed_sweep_resumes_to_identical_results(
    models: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "killed"
    sweep = start(sweep_args(models, folder), frozen_after_unit(STOPPED))
    out = folder / "cells" / f"{STOPPED}.json"
    child = wait_frozen(out, sweep)
    done_before = {c: (folder / "cells" / f"{c}.json").read_bytes() for c in CELLS[:2]}
    sweep.kill()  # SIGKILL: nothing of the sweep runs after it
    sweep.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while state(child) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state(child) in ("gone", "Z")  # the cell's run died with the sweep: nothing left to race a resume
    cells = manifest(folder)["cells"]
    assert [cells[c]["status"] for c in CELLS] == ["done", "done", "running", "pending"]

    resumed = kvprobe("sweep", "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "2 done before, 2 to run" in resumed.stdout
    assert "resuming from its journal" in resumed.stdout
    assert_same_as(folder, uninterrupted)
    for cell, data in done_before.items():  # finished cells are kept as they were, not run again
        assert (folder / "cells" / f"{cell}.json").read_bytes() == data
    log = (folder / "cells" / f"{STOPPED}.log").read_text()
    assert "--- attempt 2" in log
    assert "--resume" in log
    assert {c["status"] for c in manifest(folder)["cells"].values()} == {"done"}


def test_ctrl_c_stops_the_sweep_cleanly_and_resume_continues(
    models: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "ctrl-c"
    sweep = start(sweep_args(models, folder), frozen_after_unit(STOPPED))
    out = folder / "cells" / f"{STOPPED}.json"
    child = wait_frozen(out, sweep)
    sweep.send_signal(signal.SIGINT)  # the sweep passes Ctrl-C on to the running cell, once
    time.sleep(0.5)
    os.kill(child, signal.SIGCONT)  # the frozen cell wakes to its Ctrl-C
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"kvprobe sweep --resume {folder}" in lines[0]
    assert manifest(folder)["cells"][STOPPED]["status"] == "interrupted"
    assert json.loads(out.read_text())["complete"] is False  # its partial result, with the journal beside it
    resumed = kvprobe("sweep", "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as(folder, uninterrupted)


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(models: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"PK\x03\x04 a zip file, not a model" * 20)
    folder = tmp_path / "failing"
    proc = kvprobe(
        "sweep",
        "--model",
        f"{broken},{models / 'tiny.gguf'}",
        "--cache",
        "q8_0",
        "--ctx",
        "512",
        "--scenario",
        "quick",
        "--threads",
        "1",
        "--no-html",
        "--out",
        str(folder),
    )
    assert proc.returncode == 1  # a cell failed, the others ran
    cells = manifest(folder)["cells"]
    assert cells["broken_q8_0_512"]["status"] == "failed"
    assert "not a GGUF file" in cells["broken_q8_0_512"]["error"]
    assert cells["tiny_q8_0_512"]["status"] == "done"
    assert "failed broken_q8_0_512" in proc.stdout
    assert "the sweep goes on" in proc.stdout
    report = kvprobe("report", str(folder))
    assert report.returncode == 0, report.stderr
    assert "Cells without a result" in report.stdout
    assert "not a GGUF file" in report.stdout


def test_report_merges_every_cell(uninterrupted: Path, tmp_path: Path) -> None:
    png = tmp_path / "png"
    proc = kvprobe("report", str(uninterrupted), "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    # Each cell's decision, as its own result file has it, in the grid at 512 tokens.
    grid = proc.stdout.split("Decision at 512 tokens")[1].split("per cache and context")[0]
    for cell in CELLS:
        doc = json.loads((uninterrupted / "cells" / f"{cell}.json").read_text())
        config = doc["configs"][1]["id"]
        status = doc["verdict"]["configs"][config]["equivalence"]["status"]
        model = cell.rsplit(f"_{config}_", 1)[0]
        row = next(line for line in grid.splitlines() if f" {model} " in line)
        cols = [c.strip() for c in row.strip("│ ").split("│")]
        assert cols[1 + ["q8_0", "q4_0"].index(config)].startswith(status), (cell, row)
    page = (uninterrupted / "report.html").read_text()
    assert page.count("<img") == 3  # the decision heatmap at 512, and a frontier per model
    assert "Decision at 512 tokens" in page
    assert sorted(p.name for p in png.iterdir()) == [
        "sweep-decisions-512.png",
        "sweep-frontier-1.png",
        "sweep-frontier-2.png",
    ]


def test_dry_run_prints_cells_memory_and_time_and_writes_nothing(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dry"
    proc = kvprobe(*sweep_args(models, folder, "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    for cell in CELLS:
        row = next(line for line in proc.stdout.splitlines() if cell in line)
        assert "GiB" in row
        assert " s " in row or "min" in row
    assert "one cell after another" in proc.stdout
    assert not folder.exists()


def test_the_short_form_crosses_commas_and_joins_pluses(models: Path) -> None:
    a, b = models / "tiny.gguf", models / "tiny2.gguf"
    spec = from_command_line(
        {
            "models": f"{a},{a}+{b}",
            "caches": "q8_0+q4_0,q4_0",
            "contexts": "512,1024",
            "scenarios": None,
            "formats": None,
        },
        False,
        RunOptions(threads=1),
    )
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 2
    pair = next(c for c in cells if c.model.test)
    words = pair.argv(spec, Path("/s"))
    assert words[:4] == ["--model", str(a), "--model", str(b)]  # REF then TEST: the 2x2 design
    both = next(c for c in cells if c.caches == ("q8_0", "q4_0"))
    assert both.argv(spec, Path("/s")).count("--cache") == 2  # one run, both against one reference


def test_exclude_leaves_cells_out(models: Path) -> None:
    data = {
        "models": ["tiny.gguf", "tiny2.gguf"],
        "caches": ["q8_0", "q4_0"],
        "contexts": [512, 1024],
        "exclude": [{"model": "tiny2", "ctx": 1024}, {"caches": "q4_0", "ctx": 512}],
    }
    cells = expand(parse_sweep(data, "s.toml", models))
    assert [c.id for c in cells] == ["tiny_q8_0_512", "tiny_q8_0_1024", "tiny_q4_0_1024", "tiny2_q8_0_512"]


BAD_SWEEPS = {
    "unknown key": ('caches = ["q8_0"]\ncontxts = [512]\n', ("contxts", "did you mean contexts")),
    "empty axis": ('caches = ["q8_0"]\ncontexts = []\n', ("contexts", "empty")),
    "a model that does not exist": (
        'models = ["nope.gguf"]\ncaches = ["q8_0"]\n',
        ("nope.gguf", "no such file"),
    ),
    "duplicate cells": (
        'models = ["tiny.gguf"]\ncaches = ["q8_0"]\ncontexts = [512, 512]\n',
        ("appears twice",),
    ),
    "one model twice": ('models = ["tiny.gguf", "./tiny.gguf"]\ncaches = ["q8_0"]\n', ("appears twice",)),
    "no caches": ('models = ["tiny.gguf"]\n', ("caches", "missing")),
    "a misspelled cache": ('caches = ["q4_o"]\n', ("did you mean q4_0",)),
    "an exclusion that matches nothing": (
        'models = ["tiny.gguf"]\ncaches = ["q8_0"]\n[[exclude]]\nctx = 99\n',
        ("exclude[0]", "matches no cell"),
    ),
    "an unknown run option": (
        'caches = ["q8_0"]\n[run]\nthreds = 2\n',
        ("run.threds", "did you mean threads"),
    ),
    "a run option of the wrong type": ('caches = ["q8_0"]\n[run]\nthreads = "two"\n', ("run.threads",)),
    "a cell kvprobe run refuses": (
        'models = ["tiny.gguf"]\ncaches = ["f16"]\nsplit_kv = [true]\n',
        ("sweep cell tiny_f16-splitkv_8192", "--split-kv"),
    ),
    "not TOML": ("caches = [q8_0\n", ("not valid TOML",)),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_a_bad_sweep_file_is_one_line_and_creates_nothing(case: str, models: Path, tmp_path: Path) -> None:
    text, words = BAD_SWEEPS[case]
    (tmp_path / "tiny.gguf").symlink_to(models / "tiny.gguf")
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(kvprobe("sweep", str(sweep_file), "--out", str(tmp_path / "out")), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--cache", "q8_0", "--address", "auto"], ("--address is for --executor ray",)),
        (["--cache", "q8_0,,q4_0"], ("empty item",)),
        (["--cache", "q8_0", "--ctx", "8k"], ("--ctx", "whole numbers")),
        (["--resume", "nowhere"], ("no such folder",)),
        (["--cache", "q8_0", "--retries", "-1"], ("--retries",)),
    ],
)
def test_bad_sweep_options(args: list[str], words: tuple[str, ...], tmp_path: Path) -> None:
    assert_one_line_error(
        kvprobe("sweep", *args, "--out", str(tmp_path / "out"))
        if "--resume" not in args
        else kvprobe("sweep", *args),
        *words,
    )
    assert not (tmp_path / "out").exists()


def test_a_new_sweep_never_writes_into_an_existing_one(models: Path, uninterrupted: Path) -> None:
    before = (uninterrupted / "sweep.json").read_bytes()
    assert_one_line_error(kvprobe(*sweep_args(models, uninterrupted)), "holds a sweep already", "--resume")
    assert (uninterrupted / "sweep.json").read_bytes() == before


def test_without_ray_the_ray_executor_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")  # as if not installed
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = kvprobe("sweep", "--cache", "q8_0", "--executor", "ray", "--out", str(tmp_path / "out"), env=env)
    assert_one_line_error(proc, 'pip install "kvprobe[ray]"')


# --- a real Ray cluster on this machine ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed in CI: the dev extra installs it")  # CI never skips it
        pytest.skip("Ray is not installed: pip install 'kvprobe[ray]'")


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """`ray start --head` on loopback, 2 CPUs, token authentication with a token of its own;
    the stop switch in its environment (its workers, and so the cells' runs, inherit it)."""
    require_ray()
    port = free_port()
    # Ray's Unix sockets live under its temp dir, and a socket's path has at most 107 bytes.
    temp = tempfile.mkdtemp(prefix="kvray-", dir="/tmp")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**os.environ, **auth, **frozen_after_unit(STOPPED)}
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", auth
    finally:
        # `ray start --block` drains for 30 s on SIGTERM: the test's cluster holds nothing worth
        # it, so its processes (one session, and any that name its temp dir) are killed outright.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        for pid in ray_processes(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def ray_processes(temp: str) -> list[int]:
    """The processes of the test's Ray cluster left outside its session: they name its temp dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if temp.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def test_ray_sweep_survives_a_lost_worker_with_identical_results(
    models: Path, uninterrupted: Path, tmp_path: Path, ray_cluster: tuple[str, dict[str, str]]
) -> None:
    address, auth = ray_cluster
    folder = tmp_path / "ray"
    sweep = start(sweep_args(models, folder, "--executor", "ray", "--address", address), auth)
    out = folder / "cells" / f"{STOPPED}.json"
    wait_frozen(out, sweep)
    worker = json.loads(out.with_name(f"{STOPPED}.attempt.json").read_text())["pid"]
    os.kill(worker, signal.SIGKILL)  # the Ray worker running the cell is lost mid-cell
    stdout, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr
    assert "ray: 1 node, 2 CPUs" in stdout
    assert f"start {STOPPED} on" in stdout
    assert "attempt 2, resuming from its journal" in stdout  # Ray retried it, and it resumed
    cells = manifest(folder)["cells"]
    assert {c["status"] for c in cells.values()} == {"done"}
    assert cells[STOPPED]["attempts"] == 2
    assert_same_as(folder, uninterrupted)


def test_a_cell_whose_result_is_complete_is_not_run_again(tmp_path: Path) -> None:
    """A Ray task retried after its run had finished (the worker lost just after): the complete
    result stands, nothing runs, nothing is logged."""
    from kvprobe.sweep.cell_run import DONE, log_path, run_cell

    out = tmp_path / "cells" / "c.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"complete": True, "baseline": "f16", "verdict": {}}))
    outcome = run_cell("c", ["--model", "/nowhere.gguf", "--out", str(out)], out)
    assert (outcome.status, outcome.seconds) == (DONE, 0.0)
    assert not log_path(out).exists()


@pytest.mark.parametrize(
    ("address", "ray_address"),
    [("127.0.0.1:{port}", ""), ("ray://127.0.0.1:{port}", ""), ("auto", ""), ("auto", "127.0.0.1:{port}")],
    ids=["HOST:PORT", "ray://HOST:PORT", "auto, as ray start left it", "auto, from RAY_ADDRESS"],
)
def test_an_address_where_nothing_answers_is_one_line_within_seconds(
    address: str, ray_address: str, models: Path, tmp_path: Path
) -> None:
    """A head that is not there (a closed port; `--address auto` reading RAY_ADDRESS, or the
    cluster `ray start` recorded before it went): one line naming the address, exit 2, in
    seconds, not the minutes ray.init spends retrying."""
    require_ray()
    port = free_port()  # nothing listens on it
    temp = Path(tempfile.mkdtemp(prefix="kvray-", dir="/tmp"))
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        env = {"RAY_TMPDIR": str(temp), "RAY_ADDRESS": ray_address.format(port=port)}
        proc = start(["sweep", "--model", str(models / "tiny.gguf"), "--cache", "q8_0", "--ctx", "512",
                      "--scenario", "quick", "--no-html", "--out", str(tmp_path / "s"),
                      "--executor", "ray", "--address", address.format(port=port)], env)  # fmt: skip
        _, stderr = finish(proc, 90, "the sweep waited for a head that is not there")
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr
        ours = [line for line in stderr.splitlines() if line.startswith("kvprobe:")]  # not Ray's log
        assert len(ours) == 1, stderr
        assert ours[0].startswith("kvprobe: error: nothing answers at "), stderr
        assert f":{port} " in ours[0], stderr  # Ray may write the machine's own IP for 127.0.0.1
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize(
    "address",
    ["h:\u00b2", "http://h:8265", "RAY://h:10001", "::1", "fe80::1:6379", "ray://h:1/x", "h:0", "h"],
)
def test_an_address_of_no_known_form_is_refused_in_one_line(address: str) -> None:
    from kvprobe.sweep.ray_executor import host_and_port

    with pytest.raises(UserError, match="is not auto, HOST:PORT or ray://HOST:PORT"):
        host_and_port(address)


@pytest.mark.parametrize(
    ("address", "where"),
    [("auto", None), ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001)),
     ("[::1]:6379", ("::1", 6379)), ("head.example.org:6379", ("head.example.org", 6379))],
)  # fmt: skip
def test_the_addresses_ray_takes_are_read(address: str, where: tuple[str, int] | None) -> None:
    from kvprobe.sweep.ray_executor import host_and_port

    assert host_and_port(address) == where


def test_without_an_address_ray_starts_afresh_whatever_ray_start_left_behind(
    models: Path, tmp_path: Path
) -> None:
    """`ray start` records its cluster on the machine; once that cluster is gone, a plain
    `ray.init()` would join it and wait. `--executor ray` without --address starts its own."""
    require_ray()
    temp = Path(tempfile.mkdtemp(prefix="kvray-", dir="/tmp"))  # short: Ray's socket paths
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # long gone
        folder = tmp_path / "fresh"
        proc = start(["sweep", "--model", str(models / "tiny.gguf"), "--cache", "q8_0", "--ctx", "512",
                      "--scenario", "quick", "--threads", "1", "--no-html", "--out", str(folder),
                      "--executor", "ray"], {"RAY_TMPDIR": str(temp)})  # fmt: skip
        stdout, stderr = finish(proc, 240, "the sweep waited for a cluster that is gone")
        assert proc.returncode == 0, stderr
        assert "ray: 1 node" in stdout
        assert manifest(folder)["cells"]["tiny_q8_0_512"]["status"] == "done"
    finally:
        for pid in ray_processes(str(temp)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
