"""The RULER-style table of a result (or several), as markdown for the README: one row per
probe, the reference's score, each test configuration's paired effects and effective context;
which probe shows a configuration's loss first; and the evidence each probe buys per minute.

    python benchmarks/ruler_table.py results/bench/ruler-gemma.json [more.json ...]

Sensitivity per minute: z = paired effect / its standard error (from the 95% interval) at the
longest checkpoint; z grows with the square root of the items, so z² per minute of the probe's
own run time (its questions, in the reference and the test configuration) ranks probes
independently of how many items each had. The divergence probe's time is what reading every
position's logits added to the feeding of its document (against the documents that were fed
without), plus reducing them to KL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kvprobe.api import POOLED_DIVERGENCE, by_name, pooled_metric, pooled_row
from kvprobe.stats.by_probe import probe_rows, z_score


def divergence_seconds(result: dict[str, Any]) -> float | None:
    """What the divergence probe added to the run: doc 0's feeding with every position's logits
    read, beyond the mean feeding of the other documents at the same step, plus the reduction."""
    units = result["timing"]["units"]
    docs = result["scenario"]["spec"].get("divergence", {}).get("documents", 1)
    extra = 0.0
    for step in {u[1] for u in units}:
        logits = [u for u in units if u[1] == step and u[0] < docs]
        plain = [u[4] for u in units if u[1] == step and u[0] >= docs]
        if not logits or not plain:
            return None
        extra += sum(u[4] + u[5] for u in logits) - len(logits) * sum(plain) / len(plain)
    return extra


def table(result: dict[str, Any]) -> list[str]:
    rows = probe_rows(result)
    configs = sorted({r["config"] for r in rows}, key=lambda c: ("q8" not in c, c))
    baseline = result["baseline"]
    header = f"| probe | {baseline} accuracy | {baseline} log-prob |"
    rule = "|---|---:|---:|"
    for c in configs:
        header += f" {c} Δ log-prob [95%] | {c} Δ acc | {c} effective | {c} loss from |"
        rule += "---:|---:|---:|---:|"
    out = [header, rule]
    for probe in dict.fromkeys(r["probe"] for r in rows):
        mine = {r["config"]: r for r in rows if r["probe"] == probe}
        first = next(iter(mine.values()))
        acc = next((v for k, v in first["metrics"].items() if by_name(k).binary), None)
        lp = next((v for k, v in first["metrics"].items() if not by_name(k).binary), None)
        line = f"| {probe} | {acc['reference']:.2f} |" if acc else f"| {probe} | - |"
        line += f" {lp['reference']:+.2f} |" if lp else " - |"
        for c in configs:
            r = mine.get(c)
            if r is None:
                line += " - | - | - | - |"
                continue
            a = next((v for k, v in r["metrics"].items() if by_name(k).binary), None)
            p = next((v for k, v in r["metrics"].items() if not by_name(k).binary), None)
            eff = f"{r['effective_context']:,}" if r["effective_context"] else "none"
            loss = f"{r['loss_from']:,}" if r["loss_from"] else "-"
            lp_text = f"{p['diff']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]" if p else "-"
            line += f" {lp_text} | {a['diff']:+.2f} |" if a else f" {lp_text} | - |"
            line += f" {eff} | {loss} |"
        out.append(line)
    return out


def sensitivity(result: dict[str, Any]) -> list[str]:
    rows = probe_rows(result)
    configs = sorted({r["config"] for r in rows}, key=lambda c: ("q8" not in c, c))
    n_configs = len(result["configs"])
    out = ["| probe | " + " | ".join(f"{c}: z, z²/min" for c in configs) + " | its time (s, all configs) |"]
    out.append("|---|" + "---:|" * len(configs) + "---:|")
    for probe in dict.fromkeys(r["probe"] for r in rows):
        cells = []
        for c in configs:
            r = next((r for r in rows if r["probe"] == probe and r["config"] == c), None)
            lp = next((v for k, v in (r or {}).get("metrics", {}).items() if not by_name(k).binary), None)
            z, rate = (lp or {}).get("z"), (lp or {}).get("z2_per_minute")
            cells.append(f"{z:+.1f}, {rate:.0f}" if z is not None and rate is not None else "-")
        seconds = result["timing"]["probes"][probe]["s"]
        out.append(f"| {probe} (answer log-prob) | " + " | ".join(cells) + f" | {seconds:.0f} |")
    kl = pooled_metric(POOLED_DIVERGENCE)
    seconds = divergence_seconds(result)
    if kl is not None and seconds:
        cells = []
        for c in configs:
            row = pooled_row(result["summary"], c)
            z = z_score(row["value"], row["ci"]) if row else None
            minutes = seconds * 2 / n_configs / 60
            cells.append(f"{z:+.1f}, {z * z / minutes:.0f}" if z is not None else "-")
        out.append(f"| divergence ({kl.words}, pooled) | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return out


def first_loss(result: dict[str, Any]) -> list[str]:
    rows = [r for r in probe_rows(result) if r["loss_from"]]
    out = []
    for c in sorted({r["config"] for r in rows}):
        mine = sorted((r for r in rows if r["config"] == c), key=lambda r: r["loss_from"])
        first = mine[0]["loss_from"]
        names = ", ".join(r["probe"] for r in mine if r["loss_from"] == first)
        out.append(f"- {c}: a significant loss first at {first:,} tokens, shown by {names}")
    return out


def main(paths: list[str]) -> None:
    for path in paths:
        result = json.loads(Path(path).read_text())
        form = (result.get("prompt") or {}).get("format", "raw")
        print(f"### {result['model']['name']} ({form}), {path}\n")
        print("\n".join(table(result)) + "\n")
        print("\n".join(first_loss(result)) + "\n")
        print("\n".join(sensitivity(result)) + "\n")
        print(f"wall time {result['timing']['wall_s']:.0f} s\n")


if __name__ == "__main__":
    main(sys.argv[1:])
