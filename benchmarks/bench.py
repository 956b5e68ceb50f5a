"""What kvprobe costs: runs `kvprobe run` jobs, each in a fresh process, and writes one JSON
file with provenance to results/bench/ (`nox -s bench`). Per job:

- P1: the tokens one fresh prompt per item would need (RULER's way) over the tokens kvprobe
  evaluated;
- P2: kvprobe's wall time over llama.cpp's own time for the same calls: the run goes through
  benchmarks/trace.py, which writes a trace of its llama.cpp calls, and benchmarks/replay.py
  times them in a bare loop, in a fresh process; also the run's wall time over its time inside
  `llama_decode`;
- P3: peak RSS of the process against kvprobe's own pre-flight estimate;
- where the time goes: feeding the documents, each probe's work at the checkpoints (needle
  queries, continuations), the KL reduction, the rest of the measuring loop, and the rest of
  the command (hashing, loading, statistics).

    python benchmarks/bench.py                      # quick at 2K and the main job at 8K
    python benchmarks/bench.py --job "--scenario quick --cache q4_0 --ctx 32768" --no-replay
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_JOBS = (
    "--scenario quick --cache q4_0 --ctx 2048",
    "--cache q4_0 --ctx 8192",  # the main job
)
# Runs kvprobe as a child and prints its peak RSS (KiB on Linux) as the last line.
RSS_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def run_job(args: str, folder: Path, *, replay: bool = True) -> dict[str, Any]:
    out = folder / f"job-{abs(hash(args))}.json"
    trace = folder / f"trace-{abs(hash(args))}"
    # `kvprobe run`, or the same through the tracer (which records every context's calls)
    kvprobe = [str(Path(__file__).with_name("trace.py")), str(trace)] if replay else ["-m", "kvprobe"]
    argv = [sys.executable, *kvprobe, "run", *shlex.split(args), "--out", str(out), "--force", "--no-html"]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *argv], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kvprobe {args} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    estimate = re.search(r"memory: needs about ([\d.]+) GiB", proc.stdout)
    doc = json.loads(out.read_text())
    t = doc["timing"]
    decode = sum(t["decode_s"].values())
    bare = replay_trace(trace) if replay else None
    return {
        "command": f"kvprobe run {args}",
        "process_wall_s": round(wall, 1),
        "run_wall_s": t["wall_s"],
        "tokens_evaluated": t["tokens_evaluated"],
        "naive_tokens": t["naive_tokens"],
        "p1_naive_over_evaluated": round(t["naive_tokens"] / max(1, t["tokens_evaluated"]), 2),
        "wall_over_llama_decode": round(t["wall_s"] / decode, 3) if decode else None,
        # P2: the whole command, and the run's measuring loop, over the bare replay's time.
        "p2_process_wall_over_replay": round(wall / bare["replay_s"], 3) if bare else None,
        "p2_run_wall_over_replay": round(t["wall_s"] / bare["replay_s"], 3) if bare else None,
        "replay": bare,
        "result_file": str(out),
        "peak_rss_gib": round(peak_kib / 2**20, 2),
        "estimate_gib": float(estimate.group(1)) if estimate else None,
        # The estimate's parts: weights, KV caches and the output and compute buffers (GiB).
        "estimate_parts": estimate_parts(proc.stdout),
        "seconds": breakdown(t, wall),
        "provenance": {
            "model_sha256": doc["model"]["sha256"],
            "runtime": doc["runtime"],
            "host": doc["host"],
            "configs": [c["id"] for c in doc["configs"]],
        },
    }


def estimate_parts(stdout: str) -> dict[str, float] | None:
    found = re.search(
        r"weights ([\d.]+) GiB, KV caches ([\d.]+) GiB in (\d+) contexts, "
        r"logits and compute buffers ([\d.]+) GiB",
        stdout,
    )
    if not found:
        return None
    weights, kv, contexts, buffers = found.groups()
    return {"weights": float(weights), "kv": float(kv), "contexts": int(contexts), "buffers": float(buffers)}


def breakdown(timing: dict[str, Any], wall: float) -> dict[str, float]:
    """Where a run's time went, from its result's timing: feeding the documents (every
    context, llama_decode included), each probe's work at the checkpoints (needle queries,
    continuations), reducing every position's logits (KL), the rest of the measuring loop,
    and the rest of the command (hashing, loading, statistics, writing)."""
    units = timing["units"]
    feed, reduce_s = sum(u[4] for u in units), sum(u[5] for u in units)
    probes = {name: w["s"] for name, w in (timing.get("probes") or {}).items() if w["s"]}
    rest = timing["wall_s"] - feed - reduce_s - sum(probes.values())
    out = {"document_feed": feed, **{f"{name}_at_checkpoints": s for name, s in probes.items()},
           "kl_reduction": reduce_s, "rest_of_the_loop": rest,
           "loading_hashing_and_statistics": wall - timing["wall_s"]}  # fmt: skip
    return {k: round(v, 1) for k, v in out.items()}


def replay_trace(trace: Path) -> dict[str, Any]:
    """benchmarks/replay.py on the run's trace, in a fresh process (the trace names the model,
    threads, GPU layers and weight buffers of every context)."""
    argv = [sys.executable, str(Path(__file__).with_name("replay.py")), str(trace)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the replay failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    shutil.rmtree(trace, ignore_errors=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return {k: v for k, v in result.items() if k != "contexts"} | {"per_context": result["contexts"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", action="append", help="`kvprobe run` options of one job (repeatable)")
    parser.add_argument("--out", default="results/bench", help="folder for the JSON (default results/bench)")
    parser.add_argument("--no-replay", action="store_true", help="skip P2's bare replay (halves the time)")
    parser.add_argument("--keep", help="folder to keep each job's result file in")
    args = parser.parse_args()
    jobs = args.job or list(DEFAULT_JOBS)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for job in jobs:
            row = run_job(job, Path(tmp), replay=not args.no_replay)
            rows.append(row)
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                kept = Path(args.keep) / f"job-{len(rows)}.json"
                shutil.copy(row.pop("result_file"), kept)
                row["kept_as"] = str(kept)
            row.pop("result_file", None)
            s = row["seconds"]
            print(
                f"{row['command']}: {row['process_wall_s']} s; P1 {row['p1_naive_over_evaluated']}x fewer "
                f"tokens than one prompt per item; P2 {row['p2_process_wall_over_replay']} (whole command) "
                f"and {row['p2_run_wall_over_replay']} (measuring loop) over the bare replay; "
                f"wall / llama_decode {row['wall_over_llama_decode']}; "
                f"peak RSS {row['peak_rss_gib']} GiB (estimate {row['estimate_gib']})"
            )
            print("  seconds: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.items()))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"bench-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    target.write_text(json.dumps({"jobs": rows}, indent=1) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
