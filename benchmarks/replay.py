"""llama.cpp's own time for a kvprobe run's calls: replays a trace (benchmarks/trace.py, which
records every context of a run) in a bare loop, so P2 = kvprobe's wall time / this loop's time.

Each traced context is created again with the same model, threads, GPU layers, weight
buffers, cache types and context settings (all recorded in the trace); every batch of
the run is built before the clock starts, and the loop then only calls llama_decode and the
same sequence copies and removals, in the run's order per context (`replay_ops`).
Contexts are replayed one after another; the run interleaves them in lockstep, with the same
work per context.

    python benchmarks/trace.py /tmp/trace run --cache q4_0 --ctx 8192
    python benchmarks/replay.py /tmp/trace
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.context import Context
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import EngineError


def replay_ops(context: Context, ops: Sequence[tuple[Any, ...]]) -> float:
    """Seconds a bare loop takes for a trace's calls in this fresh context: every batch is
    built before the clock starts, so only llama.cpp's own work is timed."""
    batches: list[Any] = []
    try:
        for op in ops:
            if op[0] == "decode":
                b = llama_cpp.llama_batch_init(len(op[1]), 0, 1)
                batches.append(b)
                for i, (t, pos, sq, want) in enumerate(zip(*op[1:], strict=True)):
                    b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(t), int(pos), 1, int(want)
                    b.seq_id[i][0] = int(sq)
                b.n_tokens = len(op[1])
        calls = iter(batches)
        started = time.perf_counter()
        for op in ops:
            if op[0] == "decode":
                if llama_cpp.llama_decode(context._ctx, next(calls)) != 0:
                    raise EngineError("llama_decode failed in the replay")
            elif op[0] == "cp":
                llama_cpp.llama_memory_seq_cp(context._mem, *op[1:])
            elif op[0] == "rm":
                llama_cpp.llama_memory_seq_rm(context._mem, *op[1:])
            else:
                llama_cpp.llama_memory_clear(context._mem, True)
        return time.perf_counter() - started
    finally:
        for b in batches:
            llama_cpp.llama_batch_free(b)


def replay(folder: Path) -> dict[str, Any]:
    traces = []
    for path in sorted(folder.glob("*.pkl")):
        with path.open("rb") as fh:
            traces.append(pickle.load(fh))  # our own run's trace
    if not traces:
        raise SystemExit(f"no trace in {folder}: run `python benchmarks/trace.py {folder} run ...` first")
    contexts = []
    models: dict[tuple[Any, ...], Model] = {}
    for trace in traces:
        if not trace["ops"]:
            continue
        how = (trace["model"], trace["n_threads"], trace["n_gpu_layers"], trace["extra_bufts"])
        if how not in models:
            models[how] = Model(how[0], n_threads=how[1], n_gpu_layers=how[2], use_extra_bufts=how[3])
        cache = CacheConfig(*trace["cache"])
        with models[how].context(cache, ContextSettings(**trace["settings"])) as context:
            seconds = replay_ops(context, trace["ops"])
        decodes = [op for op in trace["ops"] if op[0] == "decode"]
        contexts.append({
            "cache": cache.id, "decode_calls": len(decodes), "tokens": sum(len(op[1]) for op in decodes),
            "replay_s": round(seconds, 2), "run_busy_s": round(trace["busy_s"], 2),
        })  # fmt: skip
    for model in models.values():
        model.close()
    return {
        "contexts": contexts,
        "replay_s": round(sum(c["replay_s"] for c in contexts), 2),
        "run_busy_s": round(sum(c["run_busy_s"] for c in contexts), 2),
        "decode_calls": sum(c["decode_calls"] for c in contexts),
        "tokens": sum(c["tokens"] for c in contexts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="the folder benchmarks/trace.py wrote a run's trace to")
    args = parser.parse_args()
    print(json.dumps(replay(Path(args.trace)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
