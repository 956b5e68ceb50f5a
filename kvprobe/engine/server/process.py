"""A llama-server this process starts and owns (`ServerProcess`): on a free loopback port,
waited for on /health, stopped on every way out (normal exit, an exception, SIGTERM/SIGINT/SIGHUP
to this process while a server runs, and this process being SIGKILLed: the server is spawned with
PR_SET_PDEATHSIG = SIGKILL); what its log says took effect (`applied_settings`); and the GPU
memory its process holds where NVML sees it (`process_vram_mib`)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from kvprobe.engine.server.client import (
    DEFAULT_MAX_BYTES,
    FIX_BINARY,
    ServerClient,
    ServerError,
    _short,
)
from kvprobe.infra.nvml import nvml

_VERSION_LINE = re.compile(r"version: (\S+) \(build (\d+), commit (\w+)\)")
_ERROR_LINE = re.compile(r"\berror\b|failed|unsupported|invalid|couldn't|exiting|abort", re.IGNORECASE)


# --- the server's log ----------------------------------------------------------------------------


def applied_settings(log: str) -> dict[str, Any]:
    """What a server's log (at -lv 4 or more) says took effect: cache types per KV cache (an SWA
    model has two), flash attention, Hadamard rotation, context and slots, weight buffers."""

    def all_of(pattern: str) -> list[Any]:
        return re.findall(pattern, log)

    def last(pattern: str) -> str | None:
        found = all_of(pattern)
        return found[-1] if found else None

    caches = [
        {"mib": float(mib), "cells": int(c), "layers": int(n), "type_k": k, "type_v": v}
        for mib, c, n, k, v in all_of(
            r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers.*?K \((\w+)\).*?V \((\w+)\)"
        )
    ]
    buffers: dict[str, float] = {}
    for name, mib in all_of(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB"):
        buffers[name] = buffers.get(name, 0.0) + float(mib)
    offloaded = last(r"offloaded (\d+/\d+) layers to GPU")
    return {
        "kv_caches": caches,
        "kv_mib": round(sum(c["mib"] for c in caches), 2) if caches else None,  # what the server allocated
        "type_k": sorted({c["type_k"] for c in caches}),
        "type_v": sorted({c["type_v"] for c in caches}),
        # "auto" is resolved after the context line: "resolve_fused_ops: Flash Attention enabled"
        "flash_attn": last(r"Flash Attention (enabled|disabled)")
        or last(r"llama_context: flash_attn += (\w+)"),
        "attn_rot_k": sorted(set(all_of(r"attn_rot_k = (\d)"))),
        "attn_rot_v": sorted(set(all_of(r"attn_rot_v = (\d)"))),
        "n_ctx": int(n) if (n := last(r"llama_context: n_ctx += (\d+)")) else None,
        "n_seq_max": int(n) if (n := last(r"llama_context: n_seq_max += (\d+)")) else None,
        "kv_unified": last(r"llama_context: kv_unified += (\w+)"),
        "n_slots": int(n) if (n := last(r"initializing, n_slots = (\d+)")) else None,
        "n_threads": last(r"system_info: n_threads = (\d+ \(n_threads_batch = \d+\))"),
        "weight_buffers": buffers,
        "offloaded_layers": offloaded,
        "listening": last(r"listening on (\S+)"),
    }


def process_vram_mib(pid: int) -> float | None:
    """GPU memory NVML reports process `pid` holding, summed over every device, in MiB. None,
    never an error, without NVML (no driver, or nvidia-ml-py absent), without a GPU, where the
    process is on none (a CPU build) or NVML cannot see it (another PID namespace, or no
    per-process figure)."""
    with nvml() as lib:
        if lib is None:
            return None
        try:
            used: list[int] = []
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                # A CUDA server is a compute process; a Vulkan one may be listed as graphics: one per device.
                seen = [
                    int(p.usedGpuMemory)
                    for listed in (
                        lib.nvmlDeviceGetComputeRunningProcesses,
                        lib.nvmlDeviceGetGraphicsRunningProcesses,
                    )
                    for p in _listed(lib, listed, handle)
                    if p.pid == pid and p.usedGpuMemory is not None
                ]
                if seen:
                    used.append(max(seen))
            return round(sum(used) / 2**20, 1) if used else None
        except lib.NVMLError:
            return None


def _listed(lib: Any, listed: Callable[[Any], list[Any]], handle: Any) -> list[Any]:
    """One NVML process list (`lib`: pynvml, opened); a list this driver or device does not offer
    is an empty one."""
    try:
        return list(listed(handle))
    except lib.NVMLError:
        return []


# --- the process ---------------------------------------------------------------------------------


def server_version(binary: str | Path, timeout: float = 15.0) -> str:
    """The binary's `--version` line ("0.5.0-dev (build 1, commit 0c1e570)"): a binary that
    prints none is not a llama.cpp tool."""
    where = f"{binary} (not started)"
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise ServerError(where, "no such file", FIX_BINARY) from None
    except PermissionError:
        raise ServerError(where, "not executable", f"{FIX_BINARY} (chmod +x)") from None
    except subprocess.TimeoutExpired:
        raise ServerError(where, f"'--version' did not finish in {timeout:.0f} s", FIX_BINARY) from None
    except OSError as exc:
        raise ServerError(where, f"cannot run it ({exc.strerror})", FIX_BINARY) from None
    text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    found = _VERSION_LINE.search(text)
    if not found:
        said = _short(text.strip().splitlines()[-1]) if text.strip() else "nothing"
        raise ServerError(where, f"'--version' printed no llama.cpp version (it printed: {said})", FIX_BINARY)
    return f"{found.group(1)} (build {found.group(2)}, commit {found.group(3)})"


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the thread that spawned it ends (Linux), and
    ends at once if that already happened."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel calls free now (another process may take it before the server does:
    ServerProcess retries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_live: set[ServerProcess] = set()
_live_lock = threading.Lock()
_previous_handlers: dict[int, Any] = {}
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.stop(read_vram=False)  # a signal or the exit: no NVML calls on the way out


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _previous_handlers.get(signum, signal.SIG_DFL)  # before _stop_all clears it
    _stop_all()
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT and previous != signal.SIG_IGN:
        raise KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        raise SystemExit(128 + signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread() or _previous_handlers:
        return
    for sig in _HANDLED:
        _previous_handlers[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_previous_handlers.items()):
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _previous_handlers.clear()


atexit.register(_stop_all)


class ServerProcess:
    """A llama-server this process starts and owns (use it as a context manager)."""

    def __init__(
        self,
        binary: str | Path,
        args: Sequence[str],
        *,
        log_path: str | Path,
        host: str = "127.0.0.1",
        startup_timeout: float = 300.0,
        stop_timeout: float = 10.0,
        request_timeout: float = 600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        env: Mapping[str, str] | None = None,
        port_tries: int = 3,
    ):
        """`args` are the server's own (model, cache types, ...); this adds --host, --port and a
        unique --alias, and refuses args that set them. `env` replaces the environment; by default
        it is this process's, less LLAMA_ARG_* variables (llama-server reads its options from
        them: `dropped_env` lists those left out)."""
        for arg in args:
            if arg in ("--host", "--port", "--alias", "-a") or arg.startswith(
                ("--host=", "--port=", "--alias=")
            ):
                raise ValueError(f"{arg} is set by ServerProcess")
        self.binary = Path(binary)
        self.args = list(args)
        self.log_path = Path(log_path)
        self.host = host
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.request_timeout = request_timeout
        self.max_bytes = max_bytes
        self.port_tries = port_tries
        base = dict(os.environ if env is None else env)
        self.dropped_env = sorted(k for k in base if env is None and k.startswith("LLAMA_ARG_"))
        self.env = {k: v for k, v in base.items() if k not in self.dropped_env}
        self.alias = f"kvprobe-{secrets.token_hex(6)}"
        self.version: str | None = None
        self.port: int | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        self._client: ServerClient | None = None
        self.vram_mib: float | None = None  # the most GPU memory NVML saw the server hold, in MiB

    @property
    def where(self) -> str:
        return (
            f"{self.host}:{self.port} ({self.binary.name}, pid {self.pid})" if self.port else str(self.binary)
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def client(self) -> ServerClient:
        if self._client is None:
            raise RuntimeError("the server is not started")
        return self._client

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 3) -> str:
        """The log's last `n` lines that report an error (else its last `n` lines), on one line."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, self.log_path.stat().st_size - 16384))
                lines = fh.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        kept = [" ".join(ln.split()) for ln in lines if ln.strip() and not ln.startswith("# kvprobe:")]
        errors = [ln for ln in kept if _ERROR_LINE.search(ln)]
        return " | ".join(_short(ln) for ln in (errors or kept)[-n:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _log_since_spawn(self) -> bytes:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_start)
                return fh.read(1 << 20)
        except OSError:
            return b""

    def _failure_note(self) -> str:
        if self._proc is None:
            return ""
        code = self._proc.poll()
        if code is None and self._client is not None:  # ready before: it may be dying right now
            try:  # not reaped yet: a moment's wait says how it ended (the error is final anyway)
                code = self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                return ""
        if code is None:
            return ""
        return f"the server exited with code {code}; its log ends: {self.log_tail()}; log at {self.log_path}"

    def start(self) -> ServerClient:
        """Start the server and wait until it answers /health (tries another port if one was
        taken meanwhile). Returns its client."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self.version = server_version(self.binary)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.port_tries):
            self.port = free_port(self.host)
            self._spawn(append=attempt > 0)
            try:
                return self._wait_ready()
            except _PortTaken:
                self._reap()
                continue
            except BaseException:
                self.stop()
                raise
        raise ServerError(
            self.where,
            f"no free port after {self.port_tries} tries",
            "another program keeps taking the ports this picks: retry",
        )

    def _spawn(self, *, append: bool) -> None:
        cmd = [
            str(self.binary),
            *self.args,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--alias",
            self.alias,
        ]
        self._log = self.log_path.open("ab" if append else "wb")
        self._log_start = self._log.tell()
        self._log.write(f"# kvprobe: {' '.join(cmd)}\n".encode())
        self._log.flush()
        with _live_lock:
            _live.add(self)
        _install_handlers()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=self.env,
            start_new_session=True,  # Ctrl-C at a terminal reaches only us: we stop the server in order
            preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 (ctypes prctl only: no locks taken)
        )

    def _wait_ready(self) -> ServerClient:
        assert self._proc is not None
        client = ServerClient(
            self.url,
            timeout=self.request_timeout,
            max_bytes=self.max_bytes,
            expect_model=self.alias,
            on_failure=self._failure_note,
        )
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while True:
            code = self._proc.poll()
            if code is not None:
                if b"couldn't bind" in self._log_since_spawn():
                    raise _PortTaken
                raise ServerError(
                    self.where,
                    f"exited at once with code {code}; its log ends: {self.log_tail()}",
                    f"run the same command by hand to see why (log at {self.log_path})",
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    self.where,
                    f"did not answer /health within {self.startup_timeout:.0f} s; "
                    f"its log ends: {self.log_tail()}",
                    "raise the startup timeout, or check the log",
                )
            with contextlib.suppress(ServerError):
                if client.health(timeout=2.0) and self._proc.poll() is None:
                    props = client.props()
                    if props.model_alias != self.alias:
                        raise _PortTaken
                    self._client = client
                    self.read_vram()  # model and KV cache loaded: the server's GPU memory at rest
                    return client
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _reap(self) -> None:
        """Forget a server that could not bind (already exited, or to be stopped)."""
        self.stop()
        self.returncode = None
        self._proc = None

    def read_vram(self) -> float | None:
        """Read the GPU memory the server holds now (NVML, where its GPU is local); `vram_mib`
        keeps the most seen. None without NVML, a GPU, or a running server."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        found = process_vram_mib(self._proc.pid)
        if found is not None:
            self.vram_mib = max(self.vram_mib or 0.0, found)
        return found

    def stop(self, *, read_vram: bool = True) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after `stop_timeout`; idempotent.
        A server that was ready has its GPU memory read first (after the run; not from a signal
        handler: `read_vram=False`). Returns the exit status."""
        proc = self._proc
        if read_vram and self._client is not None:
            self.read_vram()
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            self.returncode = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            _live.discard(self)
            last = not _live
        if last:
            _restore_handlers()
        return self.returncode


class _PortTaken(Exception):
    """The chosen port was taken before the server bound it."""
