"""llama.cpp's log: captured (kept off the user's terminal) and read for what took effect.

llama.cpp reports the cache types and attention rotation it actually applied, and where the
weights and KV caches went, only in its log; every call that creates something is wrapped in
`captured_log` and its lines parsed here.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import llama_cpp

from kvprobe.api.engine import AppliedSettings
from kvprobe.infra.errors import EngineError

_log_lock = threading.Lock()
_log_lines: list[str] = []


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    with _log_lock:
        _log_lines.append(text.decode("utf-8", errors="replace"))


llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """The log lines llama.cpp writes inside the block (filled when the block ends)."""
    with _log_lock:
        start = len(_log_lines)
    captured: list[str] = []
    try:
        yield captured
    finally:
        with _log_lock:
            captured.extend("".join(_log_lines[start:]).splitlines())
            if len(_log_lines) > 10_000:
                del _log_lines[:start]


def last_error(log: list[str], words: tuple[str, ...], default: str = "") -> str:
    """The last line that holds one of `words` (lower case): why llama.cpp refused."""
    return next((ln for ln in reversed(log) if any(w in ln.lower() for w in words)), default)


def parse_applied(log: list[str], n_ctx: int) -> AppliedSettings:
    """The cache types, flash attention and rotation a context creation's log reports."""
    text = "\n".join(log)
    ks = re.findall(r"K \((\w+)\):", text)
    vs = re.findall(r"V \((\w+)\):", text)
    fa = re.findall(r"flash_attn\s+=\s+(\w+)", text)
    rot_k = re.findall(r"attn_rot_k = (\d)", text)
    rot_v = re.findall(r"attn_rot_v = (\d)", text)
    if not ks or not vs or len(set(ks)) != 1 or len(set(vs)) != 1:
        raise EngineError(f"could not read the applied KV cache types from llama.cpp's log: K={ks} V={vs}")
    return AppliedSettings(
        type_k=ks[0],
        type_v=vs[0],
        flash_attn=bool(fa) and fa[-1] in ("enabled", "on", "1", "true"),
        attn_rot_k=any(r == "1" for r in rot_k),
        attn_rot_v=any(r == "1" for r in rot_v),
        n_ctx=n_ctx,
    )


_WEIGHT_BUFFER_LINE = re.compile(r"(\S+) model buffer size = +([\d.]+) MiB")


def weight_buffers(log: list[str]) -> dict[str, float]:
    """MiB by buffer type that a model load's log reports the weights went to."""
    found: dict[str, float] = {}
    for line in log:
        m = _WEIGHT_BUFFER_LINE.search(line)
        if m:
            found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return found


@dataclass(frozen=True)
class KvBuffer:
    """One KV cache llama.cpp allocated, as its log reports it (an SWA model has two)."""

    cells: int
    layers: int
    k_mib: float
    v_mib: float


_KV_SIZE_LINE = re.compile(
    r"llama_kv_cache: size = +[\d.]+ MiB \( *(\d+) cells, +(\d+) layers.*K \(\w+\): +([\d.]+) MiB, "
    r"V \(\w+\): +([\d.]+) MiB"
)


def kv_buffers_logged(log: list[str]) -> list[KvBuffer]:
    """The KV caches a context creation's log reports."""
    found = [_KV_SIZE_LINE.search(line) for line in log]
    return [
        KvBuffer(int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))) for m in found if m
    ]
