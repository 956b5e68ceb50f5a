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
- the slope's interval for KL is a studentized (bootstrap-t) one over blocks of GROWTH_BLOCK
  positions: KL is right-skewed, and a percentile interval's lower end runs high.

Whether a configuration's loss *grows* is called from these by kvprobe.stats.shape (Holm over its
metrics, and a materiality floor); tests/stats/test_growth.py and test_shape.py plant flat and
growing losses.

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
# The slope's bootstrap resamples blocks of at least this many consecutive positions: KL is
# right-skewed, and the means of shorter blocks leave the percentile interval too narrow (a flat
# loss called growing in 6.7% of simulated runs with blocks of 16, 2.7% with 64: test_shape.py).
GROWTH_BLOCK = 64


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
    p_flat: float | None = None  # one-sided bootstrap p of "no growth": share of slopes <= 0

    @property
    def grows(self) -> bool:
        """Its whole interval lies above zero (the configuration's call adds Holm and a
        materiality floor: kvprobe.stats.shape.call_growth)."""
        return self.growth_ci is not None and self.growth_ci[0] > 0


def doubling_slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of `y` on `x` (x: log2 of the length), per row of a batch
    (the last axis holds the observations): the change per doubling."""
    total = w.sum(axis=-1, keepdims=True)
    xm = (w * x).sum(axis=-1, keepdims=True) / total
    ym = (w * y).sum(axis=-1, keepdims=True) / total
    slope: np.ndarray = (w * (x - xm) * (y - ym)).sum(axis=-1) / (w * (x - xm) ** 2).sum(axis=-1)
    return slope


def slope_and_se(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """doubling_slope with its heteroscedasticity-consistent (sandwich) standard error, per row."""
    total = w.sum(axis=-1, keepdims=True)
    dx = x - (w * x).sum(axis=-1, keepdims=True) / total
    dy = y - (w * y).sum(axis=-1, keepdims=True) / total
    sxx = (w * dx**2).sum(axis=-1)
    slope = (w * dx * dy).sum(axis=-1) / sxx
    resid = dy - slope[..., None] * dx
    se = np.sqrt((w**2 * dx**2 * resid**2).sum(axis=-1)) / sxx
    return slope, se


def studentized(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, pick: np.ndarray
) -> tuple[float, tuple[float, float], float]:
    """The slope, its bootstrap-t 95% interval and one-sided p of "no growth" over the resamples
    `pick`: a right-skewed loss (KL) leaves the percentile interval's lower end too high (a flat
    loss called growing in 4.5% of simulated runs, nominal 2.5%); studentizing corrects for it."""
    slope, se = slope_and_se(x, y, w)
    b_slope, b_se = slope_and_se(x[pick], y[pick], w[pick])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (b_slope - slope) / b_se
    t = t[np.isfinite(t)]
    if not (se > 0 and len(t)):  # a loss that does not vary (KL of a file with itself): no growth
        return float(slope), (float(slope), float(slope)), 1.0
    alpha = (1 - LEVEL) / 2
    lo_t, hi_t = np.quantile(t, [alpha, 1 - alpha])
    observed = float(slope / se) if se > 0 else 0.0
    p = max(float(np.mean(t >= observed)), 1 / max(len(t), 1))
    return float(slope), (float(slope - hi_t * se), float(slope - lo_t * se)), p


def _p_flat(samples: np.ndarray) -> float:
    """The share of bootstrap slopes at or below zero (at least one resample's worth)."""
    finite = samples[np.isfinite(samples)]
    return max(float(np.mean(finite <= 0)), 1 / max(len(finite), 1))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(samples[np.isfinite(samples)], [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Block:
    """Consecutive positions' losses of one document: positions start, start + stride, ..."""

    start: int
    values: np.ndarray
    stride: int = 1  # sampled positions (an engine without full logits): every stride-th

    @property
    def last(self) -> int:
        return self.start + self.stride * (len(self.values) - 1)

    @property
    def centre(self) -> float:
        return self.start + self.stride * (len(self.values) - 1) / 2


def merged(blocks: Sequence[Block], size: int) -> list[Block]:
    """Consecutive blocks (each following the one before it) joined until each holds `size`
    positions or more; the last of a run of blocks may hold fewer."""
    out: list[Block] = []
    for b in blocks:
        last = out[-1] if out else None
        if last is not None and len(last.values) < size and last.last + last.stride == b.start:
            out[-1] = Block(last.start, np.concatenate([last.values, b.values]), last.stride)
        else:
            out.append(b)
    return out


def position_trend(
    blocks: Sequence[Block], *, level_below: int, seed: int, n_boot: int = N_BOOT
) -> Trend | None:
    """Level and growth of a per-position loss (KL) from its blocks (every document's, pooled).
    The level is the mean over positions below `level_below`; the growth the slope of each
    block's mean against log2 of its centre, from position GROWTH_FROM on, each position
    weighing the same. The bootstrap resamples whole blocks (a pairs bootstrap)."""
    level_blocks = [b for b in blocks if b.last < level_below and len(b.values)]
    fitted = merged([b for b in blocks if b.start >= GROWTH_FROM and len(b.values)], GROWTH_BLOCK)
    if not level_blocks:
        return None
    rng = np.random.default_rng(seed)
    sums = np.array([float(b.values.sum()) for b in level_blocks])
    counts = np.array([len(b.values) for b in level_blocks], dtype=float)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    level_boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    growth, growth_ci, p_flat = None, None, None
    lengths = {b.start + b.stride * (len(b.values) // 2) for b in fitted}
    reach = max((b.last for b in fitted), default=0)
    # Three doublings of positions at least (to 512): a slope over 64-255 alone is no growth.
    if len(lengths) >= MIN_LENGTHS and len(fitted) >= MIN_LENGTHS and reach >= GROWTH_FROM << 3:
        x = np.log2([b.centre for b in fitted])
        y = np.array([float(b.values.mean()) for b in fitted])
        w = np.array([len(b.values) for b in fitted], dtype=float)
        pick = rng.integers(0, len(fitted), size=(n_boot, len(fitted)))
        growth, growth_ci, p_flat = studentized(x, y, w, pick)
    last = max((b.last for b in fitted), default=level_below - 1)
    return Trend(
        level=float(sums.sum() / counts.sum()), level_ci=_interval(level_boot),
        level_scope=(min(b.start for b in level_blocks), level_below - 1),
        growth=growth, growth_ci=growth_ci, growth_scope=(GROWTH_FROM, last),
        n_units=len(level_blocks) + len(fitted), p_flat=p_flat,
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
    growth, growth_ci, p_flat = None, None, None
    if len(checkpoints) >= MIN_LENGTHS:
        x = np.broadcast_to(np.log2(np.asarray(checkpoints, dtype=float)), values.shape)
        growth = float(doubling_slope(x.ravel(), values.ravel(), present.ravel()))
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = doubling_slope(
                x[idx].reshape(n_boot, -1), values[idx].reshape(n_boot, -1), present[idx].reshape(n_boot, -1)
            )
        growth_ci, p_flat = _interval(boot), _p_flat(boot)
    level = float((values[:, 0] * present[:, 0]).sum() / present[:, 0].sum())
    return Trend(
        level=level, level_ci=_interval(level_boot), level_scope=(checkpoints[0], checkpoints[0]),
        growth=growth, growth_ci=growth_ci, growth_scope=(checkpoints[0], checkpoints[-1]),
        n_units=int(present.sum()), p_flat=p_flat,
    )  # fmt: skip
