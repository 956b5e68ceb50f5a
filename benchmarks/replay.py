"""llama.cpp's own time for a kvprobe run's calls: replays a trace (KVPROBE_TRACE, written by
every context of a run) in a bare loop, so P2 = kvprobe's wall time / this loop's time.

Each traced context is created again with the same cache types and settings; every batch of
the run is built before the clock starts, and the loop then only calls llama_decode and the
same sequence copies and removals, in the run's order per context (`Context.replay`).
Contexts are replayed one after another; the run interleaves them in lockstep, with the same
work per context.

    KVPROBE_TRACE=/tmp/trace kvprobe run --cache q4_0 --ctx 8192
    python benchmarks/replay.py /tmp/trace [--model PATH] [--no-repack]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

from kvprobe.cache_types import CacheConfig
from kvprobe.engine import ContextSettings, Model


def replay(folder: Path, model_path: Path, *, extra_bufts: bool = True) -> dict[str, Any]:
    traces = []
    for path in sorted(folder.glob("*.pkl")):
        with path.open("rb") as fh:
            traces.append(pickle.load(fh))  # our own run's trace
    if not traces:
        raise SystemExit(f"no trace in {folder}: run kvprobe with KVPROBE_TRACE={folder}")
    contexts = []
    with Model(model_path, use_extra_bufts=extra_bufts) as model:
        for trace in traces:
            if not trace["ops"]:
                continue
            cache = CacheConfig(*trace["cache"])
            with model.context(cache, ContextSettings(**trace["settings"])) as context:
                seconds = context.replay(trace["ops"])
            decodes = [op for op in trace["ops"] if op[0] == "decode"]
            contexts.append({
                "cache": cache.id, "decode_calls": len(decodes), "tokens": sum(len(op[1]) for op in decodes),
                "replay_s": round(seconds, 2), "run_busy_s": round(trace["busy_s"], 2),
            })  # fmt: skip
    return {
        "contexts": contexts,
        "replay_s": round(sum(c["replay_s"] for c in contexts), 2),
        "run_busy_s": round(sum(c["run_busy_s"] for c in contexts), 2),
        "decode_calls": sum(c["decode_calls"] for c in contexts),
        "tokens": sum(c["tokens"] for c in contexts),
    }


def main() -> int:
    from kvprobe.provenance import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="the KVPROBE_TRACE folder of a run")
    parser.add_argument("--model", help="the run's model (default: the default model)")
    parser.add_argument("--no-repack", action="store_true", help="as the run: weights without repacking")
    args = parser.parse_args()
    model = Path(args.model) if args.model else default_model_path()
    print(json.dumps(replay(Path(args.trace), model, extra_bufts=not args.no_repack), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
