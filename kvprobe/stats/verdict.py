"""The verdict: onset, effective context and decay per configuration, which half of the cache
is at fault, and the sentences shown to the user. Pure functions of result data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from kvprobe.cache_types import CacheConfig, ConfigId
from kvprobe.probes import all_probes
from kvprobe.probes.rows import pooled_row
from kvprobe.stats.analysis import (
    EFFECTIVE_THRESHOLD,
    effective_context,
    halving_interval,
    onset,
    paired_rows,
)
from kvprobe.stats.metrics import ALPHA, by_name, paired_item_metrics

POWER_Z = 1.6449 + 0.8416  # one-sided alpha 0.05, power 0.8


def more_items_needed(p_worse: float, n: int) -> int | None:
    """About how many more paired items would make the observed effect significant at
    alpha = 0.05 with 80% power, scaling z = Φ⁻¹(1 − p) with √n. None if the effect points the
    other way (no number of items would show a loss)."""
    if p_worse >= 0.5 or n == 0:
        return None
    z = float(sps.norm.isf(p_worse))
    needed = math.ceil(n * (POWER_Z / z) ** 2)
    return max(0, needed - n)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _diff(r: dict[str, Any], unit: str = "") -> str:
    """A difference with its interval: "-0.20 [-0.33, -0.07]"."""
    return f"{r['diff']:+.2f}{unit} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]"


def config_verdict(
    items: Sequence[dict[str, Any]],
    baseline: str,
    config: str,
    divergence_onset: dict[str, Any] | None,
    *,
    seed: int,
    threshold: float = EFFECTIVE_THRESHOLD,
) -> dict[str, Any]:
    rows = paired_rows(items, baseline, config, seed)
    acc = [r for r in rows if r["metric"] == "accuracy"]
    lp = [r for r in rows if r["metric"] == "answer_logprob"]
    out: dict[str, Any] = {"config": config, "paired": rows}
    if not acc:
        out.update(onset_accuracy=None, onset_logprob=None, effective_context=None, halving=None)
        return out
    out["onset_accuracy"] = onset(acc)
    out["onset_logprob"] = onset(lp)
    out["effective_context"] = effective_context(
        {r["ctx"]: r["test_value"] for r in acc}, {r["ctx"]: r["baseline_value"] for r in acc}, threshold
    )
    out["effective_threshold"] = threshold
    mine = [it for it in items if it["probe"] == "needle" and it["config"] == config]
    reference = acc[0]["baseline_value"]
    halving = halving_interval(
        [it["ctx"] for it in mine], [float(it["correct"]) for it in mine], reference, seed
    )
    out["halving"] = {
        "length": halving.length,
        "ci": halving.ci,
        "reference_accuracy": reference,
        "not_estimable": halving.reason,
    }
    out["divergence_onset"] = divergence_onset["ctx"] if divergence_onset else None
    return out


def needle_sentence(v: dict[str, Any], baseline: str, config: str) -> str | None:
    """The needle probe's sentence for one configuration's verdict (None without needle items)."""
    acc = [r for r in v["paired"] if r["metric"] == "accuracy"]
    lp = [r for r in v["paired"] if r["metric"] == "answer_logprob"]
    if not acc:
        return None
    eff, share = v["effective_context"], f"{v['effective_threshold']:.0%} of {baseline}'s accuracy"
    eff_text = (
        f"effective context {eff:,} tokens (keeps >= {share})"
        if eff
        else f"below {share} already at {acc[0]['ctx']:,} tokens"
    )
    halving = v["halving"]
    if halving and halving["length"] is not None and halving["ci"]:
        lo, hi = halving["ci"]
        upper = f"{hi:,.0f}" if hi is not None else "beyond 16x the longest context"
        bounds = f"[{lo:,.0f}, {upper}]" if lo is not None else "(interval not within reach)"
        eff_text += f"; by a logistic fit, accuracy halves at about {halving['length']:,.0f} tokens {bounds}"
    if v["onset_accuracy"] is not None:
        r = next(r for r in acc if r["ctx"] == v["onset_accuracy"])
        earlier = ""
        if v["onset_logprob"] is not None and v["onset_logprob"] < r["ctx"]:
            earlier = f" (the answers' log-probability already from {v['onset_logprob']:,})"
        return (
            f"With a {config} cache, needle accuracy falls significantly below the {baseline} reference from "
            f"{r['ctx']:,} tokens on ({_diff(r)}, Holm p = {_fmt_p(r['p_holm'])}){earlier}; {eff_text}."
        )
    if v["onset_logprob"] is not None:
        r = next(r for r in lp if r["ctx"] == v["onset_logprob"])
        return (
            f"With a {config} cache, needle accuracy does not fall significantly, but the answers' "
            f"log-probability does from {r['ctx']:,} tokens on ({_diff(r, ' nats')}, "
            f"Holm p = {_fmt_p(r['p_holm'])}); {eff_text}."
        )
    last = lp[-1] if lp else acc[-1]
    more = more_items_needed(last["p_worse"], last["n"])
    if more is None:
        decide = "the estimate points to no loss at all"
    else:
        decide = f"inconclusive: about {more} more items at {last['ctx']:,} tokens would decide"
    return (
        f"With a {config} cache, no significant loss against {baseline} at any checkpoint "
        f"(at {last['ctx']:,}: {last['metric']} {_diff(last)}); {decide}; {eff_text}."
    )


def _half_evidence(v: dict[str, Any], summary: Sequence[dict[str, Any]], config: str) -> dict[str, Any]:
    lp = [r for r in v["paired"] if r["metric"] == "answer_logprob"]
    last = lp[-1] if lp else None
    kld = pooled_row(summary, config)
    return {
        "config": config,
        "onset": v["onset_accuracy"] or v["onset_logprob"],
        "logprob_diff": last["diff"] if last else None,
        "logprob_ci": last["ci"] if last else None,
        "logprob_p_holm": last["p_holm"] if last else None,
        "ctx": last["ctx"] if last else None,
        "kld_mean": kld["value"] if kld else None,
        "kld_ci": kld["ci"] if kld else None,
    }


def k_vs_v(
    verdicts: dict[str, dict[str, Any]], summary: Sequence[dict[str, Any]], quant: str
) -> dict[str, Any] | None:
    """Which half of a `quant` cache is at fault, from the K-only and V-only configurations."""
    k_id, v_id = CacheConfig(quant, "f16").id, CacheConfig("f16", quant).id
    if k_id not in verdicts or v_id not in verdicts:
        return None
    k, v = _half_evidence(verdicts[k_id], summary, k_id), _half_evidence(verdicts[v_id], summary, v_id)

    def significant(e: dict[str, Any]) -> bool:
        return e["onset"] is not None or (e["logprob_p_holm"] is not None and e["logprob_p_holm"] < ALPHA)

    def kl_clearly_above(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return bool(
            a["kld_ci"]
            and b["kld_ci"]
            and a["kld_ci"][0] > b["kld_ci"][1]
            and a["kld_mean"] > 2 * b["kld_mean"]
        )

    if significant(k) and significant(v):
        fault, why = "both", "both K-only and V-only lose significantly against the reference"
    elif significant(k) or significant(v):
        fault = "K" if significant(k) else "V"
        why = f"only the {fault}-only configuration loses significantly on the needles"
    elif kl_clearly_above(k, v):
        fault, why = "K", "neither loses on the needles, but K-only's KL is more than twice V-only's"
    elif kl_clearly_above(v, k):
        fault, why = "V", "neither loses on the needles, but V-only's KL is more than twice K-only's"
    else:
        fault, why = "inconclusive", "neither half separates from the other"
    return {
        "quant": quant,
        "fault": fault,
        "reason": why,
        "k_only": k,
        "v_only": v,
        "sentence": _kv_sentence(fault, why, k, v, quant),
    }


def _evidence_text(e: dict[str, Any]) -> str:
    parts = []
    if e["logprob_diff"] is not None:
        p = _fmt_p(e["logprob_p_holm"])
        parts.append(f"answer log-prob {e['logprob_diff']:+.2f} at {e['ctx']:,} (Holm p = {p})")
    if e["kld_mean"] is not None:
        parts.append(f"mean KL {e['kld_mean']:.3g} [{e['kld_ci'][0]:.3g}, {e['kld_ci'][1]:.3g}]")
    return ", ".join(parts)


def _kv_sentence(fault: str, why: str, k: dict[str, Any], v: dict[str, Any], quant: str) -> str:
    head = {
        "K": f"The K half of the {quant} cache is at fault, not V",
        "V": f"The V half of the {quant} cache is at fault, not K",
        "both": f"Both halves of the {quant} cache are at fault",
        "inconclusive": f"Which half of the {quant} cache is at fault is inconclusive",
    }[fault]
    return f"{head}: {why} (K-only: {_evidence_text(k)}; V-only: {_evidence_text(v)})."


def build_verdict(result: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The result file's `verdict`: per test configuration, K-vs-V for split runs, sentences."""
    baseline = result.get("baseline")
    if baseline is None:
        return None
    onsets = (result.get("divergence") or {}).get("onset", {})
    per_config = {
        c["id"]: config_verdict(result["items"], baseline, c["id"], onsets.get(c["id"]), seed=seed)
        for c in result["configs"]
        if c["id"] != baseline
    }
    quants = sorted(
        {c["type_k"] for c in result["configs"] if c["type_k"] == c["type_v"] and c["type_k"] != baseline}
    )
    halves = [kv for q in quants if (kv := k_vs_v(per_config, result["summary"], q)) is not None]
    for cid, v in per_config.items():  # the first probe (in registry order) with a sentence gives it
        sentence = next((s for p in all_probes() if (s := p.sentence(result, cid, baseline, v))), None)
        if sentence:
            v["sentence"] = sentence
    sentences = [v["sentence"] for v in per_config.values() if v.get("sentence")]
    sentences += [h["sentence"] for h in halves]
    attribution = weights_vs_kv(result, seed)
    if attribution:
        sentences.append(attribution["sentence"])
    return {"configs": per_config, "k_vs_v": halves, "weights_vs_kv": attribution, "sentences": sentences}


# --- weights vs KV: the 2x2 design ------------------------------------------------------------


def _interaction(items: Sequence[dict[str, Any]], cache: str, metric: str, seed: int) -> list[dict[str, Any]]:
    """Per checkpoint, the mean of (test:q − test:f16) − (ref:q − ref:f16) over items, with a
    bootstrap interval and a two-sided Wilcoxon p."""
    from kvprobe.stats.inference import bootstrap_mean_interval
    from kvprobe.stats.inference import wilcoxon_paired as wilcoxon

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
    rows = []
    for ctx, values in sorted(by_ctx.items()):
        lo, hi = bootstrap_mean_interval(values, seed=seed)
        p = wilcoxon(values, [0.0] * len(values))
        rows.append({"ctx": ctx, "diff": float(np.mean(values)), "ci": [lo, hi], "p": p, "n": len(values)})
    return rows


def _negligible(metric: str) -> float:
    """An interval within ± this is "no effect" (kvprobe.stats.metrics)."""
    band = by_name(metric).negligible
    if band is None:
        raise KeyError(f"metric {metric} has no negligible band")
    return band


def weights_vs_kv(result: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The KV effect at fixed weights, the weight effect at an f16 cache, their interaction,
    per checkpoint with intervals; and the fault: kv, weights, both, neither or inconclusive."""
    ids = {c["id"] for c in result["configs"]}
    parsed = [ConfigId.parse(i) for i in ids]
    caches = sorted({p.cache.id for p in parsed if p.weights == "ref" and p.cache.id != "f16"})
    if not result.get("models") or "test:f16" not in ids or not caches:
        return None
    cache = caches[0]
    items = result["items"]
    effects: dict[str, Any] = {}
    for metric in ("accuracy", "answer_logprob"):
        kv_ref = [r for r in paired_rows(items, "ref:f16", f"ref:{cache}", seed) if r["metric"] == metric]
        kv_test = [r for r in paired_rows(items, "test:f16", f"test:{cache}", seed) if r["metric"] == metric]
        weights = [r for r in paired_rows(items, "ref:f16", "test:f16", seed) if r["metric"] == metric]
        effects[metric] = {
            "kv_at_ref_weights": kv_ref,
            "kv_at_test_weights": kv_test,
            "weights_at_f16_cache": weights,
            "interaction": _interaction(items, cache, metric, seed),
        }

    def significant(rows: list[dict[str, Any]]) -> bool:
        return any(r["p_holm"] < ALPHA for r in rows)

    def negligible(rows: list[dict[str, Any]], metric: str) -> bool:
        return all(
            abs(r["ci"][0]) <= _negligible(metric) and abs(r["ci"][1]) <= _negligible(metric) for r in rows
        )

    kv = any(significant(e["kv_at_ref_weights"]) for e in effects.values())
    w = any(significant(e["weights_at_f16_cache"]) for e in effects.values())
    lp = effects["answer_logprob"]
    kv_rows, w_rows = lp["kv_at_ref_weights"], lp["weights_at_f16_cache"]
    kv_growth = (kv_rows[-1]["diff"] - kv_rows[0]["diff"]) if kv_rows else 0.0
    shortest = w_rows[0] if w_rows else None
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
    grows = "grows" if kv_growth < -0.1 else "does not grow"
    reason = (
        f"the {cache} cache changes the answer log-prob by {kv_rows[0]['diff']:+.2f} nats at "
        f"{kv_rows[0]['ctx']:,} and {kv_rows[-1]['diff']:+.2f} at {kv_rows[-1]['ctx']:,} (a cache effect "
        f"{grows} with context); the TEST weights change it by {_diff(shortest, ' nats')} already at "
        f"{shortest['ctx']:,}"
        if kv_rows and shortest
        else "no needle items to compare"
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
        "sentence": f"{head}; {reason}.",
    }
