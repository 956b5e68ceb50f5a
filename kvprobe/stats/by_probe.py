"""Each probe on its own: per probe and test configuration, the reference's score, the paired
effects at the longest checkpoint, the effective context and onset that the probe's own metrics
give, and how much evidence it bought per minute of its run time (RULER's one-row-per-task
table, paired). Pure functions of a result document."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kvprobe.api import all_probes, paired_item_metrics
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.stats.analysis import onset
from kvprobe.stats.sequential import Design
from kvprobe.stats.verdict import checkpoint_tests, equivalence, sequential_tests

# One probe and test configuration, plain: benchmarks/ruler_table.py sorts on `loss_from` once
# the None ones are filtered out, and reads `metrics` with `.get(..., {})`: a TypedDict refuses both.
ProbeRow = JsonObject
Z_95 = 1.959964  # a 95% interval spans ±1.96 standard errors
# What a paired row must hold to take part (a file may hold less: the table then leaves it out).
PAIRED_FIELDS = {"probe", "metric", "ctx", "diff", "ci", "baseline_value", "n", "p_holm"}


def z_score(diff: float, ci: Sequence[float | None]) -> float | None:
    """The effect in standard errors, from its 95% interval (None: no interval)."""
    lo, hi = ci[0], ci[1]
    if lo is None or hi is None or not math.isfinite(lo) or not math.isfinite(hi):
        return None
    se = (hi - lo) / (2 * Z_95)
    return diff / se if se > 0 else None


def _probe_seconds(result: ResultDoc | JsonObject, probe: str) -> float | None:
    work = ((result.get("timing") or {}).get("probes") or {}).get(probe) or {}
    seconds = work.get("s")
    return float(seconds) if seconds else None


def probe_rows(result: ResultDoc | JsonObject) -> list[ProbeRow]:
    """One row per (probe with a margin on a paired per-item metric, test configuration)."""
    verdict = result.get("verdict") or {}
    baseline = result.get("baseline")
    if not baseline or not verdict.get("configs"):
        return []
    margin: Mapping[str, float] = verdict.get("margins") or {}
    items, seed = result["items"], int(result["run"].get("seed", 0))
    checkpoints = list(result["run"]["checkpoints"])
    tests_of = [c for c in verdict["configs"] if c != baseline]
    early = result["run"].get("until_decided")
    design = Design.from_json(early) if early else None
    configs_n = max(1, len({c["id"] for c in result["configs"]}))
    rows: list[ProbeRow] = []
    for probe in all_probes():
        own = [m for m in paired_item_metrics() if m.probe == probe.name and m.name in margin]
        if not own or not any(it["probe"] == probe.name for it in items):
            continue
        seconds = _probe_seconds(result, probe.name)
        for config in tests_of:
            paired = [
                r
                for r in (verdict["configs"][config] or {}).get("paired") or []
                if r.get("probe") == probe.name and set(r) >= PAIRED_FIELDS and None not in r["ci"]
            ]
            if not paired:
                continue
            longest = max(r["ctx"] for r in paired)
            own_margins = {m.name: margin[m.name] for m in own}
            tests = (  # --until-decided: look by look, as the verdict
                sequential_tests(items, baseline, config, (), own_margins, design=design, seed=seed)[0]
                if design is not None
                else checkpoint_tests(items, baseline, config, (), own_margins, seed=seed)
            )
            onsets = [
                o for m in own if (o := onset([r for r in paired if r["metric"] == m.name])) is not None
            ]
            eq = equivalence(tests, min(onsets) if onsets else None, [c for c in checkpoints if c <= longest])
            at = {r["metric"]: r for r in paired if r["ctx"] == longest}
            trends = ((verdict["configs"][config] or {}).get("shape") or {}).get("trends") or []
            finer = next((m.name for m in own if not m.binary), None)
            row: ProbeRow = {"probe": probe.name, "config": config, "ctx": longest,
                        "effective_context": eq["effective_context"], "status": eq["status"],
                        "loss_from": min(onsets) if onsets else None, "metrics": {},
                        "trend": next((t for t in trends if t["metric"] == finer), None)}  # fmt: skip
            for m in own:
                r = at.get(m.name)
                if r is None:
                    continue
                z = z_score(r["diff"], r["ci"])
                # The probe's share of the run's time for this pair of configurations: z grows
                # with the square root of the items, so z² per minute ranks probes fairly.
                minutes = seconds * 2 / configs_n / 60 if seconds else None
                row["metrics"][m.name] = {
                    "reference": r["baseline_value"], "diff": r["diff"], "ci": r["ci"], "n": r["n"],
                    "p_holm": r.get("p_holm"), "z": z,
                    "z2_per_minute": z * z / minutes if z is not None and minutes else None,
                }  # fmt: skip
            rows.append(row)
    return rows
