"""Calibrates --until-decided (kvprobe.stats.sequential) by simulation: the error rates of the
equivalence tests when they look after every document and stop at the first decision.

A checkpoint's paired items arrive document by document (the default scenario: 4 documents,
4/8/12/16 needles each at 1K/2K/4K/8K). Four procedures are compared on the same draws:

- fixed: one test on every item at the end (what a run without --until-decided does);
- naive: the fixed 95% test after every document, stopping at the first decision (the
  multiple-looks problem);
- obrien-fleming, pocock: Lan–DeMets alpha spending, the interval at each look's level
  (kvprobe's Design; O'Brien–Fleming is what --until-decided uses).

Rates, each per one-sided test at alpha = 0.025 (the 95% interval's side):
- false equivalence: the true difference exactly at the worse margin, called equivalent;
- false worse: the true difference exactly at the margin, called worse (interval beyond it);
- null dropped: no true difference (q8_0 where it is equivalent), called worse: never beyond α;
- power: no true difference, called equivalent; and the mean number of documents measured.

Answer log-prob differences are drawn from real ones (the paired differences of
`results/examples/splitkv-f16-q8_0-q4_0-8192.json`, centred and rescaled, so their skew and
heavy tails are the model's); accuracy is paired pass/fail with a reference accuracy of 0.85.

    python benchmarks/sequential_calibration.py [--sims 2000]
        [--out results/bench/sequential_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kvprobe.stats.equivalence import EQUIVALENT, LEVEL, UNDECIDED, WORSE, tost
from kvprobe.stats.sequential import OBRIEN_FLEMING, POCOCK, Design

EXAMPLE = Path(__file__).resolve().parent.parent / "results/examples/splitkv-f16-q8_0-q4_0-8192.json"
LOOKS = 4  # documents of the default scenario
PER_DOCUMENT = (4, 8, 16)  # needles per document at 1K, 2K and 8K tokens
PROCEDURES = ("fixed", "naive", OBRIEN_FLEMING, POCOCK)
Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]  # (test, reference) for n items


def real_differences(config: str) -> np.ndarray:
    """Paired answer log-prob differences (config - f16) over every checkpoint of the example."""
    doc = json.loads(EXAMPLE.read_text())
    ref = {
        (it["doc"], it["ctx"], it["key"]): it["logprob"]
        for it in doc["items"]
        if it["probe"] == "needle" and it["config"] == "f16"
    }
    return np.array([
        it["logprob"] - ref[(it["doc"], it["ctx"], it["key"])]
        for it in doc["items"]
        if it["probe"] == "needle" and it["config"] == config
    ])  # fmt: skip


def logprob_draw(pool: np.ndarray, sd: float, shift: float) -> Draw:
    base = (pool - pool.mean()) / pool.std() * sd + shift

    def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.choice(base, size=n), np.zeros(n)

    return draw


def accuracy_draw(diff: float, p_ref: float = 0.85, gain: float = 0.05) -> Draw:
    """Paired pass/fail: the reference right with p_ref, test - reference = diff, the test
    gaining an item the reference lost with chance `gain`."""
    loss = gain - diff
    probs = np.array([p_ref - loss, loss, gain, 1 - p_ref - gain])  # both, ref only, test only, neither

    def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        cells = rng.choice(4, size=n, p=probs)
        return np.isin(cells, (0, 2)).astype(float), np.isin(cells, (0, 1)).astype(float)

    return draw


def run_once(
    test: np.ndarray, ref: np.ndarray, per_doc: int, margin: float, *, binary: bool, seed: int
) -> dict[str, tuple[str, int]]:
    """Each procedure's decision and the documents it measured, on one draw of LOOKS documents."""
    out: dict[str, tuple[str, int]] = {}
    designs = {kind: Design(looks=LOOKS, spending=kind) for kind in (OBRIEN_FLEMING, POCOCK)}
    metric = "accuracy" if binary else "answer_logprob"

    def status(j: int, level: float) -> str:
        n = per_doc * (j + 1)
        return tost(test[:n], ref[:n], margin, metric=metric, binary=binary, seed=seed, level=level).status

    out["fixed"] = (status(LOOKS - 1, LEVEL), LOOKS)
    for name in PROCEDURES[1:]:
        found = UNDECIDED, LOOKS
        for j in range(LOOKS):
            s = status(j, LEVEL if name == "naive" else designs[name].level(j))
            if s != UNDECIDED:
                found = s, j + 1
                break
        out[name] = found
    return out


def rates(
    draw: Draw, per_doc: int, margin: float, *, binary: bool, sims: int, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """Per procedure: the share of simulations called equivalent, worse, and the documents measured."""
    tally = {p: {"equivalent": 0.0, "worse": 0.0, "documents": 0.0} for p in PROCEDURES}
    for i in range(sims):
        test, ref = draw(rng, per_doc * LOOKS)
        for name, (status, docs) in run_once(test, ref, per_doc, margin, binary=binary, seed=i).items():
            tally[name]["equivalent"] += status == EQUIVALENT
            tally[name]["worse"] += status == WORSE
            tally[name]["documents"] += docs
    return {p: {k: round(v / sims, 4) for k, v in t.items()} for p, t in tally.items()}


def scenarios(q8: np.ndarray, q4: np.ndarray) -> list[tuple[str, str, Draw, float, bool]]:
    """(case, kind of truth, draw, margin, binary): the log-prob cases on both pools, accuracy."""
    lp, acc = 0.25, 0.05
    out = []
    for pool_name, pool in (("q4_0", q4), ("q8_0", q8)):
        out += [
            (f"answer_logprob, {pool_name}-shaped", "at the margin", logprob_draw(pool, 0.3, -lp), lp, False),
            (f"answer_logprob, {pool_name}-shaped", "no difference", logprob_draw(pool, 0.3, 0.0), lp, False),
            (
                f"answer_logprob, {pool_name}-shaped",
                "clearly worse",
                logprob_draw(pool, 0.3, -3 * lp),
                lp,
                False,
            ),
        ]
    out += [
        ("accuracy", "at the margin", accuracy_draw(-acc), acc, True),
        ("accuracy", "no difference", accuracy_draw(0.0), acc, True),
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--out", default="results/bench/sequential_calibration.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    rows = []
    for case, truth, draw, margin, binary in scenarios(real_differences("q8_0"), real_differences("q4_0")):
        for per_doc in PER_DOCUMENT:
            sims = args.sims // 2 if binary else args.sims
            found = rates(draw, per_doc, margin, binary=binary, sims=sims, rng=rng)
            rows.append({"case": case, "truth": truth, "items_per_document": per_doc, "looks": LOOKS,
                         "margin": margin, "sims": sims, "rates": found})  # fmt: skip
            shown = "; ".join(
                f"{p}: eq {r['equivalent']:.3f} worse {r['worse']:.3f} docs {r['documents']:.2f}"
                for p, r in found.items()
            )
            print(f"{case:26s} {truth:13s} n/doc {per_doc:2d}: {shown}", flush=True)
    report = {
        "sims": args.sims,
        "alpha_per_side": 0.025,
        "looks": LOOKS,
        "design": Design(looks=LOOKS).to_json(),
        "source": EXAMPLE.name,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
