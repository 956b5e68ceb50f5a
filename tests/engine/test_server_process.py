"""kvprobe.engine.server.process against the real llama-server on the tiny GGUF: a server this
process starts, waits for and stops on every way out (an exception, a signal, its parent killed),
what its log says took effect, and binaries or arguments that cannot make a server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvprobe.engine.server import process
from kvprobe.engine.server.client import ServerError
from kvprobe.engine.server.process import ServerProcess, applied_settings, process_vram_mib, server_version
from tests.helpers import assert_one_line_server_error, kill_left, nvml_gpus, process_alive, wait_gone

N_VOCAB = 412  # the tiny model's vocabulary


def tiny_args(model: Path, *extra: str) -> list[str]:
    return ["-m", str(model), "-c", "512", "-t", "1", "-np", "1", "-lv", "4", *extra]


def test_spawn_health_props_stop(llama_server: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with ServerProcess(llama_server, tiny_args(tiny_model_path), log_path=log) as proc:
        pid = proc.pid
        assert pid is not None
        assert process_alive(pid)
        client = proc.client
        assert client.health() is True
        props = client.props()
        assert props.n_ctx == 512
        assert props.total_slots == 1
        assert props.model_path == str(tiny_model_path)
        assert props.model_alias == proc.alias
        assert props.build_info.startswith("b")
        assert client.model_info().n_vocab == N_VOCAB
        assert proc.version == server_version(llama_server)
        assert "build" in proc.version
        applied = applied_settings(proc.log_text())
        assert applied["type_k"] == ["f16"]
        assert applied["type_v"] == ["f16"]
        assert applied["n_ctx"] == 512
        assert applied["n_slots"] == 1
        assert applied["listening"] == proc.url
    assert not wait_gone([pid])
    assert proc.returncode == 0  # SIGTERM: llama-server shuts down cleanly
    assert "listening on" in log.read_text()


def test_log_reports_what_took_effect(llama_server: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """Why kvprobe refuses a user's -ctk/-ctv and reads the log: llama-server takes the last of a
    repeated argument, silently; and a quantized cache is rotated (head dim 64)."""
    args = tiny_args(tiny_model_path, "-ctk", "q4_0", "-ctv", "q4_0", "-fa", "on", "-ctk", "f16")
    with ServerProcess(llama_server, args, log_path=tmp_path / "s.log") as proc:
        applied = applied_settings(proc.log_text())
    assert applied["type_k"] == ["f16"]
    assert applied["type_v"] == ["q4_0"]
    assert applied["flash_attn"] == "enabled"
    assert applied["attn_rot_k"] == ["0"]
    assert applied["attn_rot_v"] == ["1"]
    (cache,) = applied["kv_caches"]
    assert {k: cache[k] for k in ("cells", "layers", "type_k", "type_v")} == {
        "cells": 512, "layers": 2, "type_k": "f16", "type_v": "q4_0"
    }  # fmt: skip
    assert cache["mib"] > 0
    assert applied["kv_mib"] == cache["mib"]


def test_llama_arg_environment_is_dropped(
    llama_server: Path, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "256")
    args = ["-m", str(tiny_model_path), "-t", "1", "-np", "1"]  # no -c: the variable would set it
    with ServerProcess(llama_server, args, log_path=tmp_path / "s.log") as proc:
        assert proc.dropped_env == ["LLAMA_ARG_CTX_SIZE"]
        assert proc.client.props().n_ctx != 256


def test_exception_in_block_stops_server(llama_server: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    pids: list[int] = []

    def run() -> None:
        with ServerProcess(llama_server, tiny_args(tiny_model_path), log_path=tmp_path / "s.log") as proc:
            assert proc.pid is not None
            pids.append(proc.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run()
    assert pids
    assert not wait_gone(pids)


def test_server_killed_mid_run(llama_server: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    with ServerProcess(llama_server, tiny_args(tiny_model_path), log_path=log) as proc:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        # until it can be reaped (every thread gone), without reaping it: the client's error does
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        with pytest.raises(ServerError) as exc:
            proc.client.next_token([1, 5], 1)
        assert_one_line_server_error(str(exc.value), "exited with code -9", f"log at {log}")


def test_port_taken_meanwhile_is_retried(
    llama_server: Path, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between choosing a free port and the server binding it, made certain: the first
    port offered is held by a real listener; the server cannot bind it, and another is tried."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        real = process.free_port
        offered: list[int] = []

        def first_taken(host: str = "127.0.0.1") -> int:
            offered.append(taken if not offered else real(host))
            return offered[-1]

        monkeypatch.setattr(process, "free_port", first_taken)
        log = tmp_path / "s.log"
        with ServerProcess(llama_server, tiny_args(tiny_model_path), log_path=log) as proc:
            assert proc.port == offered[1] != taken
            assert proc.client.health()
        assert "couldn't bind" in log.read_text()


# --- the parent dies -----------------------------------------------------------------------------

PARENT = textwrap.dedent(
    """
    import contextlib, sys, time
    from kvprobe.engine.server.process import ServerProcess
    from kvprobe.infra.signals import sigterm_as_interrupt
    args = ["-m", {model!r}, "-c", "512", "-t", "1", "-np", "1"]
    handler = sigterm_as_interrupt() if {interrupt!r} else contextlib.nullcontext()
    try:
        with handler, ServerProcess({binary!r}, args, log_path={log!r}) as proc:
            print(proc.pid, flush=True)
            time.sleep(600)  # until the test's signal
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize(
    "case",
    [
        (signal.SIGKILL, False, -9),
        (signal.SIGTERM, False, 128 + 15),
        (signal.SIGINT, False, 130),
        # kvprobe's run takes SIGTERM as Ctrl-C (kvprobe.infra.signals): the server's handler,
        # installed after it, must stop the server and then hand the signal on to it
        (signal.SIGTERM, True, 130),
    ],
    ids=["SIGKILL", "SIGTERM", "SIGINT", "SIGTERM-as-interrupt"],
)
def test_no_orphan_when_parent_is_signalled(
    llama_server: Path, tiny_model_path: Path, tmp_path: Path, case: tuple[signal.Signals, bool, int]
) -> None:
    sig, as_interrupt, code = case
    script = PARENT.format(
        model=str(tiny_model_path),
        binary=str(llama_server),
        log=str(tmp_path / "s.log"),
        interrupt=as_interrupt,
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        server_pid = int(line)
        assert process_alive(server_pid)
        parent.send_signal(sig)
        rest, _ = parent.communicate(timeout=60)
        assert not wait_gone([server_pid]), f"llama-server {server_pid} survived its parent's {sig.name}"
        assert parent.returncode == code
        assert ("interrupted" in rest) == (code == 130)
    finally:
        kill_left([server_pid] if server_pid else [])
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# --- not a llama-server --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binary", "expected"),
    [
        ("/bin/true", "printed no llama.cpp version"),
        ("silent", "printed no llama.cpp version (it printed: nothing)"),
        ("/nonexistent/llama-server", "no such file"),
    ],
)
def test_binary_that_is_not_llama_server(binary: str, expected: str, tmp_path: Path) -> None:
    if binary == "silent":  # prints nothing and exits 0
        binary = str(tmp_path / "silent")
        Path(binary).write_text("#!/bin/sh\nexit 0\n")
        Path(binary).chmod(0o755)
    with pytest.raises(ServerError) as exc:
        ServerProcess(binary, ["-m", "x.gguf"], log_path=tmp_path / "s.log").start()
    assert_one_line_server_error(str(exc.value), binary, expected, "llama-server binary")
    assert not (tmp_path / "s.log").exists()  # nothing was started


def test_file_that_is_not_executable(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho 'version: 1 (build 1, commit abc)'\n")
    binary.chmod(0o644)
    with pytest.raises(ServerError) as exc:
        server_version(binary)
    assert_one_line_server_error(str(exc.value), str(binary), "not executable", "chmod +x")


def test_llama_server_that_exits_at_once(llama_server: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_model_path, "-ctk", "q4_9")
    proc = ServerProcess(llama_server, args, log_path=tmp_path / "s.log")
    with pytest.raises(ServerError) as exc:
        proc.start()
    assert_one_line_server_error(str(exc.value), "exited at once with code 1", "Unsupported cache type: q4_9")
    assert proc.pid is None or not process_alive(proc.pid)


def test_missing_model_exits_at_once(llama_server: Path, tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    proc = ServerProcess(llama_server, ["-m", str(tmp_path / "none.gguf"), "-t", "1"], log_path=log)
    with pytest.raises(ServerError) as exc:
        proc.start()
    assert_one_line_server_error(str(exc.value), "exited at once", f"log at {log}")


@pytest.mark.parametrize("bad", [["--port", "8080"], ["--host=0.0.0.0"], ["--alias", "x"], ["-a", "x"]])
def test_server_args_that_fight_ours_are_refused(tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(ValueError, match="is set by ServerProcess"):
        ServerProcess("/bin/true", tiny_args(tmp_path / "m.gguf", *bad), log_path=tmp_path / "s.log")


# --- the server's GPU memory, through NVML -------------------------------------------------------


def test_gpu_memory_is_none_without_nvml_or_a_process_on_a_gpu(
    llama_server: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    """None, never an error: without NVML (its library or nvidia-ml-py absent, as on a host
    without an NVIDIA driver) or for a process that holds no GPU memory; a spawned server of a
    CPU build keeps None once ready and after it is stopped."""
    gpus = nvml_gpus()
    checked = "a process on no GPU" if gpus else "the path without NVML"
    print(f"NVML sees {gpus} GPU(s): this checks {checked}")
    if not gpus:  # on a GPU host this process's llama.cpp may be a CUDA build holding memory
        assert process_vram_mib(os.getpid()) is None
    with ServerProcess(llama_server, tiny_args(tiny_model_path), log_path=tmp_path / "s.log") as proc:
        assert proc.pid is not None
        on_gpu = process_vram_mib(proc.pid)
        if not gpus:
            assert on_gpu is None
        assert proc.vram_mib == on_gpu  # read once it answered /health
    assert proc.read_vram() is None  # stopped: nothing to read, the reading kept
    assert proc.vram_mib == on_gpu


# A process that holds `argv[1]` MiB of GPU memory through the CUDA driver API, until stdin closes.
CUDA_HOLDER = textwrap.dedent("""
    import ctypes, sys
    cuda = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    for step in (lambda: cuda.cuInit(0), lambda: cuda.cuDeviceGet(ctypes.byref(dev), 0),
                 lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev),
                 lambda: cuda.cuCtxSetCurrent(ctx),
                 lambda: cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(sys.argv[1]) << 20))):
        if step():
            print("CUDA refused", flush=True)
            sys.exit(3)
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_gpu_memory_of_a_process_on_the_gpu() -> None:
    """Where NVML sees a GPU: a process holding 256 MiB through CUDA is read as at least that."""
    if not nvml_gpus():
        pytest.skip("NVML sees no GPU here (no NVIDIA driver or device): reading GPU memory needs one")
    holder = subprocess.Popen(
        [sys.executable, "-c", CUDA_HOLDER, "256"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdout is not None
        said = holder.stdout.readline().strip()
        if said != "ready":
            pytest.skip(f"NVML sees a GPU but no CUDA context could be made here ({said or 'no libcuda'})")
        found = process_vram_mib(holder.pid)
        assert found is not None, "NVML did not list the process (another PID namespace?)"
        assert found >= 256
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_left([holder.pid])
