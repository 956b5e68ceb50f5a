"""The divergence probe's numerics: how far a configuration's next-token distribution moves from the
reference's, position by position.

Pure functions of logits and token ids (numpy), and of the per-position arrays they
produce. For every position i of a document, with p the reference's distribution and q
the test configuration's after the same prefix:

- KL(p || q) = sum_v p_v (log p_v - log q_v), in nats, as llama-perplexity --kl-divergence;
- top-1 agreement: argmax p == argmax q;
- NLL of the true next token under each.

The decay curve aggregates these in log-spaced position bins. Tokens near each other are
correlated, so intervals and tests use blocks of consecutive positions as their units.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from kvprobe.api import ALPHA, Metric
from kvprobe.stats.inference import holm, mann_whitney, significant_tail

ROWS_PER_BLOCK = 16  # logits rows reduced at once: 16 x 262,144 floats = 16 MiB per temporary


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (the plain definition; tests check the fast path by it)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def kl_divergence(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(test)) per row, in nats, by the definition in float64."""
    lp, lq = log_softmax(ref_logits), log_softmax(test_logits)
    result: np.ndarray = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return result


@dataclass(frozen=True)
class PositionStats:
    """Per-position numbers for one test configuration against the reference."""

    kld: np.ndarray  # float64, nats
    top1_agree: np.ndarray  # bool
    nll: np.ndarray  # float64, NLL of the true next token under the test configuration


def _log_sum_exp(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: log-sum-exp (float64) and softmax (float32) of float32 logits."""
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    total = e.sum(axis=1, dtype=np.float64)
    lse = m[:, 0].astype(np.float64) + np.log(total)
    e /= total[:, None].astype(np.float32)
    return lse, e


def position_stats(
    ref_logits: np.ndarray, tests: dict[str, np.ndarray], next_tokens: np.ndarray
) -> tuple[np.ndarray, dict[str, PositionStats]]:
    """NLL of the true next token under the reference, and per test configuration KL, top-1
    agreement and NLL, a few rows at a time so that temporaries stay small.

    KL(p || q) = sum_v p_v (x_v - y_v) - (lse(x) - lse(y)) for logits x (reference) and y:
    one float32 pass per configuration with float64 sums. Identical logits give exactly 0.
    """
    n = len(next_tokens)
    if any(rows.shape[0] < n for rows in (ref_logits, *tests.values())):
        raise ValueError("fewer logits rows than next tokens")
    nll_ref = np.empty(n)
    out = {c: PositionStats(np.empty(n), np.empty(n, dtype=bool), np.empty(n)) for c in tests}
    for start in range(0, n, ROWS_PER_BLOCK):
        stop = min(n, start + ROWS_PER_BLOCK)
        rows, tok = np.arange(stop - start), next_tokens[start:stop]
        x = np.asarray(ref_logits[start:stop], dtype=np.float32)
        lse_x, p = _log_sum_exp(x)
        top_x = x.argmax(axis=1)
        nll_ref[start:stop] = lse_x - x[rows, tok]
        for config, test_logits in tests.items():
            y = np.asarray(test_logits[start:stop], dtype=np.float32)
            lse_y, _ = _log_sum_exp(y)
            kld = (p * (x - y)).sum(axis=1, dtype=np.float64) - (lse_x - lse_y)
            # Rounding can leave a sum of tiny terms at -1e-12; KL is never negative.
            out[config].kld[start:stop] = np.maximum(kld, 0.0)
            out[config].top1_agree[start:stop] = top_x == y.argmax(axis=1)
            out[config].nll[start:stop] = lse_y - y[rows, tok]
    return nll_ref, out


# --- accumulation during a run ------------------------------------------------------------


@dataclass
class DocumentArrays:
    """Per-position arrays of one configuration on one document.

    Index j is the prediction of token j + 1 (so positions start at 1); the reference
    configuration has only `nll`."""

    config: str
    doc: int
    nll: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    top1_agree: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"nll": np.concatenate(self.nll) if self.nll else np.empty(0)}
        if self.kld:
            out["kld"] = np.concatenate(self.kld)
            out["top1_agree"] = np.concatenate(self.top1_agree)
        return out


class DivergenceRecorder:
    """Receives the logits of every chunk from every configuration in lockstep and keeps
    only per-position numbers: memory grows with positions, never with the vocabulary."""

    def __init__(self, reference: str):
        self.reference = reference
        self.records: dict[tuple[str, int], DocumentArrays] = {}
        # A run in configuration groups feeds the reference again in each group: its positions
        # are kept once, and the largest NLL gap of a repeat against the first is recorded (0
        # on CPU; anything else means the groups' KL had different references).
        self.repeat_nll_gap: float | None = None

    def _record(self, config: str, doc: int) -> DocumentArrays:
        return self.records.setdefault((config, doc), DocumentArrays(config, doc))

    def add_chunk(
        self, doc: int, doc_tokens: Sequence[int], pos0: int, logits: dict[str, np.ndarray]
    ) -> None:
        """`logits[config]` holds rows for positions pos0, pos0 + 1, ...; a row is scored
        only when the document has the token it predicts."""
        n_rows = next(iter(logits.values())).shape[0]
        n = max(0, min(n_rows, len(doc_tokens) - 1 - pos0))
        if n == 0:
            return
        nxt = np.asarray(doc_tokens[pos0 + 1 : pos0 + 1 + n], dtype=np.int64)
        tests = {c: rows for c, rows in logits.items() if c != self.reference}
        nll_ref, per_config = position_stats(logits[self.reference], tests, nxt)
        ref = self._record(self.reference, doc)
        covered = sum(len(a) for a in ref.nll)
        if covered >= pos0 + n:
            first = np.concatenate(ref.nll)[pos0 : pos0 + n]
            gap = float(np.max(np.abs(first - nll_ref)))
            self.repeat_nll_gap = max(gap, self.repeat_nll_gap or 0.0)
        else:
            ref.nll.append(nll_ref)
        for config, st in per_config.items():
            rec = self._record(config, doc)
            rec.kld.append(st.kld)
            rec.top1_agree.append(st.top1_agree)
            rec.nll.append(st.nll)


# --- the decay curve -------------------------------------------------------------------------

FIRST_BIN_EDGE = 64  # log-spaced edges 64, 128, 256, ... below the first checkpoint


def bin_edges(checkpoints: Sequence[int]) -> list[int]:
    """Edges of the position bins [e_i, e_i+1): 1, then powers of two from 64 below the first
    checkpoint, then every checkpoint, so each checkpoint is the upper edge of a bin."""
    edges = [1]
    e = FIRST_BIN_EDGE
    while e < checkpoints[0]:
        edges.append(e)
        e *= 2
    edges.extend(c for c in checkpoints if c > edges[-1])
    return edges


PERCENTILES = {"kld_p99": 0.99, "kld_p999": 0.999}  # the tail, as llama-perplexity prints it


def block_bootstrap_quantile(
    blocks: Sequence[np.ndarray], q: float, seed: int, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of a quantile over positions, resampling whole blocks."""
    if len(blocks) < 2:
        value = float(np.quantile(np.concatenate(blocks), q)) if blocks else float("nan")
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(blocks), size=(n_boot, len(blocks)))
    stats = np.array([np.quantile(np.concatenate([blocks[i] for i in row]), q) for row in idx])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def block_bootstrap_mean(
    blocks: Sequence[np.ndarray], seed: int, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean over positions, resampling whole blocks.

    `blocks` are arrays of per-position values (one per block)."""
    sums = np.array([b.sum() for b in blocks])
    counts = np.array([len(b) for b in blocks], dtype=float)
    if len(sums) < 2:
        mean = float(sums.sum() / counts.sum()) if len(sums) else float("nan")
        return mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class BinTest:
    lo: int
    hi: int
    p_raw: float
    p_holm: float


def onset_tests(reference_blocks: np.ndarray, bins: Sequence[tuple[int, int, np.ndarray]]) -> list[BinTest]:
    """One-sided Mann-Whitney U of each later bin's block means against the shortest bins'
    (H1: KL is larger), Holm-corrected across bins."""
    raw = [mann_whitney(list(blocks), list(reference_blocks), alternative="greater") for _, _, blocks in bins]
    adjusted = holm(raw)
    return [BinTest(lo, hi, r, a) for (lo, hi, _), r, a in zip(bins, raw, adjusted, strict=True)]


def onset_bin(tests: Sequence[BinTest], alpha: float = ALPHA) -> BinTest | None:
    """The shortest bin from which every longer bin is significantly above the shortest bins."""
    start = significant_tail([t.p_holm for t in tests], alpha)
    return None if start is None else tests[start]


def split_blocks(values: np.ndarray, positions: np.ndarray, lo: int, hi: int, block: int) -> list[np.ndarray]:
    """Consecutive blocks of `block` positions within [lo, hi) (the last may be shorter)."""
    mask = (positions >= lo) & (positions < hi)
    v, ids = values[mask], (positions[mask] - lo) // block
    cuts = np.flatnonzero(np.diff(ids)) + 1
    return [b for b in np.split(v, cuts) if len(b)]


@dataclass(frozen=True)
class CurveSettings:
    checkpoints: list[int]
    block: int  # positions per bootstrap / test unit
    onset_reference: int  # bins ending at or below this position are "the shortest bins"
    seed: int
    alpha: float = ALPHA


@dataclass(frozen=True)
class Span:
    lo: int
    hi: int
    scope: str  # "bin" | "pooled"


def _stack(per_doc: Sequence[dict[str, np.ndarray]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of one array over all documents, with their positions (index + 1)."""
    values = [d[name].astype(np.float64) for d in per_doc]
    positions = [np.arange(1, len(v) + 1) for v in values]
    return np.concatenate(values), np.concatenate(positions)


def _metric_row(
    config: str, metric: str, series: tuple[np.ndarray, np.ndarray], span: Span, cs: CurveSettings
) -> dict[str, Any] | None:
    values, positions = series
    blocks = split_blocks(values, positions, span.lo, span.hi, cs.block)
    n = int(sum(len(b) for b in blocks))
    if n == 0:
        return None
    ci: list[float] | None
    if metric in PERCENTILES:
        # Linear interpolation between order statistics, as llama-perplexity's percentiles.
        value, ci = float(np.quantile(np.concatenate(blocks), PERCENTILES[metric])), None
    else:
        value = float(sum(b.sum() for b in blocks) / n)
        ci = list(block_bootstrap_mean(blocks, seed=cs.seed))
        if metric == "ppl":
            value, ci = float(np.exp(value)), [float(np.exp(c)) for c in ci]
    return {
        "probe": "divergence",
        "metric": metric,
        "config": config,
        "ctx": span.hi if span.scope == "bin" else cs.checkpoints[-1],
        "bin": [span.lo, span.hi],
        "scope": span.scope,
        "value": value,
        "ci": ci,
        "n": n,
    }


def divergence_curve(
    arrays: dict[str, list[dict[str, np.ndarray]]],
    reference: str,
    cs: CurveSettings,
    metrics: Sequence[Metric],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """Long-format rows per configuration: every metric in every position bin and pooled over
    the document; and per test configuration the onset bin (or None).

    `arrays[config]` is one dict of per-position arrays per document (see DocumentArrays);
    `metrics` are the divergence probe's, each with the per-position array it comes from."""
    source = {m.name: m.source for m in metrics if m.source is not None}
    edges = bin_edges(cs.checkpoints)
    spans = [Span(lo, hi, "bin") for lo, hi in itertools.pairwise(edges)]
    rows: list[dict[str, Any]] = []
    onsets: dict[str, dict[str, Any] | None] = {}
    for config, per_doc in arrays.items():
        for metric in ("ppl",) if config == reference else tuple(source):
            series = _stack(per_doc, source[metric])
            # positions every document holds (one --until-decided stopped early holds fewer)
            last = min((len(d[source[metric]]) for d in per_doc), default=0) + 1
            # Bins the data covers to their end: a configuration --until-decided stopped at a
            # checkpoint holds one prediction past it, which is no bin's measurement.
            covered = [sp for sp in spans if sp.hi <= last]
            pooled = Span(1, covered[-1].hi if covered and covered[-1].hi < last else last, "pooled")
            for span in [*covered, pooled]:
                row = _metric_row(config, metric, series, span, cs)
                if row:
                    rows.append(row)
        if config == reference:
            continue
        kld, positions = _stack(per_doc, "kld")
        ref_blocks = np.array(
            [b.mean() for b in split_blocks(kld, positions, 1, cs.onset_reference, cs.block)]
        )
        later = [
            (lo, hi, np.array([b.mean() for b in split_blocks(kld, positions, lo, hi, cs.block)]))
            for lo, hi in ((sp.lo, sp.hi) for sp in spans)
            if lo >= cs.onset_reference
        ]
        tests = onset_tests(ref_blocks, later)
        by_bin = {(t.lo, t.hi): t for t in tests}
        for row in rows:
            t = by_bin.get((row["bin"][0], row["bin"][1]))
            if row["config"] == config and row["metric"] == "kld_mean" and row["scope"] == "bin" and t:
                row["p_vs_shortest"] = t.p_holm
        found = onset_bin(tests, cs.alpha)
        onsets[config] = (
            {"bin": [found.lo, found.hi], "ctx": found.hi, "p_holm": found.p_holm} if found else None
        )
    return rows, onsets


MIN_BLOCKS = 10  # fewer blocks in a span: no interval (a bootstrap of 1 or 2 blocks is no evidence)


def order_statistic_interval(
    values: np.ndarray, q: float, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Distribution-free interval for the q-quantile from order statistics (binomial counts):
    the lower end exists once a few values lie below it, the upper end only once n is large
    enough (n >= 3,687 for the 99.9th percentile at 97.5%); a missing end is None. A bootstrap
    cannot bound a tail quantile: its upper end never exceeds the sample maximum."""
    n = len(values)
    if n == 0:
        return None, None
    ordered = np.sort(values)
    alpha = (1 - level) / 2
    k_lo = int(stats.binom.ppf(alpha, n, q))  # P(X < k_lo) <= alpha: x_(k_lo) is below the quantile
    k_hi = int(stats.binom.ppf(1 - alpha, n, q)) + 1  # 1-based order statistic above it
    lo = float(ordered[k_lo - 1]) if k_lo >= 1 else None
    hi = float(ordered[k_hi - 1]) if k_hi <= n else None
    return lo, hi


def checkpoint_spans(
    arrays: dict[str, list[dict[str, np.ndarray]]],
    reference: str,
    checkpoints: Sequence[int],
    metrics: Sequence[Metric],
    *,
    block: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, list[dict[str, Any]]]:
    """Per test configuration and checkpoint, each metric that has an equivalence bound, with
    its interval at `level`: the equivalence test compares its ends with the bound. A mean
    (KL) covers the positions since the previous checkpoint ([1, first) for the first), with
    a block-bootstrap interval (none below MIN_BLOCKS blocks); a tail percentile covers every
    position up to the checkpoint, with an order-statistic interval."""
    bounded = [m for m in metrics if m.margin is not None and m.source is not None]
    edges = [1, *checkpoints]
    out: dict[str, list[dict[str, Any]]] = {}
    for config, per_doc in arrays.items():
        if config == reference:
            continue
        spans = []
        # Positions 1 .. hi - 1 in every document, or the span is not measured (a run that
        # stopped a configuration early, or before the end).
        reached = min((len(d["kld"]) for d in per_doc if "kld" in d), default=0)
        for lo, hi in itertools.pairwise(edges):
            if reached < hi - 1:
                break
            span: dict[str, Any] = {"ctx": hi, "span": [lo, hi]}
            for metric in bounded:
                values, positions = _stack(per_doc, metric.source or "")
                if metric.name in PERCENTILES:
                    # A tail needs every position up to the checkpoint, and order statistics.
                    upto = values[positions < hi]
                    if len(upto) == 0:
                        continue
                    q = PERCENTILES[metric.name]
                    ends = order_statistic_interval(upto, q, level)
                    value = float(np.quantile(upto, q))
                    span[metric.name] = {
                        "value": value,
                        "ci": list(ends),
                        "n": len(upto),
                        "positions": [1, hi],
                    }
                    continue
                blocks = split_blocks(values, positions, lo, hi, block)
                if not blocks:
                    continue
                span["n"] = int(sum(len(b) for b in blocks))
                value = float(sum(b.sum() for b in blocks) / span["n"])
                ci = (
                    block_bootstrap_mean(blocks, seed=seed, level=level)
                    if len(blocks) >= MIN_BLOCKS
                    else None
                )
                span[metric.name] = {"value": value, "ci": list(ci) if ci else [None, None], "n": span["n"]}
            if "n" in span:
                spans.append(span)
        out[config] = spans
    return out
