"""Where results go, as a user meets it: a second run onto the same --out is refused while the
first runs, a resumed run writes only where the original run was allowed to, and a suite
started in the background still shows what Ctrl-C does. Real llama.cpp, the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import OutputLock, lock_path
from tests.helpers import assert_one_line_error, default_signals, kvprobe

# Long enough on the tiny model (several seconds) for a second run to meet the first.
SLOW = """
name = "slow"
probes = ["needle", "divergence"]
[plan]
documents = 2
chunk = 64
"""


@pytest.fixture
def slow_args(tiny_model_path: Path, tmp_path: Path) -> list[str]:
    scenario = tmp_path / "slow.toml"
    scenario.write_text(SLOW)
    return ["--model", str(tiny_model_path), "--scenario", str(scenario), "--ctx", "2048",
            "--cache", "q8_0", "--threads", "1", "--no-html"]  # fmt: skip


def test_a_second_run_onto_the_same_out_is_refused_while_the_first_runs(
    slow_args: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    first = subprocess.Popen(
        [sys.executable, "-m", "kvprobe", "run", *slow_args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not lock_path(out).exists():  # the first run has validated and holds the lock
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = kvprobe("run", *slow_args, "--out", str(out), "--force")
        assert_one_line_error(second, "another kvprobe run is writing", f"pid {first.pid}")
        assert first.poll() is None  # the refusal came while the first still ran
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    assert doc["command"].endswith(f"--out {out}")  # the first run's result, not replaced
    assert not lock_path(out).exists()  # released and removed at the end


def test_the_lock_of_a_killed_run_does_not_block_the_next(tiny_model_path: Path, tmp_path: Path) -> None:
    """The kernel drops a flock with its process: a lock file left by kill -9 is no lock."""
    out = tmp_path / "r.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from kvprobe.infra.paths import OutputLock; "
         f"OutputLock(Path({str(out)!r}), {{'pid': 1, 'started': 'x', 'command': 'y'}}); "
         "import time; time.sleep(60)"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not lock_path(out).exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(UserError, match="another kvprobe run is writing"):
            OutputLock(out, {"pid": 2, "started": "x", "command": "z"})
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # left behind by the kill
    with OutputLock(out, {"pid": 3, "started": "x", "command": "z"}):
        assert json.loads(lock_path(out).read_text())["pid"] == 3
    assert not lock_path(out).exists()


def test_resume_never_overwrites_a_file_that_is_not_the_runs_own(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A journal whose run never wrote its result: a file the user put there since is kept,
    and --resume names it instead of replacing it."""
    out = tmp_path / "r.json"
    args = ["run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "1024", "--cache", "q8_0",
            "--threads", "2", "--no-html", "--out", str(out)]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-m", "kvprobe", *args],
        env={**os.environ, "KVPROBE_TEST_STOP_AFTER": "0,0:kill"},
        capture_output=True,
        check=False,
        timeout=600,
    )
    assert killed.returncode == -9
    mine = b'{"my": "own file"}\n'
    out.write_bytes(mine)
    proc = kvprobe("run", "--resume", str(out) + ".journal.jsonl")
    assert_one_line_error(proc, "--out", "already exists", "--force")
    assert out.read_bytes() == mine
    resumed = kvprobe("run", "--resume", str(out) + ".journal.jsonl", "--force")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(out.read_text())["complete"] is True


def test_ctrl_c_reaches_the_child_even_when_the_suite_ignores_it(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A suite started as `nohup ... &` runs with SIGINT ignored, and children inherit that:
    the tests that stop a run with SIGINT set the child's disposition themselves."""
    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "kvprobe", "run", "--model", str(tiny_model_path), "--scenario", "quick",
            "--ctx", "1024", "--cache", "q8_0", "--threads", "2", "--no-html", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "KVPROBE_TEST_STOP_AFTER": "0,0:int"}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup ... &`
    try:
        inherited = subprocess.run(args, env=env, capture_output=True, text=True, check=False, timeout=600)
        restored = subprocess.run(
            [*args[:-1], str(tmp_path / "r2.json")], env=env, capture_output=True, text=True, check=False,
            timeout=600, preexec_fn=default_signals,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    assert inherited.returncode == 0  # the self-sent SIGINT was ignored: the trap the suite avoids
    assert restored.returncode == 130, restored.stderr
    assert "--resume" in restored.stderr
