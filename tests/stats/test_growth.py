"""Level and growth by simulation (kvprobe.stats.growth): losses planted flat are called flat (a
false "grows" in at most 5% of runs, at the verdict's margins), planted growth is found, and the
level and the slope estimate what was planted. Seeded, so every run of the suite is the same."""

from __future__ import annotations

import numpy as np
import pytest

from kvprobe.stats.growth import GROWTH_FROM, Block, Trend, doubling_slope, item_trend, merged, position_trend

RUNS = 200  # simulated runs per case: a 5% rate is then known within about +-3%
BLOCK = 32  # positions per block, as the default scenario's divergence.block
KL_MARGIN = 0.02  # the verdict's bound on mean KL (nats)
LOGPROB_MARGIN = 0.25  # the verdict's margin on the answer log-prob (nats)
Losses = dict[int, dict[object, float]]  # loss per checkpoint, per item


def kl_blocks(rng: np.random.Generator, mean_at: np.ndarray, longest: int = 8192) -> list[Block]:
    """Per-position KL of one document: a positive, right-skewed, autocorrelated series (AR(1)
    on the log scale, as neighbouring positions' divergences are) with the planted mean."""
    n = longest - 1
    noise = np.empty(n)
    noise[0] = rng.normal()
    shocks = rng.normal(size=n) * np.sqrt(1 - 0.6**2)
    for i in range(1, n):
        noise[i] = 0.6 * noise[i - 1] + shocks[i]
    values = mean_at * np.exp(0.8 * noise - 0.32)  # E[exp(0.8 z - 0.32)] = 1
    return [Block(1 + i, values[i : i + BLOCK]) for i in range(0, n, BLOCK)]


def planted(level: float, per_doubling: float, longest: int = 8192) -> np.ndarray:
    """A loss that is `level` up to position GROWTH_FROM and rises log-linearly after it."""
    positions = np.arange(1, longest)
    return level + per_doubling * np.maximum(0.0, np.log2(positions / GROWTH_FROM))


def test_the_slope_is_the_change_per_doubling() -> None:
    x = np.log2([256.0, 512.0, 1024.0, 2048.0])
    assert doubling_slope(x, np.array([1.0, 1.5, 2.0, 2.5]), np.ones(4)) == pytest.approx(0.5)
    assert doubling_slope(x[:2], np.array([3.0, 3.0]), np.ones(2)) == pytest.approx(0.0)


def kl_trends(level: float, per_doubling: float, runs: int = RUNS) -> list[Trend]:
    rng = np.random.default_rng(7)
    trends = []
    for run in range(runs):
        blocks = kl_blocks(rng, planted(level, per_doubling))
        trend = position_trend(blocks, level_below=256, seed=run, n_boot=600)
        assert trend is not None
        trends.append(trend)
    return trends


def test_a_flat_kl_at_the_margin_is_called_flat() -> None:
    trends = kl_trends(KL_MARGIN, 0.0)
    false_grows = sum(t.grows for t in trends) / len(trends)
    assert false_grows <= 0.05, f"{false_grows:.1%} of flat runs called growing"
    levels = np.array([t.level for t in trends])
    assert abs(levels.mean() - KL_MARGIN) < 0.1 * KL_MARGIN
    covered = np.mean([t.growth_ci is not None and t.growth_ci[0] <= 0 <= t.growth_ci[1] for t in trends])
    assert covered >= 0.9  # the interval holds the true slope (0) about 95% of the time
    assert trends[0].level_scope == (1, 255)


def test_a_kl_that_grows_is_found_and_its_slope_estimated() -> None:
    per_doubling = 0.1 * KL_MARGIN  # a tenth of the bound per doubling
    trends = kl_trends(KL_MARGIN / 2, per_doubling, runs=60)
    assert np.mean([t.grows for t in trends]) >= 0.9
    slopes = np.array([t.growth for t in trends], dtype=float)
    assert abs(np.median(slopes) - per_doubling) < 0.15 * per_doubling


def needle_losses(
    rng: np.random.Generator, level: float, per_doubling: float
) -> dict[int, dict[object, float]]:
    """One pass: 4 documents x 4 needles per 1,024-token segment up to 8,192; each needle is
    asked at every checkpoint past it, its loss a needle effect plus noise plus the planted
    trend (log-prob differences in nats: the reference's minus the test's)."""
    checkpoints = [256, 512, 1024, 2048, 4096, 8192]
    out: Losses = {c: {} for c in checkpoints}
    for doc in range(4):
        for needle in range(32):
            position = 64 + needle * 250
            effect = rng.normal(0, 0.6)
            for c in checkpoints:
                if position < c - 32:
                    out[c][(doc, needle)] = (
                        level + per_doubling * np.log2(c / 256) + effect + rng.normal(0, 0.5)
                    )
    return out


def test_a_flat_answer_loss_at_the_margin_is_called_flat() -> None:
    rng = np.random.default_rng(11)
    trends = [
        item_trend(needle_losses(rng, LOGPROB_MARGIN, 0.0), seed=run, n_boot=600) for run in range(RUNS)
    ]
    false_grows = sum(bool(t and t.grows) for t in trends) / len(trends)
    assert false_grows <= 0.05, f"{false_grows:.1%} of flat runs called growing"


def test_an_answer_loss_that_grows_is_found() -> None:
    rng = np.random.default_rng(12)
    trends = [item_trend(needle_losses(rng, 0.0, 0.2), seed=run, n_boot=600) for run in range(60)]
    assert np.mean([bool(t and t.grows) for t in trends]) >= 0.9
    assert np.median([t.growth for t in trends if t and t.growth is not None]) == pytest.approx(0.2, abs=0.05)


def test_too_few_lengths_give_a_level_but_no_growth() -> None:
    losses: Losses = {1024: {"a": 0.5, "b": 0.7}, 2048: {"a": 0.6, "b": 0.9}}
    trend = item_trend(losses, seed=0)
    assert trend is not None
    assert trend.growth is None
    assert not trend.grows
    assert trend.level == pytest.approx(0.6)
    assert trend.level_scope == (1024, 1024)


def test_sampled_positions_give_the_growth_of_every_position() -> None:
    """Blocks of every 4th position (an engine without full logits): placed at their positions
    and merged where one follows the other, so the level, the slope and their scopes are those
    every position gives."""
    positions = np.arange(1, 8192)
    loss = 0.01 + 0.002 * np.log2(positions)  # 0.002 nats per doubling, no noise
    every = [Block(int(positions[i]), loss[i : i + BLOCK]) for i in range(0, len(loss), BLOCK)]
    sampled = [Block(int(positions[i]), loss[i : i + BLOCK : 4], 4) for i in range(0, len(loss), BLOCK)]
    (joined,) = merged(sampled[2:4], 16)
    assert (joined.start, joined.stride, joined.last) == (65, 4, 125)
    np.testing.assert_array_equal(joined.values, loss[64:128:4])
    full = position_trend(every, level_below=1024, seed=0, n_boot=200)
    few = position_trend(sampled, level_below=1024, seed=0, n_boot=200)
    assert full is not None
    assert few is not None
    assert few.level_scope == full.level_scope == (1, 1023)
    assert few.growth_scope == (GROWTH_FROM, 8189)  # the last sampled position
    assert few.growth == pytest.approx(0.002, rel=0.02)
    assert few.growth == pytest.approx(full.growth, rel=0.02)  # merged to 64 values: wider blocks
    assert few.level == pytest.approx(full.level, rel=0.01)
