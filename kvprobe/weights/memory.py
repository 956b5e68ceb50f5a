"""Will a run fit in this machine's memory? Refused at the start, not killed at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvprobe.cache_types import CacheConfig
from kvprobe.errors import UserError
from kvprobe.weights.doctor import kv_cache_bytes

GiB = 2**30


@dataclass(frozen=True)
class RunMemory:
    """What a run holds in host memory at its peak, in bytes."""

    weights: int  # memory-mapped weights of every model
    kv: int  # every context's KV cache (kvprobe keeps every SWA cell: --swa-full)
    logits: int  # each context holds one chunk's logits twice (output buffer and compute graph)
    contexts: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.logits


def run_memory(
    facts: Sequence[dict[str, Any]],
    configs: Sequence[CacheConfig],
    n_ctx: int,
    chunk: int,
    extra_contexts: int = 0,
) -> RunMemory:
    """Every configuration gets one context per model; `extra_contexts` (the null check) are f16."""
    kv = logits = 0
    contexts = 0
    for f in facts:
        for c in [*configs, *[CacheConfig("f16", "f16")] * extra_contexts]:
            kv += kv_cache_bytes(f, n_ctx, c.type_k, c.type_v, n_ubatch=chunk, swa_full=True)["total"]
            logits += 2 * chunk * f["n_vocab"] * 4
            contexts += 1
    return RunMemory(sum(int(f["weights_bytes"]) for f in facts), kv, logits, contexts)


def check_fits(need: RunMemory, available_gb: float | None, ctx: int) -> None:
    """A one-line UserError when the run cannot fit; silent where memory is unknown."""
    if available_gb is None or need.total <= available_gb * GiB:
        return
    raise UserError(
        f"--ctx {ctx:,} needs about {need.total / GiB:.1f} GiB of memory (KV caches {need.kv / GiB:.1f} GiB "
        f"in {need.contexts} contexts, logits {need.logits / GiB:.1f} GiB, "
        f"weights {need.weights / GiB:.1f} GiB) "
        f"but this machine has {available_gb:.1f} GiB: lower --ctx or run fewer cache types"
    )
