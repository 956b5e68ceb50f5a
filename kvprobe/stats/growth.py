"""Level and growth: is a configuration's loss against the reference there from the first tokens,
or does it grow with context? The folklore question ("a quantized KV cache is fine short, but
degrades at 4K+") is about the second; a verdict that only says "worse from the first
checkpoint" cannot tell the two apart.

For one metric of one test configuration, from the same paired data the verdict uses:

- the *level*: the mean loss at the shortest lengths measured (KL at the positions below the
  first checkpoint; the paired item difference at the shortest checkpoint), with a 95% interval;
- the *growth*: the change of the loss per doubling of context, the least-squares slope of the
  loss against log2 of the length (each block of consecutive positions, or each item at each
  checkpoint, weighing the same), with a 95% bootstrap interval that resamples the data's own
  units: blocks of positions for KL (nearby positions are correlated, blocks much less), whole
  items for questions asked at several checkpoints (an item keeps its losses together);
- growth is *shown* only when that interval lies wholly above zero (a one-sided error of at most
  2.5% when the loss is flat: tests/stats/test_growth.py plants flat and growing losses).

The loss is signed so that positive means worse than the reference (KL as it is; the reference's
answer log-prob or accuracy minus the test's). Pure functions of numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # the intervals of the level and the growth
N_BOOT = 2000  # bootstrap resamples: the interval's ends move by well under 1% of its width past this
MIN_LENGTHS = 3  # a slope needs three lengths at least; fewer: the growth is not measured
GROWTH_FROM = 64  # positions before this are left out of KL's slope: the text's first tokens are special


@dataclass(frozen=True)
class Trend:
    """Level and growth of one metric's loss (positive: worse than the reference)."""

    level: float  # mean loss at the shortest lengths measured
    level_ci: tuple[float, float]
    level_scope: tuple[int, int]  # the lengths the level covers: positions [lo, hi], or a checkpoint twice
    growth: float | None  # change of the loss per doubling of context (None: too few lengths)
    growth_ci: tuple[float, float] | None
    growth_scope: tuple[int, int]  # the lengths the growth was fitted over
    n_units: int  # blocks of positions, or paired items, behind the numbers

    @property
    def grows(self) -> bool:
        """Growth shown: its whole interval lies above zero."""
        return self.growth_ci is not None and self.growth_ci[0] > 0


def doubling_slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of `y` on `x` (x: log2 of the length), per row of a batch
    (the last axis holds the observations): the change per doubling."""
    total = w.sum(axis=-1, keepdims=True)
    xm = (w * x).sum(axis=-1, keepdims=True) / total
    ym = (w * y).sum(axis=-1, keepdims=True) / total
    slope: np.ndarray = (w * (x - xm) * (y - ym)).sum(axis=-1) / (w * (x - xm) ** 2).sum(axis=-1)
    return slope


def _interval(samples: np.ndarray) -> tuple[float, float]:
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(samples[np.isfinite(samples)], [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Block:
    """Consecutive positions' losses of one document: positions start, start + 1, ..."""

    start: int
    values: np.ndarray


def position_trend(
    blocks: Sequence[Block], *, level_below: int, seed: int, n_boot: int = N_BOOT
) -> Trend | None:
    """Level and growth of a per-position loss (KL) from its blocks (every document's, pooled).
    The level is the mean over positions below `level_below`; the growth the slope of each
    block's mean against log2 of its centre, from position GROWTH_FROM on, each position
    weighing the same. The bootstrap resamples whole blocks (a pairs bootstrap)."""
    level_blocks = [b for b in blocks if b.start + len(b.values) <= level_below and len(b.values)]
    fitted = [b for b in blocks if b.start >= GROWTH_FROM and len(b.values)]
    if not level_blocks:
        return None
    rng = np.random.default_rng(seed)
    sums = np.array([float(b.values.sum()) for b in level_blocks])
    counts = np.array([len(b.values) for b in level_blocks], dtype=float)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    level_boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    growth, growth_ci = None, None
    lengths = {b.start + len(b.values) // 2 for b in fitted}
    if len(lengths) >= MIN_LENGTHS and len(fitted) >= MIN_LENGTHS:
        x = np.log2([b.start + (len(b.values) - 1) / 2 for b in fitted])
        y = np.array([float(b.values.mean()) for b in fitted])
        w = np.array([len(b.values) for b in fitted], dtype=float)
        growth = float(doubling_slope(x, y, w))
        pick = rng.integers(0, len(fitted), size=(n_boot, len(fitted)))
        growth_ci = _interval(doubling_slope(x[pick], y[pick], w[pick]))
    last = max((b.start + len(b.values) - 1 for b in fitted), default=level_below - 1)
    return Trend(
        level=float(sums.sum() / counts.sum()), level_ci=_interval(level_boot),
        level_scope=(min(b.start for b in level_blocks), level_below - 1),
        growth=growth, growth_ci=growth_ci, growth_scope=(GROWTH_FROM, last),
        n_units=len(level_blocks) + len(fitted),
    )  # fmt: skip


def item_trend(
    losses: Mapping[int, Mapping[object, float]], *, seed: int, n_boot: int = N_BOOT
) -> Trend | None:
    """Level and growth of a paired per-item loss measured at checkpoints: `losses[ctx][item]`
    is the loss of one item (a needle, a question) asked at checkpoint `ctx`; the same item may
    be asked at several checkpoints (one pass). The level is the mean at the shortest
    checkpoint; the growth the slope of every (item, checkpoint) loss against log2 ctx, each
    weighing the same. The bootstrap resamples whole items, so an item keeps its losses at
    every checkpoint together."""
    checkpoints = sorted(c for c, row in losses.items() if row)
    if not checkpoints:
        return None
    items = sorted({k for c in checkpoints for k in losses[c]}, key=repr)
    index = {k: i for i, k in enumerate(items)}
    values = np.zeros((len(items), len(checkpoints)))
    present = np.zeros((len(items), len(checkpoints)))
    for j, c in enumerate(checkpoints):
        for k, v in losses[c].items():
            values[index[k], j], present[index[k], j] = v, 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(n_boot, len(items)))
    with np.errstate(invalid="ignore", divide="ignore"):
        first = present[:, 0]
        level_boot = (values[idx, 0] * first[idx]).sum(axis=1) / first[idx].sum(axis=1)
    growth, growth_ci = None, None
    if len(checkpoints) >= MIN_LENGTHS:
        x = np.broadcast_to(np.log2(np.asarray(checkpoints, dtype=float)), values.shape)
        growth = float(doubling_slope(x.ravel(), values.ravel(), present.ravel()))
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = doubling_slope(
                x[idx].reshape(n_boot, -1), values[idx].reshape(n_boot, -1), present[idx].reshape(n_boot, -1)
            )
        growth_ci = _interval(boot)
    level = float((values[:, 0] * present[:, 0]).sum() / present[:, 0].sum())
    return Trend(
        level=level, level_ci=_interval(level_boot), level_scope=(checkpoints[0], checkpoints[0]),
        growth=growth, growth_ci=growth_ci, growth_scope=(checkpoints[0], checkpoints[-1]),
        n_units=int(present.sum()),
    )  # fmt: skip
