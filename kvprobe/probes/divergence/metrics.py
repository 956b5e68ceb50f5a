"""The divergence probe's numerics: how far a configuration's next-token distribution moves from the
reference's, position by position.

Pure functions of logits and token ids (numpy), and of the per-position arrays they
produce. For every position i of a document, with p the reference's distribution and q
the test configuration's after the same prefix:

- KL(p || q) = sum_v p_v (log p_v - log q_v), in nats, as llama-perplexity --kl-divergence;
- top-1 agreement: argmax p == argmax q;
- NLL of the true next token under each.

An engine without full logits (a llama-server) gives, at every stride-th position, each
configuration's top n log-probs and the true next token's: the KL is then over the ids both
top lists hold plus one tail bucket, a lower bound of the full KL (`truncated_kl`).

The decay curve aggregates these in log-spaced position bins. Tokens near each other are
correlated, so intervals and tests use blocks of consecutive positions as their units. The
values of one document are at positions 1, 1 + stride, 1 + 2 stride, ... (stride 1: every
position).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from kvprobe.api import ALPHA, Metric
from kvprobe.api.engine import TopLogprobs
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


# --- an engine without full logits: the top n at sampled positions ------------------------

TAIL_FLOOR = 1e-12  # a tail below this is rounding: float32 log-probs sum to 1 within ~1e-7


def _matched(ref_ids: np.ndarray, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, for each of the reference's ids: whether the test's row lists it, and at which
    column (0 where not). One searchsorted serves every row: the rows' ids are offset apart."""
    k, m = test_ids.shape
    order = np.argsort(test_ids, axis=1, kind="stable")
    ordered = np.take_along_axis(test_ids, order, axis=1).astype(np.int64)
    if (ref_ids < 0).any() or (ordered[:, 0] < 0).any():
        raise ValueError("a negative token id in a top-n list")
    if (np.diff(ordered, axis=1) == 0).any() or (np.diff(np.sort(ref_ids, axis=1), axis=1) == 0).any():
        raise ValueError("a top-n list names a token twice")  # it would count its probability twice
    span = int(max(ref_ids.max(), ordered[:, -1].max())) + 1
    row = np.arange(k, dtype=np.int64)[:, None]
    flat = (ordered + row * span).ravel()
    keys = ref_ids.astype(np.int64) + row * span
    at = np.minimum(np.searchsorted(flat, keys), flat.size - 1)
    found = flat[at] == keys
    column = np.take_along_axis(order, np.clip(at - row * m, 0, m - 1), axis=1)
    return found, column


def truncated_kl(
    ref_ids: np.ndarray, ref_logprobs: np.ndarray, test_ids: np.ndarray, test_logprobs: np.ndarray
) -> np.ndarray:
    """Per row (position), KL(p || q) over S = the ids both top-n lists hold, each its own
    bucket, plus one tail bucket for the rest of the vocabulary:
    sum_{i in S} p_i log(p_i / q_i) + P log(P / Q), P = 1 - sum_S p, Q = 1 - sum_S q (tails
    clipped at TAIL_FLOOR). Merging buckets never raises a KL (the data-processing inequality),
    so this is a lower bound of the full KL, equal to it where S is the whole vocabulary and
    never smaller for a larger n (S only grows). Log-probs are over the full vocabulary."""
    if ref_ids.shape != ref_logprobs.shape or test_ids.shape != test_logprobs.shape:
        raise ValueError("top-n ids and log-probs of different shapes")
    widths = (*ref_ids.shape[1:], *test_ids.shape[1:])
    if ref_ids.ndim != 2 or test_ids.ndim != 2 or ref_ids.shape[0] != test_ids.shape[0] or 0 in widths:
        raise ValueError("top-n lists of different positions, or empty")
    if ref_ids.shape[0] == 0:
        return np.zeros(0)
    lp, lq_all = ref_logprobs.astype(np.float64), test_logprobs.astype(np.float64)
    if np.isnan(lp).any() or np.isnan(lq_all).any() or (lp > 0).any() or (lq_all > 0).any():
        raise ValueError("a top-n log-prob that is NaN or above 0")
    found, column = _matched(ref_ids, test_ids)
    lq = np.take_along_axis(lq_all, column, axis=1)
    p = np.where(found, np.exp(lp), 0.0)
    q = np.where(found, np.exp(lq), 0.0)
    with np.errstate(invalid="ignore"):  # p = 0 (a log-prob of -inf) adds nothing
        inside = np.where(p > 0, p * (lp - lq), 0.0).sum(axis=1)
    p_tail = np.maximum(1.0 - p.sum(axis=1), TAIL_FLOOR)
    q_tail = np.maximum(1.0 - q.sum(axis=1), TAIL_FLOOR)
    kl: np.ndarray = np.maximum(inside + p_tail * np.log(p_tail / q_tail), 0.0)  # never negative
    return kl


def target_nll(top: TopLogprobs) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the NLL of the document's token, and where it is only bounded. Where the
    engine gave no exact log-prob (NaN) its upper bound stands in: the NLL is then a lower bound
    (the perplexity too, as the KL is), never a NaN that a mean would swallow or spread."""
    bounded = np.isnan(top.target_logprob)
    logprob = np.where(bounded, top.target_bound, top.target_logprob).astype(np.float64)
    if not np.isfinite(logprob).all() or (logprob > 0).any():
        raise ValueError("a target log-prob that is neither a log-prob nor bounded by one")
    return -logprob, bounded


def top_position_stats(
    ref: TopLogprobs, tests: dict[str, TopLogprobs]
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[PositionStats, np.ndarray]]]:
    """`position_stats` from top-n rows: the reference's NLL and where it is bounded; per test
    configuration the truncated KL, top-1 agreement (the first ids, exactly) and NLL, with
    where that NLL is bounded."""
    nll_ref, bounded_ref = target_nll(ref)
    out = {}
    for config, top in tests.items():
        if not np.array_equal(top.positions, ref.positions):
            raise ValueError(f"the top-n rows of {config} are at other positions than the reference's")
        kld = truncated_kl(ref.ids, ref.logprobs, top.ids, top.logprobs)
        nll, bounded = target_nll(top)
        out[config] = (PositionStats(kld, ref.ids[:, 0] == top.ids[:, 0], nll), bounded)
    return nll_ref, bounded_ref, out


def _rows(top: TopLogprobs, keep: np.ndarray) -> TopLogprobs:
    kept = (top.positions, top.ids, top.logprobs, top.target_logprob, top.target_bound)
    return TopLogprobs(*(a[keep] for a in kept))


def sampled_positions(n: int, stride: int = 1) -> np.ndarray:
    """The positions of a document's n values: 1, 1 + stride, ..."""
    result: np.ndarray = 1 + stride * np.arange(n)
    return result


# --- accumulation during a run ------------------------------------------------------------


@dataclass
class DocumentArrays:
    """Per-position arrays of one configuration on one document.

    Index j is the prediction of token P = 1 + stride * j (so positions start at 1; stride 1
    with full logits); the reference configuration has only `nll`. `bounded` counts, per
    chunk, the positions whose NLL is only a lower bound (an engine without full logits)."""

    config: str
    doc: int
    nll: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    top1_agree: list[np.ndarray] = field(default_factory=list)
    bounded: list[int] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"nll": np.concatenate(self.nll) if self.nll else np.empty(0)}
        if self.kld:
            out["kld"] = np.concatenate(self.kld)
            out["top1_agree"] = np.concatenate(self.top1_agree)
        return out


class DivergenceRecorder:
    """Receives the logits of every chunk from every configuration in lockstep and keeps
    only per-position numbers: memory grows with positions, never with the vocabulary."""

    def __init__(self, reference: str, top_stride: int = 1):
        self.reference = reference
        self.records: dict[tuple[str, int], DocumentArrays] = {}
        # Full logits (add_chunk) score every position; top-n rows (add_top) every top_stride-th,
        # with the KL over the top n + tail: n_probs is the smallest n received (None: full).
        self.top_stride = top_stride
        self.n_probs: int | None = None
        self.chunked = False
        # A run in configuration groups feeds the reference again in each group: its positions
        # are kept once, and the largest NLL gap of a repeat against the first is recorded (0
        # on CPU; anything else means the groups' KL had different references).
        self.repeat_nll_gap: float | None = None

    @property
    def stride(self) -> int:
        """Positions between the values of a document: 1 with full logits."""
        return 1 if self.n_probs is None else self.top_stride

    def _record(self, config: str, doc: int) -> DocumentArrays:
        return self.records.setdefault((config, doc), DocumentArrays(config, doc))

    def _reference_nll(self, doc: int, first: int, nll: np.ndarray, bounded: int, *, strict: bool) -> None:
        """The reference's NLL for values first, first + 1, ...: appended, or where a grouped
        run fed the reference again, compared with the first time. `strict`: rows that do not
        continue the values held are refused (an engine's positions are explicit)."""
        ref = self._record(self.reference, doc)
        covered = sum(len(a) for a in ref.nll)
        if covered >= first + len(nll):
            gap = float(np.max(np.abs(np.concatenate(ref.nll)[first : first + len(nll)] - nll)))
            self.repeat_nll_gap = max(gap, self.repeat_nll_gap or 0.0)
        elif strict and covered != first:
            raise ValueError(f"the reference holds {covered} values of document {doc}, not rows from {first}")
        else:
            ref.nll.append(nll)
            ref.bounded.append(bounded)

    def add_top(self, doc: int, doc_tokens: Sequence[int], by_config: dict[str, TopLogprobs]) -> None:
        """`by_config[config]` holds the top n at sampled positions 1 + top_stride * j of one fed
        segment, the same in every configuration; a position is scored only when the document
        has the token it predicts."""
        if self.chunked:
            raise ValueError("top-n rows after full logits: one run reads one kind")
        keep = by_config[self.reference].positions < len(doc_tokens)
        rows = {c: _rows(top, keep) for c, top in by_config.items()}
        positions = rows[self.reference].positions
        if len(positions) == 0:
            return
        first, stride = int(positions[0] - 1) // self.top_stride, self.top_stride
        if not np.array_equal(positions, sampled_positions(len(positions), stride) + first * stride):
            raise ValueError(f"top-n rows at positions other than every {stride}th from 1")
        self.n_probs = min(self.n_probs or 1 << 62, *(top.ids.shape[1] for top in rows.values()))
        tests = {c: top for c, top in rows.items() if c != self.reference}
        nll_ref, bounded_ref, per_config = top_position_stats(rows[self.reference], tests)
        self._reference_nll(doc, first, nll_ref, int(bounded_ref.sum()), strict=True)
        for config, (st, bounded) in per_config.items():
            rec = self._record(config, doc)
            if sum(len(a) for a in rec.nll) != first:
                raise ValueError(f"{config} holds other values of document {doc} than rows from {first}")
            rec.kld.append(st.kld)
            rec.top1_agree.append(st.top1_agree)
            rec.nll.append(st.nll)
            rec.bounded.append(int(bounded.sum()))

    def add_chunk(
        self, doc: int, doc_tokens: Sequence[int], pos0: int, logits: dict[str, np.ndarray]
    ) -> None:
        """`logits[config]` holds rows for positions pos0, pos0 + 1, ...; a row is scored
        only when the document has the token it predicts."""
        if self.n_probs is not None:
            raise ValueError("full logits after top-n rows: one run reads one kind")
        n_rows = next(iter(logits.values())).shape[0]
        n = max(0, min(n_rows, len(doc_tokens) - 1 - pos0))
        if n == 0:
            return
        self.chunked = True
        nxt = np.asarray(doc_tokens[pos0 + 1 : pos0 + 1 + n], dtype=np.int64)
        tests = {c: rows for c, rows in logits.items() if c != self.reference}
        nll_ref, per_config = position_stats(logits[self.reference], tests, nxt)
        self._reference_nll(doc, pos0, nll_ref, 0, strict=False)
        for config, st in per_config.items():
            rec = self._record(config, doc)
            rec.kld.append(st.kld)
            rec.top1_agree.append(st.top1_agree)
            rec.nll.append(st.nll)
            rec.bounded.append(0)


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
    """Consecutive blocks of `block` positions within [lo, hi) (the last may be shorter); with
    sampled positions a block holds the values of the positions it spans (block / stride)."""
    return [b for _, b in blocks_from(values, positions, lo, hi, block)]


def blocks_from(
    values: np.ndarray, positions: np.ndarray, lo: int, hi: int, block: int
) -> list[tuple[int, np.ndarray]]:
    """split_blocks with each block's first position (a position its values hold)."""
    mask = (positions >= lo) & (positions < hi)
    v, p = values[mask], positions[mask]
    cuts = np.flatnonzero(np.diff((p - lo) // block)) + 1
    return [(int(at[0]), b) for at, b in zip(np.split(p, cuts), np.split(v, cuts), strict=True) if len(b)]


@dataclass(frozen=True)
class CurveSettings:
    checkpoints: list[int]
    block: int  # positions per bootstrap / test unit
    onset_reference: int  # bins ending at or below this position are "the shortest bins"
    seed: int
    alpha: float = ALPHA
    stride: int = 1  # positions between a document's values (see sampled_positions)


@dataclass(frozen=True)
class Span:
    lo: int
    hi: int
    scope: str  # "bin" | "pooled"


def _stack(
    per_doc: Sequence[dict[str, np.ndarray]], name: str, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Values of one array over all documents, with their positions (1 + stride * index)."""
    values = [d[name].astype(np.float64) for d in per_doc]
    positions = [sampled_positions(len(v), stride) for v in values]
    return np.concatenate(values), np.concatenate(positions)


def reach(per_doc: Sequence[dict[str, np.ndarray]], name: str, stride: int = 1) -> int:
    """The first sampled position some document does not hold: every document holds the
    positions below it (one --until-decided stopped early holds fewer)."""
    return 1 + stride * min((len(d[name]) for d in per_doc if name in d), default=0)


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
            series = _stack(per_doc, source[metric], cs.stride)
            last = reach(per_doc, source[metric], cs.stride)
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
        kld, positions = _stack(per_doc, "kld", cs.stride)
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
    stride: int = 1,
    lower_bound: bool = False,
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
        reached = reach(per_doc, "kld", stride)
        for lo, hi in itertools.pairwise(edges):
            if reached < hi:
                break
            span: dict[str, Any] = {"ctx": hi, "span": [lo, hi]}
            for metric in bounded:
                values, positions = _stack(per_doc, metric.source or "", stride)
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
                    if lower_bound and metric.source == "kld":
                        span[metric.name]["lower_bound"] = True
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
                if lower_bound and metric.source == "kld":  # top n + tail: rules out, never rules in
                    span[metric.name]["lower_bound"] = True
            if "n" in span:
                spans.append(span)
        out[config] = spans
    return out
