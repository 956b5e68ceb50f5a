"""How good are the estimates a run prints before it starts? Memory against the measured peak
RSS, and the time estimate printed after the first unit against the time the units took.

    python benchmarks/preflight.py [--ctx 2048 8192] [--time-only] [--out results/bench/preflight.json]

Runs `kvprobe run` for the quick and default scenarios and `--split-kv` (quick scenario), each
with `--cache q4_0`, at each --ctx; reads the "memory: needs about X GiB" and "estimated run
time: about T" lines; measures the peak RSS of the run's process (GNU time) and the time from
the first unit's start to the last unit's end (the result's timing.units). The kernel check runs
in a child process before the run and is cached, so it is not in the figure.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CASES = {
    "quick": ["--scenario", "quick", "--cache", "q4_0"],
    "default": ["--scenario", "default", "--cache", "q4_0"],
    "split-kv": ["--scenario", "quick", "--cache", "q4_0", "--split-kv"],
}
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([\d.]+) (s|min|h)\b", text):
        total += float(value) * UNITS[unit]
    return total


def measure(case: str, ctx: int, work: Path) -> dict[str, Any]:
    out = work / f"{case}-{ctx}.json"
    command = [sys.executable, "-m", "kvprobe", "run", *CASES[case], "--ctx", str(ctx), "--out", str(out)]
    proc = subprocess.run(["/usr/bin/time", "-f", "peak_rss_kib=%M wall_s=%e", *command],
                          capture_output=True, text=True, check=True)  # fmt: skip
    memory = re.search(r"memory: needs about ([\d.]+) GiB", proc.stdout)
    estimate = re.search(r"estimated run time: about ([^(]+) \(", proc.stdout)
    peak = re.search(r"peak_rss_kib=(\d+) wall_s=([\d.]+)", proc.stderr)
    if memory is None or peak is None:
        raise SystemExit(f"{case} {ctx}: no estimate or measurement in the output:\n{proc.stdout[-2000:]}")
    doc = json.loads(out.read_text())
    units = doc["timing"]["units"]
    measured_s = sum(u[2] for u in units)
    estimated_s = seconds(estimate.group(1)) if estimate else None
    peak_gib = int(peak.group(1)) * 1024 / 2**30
    return {
        "case": case,
        "ctx": ctx,
        "command": " ".join(["kvprobe", "run", *CASES[case], "--ctx", str(ctx)]),
        "estimate_gib": float(memory.group(1)),
        "peak_rss_gib": round(peak_gib, 3),
        "memory_error": round(float(memory.group(1)) / peak_gib - 1, 3),
        "estimated_s": estimated_s,
        "units_s": round(measured_s, 1),
        "time_error": round(estimated_s / measured_s - 1, 3) if estimated_s else None,
        "process_wall_s": float(peak.group(2)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvprobe-preflight-"))
    rows = []
    print(f"{'case':10s} {'ctx':>6s} {'estimate':>9s} {'peak RSS':>9s} {'error':>7s} {'est. time':>9s} "
          f"{'units':>8s} {'error':>7s}")  # fmt: skip
    for ctx in opts.ctx:
        for case in opts.cases:
            r = measure(case, ctx, work)
            rows.append(r)
            est = f"{r['estimated_s']:.0f} s" if r["estimated_s"] else "-"
            terr = f"{100 * r['time_error']:+.0f}%" if r["time_error"] is not None else "-"
            merr = f"{100 * r['memory_error']:+6.0f}%"
            print(f"{case:10s} {ctx:6d} {r['estimate_gib']:7.2f} G {r['peak_rss_gib']:7.2f} G "
                  f"{merr} {est:>9s} {r['units_s']:6.0f} s {terr:>7s}", flush=True)  # fmt: skip
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
