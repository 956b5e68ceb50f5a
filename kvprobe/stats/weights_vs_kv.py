"""Weights vs KV cache: the 2x2 design {reference, test weights} x {f16, quantized cache} on
identical items. The KV effect at fixed weights, the weight effect at an f16 cache, and their
interaction, per checkpoint with intervals. Pure functions of result data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kvprobe.api import ALPHA, RETRIEVAL, RETRIEVAL_LOGPROB, by_name, paired_item_metrics, pooled_metric
from kvprobe.api.cache_types import ConfigId
from kvprobe.api.metric import Metric
from kvprobe.api.record import ItemRow, JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.stats.analysis import paired_rows
from kvprobe.stats.inference import bootstrap_mean_interval
from kvprobe.stats.inference import wilcoxon_paired as wilcoxon
from kvprobe.stats.parts import EffectDoc, MetricEffectsDoc, PairedDoc, WeightsVsKvDoc
from kvprobe.stats.shape import TrendDoc, call_growth, item_trend_doc, trend_text


def _diff(r: PairedDoc, unit: str = "") -> str:
    return f"{r['diff']:+.2f}{unit} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]"


def _interaction(items: Sequence[ItemRow], cache: str, metric: str, seed: int) -> list[EffectDoc]:
    """Per checkpoint, the mean of (test:q − test:f16) − (ref:q − ref:f16) over items, with a
    bootstrap interval and a two-sided Wilcoxon p."""
    m = next(x for x in paired_item_metrics() if x.name == metric)
    cells: dict[str, dict[tuple[Any, ...], float]] = {}
    for cid in ("ref:f16", f"ref:{cache}", "test:f16", f"test:{cache}"):
        cells[cid] = {
            m.pair_key(it): float(it[m.item_field])
            for it in items
            if it["probe"] == m.probe and it["config"] == cid
        }
    keys = set.intersection(*(set(c) for c in cells.values()))
    by_ctx: dict[int, list[float]] = {}
    for key in sorted(keys, key=str):
        contrast = (cells[f"test:{cache}"][key] - cells["test:f16"][key]) - (
            cells[f"ref:{cache}"][key] - cells["ref:f16"][key]
        )
        by_ctx.setdefault(int(key[1]), []).append(contrast)
    rows: list[EffectDoc] = []
    for ctx, values in sorted(by_ctx.items()):
        lo, hi = bootstrap_mean_interval(values, seed=seed)
        p = wilcoxon(values, [0.0] * len(values))
        rows.append({"ctx": ctx, "diff": float(np.mean(values)), "ci": [lo, hi], "p": p, "n": len(values)})
    return rows


def _negligible(metric: str) -> float:
    """An interval within ± the metric's equivalence margin is "no effect"."""
    band = by_name(metric).margin
    if band is None:
        raise KeyError(f"metric {metric} has no margin")
    return band


def _trends(
    items: Sequence[ItemRow],
    logprob: Metric,
    cache: str,
    *,
    kv: list[PairedDoc],
    weights: list[PairedDoc],
    seed: int,
) -> dict[str, TrendDoc | None]:
    """The answer log-prob drop's level and growth: of the cache at the reference weights, and
    of the test weights at an f16 cache (each called on its own: kvprobe.stats.shape)."""
    found = {
        "kv": item_trend_doc(items, logprob, "ref:f16", f"ref:{cache}", paired=kv, seed=seed),
        "weights": item_trend_doc(items, logprob, "ref:f16", "test:f16", paired=weights, seed=seed),
    }
    for trend in found.values():
        call_growth([trend] if trend is not None else [])
    return found


def weights_vs_kv(result: ResultDoc | JsonObject, seed: int) -> WeightsVsKvDoc | None:
    """The KV effect at fixed weights, the weight effect at an f16 cache, their interaction,
    per checkpoint with intervals; and the fault: kv, weights, both, neither or inconclusive."""
    ids = {c["id"] for c in result["configs"]}
    parsed = [ConfigId.parse(i) for i in ids]
    caches = sorted({p.cache.id for p in parsed if p.weights == "ref" and p.cache.id != "f16"})
    if not result.get("models") or "test:f16" not in ids or not caches:
        return None
    cache = caches[0]
    items = result["items"]
    effects: dict[str, MetricEffectsDoc] = {}
    retrieval, logprob = pooled_metric(RETRIEVAL), pooled_metric(RETRIEVAL_LOGPROB)
    if retrieval is None or logprob is None:
        return None  # no probe measures retrieval: nothing to attribute
    for metric in (retrieval.name, logprob.name):
        kv_ref = [r for r in paired_rows(items, "ref:f16", f"ref:{cache}", seed) if r["metric"] == metric]
        kv_test = [r for r in paired_rows(items, "test:f16", f"test:{cache}", seed) if r["metric"] == metric]
        weights = [r for r in paired_rows(items, "ref:f16", "test:f16", seed) if r["metric"] == metric]
        effects[metric] = {
            "kv_at_ref_weights": kv_ref,
            "kv_at_test_weights": kv_test,
            "weights_at_f16_cache": weights,
            "interaction": _interaction(items, cache, metric, seed),
        }

    def significant(rows: list[PairedDoc]) -> bool:
        return any(r["p_holm"] < ALPHA for r in rows)

    def negligible(rows: list[PairedDoc], metric: str) -> bool:
        return bool(rows) and all(
            abs(r["ci"][0]) <= _negligible(metric) and abs(r["ci"][1]) <= _negligible(metric) for r in rows
        )

    kv = any(significant(e["kv_at_ref_weights"]) for e in effects.values())
    w = any(significant(e["weights_at_f16_cache"]) for e in effects.values())
    lp = effects[logprob.name]
    kv_rows, w_rows = lp["kv_at_ref_weights"], lp["weights_at_f16_cache"]
    trends = _trends(items, logprob, cache, kv=kv_rows, weights=w_rows, seed=seed)
    if kv and w:
        fault = "both"
    elif kv:
        fault = "kv"
    elif w:
        fault = "weights"
    elif all(
        negligible(e["kv_at_ref_weights"], m) and negligible(e["weights_at_f16_cache"], m)
        for m, e in effects.items()
    ):
        fault = "neither"
    else:
        fault = "inconclusive"
    # In the shape's words (kvprobe.stats.shape): each effect's level and growth with context.
    kv_trend, w_trend = trends["kv"], trends["weights"]
    reason = (
        f"the {cache} cache (ref:{cache} against ref:f16): {trend_text(kv_trend)}; the TEST weights "
        f"(test:f16 against ref:f16): {trend_text(w_trend)}"
        if kv_trend is not None and w_trend is not None
        else f"no {retrieval.probe} items to compare"
    )
    names = {"ref": result["models"]["ref"]["name"], "test": result["models"]["test"]["name"]}
    head = {
        "kv": f"The KV cache is at fault, not the weights: {names['test']} vs {names['ref']} with an f16 "
        "cache differ by less than the noise",
        "weights": f"The weights are at fault, not the {cache} cache",
        "both": f"Both the {cache} cache and the weights ({names['test']} vs {names['ref']}) are at fault",
        "neither": f"Neither the {cache} cache nor the weights change the answers beyond the noise",
        "inconclusive": "Weights vs KV cache is inconclusive: neither effect is significant, nor excluded",
    }[fault]
    return {
        "cache": cache,
        "fault": fault,
        "reason": reason,
        "effects": effects,
        "trends": dict(trends),
        "sentence": f"{head}; {reason}.",
    }
