"""Kill `kvprobe run` at random moments and resume it: the items must equal an uninterrupted run's.

    python benchmarks/kill_resume.py [--kills 10] [--seed 0] [-- RUN OPTIONS]

Default run options: --scenario quick --cache q4_0 --ctx 2048. The script runs the command once
uninterrupted (the reference), then `--kills` times: starts it, sends SIGKILL after a random
delay within the part of the reference's wall time where it measured (after loading), runs
`kvprobe run --resume OUT`, and compares items, summary rows, verdict and divergence section
with the reference's. Then once with SIGINT, once the first unit is journaled: the run must
exit 130, leave a partial result (complete: false) and name the resume command.
Prints one row per kill: when it fell, how many units the journal held, and the outcome.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FIELDS = ("items", "text_items", "summary", "verdict", "divergence")
DEFAULT_RUN = ["--scenario", "quick", "--cache", "q4_0", "--ctx", "2048"]


def kvprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvprobe", *args]


def default_sigint() -> None:
    """The child takes Ctrl-C even when this script runs in the background (`nohup ... &`),
    where it would inherit SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fields(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    return {f: doc.get(f) for f in FIELDS}


def journal_units(out: Path) -> int | None:
    journal = out.with_name(out.name + ".journal.jsonl")
    if not journal.exists():
        return None
    return max(0, len(journal.read_text().splitlines()) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("run", nargs="*", default=DEFAULT_RUN)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvprobe-kill-"))
    reference = work / "reference.json"
    started = time.monotonic()
    subprocess.run(kvprobe("run", *opts.run, "--out", str(reference)), check=True, capture_output=True)
    wall = time.monotonic() - started
    expected = fields(reference)
    # Kills while the model loads only show that nothing is left to resume: draw the moments
    # from the measuring part of the run (its units), where a kill loses work.
    measuring = sum(u[2] for u in json.loads(reference.read_text())["timing"]["units"])
    start = max(0.0, wall - measuring - 3.0)
    print(f"reference: {' '.join(opts.run)}: {wall:.1f} s, of which the units {measuring:.1f} s; "
          f"{len(expected['items'])} items")  # fmt: skip
    rng = random.Random(opts.seed)
    rows, failures = [], 0
    for i in range(opts.kills):
        out = work / f"kill{i}.json"
        delay = rng.uniform(start, 0.98 * wall)
        proc = subprocess.Popen(kvprobe("run", *opts.run, "--out", str(out)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        units = journal_units(out)
        if units is None and not finished_first:
            where = "before the first unit finished (no journal: run again)"
            resume = kvprobe("run", *opts.run, "--out", str(out), "--force")  # nothing to resume
        elif finished_first:
            where = "after the run ended"
            resume = []
        else:
            where = f"{units} units in the journal"
            resume = kvprobe("run", "--resume", str(out))
        rc = subprocess.run(resume, check=False, capture_output=True, text=True).returncode if resume else 0
        same = rc == 0 and out.exists() and fields(out) == expected
        failures += not same
        rows.append((i, delay, where, rc, same))
        print(f"kill {i}: at {delay:5.1f} s, {where}; resume exit {rc}; identical: {same}", flush=True)
    # Ctrl-C: a partial result and the resume command.
    out = work / "sigint.json"
    interrupted = subprocess.Popen(kvprobe("run", *opts.run, "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)  # noqa: PLW1509 # fmt: skip
    # Ctrl-C once the first unit is journaled, so it falls mid-run however loaded the machine is.
    began = time.monotonic()
    while interrupted.poll() is None and not journal_units(out) and time.monotonic() - began < 4 * wall:
        time.sleep(0.2)
    at = time.monotonic() - began
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate()
    partial = json.loads(out.read_text()) if out.exists() else {}
    resumed = subprocess.run(
        kvprobe("run", "--resume", str(out)), check=False, capture_output=True, text=True
    )
    sigint_ok = (
        interrupted.returncode == 130
        and partial.get("complete") is False
        and "--resume" in err
        and resumed.returncode == 0
        and fields(out) == expected
    )
    print(
        f"SIGINT at {at:.1f} s (first unit journaled): exit {interrupted.returncode}, partial result with "
        f"{len(partial.get('items', []))} items and {len(partial.get('missing', []))} units missing; "
        f"message: {err.strip()[-160:]!r}; resumed identical: {sigint_ok}"
    )
    kept = opts.kills - failures
    print(f"{kept} of {opts.kills} killed runs resumed to identical results; SIGINT ok: {sigint_ok}")
    return 0 if failures == 0 and sigint_ok else 1


if __name__ == "__main__":
    sys.exit(main())
