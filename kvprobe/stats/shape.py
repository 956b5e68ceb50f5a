"""The shape of a configuration's loss: there from the first tokens, growing with context, or
neither. The folklore's question ("a quantized KV cache is fine short, but degrades at 4K+") is
about growth; "worse from the first checkpoint" alone cannot tell a loss present from the start
from one that grows.

Every metric measured by position (KL) or at checkpoints (the paired items: needles, the
question probes, repetition) gets a *level*, the loss at the shortest lengths measured, and a
*growth*, its change per doubling of context with a 95% interval (kvprobe.stats.growth). The level
is the very number the first checkpoint's test reads (the first KL span, the paired difference at
the shortest checkpoint), so one concept shows one value. Growth is *shown* for a configuration
when, among its continuous metrics with a margin (mean KL, the answers' log-probabilities), Holm
over their one-sided bootstrap p-values rejects "no growth" (GROWTH_ALPHA): a flat loss at the
margins is called growing in at most 5% of simulated configurations (tests/stats/test_shape.py).

With the configuration's equivalence (kvprobe.stats.verdict) that gives its `kind`:
`equivalent` (at every length measured), `from_start` (worse from the first checkpoint, not shown
to grow), `grows`, `worse_beyond` (equivalent up to L, worse beyond), `worse_from` (worse from L,
undecided before), `undecided`; an onset ("from about L") only where growth is shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NotRequired, TypedDict

import numpy as np

from kvprobe.api import POOLED_DIVERGENCE, by_name, paired_item_metrics
from kvprobe.api.metric import Metric
from kvprobe.api.record import ItemRow, JsonObject, Row
from kvprobe.stats.equivalence import EQUIVALENT, UNDECIDED, WORSE
from kvprobe.stats.growth import Block, Trend, item_trend, position_trend
from kvprobe.stats.inference import holm
from kvprobe.stats.parts import PairedDoc
from kvprobe.stats.words import metric_words, tost_text

# One-sided, family-wise over a configuration's growth metrics (Holm). Not 0.025: KL's right skew
# makes its bootstrap p run small (a flat KL called growing in about 4.5% of simulated runs at
# 0.025), so a flat configuration was called growing in 6% of runs; at 0.0125, in at most 5%
# (tests/stats/test_shape.py measures it).
GROWTH_ALPHA = 0.0125
MATERIAL = 0.5  # growth over the range measured below this share of the margin is no growth to call
GROWING, FLAT, UNCLEAR, NOT_MEASURED = "grows", "flat", "unclear", "not measured"
WHOLE = "whole document"  # the scope of a figure pooled over every position, as every view labels it
EQUIVALENT_ALL, FROM_START, GROWS, WORSE_BEYOND, WORSE_FROM = (
    "equivalent", "from_start", "grows", "worse_beyond", "worse_from",
)  # fmt: skip


class TrendDoc(TypedDict):
    """Level and growth of one metric's loss (positive: worse than the reference)."""

    metric: str
    words: str  # "mean KL", "answer log-prob drop"
    unit: str
    level: float
    level_ci: list[float | None]
    level_scope: str  # "positions 1–255", "at 256 tokens"
    growth: float | None  # per doubling of context (None: fewer than three lengths)
    growth_ci: list[float] | None
    growth_scope: str
    p_flat: float | None  # one-sided bootstrap p of no growth
    family: bool  # counts for the configuration's "grows" (continuous, with a margin)
    grows: bool
    n: int
    material: float | None  # growth per doubling that would matter: half the margin over the range


class ShapeDoc(TypedDict):
    """A configuration's loss in words: its kind, a short phrase, the sentence."""

    kind: str
    short: str
    sentence: str
    grows: bool | None  # None: growth not measured (fewer than three lengths)
    growth: str  # GROWING, FLAT (every interval below the material growth), UNCLEAR, NOT_MEASURED
    onset: int | None  # "from about L": only where growth is shown
    trends: list[TrendDoc]
    long_context: NotRequired[str]


# --- level and growth per metric ------------------------------------------------------------------


def _loss_sign(metric: Metric) -> float:
    """+1 where a larger value is worse (KL, repetition), -1 where a smaller one is."""
    return -1.0 if metric.lower_is_worse else 1.0


def item_losses(
    items: Sequence[ItemRow], metric: Metric, baseline: str, config: str
) -> dict[int, dict[object, float]]:
    """Per checkpoint, each item's paired loss (test against reference, positive: worse), keyed
    by the item without its checkpoint, so that one item asked at several keeps its identity."""
    mine: dict[tuple[object, ...], ItemRow] = {}
    ref: dict[tuple[object, ...], ItemRow] = {}
    for it in items:
        if it["probe"] == metric.probe and it["config"] in (baseline, config):
            (ref if it["config"] == baseline else mine)[metric.pair_key(it)] = it
    out: dict[int, dict[object, float]] = {}
    for key, test in mine.items():
        base = ref.get(key)
        if base is None or test.get(metric.item_field) is None or base.get(metric.item_field) is None:
            continue
        ctx = int(test["ctx"])
        # The same needle asked at the next checkpoint is the same item: its key less the checkpoint.
        at = next((i for i, part in enumerate(key) if part == ctx), None)
        identity = key if at is None else key[:at] + key[at + 1 :]
        loss = _loss_sign(metric) * (float(test[metric.item_field]) - float(base[metric.item_field]))
        out.setdefault(ctx, {})[identity] = loss
    return out


def _words(metric: Metric) -> str:
    name = metric_words(metric.name)[0]
    if metric.role == POOLED_DIVERGENCE or metric.source == "kld":
        return name  # KL is a loss itself
    return f"{name} {'drop' if metric.lower_is_worse else 'rise'}"


def _doc(metric: Metric, trend: Trend, level_scope: str, growth_scope: str, family: bool) -> TrendDoc:
    lo, hi = trend.growth_scope
    doublings = math.log2(hi / lo) if lo > 0 and hi > lo else 0.0
    return {
        "material": MATERIAL * metric.margin / doublings if metric.margin and doublings else None,
        "metric": metric.name, "words": _words(metric), "unit": metric_words(metric.name)[1],
        "level": trend.level, "level_ci": list(trend.level_ci), "level_scope": level_scope,
        "growth": trend.growth, "growth_ci": list(trend.growth_ci) if trend.growth_ci else None,
        "growth_scope": growth_scope, "p_flat": trend.p_flat, "family": family, "grows": False,
        "n": trend.n_units,
    }  # fmt: skip


def _positions(lo: int, hi: int) -> str:
    return f"positions {lo:,}–{hi:,}"


def position_trend_doc(
    blocks: Sequence[tuple[int, np.ndarray]],
    metric: Metric,
    first_span: Row | None,
    first: int,
    seed: int,
    *,
    stride: int = 1,
) -> TrendDoc | None:
    """KL's level (the first checkpoint's span: the same number its test reads) and growth;
    `stride`: the blocks hold every stride-th position."""
    trend = position_trend([Block(s, v, stride) for s, v in blocks], level_below=first, seed=seed)
    if trend is None:
        return None
    doc = _doc(metric, trend, _positions(*trend.level_scope), _positions(*trend.growth_scope), True)
    found = (first_span or {}).get(metric.name)
    covered = (first_span or {}).get("span")
    if found is not None and covered and first_span is not None and int(first_span["ctx"]) == first:
        doc["level"], doc["level_ci"] = float(found["value"]), list(found["ci"])
        doc["level_scope"] = _positions(int(covered[0]), int(covered[1]) - 1)
    return doc


def item_trend_doc(
    items: Sequence[ItemRow],
    metric: Metric,
    baseline: str,
    config: str,
    *,
    paired: Sequence[PairedDoc],
    seed: int,
) -> TrendDoc | None:
    """A paired item metric's level (the paired difference at the shortest checkpoint, as its
    test reads it, signed as a loss) and growth over the checkpoints."""
    losses = item_losses(items, metric, baseline, config)
    trend = item_trend(losses, seed=seed)
    if trend is None:
        return None
    lo, hi = trend.growth_scope
    family = metric.margin is not None and not metric.binary
    doc = _doc(metric, trend, f"at {lo:,} tokens", f"{lo:,}–{hi:,} tokens", family)
    row = next((r for r in paired if r["metric"] == metric.name and r["ctx"] == lo), None)
    if row is not None:
        sign = _loss_sign(metric)
        ends = sorted(sign * float(c) for c in row["ci"])
        doc["level"], doc["level_ci"] = sign * float(row["diff"]), list(ends)
    return doc


def config_trends(
    items: Sequence[ItemRow],
    baseline: str,
    config: str,
    *,
    blocks: Sequence[tuple[int, np.ndarray]] = (),
    loss_metric: str | None = None,
    spans: Sequence[Row] = (),
    checkpoints: Sequence[int] = (),
    paired: Sequence[PairedDoc] = (),
    seed: int = 0,
    stride: int = 1,
) -> list[TrendDoc]:
    """Every metric's level and growth for one test configuration, then which grow (Holm)."""
    out: list[TrendDoc] = []
    if blocks and loss_metric is not None and checkpoints:
        first_span = min(spans, key=lambda s: int(s["ctx"]), default=None)
        first = min(checkpoints)
        found = position_trend_doc(blocks, by_name(loss_metric), first_span, first, seed, stride=stride)
        out += [found] if found is not None else []
    for metric in paired_item_metrics():
        found = item_trend_doc(items, metric, baseline, config, paired=paired, seed=seed)
        out += [found] if found is not None else []
    call_growth(out)
    return out


def call_growth(trends: list[TrendDoc]) -> None:
    """Growth shown where Holm over the family's one-sided p-values rejects "no growth" at
    GROWTH_ALPHA, the 95% interval lies above zero, and the growth is material: over the range
    measured it adds at least MATERIAL of the metric's margin (a KL rising 0.0003 nats per
    doubling is significant over 8,000 positions, and no loss a user would see)."""
    family = [t for t in trends if t["family"] and t["p_flat"] is not None]
    adjusted = holm([1.0 if t["p_flat"] is None else float(t["p_flat"]) for t in family])
    for t, p in zip(family, adjusted, strict=True):
        t["grows"] = (
            p < GROWTH_ALPHA and t["growth_ci"] is not None and t["growth_ci"][0] > 0
            and float(t["growth"] or 0.0) >= float(t["material"] or 0.0)
        )  # fmt: skip


def growth_state(trends: Sequence[TrendDoc]) -> str:
    """GROWING where growth is shown; FLAT where every family metric's interval lies below its
    material growth (shown not to grow, as an equivalence test shows "no loss"); NOT_MEASURED
    with fewer than three lengths; UNCLEAR otherwise: not shown either way."""
    family = [t for t in trends if t["family"] and t["growth"] is not None]
    if not family:
        return NOT_MEASURED
    if any(t["grows"] for t in family):
        return GROWING
    below = all(
        t["growth_ci"] is not None and t["material"] is not None and t["growth_ci"][1] < t["material"]
        for t in family
    )
    return FLAT if below else UNCLEAR


# --- in words -------------------------------------------------------------------------------------


def decimals(*values: float | None) -> int:
    """Decimals that give the largest of `values` three significant digits (2 to 4): a figure and
    its interval's ends are written with the same."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=1.0)
    return min(4, max(2, 2 - math.floor(math.log10(top)) if top > 0 else 2))


def number(x: float, unit: str = "", *, signed: bool = False, places: int | None = None) -> str:
    """One figure as every sentence writes it (kvprobe.stats.shape.decimals)."""
    d = decimals(x) if places is None else places
    x = 0.0 if round(x, d) == 0 else x  # no "−0.000"
    text = f"{x:+.{d}f}" if signed else f"{x:.{d}f}"
    return text.replace("-", "−") + unit


def interval(ci: Sequence[float | None] | None, *, signed: bool = False, places: int = 2) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "[no interval]"
    lo, hi = float(ci[0]), float(ci[1])
    return f"[{number(lo, signed=signed, places=places)}, {number(hi, signed=signed, places=places)}]"


def growth_text(t: TrendDoc) -> str:
    """ "mean KL +0.002 [−0.004, +0.008] nats"."""
    assert t["growth"] is not None
    d = decimals(t["growth"], *(t["growth_ci"] or []))
    ends = interval(t["growth_ci"], signed=True, places=d)
    return f"{t['words']} {number(t['growth'], signed=True, places=d)} {ends}{t['unit']}"


def level_text(t: TrendDoc) -> str:
    """ "mean KL (positions 1–255) 0.116 nats [0.106, 0.128]"."""
    d = decimals(t["level"], *t["level_ci"])
    ends = interval(t["level_ci"], places=d)
    return f"{t['words']} ({t['level_scope']}) {number(t['level'], t['unit'], places=d)} {ends}"


def trend_text(t: TrendDoc) -> str:
    """One metric's level and growth: "answer log-prob drop (at 256 tokens) 0.51 nats [0.10,
    0.90], +0.27 [+0.06, +0.49] per doubling (grows)"."""
    if t["growth"] is None:
        return f"{level_text(t)}; per doubling: not measured"
    d = decimals(t["growth"], *(t["growth_ci"] or []))
    ends = interval(t["growth_ci"], signed=True, places=d)
    said = " (grows)" if t["grows"] else ""
    return f"{level_text(t)}, {number(t['growth'], signed=True, places=d)} {ends} per doubling{said}"


SAID = 2  # metrics not growing named in a sentence; the others counted


def _listed(trends: Sequence[TrendDoc]) -> str:
    named = "; ".join(growth_text(t) for t in trends[:SAID])
    more = len(trends) - SAID
    return named + (f"; and {more} more metric{'s' if more > 1 else ''}" if more > 0 else "")


def growth_brief(s: Mapping[str, object]) -> str | None:
    """The growth in a few words for the Recommendation: "per doubling: mean KL +0.0010
    [−0.0022, +0.0036] nats" (the growing metrics, else the first: KL)."""
    trends = [t for t in s.get("trends") or [] if isinstance(t, dict)]  # type: ignore[attr-defined]
    family: list[TrendDoc] = [t for t in trends if t["family"] and t["growth"] is not None]  # type: ignore[misc]
    if not family:
        return None
    shown = [t for t in family if t["grows"]] or family[:1]
    return "per doubling: " + "; ".join(growth_text(t) for t in shown)


def whole_or_positions(bin_: Sequence[int] | None, ctx: int) -> str:
    """A pooled figure's scope: "whole document" where it covers every position, else the
    positions it does cover (a partial result, a configuration --until-decided stopped)."""
    if not bin_ or int(bin_[1]) >= ctx:
        return WHOLE
    return _positions(int(bin_[0]), int(bin_[1]) - 1)


def growth_clause(trends: Sequence[TrendDoc], onset: int | None) -> str:
    """Whether the loss grows with context, with the per-doubling figures: every growing metric,
    and the first of the others (KL, then the needles')."""
    family = [t for t in trends if t["family"] and t["growth"] is not None]
    state = growth_state(trends)
    if state == NOT_MEASURED:
        return "whether the loss grows with context is not measured (fewer than three lengths)"
    if state == GROWING:
        growing = [t for t in family if t["grows"]]
        steady = [t for t in family if not t["grows"]]
        where = f", from about {onset:,} tokens" if onset else ""
        also = f"; not shown to grow: {_listed(steady)}" if steady else ""
        return (
            f"the loss grows with context: {'; '.join(growth_text(t) for t in growing)} per doubling"
            f"{where}{also}"
        )
    if state == FLAT:
        return f"the loss does not grow with context (per doubling: {_listed(family)})"
    return f"whether the loss grows with context is unclear (per doubling: {_listed(family)})"


def _decisive(row: JsonObject) -> str:
    """ " (the tests that decided the checkpoint)", or nothing where none was measured."""
    tests = [t for t in row["tests"] if t["metric"] in row["decided_by"]] or row["tests"]
    return f" ({'; '.join(tost_text(t) for t in tests)})" if tests else ""


def _onset(eq: JsonObject, trends: Sequence[TrendDoc]) -> int | None:
    """Where a growing loss shows: the first checkpoint worse or at a significant loss; None
    where no growth is shown, or where none is worse or significant yet."""
    if not any(t["grows"] for t in trends):
        return None
    rows = eq.get("checkpoints") or []
    hit = next((r["ctx"] for r in rows if r["status"] == WORSE or r["significant_loss"]), None)
    return int(hit) if hit is not None else None


def _kind(eq: JsonObject, grows: bool) -> str:
    rows = eq.get("checkpoints") or []
    if eq.get("status") == EQUIVALENT:
        return GROWS if grows else EQUIVALENT_ALL
    if grows:
        return GROWS
    if eq.get("status") != WORSE:
        return UNDECIDED
    if rows and eq.get("first_worse") == rows[0]["ctx"]:
        return FROM_START
    return WORSE_BEYOND if eq.get("effective_context") else WORSE_FROM


def _short(kind: str, eq: JsonObject, state: str) -> str:
    first, eff = eq.get("first_worse"), eq.get("effective_context")
    rows = eq.get("checkpoints") or []
    at_start = bool(rows) and first == rows[0]["ctx"]
    if kind == GROWS:
        if eq.get("status") == EQUIVALENT:
            return "equivalent, but its loss grows with context"
        return (
            "worse from the start, and growing" if at_start
            else f"equivalent up to {eff:,}, then worse and growing" if eff
            else "worse, and growing with context" if eq.get("status") == WORSE
            else "undecided; its loss grows with context"
        )  # fmt: skip
    if kind == FROM_START:
        return {
            FLAT: "worse from the start, not growing",
            UNCLEAR: "worse from the start; growth unclear",
        }.get(state, "worse from the start; growth not measured")
    return {
        EQUIVALENT_ALL: "equivalent at every length measured",
        WORSE_BEYOND: f"equivalent up to {eff or 0:,}, worse beyond",
        WORSE_FROM: f"worse from {first or 0:,}",
    }.get(kind, "undecided")


def _status_part(eq: JsonObject, config: str, baseline: str) -> str | None:
    """What the equivalence tests say, in the shape's words (None: undecided, said elsewhere)."""
    rows = {r["ctx"]: r for r in eq.get("checkpoints") or []}
    if not rows:
        return None
    first, eff, longest = eq.get("first_worse"), eq.get("effective_context"), max(rows)
    if eq.get("status") == EQUIVALENT:
        return (
            f"{config} is equivalent to {baseline} at every length measured, up to {longest:,} tokens"
            f"{_decisive(rows[longest])}"
        )
    if eq.get("status") != WORSE or first is None:
        return None
    if first == min(rows):
        return (
            f"{config} loses quality from the first tokens: worse than {baseline} beyond the margins "
            f"already at {first:,} tokens, the shortest measured{_decisive(rows[first])}"
        )
    if eff:
        return (
            f"{config} is equivalent to {baseline} up to {eff:,} tokens, worse beyond: from {first:,}"
            f"{_decisive(rows[first])}"
        )
    return (
        f"{config} is worse than {baseline} beyond the margins from {first:,} tokens"
        f"{_decisive(rows[first])}, undecided before"
    )


def shape(v: JsonObject, trends: list[TrendDoc], baseline: str, *, fallback: str | None = None) -> ShapeDoc:
    """The configuration's shape from its verdict so far (`equivalence`) and its trends;
    `fallback`: the equivalence sentence, said where the shape's words have no status of their own
    (undecided)."""
    eq = v.get("equivalence") or {}
    state = growth_state(trends)
    kind = _kind(eq, state == GROWING)
    onset = _onset(eq, trends)
    status = _status_part(eq, v["config"], baseline) or (fallback.rstrip(".") if fallback else None)
    clause = growth_clause(trends, onset)
    sentence = f"{status}; {clause}." if status else f"{clause[0].upper()}{clause[1:]}."
    return {
        "kind": kind,
        "short": _short(kind, eq, state),
        "sentence": sentence,
        "grows": None if state == NOT_MEASURED else state == GROWING,
        "growth": state,
        "onset": onset,
        "trends": trends,
    }


def long_context_finding(s: Mapping[str, object], v: JsonObject, long_context: int) -> tuple[str, str]:
    """The rule "a quantized KV cache degrades at 4K+" for one configuration, judged by growth:
    (finding, why). It holds where the loss is within the margins short and appears or grows
    with context; it does not where the loss is there from the start, or where none shows up
    to 4K or beyond; it is not measured below 4K or with fewer than three lengths."""
    eq = v.get("equivalence") or {}
    rows = eq.get("checkpoints") or []
    longest = max((int(r["ctx"]) for r in rows), default=0)
    fine_short = bool(rows) and rows[0]["status"] == EQUIVALENT and not rows[0]["significant_loss"]
    kind, state, onset = s.get("kind"), s.get("growth"), s.get("onset")
    first = int(eq.get("first_worse") or 0)
    earlier = " (earlier than 4K)" if 0 < first < long_context else ""
    if kind == FROM_START or (kind == GROWS and rows and rows[0]["status"] == WORSE):
        how = {GROWING: "and grows with context", FLAT: "and does not grow with context"}.get(
            str(state), f"(growth {state})"
        )
        return "does not hold", f"the loss is present from the start {how}"
    if kind == GROWS and fine_short:
        where = f" from about {int(str(onset)):,}" if onset else ""
        return "holds", f"fine short, the loss grows with context{where}{earlier}"
    if kind == WORSE_BEYOND:
        return (
            "holds",
            f"equivalent up to {int(eq.get('effective_context') or 0):,}, worse from {first:,}{earlier}",
        )
    if kind == EQUIVALENT_ALL:
        if longest >= long_context:
            return "does not hold", f"equivalent at every length measured, up to {longest:,}"
        return "not measured", f"the longest context measured is {longest:,}, below {long_context:,}"
    return UNDECIDED, f"not decided at the shortest lengths (up to {longest:,} measured)"
