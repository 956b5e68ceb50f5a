"""Will a run fit? Its peak memory, estimated from the GGUF headers before anything is loaded:
refused at the start, not killed at the end.

What a run holds at its peak, per llama.cpp's allocations (its log, `llama_context:` and
`llama_kv_cache:` lines):
- the weights of every model (memory-mapped: their pages count as resident once read);
- one KV cache per context at its n_ctx (kvprobe keeps every sliding-window cell, --swa-full);
- per context, one chunk's logits twice where a probe reads every position's logits (the output
  buffer and the compute graph's result, n_ubatch x n_vocab floats each), else the compute
  buffer's activations and a few rows of output;
- the per-position arrays of the divergence probe, and the Python process itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvprobe.api.cache_types import CacheConfig
from kvprobe.infra.errors import UserError
from kvprobe.infra.nvml import nvml
from kvprobe.weights.doctor import kv_cache_bytes

GiB = 2**30
PROCESS_BYTES = 160 * 2**20  # Python, numpy, scipy, rich and llama.cpp's CPU backend, measured: 112-160 MiB
ACTIVATION_FLOATS_PER_TOKEN = 16  # x n_embd per batch token: a compute buffer without the logits
ARRAY_BYTES_PER_POSITION = 3 * 8 + 1  # kld, nll (float64) and top-1 agreement, per configuration


@dataclass(frozen=True)
class RunMemory:
    """What a run holds at its peak, in bytes."""

    weights: int  # every model's weights
    kv: int  # every context's KV cache
    logits: int  # output and compute buffers of every context
    arrays: int  # per-position arrays kept in memory
    process: int  # the interpreter and libraries
    contexts: int
    # Per context, in run order (every model's configurations, then the extra contexts): its
    # KV cache and its output and compute buffers, to plan configuration groups.
    kv_each: tuple[int, ...] = ()
    logits_each: tuple[int, ...] = ()

    def for_groups(self, groups: Sequence[Sequence[int]], extra_first: int = 0) -> RunMemory:
        """The peak when the contexts exist group by group (indices into the configurations;
        the `extra_first` extra contexts go with the first group): the largest group's."""
        n = len(self.kv_each) - extra_first
        extra = list(range(n, n + extra_first))
        members = [[*g, *(extra if i == 0 else [])] for i, g in enumerate(groups)]
        peak = max(members, key=lambda m: sum(self.kv_each[j] + self.logits_each[j] for j in m))
        return replace(
            self,
            kv=sum(self.kv_each[j] for j in peak),
            logits=sum(self.logits_each[j] for j in peak),
            contexts=len(peak),
        )

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.logits + self.arrays + self.process

    def describe(self) -> str:
        return (
            f"weights {self.weights / GiB:.2f} GiB, KV caches {self.kv / GiB:.2f} GiB in {self.contexts} "
            f"contexts, logits and compute buffers {self.logits / GiB:.2f} GiB"
        )


def run_memory(
    facts: Sequence[dict[str, Any]],
    configs: Sequence[CacheConfig],
    n_ctx: int,
    chunk: int,
    *,
    extra_contexts: int = 0,
    all_logits: bool = True,
    scored_positions: int = 0,
) -> RunMemory:
    """Every configuration gets one context per model; `extra_contexts` (the null check) have the
    reference's f16 cache. `all_logits`: some probe reads every position's logits (divergence),
    so each context fills n_ubatch rows of logits; `scored_positions` are the positions whose
    numbers it keeps."""
    kv: list[int] = []
    logits: list[int] = []
    pairs = [(f, c) for f in facts for c in configs]
    pairs += [(facts[0], CacheConfig("f16", "f16"))] * extra_contexts
    for f, c in pairs:
        kv.append(kv_cache_bytes(f, n_ctx, c.type_k, c.type_v, n_ubatch=chunk, swa_full=True)["total"])
        activations = ACTIVATION_FLOATS_PER_TOKEN * chunk * int(f.get("n_embd") or 0) * 4
        logits.append(activations + (2 * chunk * f["n_vocab"] * 4 if all_logits else 8 * f["n_vocab"] * 4))
    arrays = scored_positions * ARRAY_BYTES_PER_POSITION * len(pairs)
    return RunMemory(
        sum(int(f["weights_bytes"]) for f in facts), sum(kv), sum(logits), arrays, PROCESS_BYTES, len(pairs),
        tuple(kv), tuple(logits),
    )  # fmt: skip


def available_bytes() -> int | None:
    """Memory this process can still get: MemAvailable (Linux), else physical memory; None where
    the OS does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def check_fits(need: RunMemory, available: int | None, ctx: int, where: str = "memory") -> None:
    """A one-line UserError when the run cannot fit; silent where the limit is unknown."""
    if available is None or need.total <= available:
        return
    raise UserError(
        f"--ctx {ctx:,} needs about {need.total / GiB:.1f} GiB of {where} ({need.describe()}) but "
        f"{available / GiB:.1f} GiB are available: lower --ctx, run fewer cache types, or drop --null-check"
    )


def gpu_free_bytes() -> int | None:
    """Free memory of the first NVIDIA GPU through NVML; None without a driver."""
    with nvml() as lib:
        if lib is None:
            return None
        try:
            return int(lib.nvmlDeviceGetMemoryInfo(lib.nvmlDeviceGetHandleByIndex(0)).free)
        except lib.NVMLError:
            return None
