"""The verdict: per configuration, equivalence to the reference at each checkpoint (TOST
against stated margins), the effective context that follows, the onset of a significant loss
and the decay; which half of the cache is at fault; the sentences shown to the user. Pure
functions of result data. The recommendation built on it is kvprobe.stats.decision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats as sps

from kvprobe.api import (
    ALPHA,
    POOLED_DIVERGENCE,
    RETRIEVAL,
    RETRIEVAL_LOGPROB,
    all_probes,
    by_name,
    margins,
    metric_table,
    paired_item_metrics,
    pooled_metric,
    pooled_row,
)
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.record import ItemRow, JsonObject, Row, SummaryRow
from kvprobe.api.result import PromptRecord, ResultDoc
from kvprobe.stats.analysis import (
    onset,
    paired_rows,
    paired_values,
)
from kvprobe.stats.decision import decide
from kvprobe.stats.equivalence import EQUIVALENT, LEVEL, UNDECIDED, WORSE, Tost, bound_test, tost
from kvprobe.stats.inference import difference_test
from kvprobe.stats.parts import (
    CheckpointDoc,
    EquivalenceDoc,
    HalfDoc,
    HalfEvidenceDoc,
    KVsVDoc,
    PairedDoc,
    VerdictDoc,
)
from kvprobe.stats.sequential import Design
from kvprobe.stats.shape import config_trends, shape
from kvprobe.stats.weights_vs_kv import weights_vs_kv
from kvprobe.stats.words import diff_text, fmt_p, items_text, metric_words, tost_text

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


# --- equivalence per checkpoint ----------------------------------------------------------------


def checkpoint_tests(
    items: Sequence[ItemRow],
    baseline: str,
    config: str,
    spans: Sequence[Row],
    margin: Mapping[str, float],
    *,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[int, list[Tost]]:
    """Per checkpoint, the equivalence test of every metric that has a margin: paired TOST on
    the items of per-item metrics (their interval at `level`), the one-sided bound on the
    position spans of per-position metrics (their 95% intervals come with the spans,
    kvprobe.api PositionEvidence)."""
    out: dict[int, list[Tost]] = {}
    for metric in paired_item_metrics():
        if metric.name not in margin:
            continue
        for ctx, (t, b) in paired_values(items, metric, baseline, config).items():
            test = tost(t, b, margin[metric.name], metric=metric.name, binary=metric.binary,
                        lower_is_worse=bool(metric.lower_is_worse), seed=seed, level=level)  # fmt: skip
            out.setdefault(ctx, []).append(replace(test, scope=f"at {ctx:,} tokens"))
    for span in spans:
        for name, bound in margin.items():
            if name in span:
                found = span[name]
                test = bound_test(
                    found["value"], found["ci"], bound, metric=name, n=int(found.get("n", span["n"]))
                )
                covered = found.get("positions") or span.get("span")
                if covered:  # what the value covers (a file from before spans recorded it: unsaid)
                    test = replace(test, scope=f"positions {int(covered[0]):,}–{int(covered[1]) - 1:,}")
                if found["ci"][1] is None and test.status != WORSE and by_name(name).tail:
                    continue  # too few positions to bound a tail from above: it can only rule out
                if found.get("lower_bound") and test.status == EQUIVALENT:
                    # A KL over the top n + tail is a lower bound of the full KL: below the margin
                    # it shows nothing; above it, the full KL is above it too.
                    test = replace(test, status=UNDECIDED)
                out.setdefault(int(span["ctx"]), []).append(test)
    return dict(sorted(out.items()))


def sequential_tests(
    items: Sequence[ItemRow],
    baseline: str,
    config: str,
    spans: Sequence[Row],
    margin: Mapping[str, float],
    *,
    design: Design,
    seed: int = 0,
) -> tuple[dict[int, list[Tost]], dict[int, int]]:
    """checkpoint_tests look by look (--until-decided): at look j the items of documents 0..j,
    their intervals at the look's group-sequential level, the position spans from the look
    where they are final. A checkpoint is decided at its first look whose combined status is
    equivalent or worse, and keeps that look's tests; an undecided one keeps its last look's.
    Returns the tests and the look of each checkpoint."""
    # A checkpoint's look j is document j's arrival there: it is tested at look j's level only
    # when document j brought this configuration's items at it (or, at the evidence look, its
    # position spans), never again on older data at a later, looser level.
    arrived = {(int(it.get("doc", 0)), int(it["ctx"])) for it in items if it["config"] == config}
    span_ctx = {int(s["ctx"]) for s in spans}
    last = max([d for d, _ in arrived] + ([design.evidence_look] if span_ctx else []), default=-1)
    chosen: dict[int, list[Tost]] = {}
    looks: dict[int, int] = {}
    for j in range(min(last, design.looks - 1) + 1):
        seen = [it for it in items if int(it.get("doc", 0)) <= j]
        found = checkpoint_tests(
            seen, baseline, config, spans if j >= design.evidence_look else (), margin, seed=seed,
            level=design.level(j),
        )  # fmt: skip
        for ctx, tests in found.items():
            fresh = (j, ctx) in arrived or (j == design.evidence_look and ctx in span_ctx)
            if fresh and (ctx not in chosen or combine(chosen[ctx])[0] == UNDECIDED):
                chosen[ctx], looks[ctx] = tests, j
    return dict(sorted(chosen.items())), looks


def combine(tests: Sequence[Tost]) -> tuple[str, list[str]]:
    """One checkpoint's status from its metrics' tests, and the metrics that decided it.

    Worse if any metric is worse beyond its margin. Equivalent if every metric is, except that
    a pass/fail metric left undecided does not block when a continuous metric of the same probe
    (for retrieval accuracy: the answer log-prob, which measures the same answers more finely) is
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
) -> EquivalenceDoc:
    """The per-checkpoint statuses, the effective context and the configuration's status.

    The effective context is the longest checkpoint up to which every checkpoint is shown
    equivalent and none lies at or past the onset of a significant loss: so it always ends
    before the onset. The configuration is `equivalent` when that reaches the longest checkpoint
    measured, `worse` when some checkpoint is worse beyond the margins, else `undecided`."""
    rows: list[CheckpointDoc] = []
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


def loss_onsets(rows: Sequence[PairedDoc]) -> dict[str, int | None]:
    """The onsets of a significant loss of the retrieval metrics (kvprobe.api ROLES) in a
    configuration's paired rows: `onset_accuracy`, `onset_logprob`."""
    out: dict[str, int | None] = {}
    for key, role in (("onset_accuracy", RETRIEVAL), ("onset_logprob", RETRIEVAL_LOGPROB)):
        metric = pooled_metric(role)
        mine = [r for r in rows if metric is not None and r["metric"] == metric.name]
        out[key] = onset(mine) if mine else None
    return out


def config_verdict(
    items: Sequence[ItemRow],
    baseline: str,
    config: str,
    position_onset: Row | None,
    *,
    seed: int,
    spans: Sequence[Row] = (),
    checkpoints: Sequence[int] = (),
    margin: Mapping[str, float] | None = None,
    design: Design | None = None,
    blocks: Sequence[tuple[int, np.ndarray]] = (),
    loss_metric: str | None = None,
    stride: int = 1,
) -> JsonObject:  # every probe adds its own fields (Probe.verdict_part takes a JsonObject)
    """One configuration's verdict: its paired rows, the onsets of a significant loss of the
    retrieval metrics (kvprobe.api ROLES), equivalence per checkpoint and the effective context,
    the onset of the position evidence, and each probe's own fields (`Probe.verdict_part`).
    With a group-sequential `design` (--until-decided) each checkpoint is tested look by look.
    Then the loss's shape: level and growth per metric (`blocks`: the per-position loss of
    `loss_metric`, kvprobe.api PositionEvidence), in words (kvprobe.stats.shape)."""
    rows = paired_rows(items, baseline, config, seed)
    out: JsonObject = {"config": config, "paired": rows, **loss_onsets(rows)}
    losses = [o for o in (out["onset_accuracy"], out["onset_logprob"]) if o is not None]
    used = margin if margin is not None else margins()
    looks: dict[int, int] = {}
    if design is None:
        tests = checkpoint_tests(items, baseline, config, spans, used, seed=seed)
    else:
        tests, looks = sequential_tests(items, baseline, config, spans, used, design=design, seed=seed)
    measured = sorted(set(checkpoints) | set(tests)) if tests else list(checkpoints)
    out["equivalence"] = equivalence(tests, min(losses) if losses else None, measured)
    if design is not None:
        for row in out["equivalence"]["checkpoints"]:
            look = looks.get(row["ctx"])
            row["look"] = None if look is None else look + 1  # 1-based: "after 1 of 4 documents"
            row["items_level"] = None if look is None else round(design.level(look), 6)
    out["effective_context"] = out["equivalence"]["effective_context"]
    out["divergence_onset"] = position_onset["ctx"] if position_onset else None
    for probe in all_probes():
        out.update(probe.verdict_part(items, baseline, config, out, seed))
    trends = config_trends(
        items, baseline, config, blocks=blocks, loss_metric=loss_metric, spans=spans, checkpoints=measured,
        paired=rows, seed=seed, stride=stride,
    )  # fmt: skip
    out["shape"] = shape(out, trends, baseline, fallback=equivalence_sentence(out, baseline, config))
    return out


# --- sentences ----------------------------------------------------------------------------------


def _margin_owners() -> str:
    """The first probes (hashed_always) whose metrics have equivalence margins, in words: "needle
    and divergence" (the suggestion to a run that measured none)."""
    default = {p.name for p in all_probes() if p.hashed_always}
    owners = list(
        dict.fromkeys(m.probe for m in metric_table() if m.margin is not None and m.probe in default)
    )
    return ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else "".join(owners)


def equivalence_sentence(v: JsonObject, baseline: str, config: str) -> str | None:
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
        deciders = [m for m in metric_table() if m.name in r["decided_by"]]
        if len(r["decided_by"]) == 1 and deciders and deciders[0].tail:
            tail = f" (decided by {deciders[0].tail})"
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
            f"margin was measured (the {_margin_owners()} probes have them); {eff_text}."
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


# --- which half of the cache ---------------------------------------------------------------------


def until_decided_record(early: Mapping[str, Any] | None, design: Design | None) -> dict[str, object] | None:
    return (design.to_json() | {"stopped": dict(early.get("stopped") or {})}) if early and design else None


def stopped_sentence(early: Mapping[str, Any] | None, config: str) -> str | None:
    """What --until-decided did with a configuration: stopped once decided, at which checkpoint
    and after how many of the documents."""
    stop = ((early or {}).get("stopped") or {}).get(config)
    if not stop:
        return None
    looks = int(early["looks"]) if early else 0
    after = f"on document {stop['look']} of {looks}"
    if stop["status"] == WORSE:
        return (
            f"Stopped early (--until-decided): decided worse at {stop['ctx']:,} tokens {after}, "
            f"so not measured at {stop['ctx']:,} tokens or longer from then on."
        )
    return f"Stopped early (--until-decided): every checkpoint decided {after}."


def _role_name(role: str) -> str:
    """The name of the metric that plays `role` ("" where no probe declares one)."""
    metric = pooled_metric(role)
    return metric.name if metric is not None else ""


def _half_evidence(v: JsonObject, summary: Sequence[SummaryRow], config: str) -> HalfDoc:
    lp = [r for r in v["paired"] if r["metric"] == _role_name(RETRIEVAL_LOGPROB)]
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
        "short": (v.get("shape") or {}).get("short"),
    }


def _pooled_to(summary: Sequence[SummaryRow], config: str) -> int | None:
    """Where a configuration's pooled KL ends (the positions it holds)."""
    row = pooled_row(summary, config)
    return (row.get("bin") or [None, None])[1] if row else None


def _contrast(
    items: Sequence[ItemRow], k_id: str, v_id: str, metric_name: str, seed: int
) -> HalfEvidenceDoc | None:
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
    verdicts: dict[str, JsonObject],
    summary: Sequence[SummaryRow],
    quant: str,
    *,
    items: Sequence[ItemRow] = (),
    margin: Mapping[str, float] | None = None,
    seed: int = 0,
) -> KVsVDoc | None:
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
    evidence: list[HalfEvidenceDoc] = []
    pooled = _role_name(POOLED_DIVERGENCE)
    # Pooled over the same positions only (--until-decided may have stopped one half early).
    if k["kld_ci"] and v["kld_ci"] and _pooled_to(summary, k["config"]) == _pooled_to(summary, v["config"]):
        hi, lo = (k, v) if k["kld_mean"] >= v["kld_mean"] else (v, k)
        separated = hi["kld_ci"][0] > lo["kld_ci"][1]
        material = hi["kld_mean"] >= 2 * lo["kld_mean"] and hi["kld_mean"] > m.get(pooled, 0.0) / 2
        evidence.append({
            "metric": pooled, "k": k["kld_mean"], "v": v["kld_mean"],
            "points_to": ("K" if hi is k else "V") if separated and material else None,
        })  # fmt: skip
    for name in filter(None, (_role_name(RETRIEVAL_LOGPROB), _role_name(RETRIEVAL))):
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


def _evidence_list(evidence: Sequence[HalfEvidenceDoc]) -> str:
    parts = []
    for e in evidence:
        if not e["points_to"]:
            continue
        if e["metric"] == _role_name(POOLED_DIVERGENCE):
            name = metric_words(e["metric"])[0]
            parts.append(f"{name} (K-only {e['k']:.3g}, V-only {e['v']:.3g}) points to {e['points_to']}")
        else:
            parts.append(
                f"{metric_words(e['metric'])[0]} K-only minus V-only {diff_text(e)} at {e['ctx']:,} "
                f"(p = {fmt_p(e['p'])}) points to {e['points_to']}"
            )
    return "; ".join(parts) or "no evidence separates the halves"


def _evidence_text(e: HalfDoc) -> str:
    parts = [f"{e.get('short') or e['status'] or 'no equivalence test'}"]
    if e["logprob_diff"] is not None:
        p = fmt_p(e["logprob_p_holm"])
        name = metric_words(_role_name(RETRIEVAL_LOGPROB))[0]
        parts.append(f"{name} {e['logprob_diff']:+.2f} at {e['ctx']:,} (Holm p = {p})")
    if e["kld_mean"] is not None:
        name = metric_words(_role_name(POOLED_DIVERGENCE))[0]
        lo, hi = e["kld_ci"]
        parts.append(f"{name} (whole document) {e['kld_mean']:.3g} [{lo:.3g}, {hi:.3g}]")
    return ", ".join(parts)


def _kv_sentence(fault: str, why: str, k: HalfDoc, v: HalfDoc, quant: str) -> str:
    head = {
        "K": f"The K half of the {quant} cache is at fault, not V",
        "V": f"The V half of the {quant} cache is at fault, not K",
        "both": f"Both halves of the {quant} cache are at fault",
        "neither": f"Neither half of the {quant} cache is at fault",
        UNDECIDED: f"Which half of the {quant} cache is at fault is undecided",
    }[fault]
    halves = f"K-only {k['config']}: {_evidence_text(k)}; V-only {v['config']}: {_evidence_text(v)}"
    return f"{head}: {why} ({halves})."


# --- the whole verdict ---------------------------------------------------------------------------


def reference_checks(
    items: list[ItemRow],
    baseline: str,
    prompt: PromptRecord | Mapping[str, Any],
    checkpoints: list[int],
) -> list[str]:
    """Each probe's word on the reference at the shortest checkpoint (kvprobe.api)."""
    if not checkpoints:
        return []
    return [s for p in all_probes() if (s := p.reference_check(items, baseline, prompt, min(checkpoints)))]


@dataclass
class Evidence:
    """Every probe's per-position evidence (kvprobe.api PositionEvidence), merged: per
    configuration the first onset any probe found, all their spans, and the first probe's
    per-position loss in blocks."""

    onsets: dict[str, Row | None] = field(default_factory=dict)
    spans: dict[str, list[Row]] = field(default_factory=dict)
    blocks: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    loss_metric: str | None = None
    stride: int = 1  # the blocks hold every stride-th position


def position_evidence(result: ResultDoc | JsonObject) -> Evidence:
    """Every probe's per-position evidence, merged (Evidence)."""
    merged = Evidence()
    for probe in all_probes():
        found = probe.position_evidence(result)
        if found is None:
            continue
        for config, row in found.onsets.items():
            merged.onsets.setdefault(config, row)
        for config, rows in found.spans.items():
            merged.spans.setdefault(config, []).extend(rows)
        if found.blocks and merged.loss_metric is None:
            merged.blocks, merged.loss_metric = dict(found.blocks), found.loss_metric
            merged.stride = found.stride
    return merged


def build_verdict(
    result: ResultDoc | JsonObject, seed: int, margin: Mapping[str, float] | None = None
) -> VerdictDoc | None:
    """The result file's `verdict`: per test configuration, K-vs-V for split runs, weights vs
    KV for two weight files, the recommendation, and the sentences."""
    baseline = result.get("baseline")
    if baseline is None:
        return None
    # The margins of the probes that ran (a file lists no margin of a probe it never measured).
    ran = ((result.get("scenario") or {}).get("spec") or {}).get("probes")
    used = dict(margins(ran)) | dict(margin or {})
    evidence = position_evidence(result)
    checkpoints = (result.get("run") or {}).get("checkpoints") or []
    early = (result.get("run") or {}).get("until_decided")
    design = Design.from_json(early) if early else None
    per_config = {
        c["id"]: config_verdict(
            result["items"],
            baseline,
            c["id"],
            evidence.onsets.get(c["id"]),
            seed=seed,
            spans=evidence.spans.get(c["id"], []),
            checkpoints=checkpoints,
            margin=used,
            design=design,
            blocks=evidence.blocks.get(c["id"], []),
            loss_metric=evidence.loss_metric,
            stride=evidence.stride,
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
        parts = [v["shape"]["sentence"], stopped_sentence(early, cid)]
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
    verdict: VerdictDoc = {
        "margins": used,
        "configs": per_config,
        "k_vs_v": halves,
        "weights_vs_kv": attribution,
        "sentences": sentences,
        "reference_check": checks,  # why the reference itself limits the verdict ([]: it does not)
        "until_decided": (design.to_json() | {"stopped": early.get("stopped", {})})
        if early and design
        else None,
    }
    verdict.update(decide(result, verdict))
    return verdict
