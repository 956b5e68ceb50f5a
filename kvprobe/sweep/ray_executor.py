"""The Ray executor: each cell a Ray task asking for what kvprobe's pre-flight says it needs
(CPUs, a GPU, memory), so Ray places it where it fits. Ray retries a task whose worker or node
was lost; the retry resumes the cell from its journal in the sweep folder, which every node
must see at the same path (shared storage): results are files, never only in Ray's object
store. Ray is the `ray` extra; nothing here is imported without it."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvprobe.infra.errors import UserError
from kvprobe.sweep.cell_run import FAILED, INTERRUPTED, CellOutcome, read_attempt, run_cell
from kvprobe.sweep.jobs import CellJob
from kvprobe.sweep.manifest import MANIFEST
from kvprobe.sweep.progress import SweepProgress

INSTALL_RAY = 'pip install "kvprobe[ray]"'
REACH_S = 5.0  # how long a cluster's port may take to answer before the sweep says so
POLL_S = 0.5  # how often the driver looks for cells that started
CANCEL_WAIT_S = 150.0  # cancelled cells finish their unit's bookkeeping (cell_run's grace period)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray: {INSTALL_RAY}, or use --executor local") from None
    return ray


def cell_task(cell: str, argv: list[str], out: str, folder: str) -> dict[str, Any]:
    """What runs on a Ray worker: the cell, in the sweep folder that must be on this node too."""
    import socket

    if not (Path(folder) / MANIFEST).is_file():
        return CellOutcome(
            cell,
            FAILED,
            0.0,
            socket.gethostname(),
            f"the sweep folder {folder} is not on node {socket.gethostname()}: put it on storage every node "
            "mounts at the same path (--out), and the models too",
        ).to_dict()
    return run_cell(cell, argv, Path(out)).to_dict()


def host_and_port(address: str) -> tuple[str, int] | None:
    """The HOST and PORT of `--address` HOST:PORT or ray://HOST:PORT ([IPv6]:PORT too); None for
    'auto'. A one-line error for anything else: Ray would otherwise retry a malformed address
    for minutes, or answer a dashboard's http:// address with a traceback."""
    if address == "auto":
        return None
    scheme, has_scheme, rest = address.partition("://")
    if not has_scheme:
        rest = address
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:6379
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets: [fe80::1]:6379
    if (
        (has_scheme and scheme != "ray")
        or not sep
        or not host
        or "/" in host
        or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)
    ):
        raise UserError(
            f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT: give the address "
            "`ray start --head` printed (e.g. 10.0.0.5:6379), or ray://HOST:10001 for Ray Client"
        )
    return host, int(port)


def check_reachable(address: str, given: str | None = None) -> None:
    """A one-line error, within seconds, when nothing answers at a cluster's address: ray.init
    would wait minutes for a head that is not there."""
    import socket

    where = host_and_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=REACH_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        said = f"--address {address}" if given in (None, address) else f"{address} (--address {given})"
        raise UserError(
            f"nothing answers at {said} ({why}): start the cluster's head with "
            "`ray start --head` there, or give the address it printed"
        ) from None


def _resolved(ray: Any, address: str) -> str:
    """'auto' as Ray resolves it: RAY_ADDRESS when set (ray:// included), else the cluster
    `ray start` last recorded on this machine, which may be long gone (Ray's own function).
    'auto' itself, so no check, where that cannot be said."""
    if address != "auto":
        return address
    if env := os.environ.get("RAY_ADDRESS", "").strip():
        try:
            host_and_port(env)
        except UserError:
            return address  # Ray reports its own variable
        return env
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return str(canonicalize_bootstrap_address("auto") or address)
    except (ImportError, ValueError):
        return address


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at `address` ('auto': the one `ray start` made on this machine), or
    start a new Ray instance on this machine without one. Never `address=None`: Ray would then
    join the last cluster `ray start` recorded on this machine, and wait for it even when it is
    long gone."""
    try:
        if address is not None:
            check_reachable(_resolved(ray, address), address)
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"at {address}" if address else "on this machine"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach a Ray cluster {where} ({first}): start one with `ray start --head`, or give "
            "--address HOST:PORT (ray://HOST:10001 for Ray Client); a cluster with token authentication "
            "(Ray starts local ones so) needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or "
            "~/.ray/auth_token), or --address auto on its head node"
        ) from None


def node_capacity(ray: Any) -> list[dict[str, float]]:
    """Each alive node's resources (CPU, GPU, memory in bytes)."""
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def resources(job: CellJob, nodes: Sequence[dict[str, float]], gpus_per_cell: float) -> dict[str, Any]:
    """What the cell asks Ray for: its threads in CPUs (one cell per node of the smallest size
    where the sweep sets none), a GPU where layers are offloaded, and its memory estimate."""
    smallest = min((n.get("CPU", 1.0) for n in nodes), default=1.0)
    cpus = float(job.threads) if job.threads else (1.0 if gpus_per_cell else max(1.0, smallest))
    ask: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus_per_cell}
    if job.memory_bytes and not gpus_per_cell:  # offloaded, the weights and caches sit in GPU memory
        ask["memory"] = job.memory_bytes
    return ask


def unplaceable(ask: dict[str, Any], nodes: Sequence[dict[str, float]]) -> str | None:
    """Why no node can take the cell, or None: Ray would otherwise wait for one forever."""
    need = {"CPU": ask["num_cpus"], "GPU": ask["num_gpus"], "memory": ask.get("memory", 0)}
    if any(all(n.get(k, 0.0) >= v for k, v in need.items() if v) for n in nodes):
        return None
    largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in need}
    gib = 2**30
    return (
        f"no node of the Ray cluster can take this cell: it needs {need['CPU']:g} CPUs, {need['GPU']:g} GPUs"
        f" and {need['memory'] / gib:.1f} GiB; the largest nodes offer {largest['CPU']:g} CPUs, "
        f"{largest['GPU']:g} GPUs and {largest['memory'] / gib:.1f} GiB: lower --ctx, set threads, or add "
        "a node"
    )


def _attempt(out: Path) -> tuple[int, float, str] | None:
    rec = read_attempt(out)  # bounded: a FIFO in its place must not stop the driver
    if rec is None:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, OverflowError):
        return int(rec["attempt"]), float(rec["started"]), str(rec["host"])
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def run_ray(
    jobs: Sequence[CellJob],
    progress: SweepProgress,
    folder: Path,
    *,
    address: str | None,
    retries: int,
    gpus_per_cell: float | None,
) -> None:
    ray = import_ray()
    connect(ray, address)
    try:
        nodes = node_capacity(ray)
        if gpus_per_cell is None:
            gpus_per_cell = 1.0 if any(n.get("GPU") for n in nodes) and any(j.on_gpu for j in jobs) else 0.0
        progress.say(
            f"ray: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, "
            f"{sum(n.get('CPU', 0) for n in nodes):g} CPUs, {sum(n.get('GPU', 0) for n in nodes):g} GPUs; "
            f"each cell retried up to {retries} times if its worker is lost"
        )
        _submit_and_wait(
            ray, jobs, progress, folder, nodes=nodes, retries=retries, gpus_per_cell=gpus_per_cell
        )
    finally:
        ray.shutdown()


def _submit_and_wait(
    ray: Any,
    jobs: Sequence[CellJob],
    progress: SweepProgress,
    folder: Path,
    *,
    nodes: Sequence[dict[str, float]],
    retries: int,
    gpus_per_cell: float,
) -> None:
    task = ray.remote(cell_task)
    pending: dict[Any, CellJob] = {}
    seen: dict[str, tuple[int, float, str] | None] = {}
    submitted = time.time()
    for job in jobs:
        ask = resources(job, nodes, gpus_per_cell)
        if (why := unplaceable(ask, nodes)) is not None:
            progress.finished(CellOutcome(job.cell, FAILED, 0.0, "-", why))
            continue
        ref = task.options(**ask, max_retries=retries, name=f"kvprobe-cell-{job.cell}"[:100]).remote(
            job.cell, job.argv, str(job.out), str(folder)
        )
        pending[ref] = job
        seen[job.cell] = _attempt(job.out)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for job in pending.values():  # a new attempt record: the cell started (again)
                now = _attempt(job.out)
                if now is not None and now != seen[job.cell] and now[1] >= submitted - 1:
                    seen[job.cell] = now
                    progress.started(job.cell, now[2], attempt=now[0])
            for ref in ready:
                job = pending.pop(ref)
                try:
                    outcome = CellOutcome(**ray.get(ref))
                except ray.exceptions.RayError as exc:  # retries spent, or the task could not run
                    outcome = CellOutcome(job.cell, FAILED, 0.0, "-", f"lost by Ray: {_one_line(exc)}")
                progress.finished(outcome)
                if outcome.status == INTERRUPTED:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        _cancel(ray, pending, progress)
        raise


def _cancel(ray: Any, pending: dict[Any, CellJob], progress: SweepProgress) -> None:
    """Ctrl-C: every cell still pending or running is cancelled (a running one stops after its
    unit, as Ctrl-C stops `kvprobe run`) and recorded as interrupted."""
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    with contextlib.suppress(Exception, KeyboardInterrupt):
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
    for job in pending.values():
        record = progress.manifest.cells[job.cell]
        if record.status == "running":
            record.status = INTERRUPTED
    progress.manifest.save()
