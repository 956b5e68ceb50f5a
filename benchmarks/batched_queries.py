"""Batched needle queries against one query per llama_decode: the same items, other batch
shapes. Reads two results of the same run (one with the scenario's `needle.batch_queries =
false`), pairs the needle items, and reports per configuration and checkpoint:

- answer log-prob, batched minus unbatched: mean, largest |difference|, and the paired 95%
  bootstrap interval (agreement: it holds 0);
- accuracy: items whose pass/fail flipped, and the paired Newcombe 95% interval;
- the verdict's own contrast, each cache minus the reference (paired on the items), in both
  runs: the batched contrast must lie within the unbatched one's interval;
- each summary row (accuracy, mean answer log-prob) of the batched run against the unbatched
  one's 95% interval;
- queries per second in each run (`timing.probes.needle`: items over the seconds spent on them).

    python benchmarks/batched_queries.py BATCHED.json UNBATCHED.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.api.result import ResultDoc
from kvprobe.result.store import load_result
from kvprobe.stats.inference import bootstrap_mean_interval, newcombe_paired_interval

Key = tuple[Any, ...]


def needle_items(result: ResultDoc) -> dict[Key, dict[str, Any]]:
    return {
        (it["config"], it["doc"], it["ctx"], it["key"]): it
        for it in result["items"]
        if it["probe"] == "needle"
    }


def contrast(
    items: dict[Key, dict[str, Any]], config: str, baseline: str, ctx: int
) -> tuple[float, list[float]]:
    pairs = [
        (it["logprob"], items[(baseline, *k[1:])]["logprob"])
        for k, it in items.items()
        if k[0] == config and k[2] == ctx
    ]
    d = [a - b for a, b in pairs]
    return float(np.mean(d)), list(bootstrap_mean_interval(d, seed=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batched")
    parser.add_argument("unbatched")
    parser.add_argument("--out", default="results/bench/batched_queries.json")
    args = parser.parse_args()
    a, b = load_result(Path(args.batched)), load_result(Path(args.unbatched))
    ia, ib = needle_items(a), needle_items(b)
    if set(ia) != set(ib):
        raise SystemExit("the two results do not hold the same needle items: run the same command twice")
    baseline = a["baseline"]
    rows = []
    for config, ctx in sorted({(k[0], k[2]) for k in ia}, key=lambda ck: (ck[1], ck[0])):
        keys = [k for k in ia if k[0] == config and k[2] == ctx]
        d = np.array([ia[k]["logprob"] - ib[k]["logprob"] for k in keys])
        both = sum(ia[k]["correct"] and ib[k]["correct"] for k in keys)
        only_a = sum(ia[k]["correct"] and not ib[k]["correct"] for k in keys)
        only_b = sum(ib[k]["correct"] and not ia[k]["correct"] for k in keys)
        neither = len(keys) - both - only_a - only_b
        row: dict[str, Any] = {
            "config": config, "ctx": ctx, "n": len(keys),
            "logprob_diff_mean": float(d.mean()), "logprob_diff_max_abs": float(np.abs(d).max()),
            "logprob_diff_ci": list(bootstrap_mean_interval(list(d), seed=0)),
            "accuracy_flips": only_a + only_b,
            "accuracy_diff_ci": list(newcombe_paired_interval(both, only_b, only_a, neither)),
        }  # fmt: skip
        row["agree"] = row["logprob_diff_ci"][0] <= 0 <= row["logprob_diff_ci"][1] and (
            row["accuracy_diff_ci"][0] <= 0 <= row["accuracy_diff_ci"][1]
        )
        if config != baseline:
            ca, _ = contrast(ia, config, baseline, ctx)
            cb, cb_ci = contrast(ib, config, baseline, ctx)
            row |= {"contrast_batched": ca, "contrast_unbatched": cb, "contrast_unbatched_ci": cb_ci,
                    "contrast_within": cb_ci[0] <= ca <= cb_ci[1]}  # fmt: skip
        rows.append(row)
        print(
            f"{config:>6} at {ctx:>5}: n {row['n']}, log-prob batched - unbatched "
            f"{row['logprob_diff_mean']:+.4f} "
            f"[{row['logprob_diff_ci'][0]:+.4f}, {row['logprob_diff_ci'][1]:+.4f}] (max |d| "
            f"{row['logprob_diff_max_abs']:.4f}), {row['accuracy_flips']} pass/fail flips"
            + (
                f"; vs {baseline}: {row['contrast_batched']:+.3f} batched, {row['contrast_unbatched']:+.3f} "
                f"[{cb_ci[0]:+.3f}, {cb_ci[1]:+.3f}] unbatched"
                if config != baseline
                else ""
            )
        )
    speed = {}
    for name, result in (("batched", a), ("unbatched", b)):
        work = (result["timing"].get("probes") or {}).get("needle")
        if work:
            speed[name] = {
                **work,
                "queries_per_s": round(work["items"] / work["s"], 1) if work["s"] else None,
            }
    if speed:
        print(
            "needle queries per second: " + ", ".join(f"{k} {v['queries_per_s']}" for k, v in speed.items())
        )
    # Each summary row of the batched run (accuracy, mean answer log-prob per configuration and
    # checkpoint) against the unbatched one's 95% interval.
    old = {(r["metric"], r["config"], r["ctx"]): r for r in b["summary"] if r.get("probe") == "needle"}
    summary_rows = [
        {"metric": r["metric"], "config": r["config"], "ctx": r["ctx"], "batched": r["value"],
         "unbatched": old[key]["value"], "unbatched_ci": old[key]["ci"],
         "within": old[key]["ci"][0] <= r["value"] <= old[key]["ci"][1]}
        for r in a["summary"]
        if r.get("probe") == "needle" and (key := (r["metric"], r["config"], r["ctx"])) in old
    ]  # fmt: skip
    summary = {
        "summary_rows_within_unbatched_ci": sum(r["within"] for r in summary_rows),
        "summary_rows": len(summary_rows),
        "all_agree": all(r["agree"] for r in rows),
        "contrasts_within": all(r.get("contrast_within", True) for r in rows),
        "max_abs_logprob_diff": max(r["logprob_diff_max_abs"] for r in rows),
        "accuracy_flips": sum(r["accuracy_flips"] for r in rows),
        "items": sum(r["n"] for r in rows),
    }
    print(json.dumps(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "files": [args.batched, args.unbatched],
              "summary": summary, "speed": speed, "rows": rows, "summary_rows": summary_rows}  # fmt: skip
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
