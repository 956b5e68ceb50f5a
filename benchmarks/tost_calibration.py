"""Calibrates kvprobe's equivalence tests (kvprobe.stats.equivalence) by simulation.

Size: with the true difference exactly at the margin (the worse edge, -margin), how often is a
configuration called `equivalent`? TOST at alpha = 0.05 must stay at or below 5%.
Power: with no true difference, how often is it shown equivalent, at the item counts of the
default scenario (16, 32, 48 and 64 needles at 1K, 2K, 4K and 8K tokens)?

Answer log-prob differences are drawn from real ones: the paired (test - f16) differences of
`results/examples/splitkv-f16-q8_0-q4_0-8192.json`, centred and rescaled, so their skew and
heavy tails are the model's. Accuracy is paired pass/fail with a reference accuracy of 0.85.

    python benchmarks/tost_calibration.py [--sims 4000] [--out results/bench/tost_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from kvprobe.result.store import Result
from kvprobe.stats.equivalence import EQUIVALENT, tost_binary, tost_continuous

EXAMPLE = Path(__file__).resolve().parent.parent / "results/examples/splitkv-f16-q8_0-q4_0-8192.json"
ITEM_COUNTS = (16, 32, 48, 64)  # the default scenario's needles per checkpoint at --ctx 8192


def real_differences(config: str) -> np.ndarray:
    """Paired answer log-prob differences (config - f16) over every checkpoint of the example."""
    doc = Result.load(EXAMPLE).doc
    by_key = {
        (it["doc"], it["ctx"], it["key"]): it["logprob"]
        for it in doc["items"]
        if it["probe"] == "needle" and it["config"] == "f16"
    }
    return np.array([
        it["logprob"] - by_key[(it["doc"], it["ctx"], it["key"])]
        for it in doc["items"]
        if it["probe"] == "needle" and it["config"] == config
    ])  # fmt: skip


def textbook_equivalent(d: np.ndarray, margin: float) -> bool:
    """The textbook TOST: the 90% t interval inside the margin (for comparison only)."""
    n = len(d)
    half = stats.t.isf(0.05, n - 1) * d.std(ddof=1) / np.sqrt(n)
    return bool(-margin < d.mean() - half and d.mean() + half < margin)


def logprob_rates(
    pool: np.ndarray, sd: float, shift: float, n: int, *, margin: float, sims: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Shares of simulations called equivalent by kvprobe's TOST and by the textbook one,
    drawing n differences from `pool` rescaled to standard deviation `sd`, moved to mean `shift`."""
    base = (pool - pool.mean()) / pool.std() * sd + shift
    hits = textbook = 0
    for i in range(sims):
        d = rng.choice(base, size=n)
        hits += tost_continuous(d, np.zeros(n), margin, metric="answer_logprob", seed=i).status == EQUIVALENT
        textbook += textbook_equivalent(d, margin)
    return hits / sims, textbook / sims


def accuracy_rate(
    p_ref: float,
    diff: float,
    discordant: float,
    n: int,
    *,
    margin: float,
    sims: int,
    rng: np.random.Generator,
) -> float:
    """Paired pass/fail: the reference right with p_ref; test - reference = diff; `discordant`
    the chance that test gains an item the reference lost (the other way: discordant - diff)."""
    p_gain = discordant
    p_loss = discordant - diff
    p_both = p_ref - p_loss
    probs = np.array(
        [p_both, p_loss, p_gain, 1 - p_both - p_loss - p_gain]
    )  # both, ref only, test only, neither
    hits = 0
    for _ in range(sims):
        cells = rng.choice(4, size=n, p=probs)
        ref = np.isin(cells, (0, 1)).astype(float)
        test = np.isin(cells, (0, 2)).astype(float)
        hits += tost_binary(test, ref, margin, metric="accuracy").status == EQUIVALENT
    return hits / sims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000)
    parser.add_argument("--out", default="results/bench/tost_calibration.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    q8 = real_differences("q8_0")
    report: dict[str, object] = {"sims": args.sims, "alpha": 0.05, "source": str(EXAMPLE.name)}
    size_lp = []
    # At the margin the decision is scale-free, so the shape matters, not the spread: the pools
    # are the real differences of the most skewed configurations (q4_0, K-only q4_0) and q8_0's.
    for name in ("q4_0", "k=q4_0,v=f16", "q8_0"):
        pool = real_differences(name)
        for n in ITEM_COUNTS:
            rate, textbook = logprob_rates(pool, 0.3, -0.25, n, margin=0.25, sims=args.sims, rng=rng)
            skew = float(stats.skew(pool))
            size_lp.append({"pool": name, "skew": skew, "n": n, "false_equivalence": rate,
                            "textbook_90pct_t": textbook})  # fmt: skip
            print(f"log-prob size  {name:13s} (skew {skew:+.2f}) n {n:3d}: false equivalence {rate:.4f} "
                  f"(textbook 90% t: {textbook:.4f})")  # fmt: skip
    power_lp = []
    sd_q8 = float(q8.std())
    for n in ITEM_COUNTS:
        rate, _ = logprob_rates(q8, sd_q8, 0.0, n, margin=0.25, sims=args.sims, rng=rng)
        power_lp.append({"sd": sd_q8, "n": n, "power": rate})
        print(f"log-prob power sd {sd_q8:4.2f} (q8_0's) n {n:3d}: shown equivalent {rate:.4f}")
    for sd in (0.5, 1.0):
        for n in ITEM_COUNTS:
            rate, _ = logprob_rates(q8, sd, 0.0, n, margin=0.25, sims=args.sims, rng=rng)
            power_lp.append({"sd": sd, "n": n, "power": rate})
            print(f"log-prob power sd {sd:4.2f}          n {n:3d}: shown equivalent {rate:.4f}")
    size_acc, power_acc = [], []
    for discordant in (0.0, 0.025, 0.05):
        for n in (*ITEM_COUNTS, 200, 1000):
            rate = accuracy_rate(0.85, -0.05, discordant + 0.05, n, margin=0.05, sims=args.sims // 4, rng=rng)
            size_acc.append({"discordant_gain": discordant + 0.05, "n": n, "false_equivalence": rate})
            print(f"accuracy size  gain {discordant + 0.05:.3f} n {n:4d}: false equivalence {rate:.4f}")
    for n in (*ITEM_COUNTS, 200, 1000):
        rate = accuracy_rate(0.85, 0.0, 0.05, n, margin=0.05, sims=args.sims // 4, rng=rng)
        power_acc.append({"discordant": 0.05, "n": n, "power": rate})
        print(f"accuracy power discordant 0.05 each way n {n:4d}: shown equivalent {rate:.4f}")
    report.update(
        logprob_size=size_lp,
        logprob_power=power_lp,
        accuracy_size=size_acc,
        accuracy_power=power_acc,
        seconds=round(time.perf_counter() - started, 1),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
