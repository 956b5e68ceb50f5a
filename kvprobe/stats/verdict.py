"""The verdict: per configuration, equivalence to the reference at each checkpoint (TOST
against stated margins), the effective context that follows, the onset of a significant loss
and the decay; which half of the cache is at fault; the sentences shown to the user. Pure
functions of result data. The recommendation built on it is kvprobe.stats.decision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from kvprobe.api import ALPHA, all_probes, by_name, margins, metric_table, paired_item_metrics, pooled_row
from kvprobe.cache_types import CacheConfig
from kvprobe.stats.analysis import (
    EFFECTIVE_THRESHOLD,
    effective_context,
    halving_interval,
    onset,
    paired_rows,
    paired_values,
)
from kvprobe.stats.equivalence import EQUIVALENT, MAX_ITEMS, UNDECIDED, WORSE, Tost, bound_test, tost
from kvprobe.stats.inference import difference_test
from kvprobe.stats.weights_vs_kv import weights_vs_kv

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


# --- equivalence per checkpoint ----------------------------------------------------------------


def checkpoint_tests(
    items: Sequence[dict[str, Any]],
    baseline: str,
    config: str,
    spans: Sequence[dict[str, Any]],
    margin: Mapping[str, float],
    *,
    seed: int = 0,
) -> dict[int, list[Tost]]:
    """Per checkpoint, the equivalence test of every metric that has a margin: paired TOST on
    the items of per-item metrics, the one-sided bound on the position spans of divergence
    metrics (their 95% intervals come with the spans)."""
    out: dict[int, list[Tost]] = {}
    for metric in paired_item_metrics():
        if metric.name not in margin:
            continue
        for ctx, (t, b) in paired_values(items, metric, baseline, config).items():
            out.setdefault(ctx, []).append(
                tost(t, b, margin[metric.name], metric=metric.name, binary=metric.binary,
                     lower_is_worse=bool(metric.lower_is_worse), seed=seed)
            )  # fmt: skip
    for span in spans:
        for name, bound in margin.items():
            if name in span:
                found = span[name]
                test = bound_test(
                    found["value"], found["ci"], bound, metric=name, n=int(found.get("n", span["n"]))
                )
                if found["ci"][1] is None and test.status != WORSE and by_name(name).name in TAIL_METRICS:
                    continue  # too few positions to bound a tail from above: it can only rule out
                out.setdefault(int(span["ctx"]), []).append(test)
    return dict(sorted(out.items()))


TAIL_METRICS = ("kld_p999",)  # bounded only where enough positions exist; otherwise they can only rule out


def combine(tests: Sequence[Tost]) -> tuple[str, list[str]]:
    """One checkpoint's status from its metrics' tests, and the metrics that decided it.

    Worse if any metric is worse beyond its margin. Equivalent if every metric is, except that
    a pass/fail metric left undecided does not block when a continuous metric of the same probe
    (for needle accuracy: the answer log-prob, which measures the same answers more finely) is
    equivalent: on tens of items accuracy can rarely show ±0.05. Undecided otherwise."""
    worse = [t.metric for t in tests if t.status == WORSE]
    if worse:
        return WORSE, worse
    table = {m.name: m for m in metric_table()}

    def covered(t: Tost) -> bool:
        """A pass/fail metric whose probe has a continuous metric shown equivalent here."""
        m = table.get(t.metric)
        return bool(m and m.binary) and any(
            o.status == EQUIVALENT and (om := table.get(o.metric)) is not None and not om.binary
            and om.probe == m.probe  # type: ignore[union-attr]
            for o in tests
        )  # fmt: skip

    blocking = [t.metric for t in tests if t.status == UNDECIDED and not covered(t)]
    if tests and not blocking:
        return EQUIVALENT, [t.metric for t in tests if t.status == EQUIVALENT]
    return UNDECIDED, blocking or [t.metric for t in tests]


def equivalence(
    tests: dict[int, list[Tost]], loss_onset: int | None, checkpoints: Sequence[int]
) -> dict[str, Any]:
    """The per-checkpoint statuses, the effective context and the configuration's status.

    The effective context is the longest checkpoint up to which every checkpoint is shown
    equivalent and none lies at or past the onset of a significant loss: so it always ends
    before the onset. The configuration is `equivalent` when that reaches the longest checkpoint
    measured, `worse` when some checkpoint is worse beyond the margins, else `undecided`."""
    rows = []
    effective: int | None = None
    open_prefix = True
    for ctx in checkpoints:
        found = tests.get(ctx, [])
        status, decided_by = combine(found) if found else (UNDECIDED, [])
        loss = loss_onset is not None and ctx >= loss_onset
        open_prefix = open_prefix and status == EQUIVALENT and not loss
        if open_prefix:
            effective = ctx
        needed = [t.items_needed for t in found if t.metric in decided_by and t.items_needed is not None]
        rows.append({
            "ctx": ctx, "status": status, "decided_by": decided_by, "significant_loss": loss,
            "items_needed": max(needed) if status == UNDECIDED and needed else None,
            "tests": [t.to_json() for t in found],
        })  # fmt: skip
    longest = checkpoints[-1] if checkpoints else None
    first_worse = next((r["ctx"] for r in rows if r["status"] == WORSE), None)
    if longest is not None and effective == longest:
        status = EQUIVALENT
    elif first_worse is not None:
        status = WORSE
    else:
        status = UNDECIDED
    return {
        "status": status,
        "effective_context": effective,
        "first_worse": first_worse,
        "checkpoints": rows,
    }


# --- the 85% figure, secondary ------------------------------------------------------------------


def accuracy_share_context(
    items: Sequence[dict[str, Any]],
    baseline: str,
    config: str,
    *,
    seed: int,
    threshold: float = EFFECTIVE_THRESHOLD,
    n_boot: int = 400,
) -> dict[str, Any] | None:
    """The longest checkpoint up to which the configuration keeps >= threshold of the
    reference's needle accuracy (point estimate), with a percentile-bootstrap 95% interval
    resampling the paired items within each checkpoint. 0 stands for "below the first"."""
    values = paired_values(items, by_name("accuracy"), baseline, config)
    if not values:
        return None
    arrays = {ctx: (np.asarray(t), np.asarray(b)) for ctx, (t, b) in values.items()}

    def point(chosen: dict[int, np.ndarray] | None) -> int:
        test, base = {}, {}
        for ctx, (t, b) in arrays.items():
            idx = chosen[ctx] if chosen is not None else np.arange(len(t))
            test[ctx], base[ctx] = float(t[idx].mean()), float(b[idx].mean())
        return effective_context(test, base, threshold) or 0

    rng = np.random.default_rng(seed)
    boots = sorted(
        point({ctx: rng.integers(0, len(t), len(t)) for ctx, (t, _) in arrays.items()}) for _ in range(n_boot)
    )
    lo, hi = boots[math.floor(0.025 * (n_boot - 1))], boots[math.ceil(0.975 * (n_boot - 1))]
    return {"threshold": threshold, "ctx": point(None), "ci": [lo, hi], "first": min(arrays)}


def config_verdict(
    items: Sequence[dict[str, Any]],
    baseline: str,
    config: str,
    divergence_onset: dict[str, Any] | None,
    *,
    seed: int,
    spans: Sequence[dict[str, Any]] = (),
    checkpoints: Sequence[int] = (),
    margin: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    rows = paired_rows(items, baseline, config, seed)
    acc = [r for r in rows if r["metric"] == "accuracy"]
    lp = [r for r in rows if r["metric"] == "answer_logprob"]
    out: dict[str, Any] = {"config": config, "paired": rows}
    out["onset_accuracy"] = onset(acc) if acc else None
    out["onset_logprob"] = onset(lp) if lp else None
    losses = [o for o in (out["onset_accuracy"], out["onset_logprob"]) if o is not None]
    tests = checkpoint_tests(
        items, baseline, config, spans, margin if margin is not None else margins(), seed=seed
    )
    measured = sorted(set(checkpoints) | set(tests)) if tests else list(checkpoints)
    out["equivalence"] = equivalence(tests, min(losses) if losses else None, measured)
    out["effective_context"] = out["equivalence"]["effective_context"]
    out["divergence_onset"] = divergence_onset["ctx"] if divergence_onset else None
    if not acc:
        out.update(accuracy_share=None, halving=None)
        return out
    out["accuracy_share"] = accuracy_share_context(items, baseline, config, seed=seed)
    reference = acc[0]["baseline_value"]
    if out["onset_accuracy"] is None:  # no measured loss: a fitted collapse would be extrapolation
        out["halving"] = {
            "length": None,
            "ci": None,
            "reference_accuracy": reference,
            "not_estimable": "accuracy does not fall significantly: nothing to fit a decay to",
        }
        return out
    mine = [it for it in items if it["probe"] == "needle" and it["config"] == config]
    halving = halving_interval(
        [it["ctx"] for it in mine], [float(it["correct"]) for it in mine], reference, seed
    )
    out["halving"] = {
        "length": halving.length,
        "ci": halving.ci,
        "reference_accuracy": reference,
        "not_estimable": halving.reason,
    }
    return out


# --- sentences ----------------------------------------------------------------------------------

_UNITS = {"answer_logprob": " nats", "kld_mean": " nats", "kld_p999": " nats"}
_NAMES = {
    "accuracy": "accuracy",
    "answer_logprob": "answer log-prob",
    "kld_mean": "mean KL",
    "kld_p999": "KL 99.9th percentile",
}


def tost_text(t: dict[str, Any]) -> str:
    """One test in words: "answer log-prob +0.07 [95%: +0.03, +0.11] within ±0.25 nats"."""
    name, unit = _NAMES.get(t["metric"], t["metric"]), _UNITS.get(t["metric"], "")
    lo, hi = t["ci"]
    if t["kind"] == "bound":
        where = {EQUIVALENT: "below", WORSE: "above"}.get(t["status"], "against")
        if hi is None:
            ends = f"[95%: at least {lo:.3g}]" if lo is not None else "[95%: too few positions to bound]"
        else:
            ends = f"[95%: {lo:.3g}, {hi:.3g}]"
        return f"{name} {t['value']:.3g} {ends} {where} the {t['margin']:g}{unit} bound"
    where = {EQUIVALENT: "within", WORSE: "beyond"}.get(t["status"], "undecided against")
    ends = (
        f"[95%: {lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else f"[too few items: {t['n']}]"
    )
    return f"{name} {t['value']:+.2f} {ends} {where} ±{t['margin']:g}{unit}"


def items_text(n: int) -> str:
    return f"more than {MAX_ITEMS:,} items" if n >= MAX_ITEMS else f"about {n:,} items"


def equivalence_sentence(v: dict[str, Any], baseline: str, config: str) -> str | None:
    """The configuration's equivalence to the reference, its effective context and why."""
    eq = v.get("equivalence")
    if not eq or not eq["checkpoints"]:
        return None
    rows = {r["ctx"]: r for r in eq["checkpoints"]}
    longest = max(rows)
    eff = eq["effective_context"]
    eff_text = (
        f"effective context {eff:,} tokens" if eff else f"no effective context (not even {min(rows):,})"
    )
    if eq["status"] == EQUIVALENT:
        r = rows[longest]
        tests = "; ".join(tost_text(t) for t in r["tests"])
        return (
            f"{config} is equivalent to {baseline} up to {longest:,} tokens, the longest measured "
            f"(at {longest:,}: {tests}); {eff_text}."
        )
    if eq["status"] == WORSE:
        r = rows[eq["first_worse"]]
        decisive = [t for t in r["tests"] if t["metric"] in r["decided_by"]]
        tail = ""
        if r["decided_by"] == ["kld_p999"]:
            tail = " (decided by the tail of the KL distribution, not its mean)"
        return (
            f"{config} is worse than {baseline} beyond the margins from {r['ctx']:,} tokens on"
            f"{tail} ({'; '.join(tost_text(t) for t in decisive)}); {eff_text}."
        )
    first = next(r for r in eq["checkpoints"] if r["status"] != EQUIVALENT or r["significant_loss"])
    if first["status"] == EQUIVALENT:  # equivalent within the margins, yet a significant loss
        return (
            f"{config} stays within the margins of {baseline} at {first['ctx']:,} tokens, but its loss is "
            f"significant from there on, so its {eff_text}."
        )
    if not any(r["tests"] for r in eq["checkpoints"]):
        return (
            f"Whether {config} is equivalent to {baseline} is undecided: no metric with an equivalence "
            f"margin was measured (the needle and divergence probes have them); {eff_text}."
        )
    if not first["tests"]:
        return (
            f"Whether {config} is equivalent to {baseline} is undecided: nothing measured at "
            f"{first['ctx']:,} tokens; {eff_text}."
        )
    decisive = [t for t in first["tests"] if t["metric"] in first["decided_by"]] or first["tests"]
    needed = (
        f"; {items_text(first['items_needed'])} at {first['ctx']:,} tokens would decide"
        if first["items_needed"]
        else ""
    )
    tests = "; ".join(tost_text(t) for t in decisive) or "nothing measured there"
    return (
        f"Whether {config} is equivalent to {baseline} at {first['ctx']:,} tokens is undecided "
        f"({tests}){needed}; {eff_text}."
    )


def needle_sentence(v: dict[str, Any], baseline: str, config: str) -> str | None:
    """The needle probe's detail for one configuration: the onset of a significant loss, the
    85% share as a secondary figure with its interval, and the decay fit where accuracy fell."""
    acc = [r for r in v["paired"] if r["metric"] == "accuracy"]
    lp = [r for r in v["paired"] if r["metric"] == "answer_logprob"]
    if not acc:
        return None
    if v["onset_accuracy"] is not None:
        r = next(r for r in acc if r["ctx"] == v["onset_accuracy"])
        earlier = ""
        if v["onset_logprob"] is not None and v["onset_logprob"] < r["ctx"]:
            earlier = f" (the answers' log-probability already from {v['onset_logprob']:,})"
        head = (
            f"Its needle accuracy falls significantly below {baseline} from {r['ctx']:,} tokens on "
            f"({_diff(r)}, Holm p = {_fmt_p(r['p_holm'])}){earlier}"
        )
    elif v["onset_logprob"] is not None:
        r = next(r for r in lp if r["ctx"] == v["onset_logprob"])
        head = (
            f"Its needle accuracy does not fall significantly, but the answers' log-probability does "
            f"from {r['ctx']:,} tokens on ({_diff(r, ' nats')}, Holm p = {_fmt_p(r['p_holm'])})"
        )
    else:
        last = lp[-1] if lp else acc[-1]
        head = (
            f"No significant needle loss at any checkpoint (at {last['ctx']:,}: {last['metric']} "
            f"{_diff(last)})"
        )
    share = v.get("accuracy_share")
    if share:
        pct = f"{share['threshold']:.0%} of {baseline}'s accuracy"

        def at(c: int) -> str:
            return f"{c:,}" if c else f"below {share['first']:,}"

        lo, hi = share["ci"]
        interval = f"bootstrap 95% interval {at(lo)} to {at(hi)}"
        head += (
            f"; secondary: it keeps >= {pct} up to {share['ctx']:,} tokens ({interval})"
            if share["ctx"]
            else f"; secondary: below {pct} already at {share['first']:,} tokens ({interval})"
        )
    halving = v.get("halving")
    if v["onset_accuracy"] is not None and halving and halving["length"] is not None and halving["ci"]:
        lo, hi = halving["ci"]
        upper = f"{hi:,.0f}" if hi is not None else "beyond 16x the longest context"
        bounds = f"[{lo:,.0f}, {upper}]" if lo is not None else "(interval not within reach)"
        head += f"; by a logistic fit, accuracy halves at about {halving['length']:,.0f} tokens {bounds}"
    return head + "."


# --- which half of the cache ---------------------------------------------------------------------


def _half_evidence(v: dict[str, Any], summary: Sequence[dict[str, Any]], config: str) -> dict[str, Any]:
    lp = [r for r in v["paired"] if r["metric"] == "answer_logprob"]
    last = lp[-1] if lp else None
    kld = pooled_row(summary, config)
    return {
        "config": config,
        "status": (v.get("equivalence") or {}).get("status"),
        "onset": v["onset_accuracy"] or v["onset_logprob"],
        "logprob_diff": last["diff"] if last else None,
        "logprob_ci": last["ci"] if last else None,
        "logprob_p_holm": last["p_holm"] if last else None,
        "ctx": last["ctx"] if last else None,
        "kld_mean": kld["value"] if kld else None,
        "kld_ci": kld["ci"] if kld else None,
    }


def _contrast(
    items: Sequence[dict[str, Any]], k_id: str, v_id: str, metric_name: str, seed: int
) -> dict[str, Any] | None:
    """K-only against V-only directly, paired on the items, at the longest checkpoint both have:
    (K-only - V-only) with its 95% interval and two-sided p."""
    metric = by_name(metric_name)
    values = paired_values(items, metric, v_id, k_id)
    if not values:
        return None
    ctx = max(values)
    k, v = values[ctx]
    d = difference_test(k, v, binary=metric.binary, paired=True, seed=seed)
    return {"metric": metric_name, "ctx": ctx, "diff": d.diff, "ci": list(d.ci), "p": d.p, "n": len(k)}


def k_vs_v(
    verdicts: dict[str, dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    quant: str,
    *,
    items: Sequence[dict[str, Any]] = (),
    margin: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Which half of a `quant` cache is at fault, from the K-only and V-only configurations.

    Each line of evidence compares the halves directly and counts only when the difference is
    both significant and material: mean KL with non-overlapping 95% intervals, one at least
    twice the other and above half the KL bound; answer log-prob and accuracy by a paired test
    of K-only against V-only, differing by at least half their margin. Agreeing evidence names
    one half; conflicting evidence is `undecided`. Without separating evidence: `both` when
    both halves are worse than the reference beyond the margins, `neither` when both are
    equivalent, else `undecided`. A marginal p-value on a tiny effect cannot overrule a large
    one, since neither counts unless it is material."""
    k_id, v_id = CacheConfig(quant, "f16").id, CacheConfig("f16", quant).id
    if k_id not in verdicts or v_id not in verdicts:
        return None
    m = dict(margins()) | dict(margin or {})
    k, v = _half_evidence(verdicts[k_id], summary, k_id), _half_evidence(verdicts[v_id], summary, v_id)
    evidence: list[dict[str, Any]] = []
    if k["kld_ci"] and v["kld_ci"]:
        hi, lo = (k, v) if k["kld_mean"] >= v["kld_mean"] else (v, k)
        separated = hi["kld_ci"][0] > lo["kld_ci"][1]
        material = hi["kld_mean"] >= 2 * lo["kld_mean"] and hi["kld_mean"] > m.get("kld_mean", 0.0) / 2
        evidence.append({
            "metric": "kld_mean", "k": k["kld_mean"], "v": v["kld_mean"],
            "points_to": ("K" if hi is k else "V") if separated and material else None,
        })  # fmt: skip
    for name in ("answer_logprob", "accuracy"):
        c = _contrast(items, k_id, v_id, name, seed)
        if c is None:
            continue
        material = abs(c["diff"]) >= m.get(name, 0.0) / 2
        c["points_to"] = ("K" if c["diff"] < 0 else "V") if c["p"] < ALPHA and material else None
        evidence.append(c)
    directions = {e["points_to"] for e in evidence if e["points_to"]}
    both_worse = k["status"] == WORSE and v["status"] == WORSE
    more_sensitive = next(iter(directions)) if len(directions) == 1 else None
    if len(directions) == 2:
        fault, why = UNDECIDED, "the evidence conflicts: " + _evidence_list(evidence)
    elif directions and both_worse:
        fault = "both"
        why = (
            f"both halves are worse than the reference beyond the margins, {more_sensitive} more so "
            f"({_evidence_list(evidence)})"
        )
    elif directions and k["status"] == EQUIVALENT and v["status"] == EQUIVALENT:
        fault = "neither"
        why = f"both halves are equivalent to the reference, though {_evidence_list(evidence)}"
    elif directions:
        fault = directions.pop()
        why = f"{_evidence_list(evidence)}; no evidence points the other way"
    elif both_worse:
        fault = "both"
        why = "both halves are worse than the reference beyond the margins; neither separates from the other"
    elif k["status"] == EQUIVALENT and v["status"] == EQUIVALENT:
        fault, why = "neither", "both halves are equivalent to the reference"
    else:
        fault, why = UNDECIDED, "neither half separates from the other"
    return {
        "quant": quant,
        "fault": fault,
        "more_sensitive": more_sensitive,  # the half the evidence points to, also when both are at fault
        "reason": why,
        "evidence": evidence,
        "k_only": k,
        "v_only": v,
        "sentence": _kv_sentence(fault, why, k, v, quant),
    }


def _evidence_list(evidence: Sequence[dict[str, Any]]) -> str:
    parts = []
    for e in evidence:
        if not e["points_to"]:
            continue
        if e["metric"] == "kld_mean":
            parts.append(f"mean KL (K-only {e['k']:.3g}, V-only {e['v']:.3g}) points to {e['points_to']}")
        else:
            parts.append(
                f"{_NAMES[e['metric']]} K-only minus V-only {_diff(e)} at {e['ctx']:,} "
                f"(p = {_fmt_p(e['p'])}) points to {e['points_to']}"
            )
    return "; ".join(parts) or "no evidence separates the halves"


def _evidence_text(e: dict[str, Any]) -> str:
    parts = [f"{e['status'] or 'no equivalence test'}"]
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
        "neither": f"Neither half of the {quant} cache is at fault",
        UNDECIDED: f"Which half of the {quant} cache is at fault is undecided",
    }[fault]
    return f"{head}: {why} (K-only: {_evidence_text(k)}; V-only: {_evidence_text(v)})."


# --- the whole verdict ---------------------------------------------------------------------------


def reference_checks(
    items: list[dict[str, Any]], baseline: str, prompt: Mapping[str, Any], checkpoints: list[int]
) -> list[str]:
    """Each probe's word on the reference at the shortest checkpoint (kvprobe.api)."""
    if not checkpoints:
        return []
    return [s for p in all_probes() if (s := p.reference_check(items, baseline, prompt, min(checkpoints)))]


def build_verdict(
    result: dict[str, Any], seed: int, margin: Mapping[str, float] | None = None
) -> dict[str, Any] | None:
    """The result file's `verdict`: per test configuration, K-vs-V for split runs, weights vs
    KV for two weight files, the recommendation, and the sentences."""
    from kvprobe.stats.decision import decide

    baseline = result.get("baseline")
    if baseline is None:
        return None
    used = dict(margins()) | dict(margin or {})
    section = result.get("divergence") or {}
    onsets, spans = section.get("onset", {}), section.get("spans") or {}
    checkpoints = (result.get("run") or {}).get("checkpoints") or []
    per_config = {
        c["id"]: config_verdict(
            result["items"],
            baseline,
            c["id"],
            onsets.get(c["id"]),
            seed=seed,
            spans=spans.get(c["id"], []),
            checkpoints=checkpoints,
            margin=used,
        )
        for c in result["configs"]
        if c["id"] != baseline
    }
    quants = sorted(
        {
            c["type_k"]
            for c in result["configs"]
            if c["type_k"] == c["type_v"]
            and c["id"] != baseline
            and CacheConfig(c["type_k"], c["type_v"]).k_quantized
        }
    )
    halves = [
        kv
        for q in quants
        if (kv := k_vs_v(per_config, result["summary"], q, items=result["items"], margin=used, seed=seed))
        is not None
    ]
    for cid, v in per_config.items():
        parts = [equivalence_sentence(v, baseline, cid)]
        # the first probe (in registry order) with a detail sentence adds it
        parts.append(next((s for p in all_probes() if (s := p.sentence(result, cid, baseline, v))), None))
        v["sentence"] = " ".join(p for p in parts if p) or None
    checks = reference_checks(result["items"], baseline, result.get("prompt") or {}, checkpoints)
    sentences = [c[0].upper() + c[1:] + "." for c in checks]
    sentences += [v["sentence"] for v in per_config.values() if v.get("sentence")]
    sentences += [h["sentence"] for h in halves]
    attribution = weights_vs_kv(result, seed)
    if attribution:
        sentences.append(attribution["sentence"])
    verdict: dict[str, Any] = {
        "margins": used,
        "configs": per_config,
        "k_vs_v": halves,
        "weights_vs_kv": attribution,
        "sentences": sentences,
        "reference_check": checks,  # why the reference itself limits the verdict ([]: it does not)
    }
    verdict.update(decide(result, verdict))
    return verdict
