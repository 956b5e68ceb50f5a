"""The shape of a configuration's loss (kvprobe.stats.shape): level and growth for every metric
with positions or checkpoints, growth called for the configuration with Holm over its continuous
metrics, and the words. Simulations at the verdict's margins: planted flat losses are called flat
(false "grows" at most 5% of runs), planted growth is found; then the kinds and the 4K+ rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kvprobe.stats.growth import GROWTH_FROM
from kvprobe.stats.shape import (
    EQUIVALENT_ALL,
    FROM_START,
    GROWS,
    WORSE_BEYOND,
    TrendDoc,
    config_trends,
    long_context_finding,
    shape,
)

RUNS = 150  # simulated configurations per case: a 5% rate is known within about +-3.5%
BLOCK = 16  # the default scenario's divergence.block
CHECKPOINTS = [256, 512, 1024, 2048, 4096, 8192]  # the default scenario's plan at --ctx 8192
KL_MARGIN, LOGPROB_MARGIN = 0.02, 0.25


def kl_blocks(rng: np.random.Generator, level: float, per_doubling: float) -> list[tuple[int, np.ndarray]]:
    """One document's per-position KL (AR(1) on the log scale, right-skewed), cut into blocks at
    the checkpoints as the divergence probe cuts them."""
    n = CHECKPOINTS[-1] - 1
    noise = np.empty(n)
    noise[0] = rng.normal()
    shocks = rng.normal(size=n) * np.sqrt(1 - 0.6**2)
    for i in range(1, n):
        noise[i] = 0.6 * noise[i - 1] + shocks[i]
    positions = np.arange(1, n + 1)
    mean = level + per_doubling * np.maximum(0.0, np.log2(positions / GROWTH_FROM))
    values = mean * np.exp(0.8 * noise - 0.32)
    blocks = []
    for lo, hi in zip([1, *CHECKPOINTS[:-1]], CHECKPOINTS, strict=True):
        blocks += [(s, values[s - 1 : min(s + BLOCK, hi) - 1]) for s in range(lo, hi, BLOCK)]
    return blocks


def needle_items(rng: np.random.Generator, level: float, per_doubling: float) -> list[dict[str, Any]]:
    """Needles as the one-pass plan asks them: 4 documents x 4 new needles per segment, every
    needle asked again at every later checkpoint; the test's answer log-prob is the reference's
    minus the planted loss (per item and checkpoint noise, and a per-needle effect)."""
    items = []
    for doc in range(4):
        for j, ctx in enumerate(CHECKPOINTS):
            for k in range(4 * (j + 1)):
                key = f"needle {k}"
                base = -1.5 + rng.normal() * 0.5
                effect = 0.3 * np.sin(7.0 * k + doc)  # the same needle keeps its difficulty
                loss = level + per_doubling * np.log2(ctx / CHECKPOINTS[0]) + effect + rng.normal() * 0.6
                row = {"probe": "needle", "doc": doc, "ctx": ctx, "key": key}
                items.append(row | {"config": "f16", "logprob": base, "correct": True})
                items.append(row | {"config": "q4_0", "logprob": base - loss, "correct": loss < 1.0})
    return items


def trends(run: int, kl: tuple[float, float], needles: tuple[float, float]) -> list[TrendDoc]:
    rng = np.random.default_rng(1000 + run)
    return config_trends(
        needle_items(rng, *needles), "f16", "q4_0", blocks=kl_blocks(rng, *kl), loss_metric="kld_mean",
        checkpoints=CHECKPOINTS, seed=run,
    )  # fmt: skip


@pytest.fixture(scope="module")
def flat_at_the_margin() -> list[list[TrendDoc]]:
    return [trends(run, (KL_MARGIN, 0.0), (LOGPROB_MARGIN, 0.0)) for run in range(RUNS)]


def test_every_metric_gets_a_level_and_a_growth(flat_at_the_margin: list[list[TrendDoc]]) -> None:
    found = {t["metric"]: t for t in flat_at_the_margin[0]}
    assert set(found) == {"kld_mean", "answer_logprob", "accuracy"}
    assert found["kld_mean"]["level_scope"] == "positions 1–255"
    assert found["answer_logprob"]["level_scope"] == "at 256 tokens"
    assert found["answer_logprob"]["growth_scope"] == "256–8,192 tokens"
    assert found["kld_mean"]["family"]
    assert found["answer_logprob"]["family"]
    assert not found["accuracy"]["family"]  # pass/fail: counted by its finer metric


def test_flat_losses_at_the_margin_are_called_flat(flat_at_the_margin: list[list[TrendDoc]]) -> None:
    calls = [any(t["grows"] for t in run) for run in flat_at_the_margin]
    assert sum(calls) / RUNS <= 0.05, f"{sum(calls)} of {RUNS} flat configurations called growing"
    levels = np.array(
        [next(t["level"] for t in run if t["metric"] == "kld_mean") for run in flat_at_the_margin]
    )
    assert abs(levels.mean() - KL_MARGIN) < 0.1 * KL_MARGIN


@pytest.mark.parametrize(
    ("kl", "needles", "grower"),
    [((KL_MARGIN, 0.2 * KL_MARGIN), (LOGPROB_MARGIN, 0.0), "kld_mean"),
     ((KL_MARGIN, 0.0), (LOGPROB_MARGIN, 0.15), "answer_logprob")],
)  # fmt: skip
def test_planted_growth_is_found(kl: tuple[float, float], needles: tuple[float, float], grower: str) -> None:
    runs = [trends(run, kl, needles) for run in range(40)]
    found = [next(t for t in run if t["metric"] == grower) for run in runs]
    assert sum(t["grows"] for t in found) / len(runs) >= 0.8
    slope = np.median([t["growth"] for t in found])
    planted = kl[1] if grower == "kld_mean" else needles[1]
    assert slope == pytest.approx(planted, rel=0.3)


def verdict(status: str, rows: list[tuple[int, str]], effective: int | None = None) -> dict[str, Any]:
    first_worse = next((c for c, s in rows if s == "worse"), None)
    return {
        "config": "q4_0",
        "equivalence": {
            "status": status, "effective_context": effective, "first_worse": first_worse,
            "checkpoints": [
                {"ctx": c, "status": s, "decided_by": [], "significant_loss": False, "tests": []}
                for c, s in rows
            ],
        },
    }  # fmt: skip


def trend(grows: bool, growth: float = 0.0, half_width: float = 0.001) -> TrendDoc:
    """KL's trend: `material` as the default scenario's (half the 0.02 bound over 7 doublings)."""
    return {
        "metric": "kld_mean", "words": "mean KL", "unit": " nats", "level": 0.1, "level_ci": [0.09, 0.11],
        "level_scope": "positions 1–255", "growth": growth,
        "growth_ci": [growth - half_width, growth + half_width], "growth_scope": "positions 64–8,191",
        "p_flat": 0.001 if grows else 0.3, "family": True, "grows": grows, "n": 100, "material": 0.0014,
    }  # fmt: skip


def test_a_loss_there_from_the_first_tokens_that_does_not_grow() -> None:
    v = verdict("worse", [(256, "worse"), (512, "worse"), (8192, "worse")])
    found = shape(v, [trend(False)], "f16")
    assert found["kind"] == FROM_START
    assert found["growth"] == "flat"  # the whole interval below the material growth
    assert found["grows"] is False
    assert found["onset"] is None
    assert found["short"] == "worse from the start, not growing"
    assert "loses quality from the first tokens" in found["sentence"]
    assert (
        "the loss does not grow with context (per doubling: mean KL +0.0000 [−0.0010, +0.0010] nats)"
        in (found["sentence"])
    )
    assert long_context_finding(found, v, 4096) == (
        "does not hold", "the loss is present from the start and does not grow with context",
    )  # fmt: skip


def test_no_evidence_of_growth_is_not_evidence_of_none() -> None:
    v = verdict("worse", [(256, "worse"), (512, "worse"), (8192, "worse")])
    found = shape(v, [trend(False, 0.001, 0.003)], "f16")  # [−0.002, +0.004]: material growth not ruled out
    assert found["growth"] == "unclear"
    assert found["short"] == "worse from the start; growth unclear"
    assert "whether the loss grows with context is unclear" in found["sentence"]
    assert "does not grow" not in found["sentence"]


def test_a_loss_that_grows_after_an_equivalent_start() -> None:
    v = verdict("worse", [(256, "equivalent"), (512, "equivalent"), (4096, "worse")], effective=512)
    found = shape(v, [trend(True, 0.01, 0.002)], "f16")
    assert found["kind"] == GROWS
    assert found["onset"] == 4096
    assert found["short"] == "equivalent up to 512, then worse and growing"
    assert (
        "the loss grows with context: mean KL +0.0100 [+0.0080, +0.0120] nats per doubling, from about 4,096"
        in (found["sentence"])
    )
    assert long_context_finding(found, v, 4096)[0] == "holds"


def test_equivalent_up_to_a_length_and_worse_beyond() -> None:
    v = verdict("worse", [(256, "equivalent"), (512, "equivalent"), (1024, "worse")], effective=512)
    found = shape(v, [trend(False)], "f16")
    assert found["kind"] == WORSE_BEYOND
    assert found["short"] == "equivalent up to 512, worse beyond"
    assert long_context_finding(found, v, 4096) == (
        "holds", "equivalent up to 512, worse from 1,024 (earlier than 4K)",
    )  # fmt: skip


def test_equivalent_at_every_length() -> None:
    v = verdict("equivalent", [(256, "equivalent"), (8192, "equivalent")], effective=8192)
    found = shape(v, [trend(False)], "f16")
    assert found["kind"] == EQUIVALENT_ALL
    assert found["short"] == "equivalent at every length measured"
    assert long_context_finding(found, v, 4096) == (
        "does not hold",
        "equivalent at every length measured, up to 8,192",
    )
    short = verdict("equivalent", [(256, "equivalent"), (1024, "equivalent")], effective=1024)
    assert long_context_finding(shape(short, [trend(False)], "f16"), short, 4096)[0] == "not measured"


def test_growth_not_measured_with_two_lengths() -> None:
    v = verdict("worse", [(256, "worse"), (512, "worse")])
    flat = trend(False) | {"growth": None, "growth_ci": None, "p_flat": None}
    found = shape(v, [flat], "f16")
    assert found["grows"] is None
    assert found["short"] == "worse from the start; growth not measured"
    assert "not measured (fewer than three lengths)" in found["sentence"]


def test_a_loss_that_never_varies_has_no_growth() -> None:
    """KL of a file against itself is 0 at every position: no interval to bootstrap, no crash."""
    blocks = [(s, np.zeros(BLOCK)) for s in range(1, 8192 - BLOCK, BLOCK)]
    found = config_trends([], "f16", "q4_0", blocks=blocks, loss_metric="kld_mean", checkpoints=CHECKPOINTS)
    assert found[0]["growth"] == 0.0
    assert found[0]["grows"] is False
