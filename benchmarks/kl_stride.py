"""What scoring the divergence on every k-th position only would cost the intervals.

Reading every position's logits is what makes each context hold n_ubatch x n_vocab floats
twice (output buffer and compute graph, 1 GiB per context with a 262K vocabulary at n_ubatch
512); asking llama.cpp for every k-th row divides that by k. This takes a saved result's
per-position arrays, keeps every k-th position (what such a run would score, up to the
numerics of a smaller output matmul), and recomputes the intervals the verdict reads: mean KL
per checkpoint span (block bootstrap over the same 32-position blocks) and KL's 99.9th
percentile up to each checkpoint (order statistics). Writes results/bench/kl_stride.json.

    python benchmarks/kl_stride.py results/examples/splitkv-f16-q8_0-q4_0-8192.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.probes.divergence.metrics import (
    MIN_BLOCKS,
    block_bootstrap_mean,
    order_statistic_interval,
    split_blocks,
)
from kvprobe.probes.divergence.probe import divergence_arrays
from kvprobe.result.store import load_result

STRIDES = (1, 2, 4, 8, 16)
KLD_BOUND, P999_BOUND = 0.02, 0.5  # the default margins (kvprobe.probes.divergence.probe metrics)


def spans_at_stride(
    values: np.ndarray, checkpoints: list[int], block: int, k: int, seed: int
) -> list[dict[str, Any]]:
    positions = np.arange(1, len(values) + 1)
    keep = (positions - 1) % k == 0
    v, p = values[keep], positions[keep]
    out = []
    lo = 1
    for hi in checkpoints:
        blocks = split_blocks(v, p, lo, hi, block)
        n = int(sum(len(b) for b in blocks))
        mean_ci = block_bootstrap_mean(blocks, seed=seed) if len(blocks) >= MIN_BLOCKS else None
        upto = v[p < hi]
        tail = order_statistic_interval(upto, 0.999, 0.95) if len(upto) else (None, None)
        out.append({
            "ctx": hi, "n": n,
            "mean": float(sum(b.sum() for b in blocks) / n) if n else None,
            "mean_ci": list(mean_ci) if mean_ci else None,
            "p999_ci": list(tail),
        })  # fmt: skip
        lo = hi
    return out


def decision(ci: list[Any] | None, bound: float) -> str:
    if not ci or ci[1] is None:
        return "undecided"
    return "within" if ci[1] < bound else ("beyond" if ci[0] is not None and ci[0] > bound else "undecided")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="result files with a divergence section")
    parser.add_argument("--out", default="results/bench/kl_stride.json")
    args = parser.parse_args()
    report: list[dict[str, Any]] = []
    for path in args.results:
        result = load_result(Path(path))
        section = result["divergence"]
        arrays = divergence_arrays(result)
        checkpoints = result["run"]["checkpoints"]
        for config, per_doc in arrays.items():
            if config == section["reference"]:
                continue
            kld = per_doc[0]["kld"].astype(np.float64)  # the scored document
            full = spans_at_stride(kld, checkpoints, section["block"], 1, result["run"]["seed"])
            for k in STRIDES:
                spans = spans_at_stride(kld, checkpoints, section["block"], k, result["run"]["seed"])
                for s, f in zip(spans, full, strict=True):
                    width = (s["mean_ci"][1] - s["mean_ci"][0]) if s["mean_ci"] else None
                    width1 = (f["mean_ci"][1] - f["mean_ci"][0]) if f["mean_ci"] else None
                    report.append({
                        "file": Path(path).name, "config": config, "stride": k, "ctx": s["ctx"], "n": s["n"],
                        "mean": s["mean"], "mean_ci": s["mean_ci"],
                        "mean_width_ratio": round(width / width1, 3) if width and width1 else None,
                        "mean_decision": decision(s["mean_ci"], KLD_BOUND),
                        "mean_decision_stride_1": decision(f["mean_ci"], KLD_BOUND),
                        "p999_ci": s["p999_ci"], "p999_decision": decision(s["p999_ci"], P999_BOUND),
                        "p999_decision_stride_1": decision(f["p999_ci"], P999_BOUND),
                    })  # fmt: skip
    by_stride: dict[int, list[dict[str, Any]]] = {}
    for row in report:
        by_stride.setdefault(row["stride"], []).append(row)
    summary = []
    for k, rows in sorted(by_stride.items()):
        ratios = [r["mean_width_ratio"] for r in rows if r["mean_width_ratio"]]
        mean_changed = sum(r["mean_decision"] != r["mean_decision_stride_1"] for r in rows)
        tail_changed = sum(r["p999_decision"] != r["p999_decision_stride_1"] for r in rows)
        summary.append({
            "stride": k, "spans": len(rows),
            "median_mean_ci_width_ratio": round(float(np.median(ratios)), 3) if ratios else None,
            "max_mean_ci_width_ratio": round(float(np.max(ratios)), 3) if ratios else None,
            "mean_decisions_changed": int(mean_changed),
            "p999_decisions_changed": int(tail_changed),
            "logits_buffer_share": round(1 / k, 3),
        })  # fmt: skip
        row = summary[-1]
        print(
            f"every {k:>2}th position: mean-KL interval x{row['median_mean_ci_width_ratio']} wider (median; "
            f"max x{row['max_mean_ci_width_ratio']}); of {len(rows)} spans, {mean_changed} mean-KL and "
            f"{tail_changed} 99.9th-percentile decisions change; logits buffers x{1 / k:.3g}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "summary": summary, "rows": report}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
