"""The README's sample output, generated: the decision block that `kvprobe report` prints for the
committed main-job result (results/examples/default-f16-q4_0-8192.json) at 100 columns, with
the host it was measured on. The main job prints the same block when it ends (both are
kvprobe.views.terminal.print_run_report). A test (tests/infra/test_readme_block.py) keeps the
README equal to this; run it again when the example or the report's words change:

    python docs/readme_block.py          # rewrites the block between the README's markers
    python docs/readme_block.py --check  # exit 1 if the README differs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "results" / "examples" / "default-f16-q4_0-8192.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- main-job-report: begin (python docs/readme_block.py) -->", "<!-- main-job-report: end -->"
WIDTH = "100"
FIRST = "Recommendation"  # the block: this heading and the indented lines under it


def report_block() -> list[str]:
    """The decision block of `kvprobe report EXAMPLE` at WIDTH columns: the Recommendation and
    its lines (one per configuration, the speed), up to the first line not indented under it."""
    env = {**os.environ, "COLUMNS": WIDTH, "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", "kvprobe", "report", str(EXAMPLE)], check=True, capture_output=True, text=True,
        env=env, cwd=ROOT,
    ).stdout.splitlines()  # fmt: skip
    start = next(i for i, line in enumerate(out) if line.startswith(FIRST))
    end = next(i for i in range(start + 1, len(out)) if not out[i].startswith("  "))
    return [line.rstrip() for line in out[start:end]]


def host_note() -> str:
    """Where the example was measured, and why another host's numbers differ slightly."""
    doc = json.loads(EXAMPLE.read_text())
    host, runtime = doc["host"], doc["runtime"]
    return (
        f"Measured on {host['cpu_count']} CPU cores ({host['cpu']}, {runtime['n_threads']} threads, "
        f"llama-cpp-python {runtime['llama_cpp_python']}) for `{EXAMPLE.relative_to(ROOT)}`; llama.cpp "
        "picks its kernels for each host's CPU (or GPU), so another machine prints slightly different "
        "numbers."
    )


def block() -> str:
    return "\n".join([BEGIN, "```", *report_block(), "```", "", host_note(), END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's block differs")
    args = parser.parse_args(argv)
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    wanted = head + block() + tail
    if args.check:
        return 0 if wanted == text else 1
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
