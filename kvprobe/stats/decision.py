"""From verdict to decision: which cache to run at this context, what it saves and costs, the
frontier of quality, memory and speed, and the source documents' rules of thumb checked on
this model. Pure functions of the result document and its verdict.

Memory is the doctor's formula (`kv_cache_bytes`) on the KV layout the result records, as
llama-server allocates it (sliding-window layers keep their window only); speed is the
prefill rate each configuration measured at the deepest span of the run (`timing.prefill`).
A run through llama-server speaks of that server instead where its record has the figures
(`runtime.server.configs`): the KV MiB its log says it allocated, prefill and generation
tokens/s from its own timings, and the GPU memory NVML saw its process hold.
The stored verdict (`recommendation`, `folklore`) depends on the items alone, so a resumed
run's verdict equals an uninterrupted one's; speed, a wall-clock figure, joins at display
(`frontier`, `speed_sentence`).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvprobe.api import pooled_row
from kvprobe.api.cache_types import ConfigId
from kvprobe.api.record import JsonObject
from kvprobe.api.result import PrefillSpan, ResultDoc
from kvprobe.api.verdict import Verdict
from kvprobe.stats.equivalence import EQUIVALENT, UNDECIDED, WORSE
from kvprobe.stats.parts import (
    AsymmetricDoc,
    DecisionDoc,
    FolkloreDoc,
    KVsVDoc,
    RecommendationDoc,
    SavingDoc,
    VerdictDoc,
    WeightsVsKvDoc,
)
from kvprobe.stats.shape import growth_brief, long_context_finding
from kvprobe.stats.words import items_text, tost_text
from kvprobe.weights.doctor import kv_cache_bytes, type_bits

MIB = 1024 * 1024
LONG_CONTEXT = 4096  # the source documents' "degrades at 4K+"
STATUS_RANK = {"reference": 0, EQUIVALENT: 0, UNDECIDED: 1, WORSE: 2}
# One configuration in the frontier table, plain: its byte counts are None-checked across rows
# (`size`) and read by a key in a variable (`_saving`), which a TypedDict's narrowing cannot follow.
FrontierRow = JsonObject
SOURCE = "../shared/seeds (the troubleshooting pages kvprobe started from)"


def flags(type_k: str, type_v: str) -> str:
    """The llama.cpp options for a cache (llama-server, llama-cli); a quantized V needs flash attention."""
    if type_k == type_v == "f16":
        return "-ctk f16 -ctv f16 (llama.cpp's default)"
    return f"-ctk {type_k} -ctv {type_v} -fa on"


def _types(cid: str) -> tuple[str, str]:
    cache = ConfigId.parse(cid).cache
    return cache.type_k, cache.type_v


def kv_bytes(result: ResultDoc | JsonObject, type_k: str, type_v: str, n_ctx: int) -> int | None:
    """KV cache bytes for one sequence of n_ctx tokens (None without a recorded layout)."""
    layout = (result.get("model") or {}).get("kv_layout")
    if not layout or n_ctx <= 0:
        return None
    return int(kv_cache_bytes(layout, n_ctx, type_k, type_v)["total"])


def _relative_size(type_k: str, type_v: str) -> float:
    return (type_bits(type_k.upper()) + type_bits(type_v.upper())) / (2 * type_bits("F16"))


def _deepest_speed(result: ResultDoc | JsonObject, cid: str) -> PrefillSpan | JsonObject | None:
    spans = ((result.get("timing") or {}).get("prefill") or {}).get(cid) or []
    measured = [s for s in spans if s.get("tokens_per_s")]
    return measured[-1] if measured else None


def _server_record(result: ResultDoc | JsonObject, cid: str) -> JsonObject | None:
    """A llama-server run's record of the server that ran `cid` (None for an in-process run)."""
    runtime = result.get("runtime") or {}
    if runtime.get("engine") != "llama-server":
        return None
    found = ((runtime.get("server") or {}).get("configs") or {}).get(cid)
    return found if isinstance(found, dict) else None


def _server_figures(record: JsonObject | None, with_speed: bool) -> JsonObject:
    """What the server itself said of one configuration: KV MiB from its log (and the cells they
    hold), tokens/s from its timings, GPU memory through NVML, its build. None where not said."""
    record = record or {}
    applied = record.get("applied") or {}
    cells = [c.get("cells") for c in applied.get("kv_caches") or [] if c.get("cells")]
    return {
        "kv_mib_server": applied.get("kv_mib"),
        "kv_cells_server": max(cells) if cells else applied.get("n_ctx"),
        "server_prefill_tokens_per_s": record.get("prefill_tps") if with_speed else None,
        "generation_tokens_per_s": record.get("generation_tps") if with_speed else None,
        "vram_mib": record.get("vram_mib"),
        "server_build": record.get("version") or record.get("build_info"),
    }


def _speeds_from_server(rows: list[FrontierRow]) -> None:
    """Where every row's server timed its prefill, the rows' prefill speed is the server's (over
    the whole run; one source for all, so that the rows compare); else kvprobe's spans stay."""
    if not rows or not all(r["server_prefill_tokens_per_s"] for r in rows):
        return
    for r in rows:
        r.update(
            prefill_tokens_per_s=r["server_prefill_tokens_per_s"],
            prefill_depth=None,
            prefill_all_logits=False,
            speed_source="server",
        )


def _same_weights(result: ResultDoc | JsonObject) -> list[str]:
    """The baseline and the configurations on the baseline's weights (a 2x2 weights run
    recommends a cache for the reference weights)."""
    baseline = result["baseline"]
    weights = ConfigId.parse(baseline).weights
    return [c["id"] for c in result["configs"] if ConfigId.parse(c["id"]).weights == weights]


def frontier(
    result: ResultDoc | JsonObject, verdict: Verdict | VerdictDoc | JsonObject, *, with_speed: bool = True
) -> list[FrontierRow]:
    """One row per configuration (the reference first): equivalence status, effective context,
    mean KL, KV memory at the run's context and the training context, prefill speed at depth,
    the llama.cpp flags, and whether it is on the frontier (no other configuration is at least
    as good in quality, memory and speed, and better in one). Through llama-server, also what
    the server said (`_server_figures`; None in an in-process run), its prefill speed in place
    of kvprobe's where every row has one (`speed_source` "server")."""
    baseline, ctx = result["baseline"], result["run"]["ctx"]
    train = (result.get("model") or {}).get("n_ctx_train") or 0
    rows: list[FrontierRow] = []
    for cid in _same_weights(result):
        tk, tv = _types(cid)
        v = verdict["configs"].get(cid)
        kl = pooled_row(result["summary"], cid)
        speed = _deepest_speed(result, cid) if with_speed else None
        status = ((v or {}).get("equivalence") or {}).get("status", UNDECIDED)
        rows.append({
            "config": cid,
            "status": "reference" if cid == baseline else status,
            "effective_context": ctx if cid == baseline else (v or {}).get("effective_context"),
            "kld_mean": kl["value"] if kl else (0.0 if cid == baseline else None),
            "kv_bytes": kv_bytes(result, tk, tv, ctx),
            "kv_bytes_train": kv_bytes(result, tk, tv, train),
            "relative_size": _relative_size(tk, tv),
            "prefill_tokens_per_s": speed["tokens_per_s"] if speed else None,
            "prefill_depth": speed["depth"] if speed else None,
            "prefill_all_logits": bool(speed and speed.get("all_logits")),
            "speed_source": "kvprobe" if speed else None,
            "flags": flags(tk, tv),
            **_server_figures(_server_record(result, cid), with_speed),
        })  # fmt: skip
    _speeds_from_server(rows)

    def quality(r: FrontierRow) -> tuple[int, float]:
        return STATUS_RANK[r["status"]], r["kld_mean"] if r["kld_mean"] is not None else float("inf")

    def dominates(a: FrontierRow, b: FrontierRow) -> bool:
        pairs = [(quality(a), quality(b)), ((a["relative_size"],), (b["relative_size"],))]
        for key in ("prefill_tokens_per_s", "generation_tokens_per_s"):  # speed: the server's two
            if a[key] and b[key]:
                pairs.append(((-a[key],), (-b[key],)))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    # A configuration shown worse is never on the frontier, however small or fast: the frontier
    # is what one may choose, and ● must not make a rejected configuration look recommended.
    for r in rows:
        r["frontier"] = r["status"] != "worse" and not any(dominates(o, r) for o in rows if o is not r)
    return rows


def _mib(n: int | None) -> str:
    return f"{n / MIB:,.0f} MiB" if n is not None else "?"


def _saving(chosen: FrontierRow, ref: FrontierRow, key: str) -> SavingDoc | None:
    if chosen[key] is None or ref[key] is None or ref[key] == 0:
        return None
    saved = ref[key] - chosen[key]
    return {
        "bytes": chosen[key],
        "reference_bytes": ref[key],
        "saved_bytes": saved,
        "saved_pct": 100 * saved / ref[key],
    }


def recommend(
    result: ResultDoc | JsonObject, verdict: VerdictDoc, rows: Sequence[FrontierRow]
) -> RecommendationDoc:
    """The cheapest configuration by KV memory that is equivalent to the reference up to the
    longest context measured (the reference itself when none is), with what it saves, the
    evidence, and why each cheaper configuration was not chosen (speed joins at display)."""
    ctx, train = result["run"]["ctx"], (result.get("model") or {}).get("n_ctx_train") or 0
    ref = rows[0]
    usable = [r for r in rows if r["status"] in ("reference", EQUIVALENT)]

    def size(r: FrontierRow) -> float:
        return float(r["kv_bytes"]) if all(o["kv_bytes"] is not None for o in rows) else r["relative_size"]

    chosen = min(usable, key=size)
    cheaper = [r for r in rows if size(r) < size(chosen)]
    rec: RecommendationDoc = {
        "ctx": ctx,
        "config": chosen["config"],
        "flags": chosen["flags"],
        "equivalent": chosen["status"] == EQUIVALENT,
        "memory_at_ctx": _saving(chosen, ref, "kv_bytes"),
        "memory_at_training_context": _saving(chosen, ref, "kv_bytes_train"),
        "n_ctx_train": train,
        "evidence": [],
        "not_chosen": [],
    }
    if chosen["status"] == EQUIVALENT:
        last = verdict["configs"][chosen["config"]]["equivalence"]["checkpoints"][-1]
        rec["evidence"] = [tost_text(t) for t in last["tests"]]
    for r in cheaper:
        eq = verdict["configs"].get(r["config"], {}).get("equivalence") or {}
        checkpoints = eq.get("checkpoints", [])
        first = next((c for c in checkpoints if c["status"] != EQUIVALENT or c["significant_loss"]), None)
        why = r["status"]
        if not any(c["tests"] for c in checkpoints):
            why += ": no metric with an equivalence margin was measured"
        elif first and not first["tests"]:
            why += f": nothing measured at {first['ctx']:,} tokens"
        elif first:
            label = (
                "a significant loss within the margins" if first["status"] == EQUIVALENT else first["status"]
            )
            decisive = [tost_text(t) for t in first["tests"] if t["metric"] in first["decided_by"]]
            found = verdict["configs"].get(r["config"], {}).get("shape") or {}
            short, brief = found.get("short"), growth_brief(found)
            head = short if short and r["status"] == WORSE else f"{label} at {first['ctx']:,}"
            head += f" ({brief})" if brief and r["status"] == WORSE else ""
            why = head + (f": {'; '.join(decisive)}" if decisive else "")
            if first["status"] == UNDECIDED and first.get("items_needed"):
                why += f"; {items_text(first['items_needed'])} would decide"
            if eq.get("first_worse") and eq["first_worse"] != first["ctx"]:
                why += f"; worse from {eq['first_worse']:,}"
        rec["not_chosen"].append({"config": r["config"], "status": r["status"], "why": why})
    rec["asymmetric"] = _asymmetric(result, verdict, rows)
    rec["sentence"] = _recommendation_sentence(rec, result["baseline"])
    return rec


def _asymmetric(
    result: ResultDoc | JsonObject, verdict: VerdictDoc, rows: Sequence[FrontierRow]
) -> AsymmetricDoc | None:
    """Where the K half of a cache below 8 bits is at fault: K q8_0 with that V, measured or not."""
    for kv in verdict.get("k_vs_v") or []:
        if kv.get("more_sensitive") != "K" or type_bits(kv["quant"].upper()) >= 8:
            continue
        pair = f"k=q8_0,v={kv['quant']}"
        row = next((r for r in rows if r["config"] == pair), None)
        size = kv_bytes(result, "q8_0", kv["quant"], result["run"]["ctx"])
        return {
            "quant": kv["quant"],
            "config": pair,
            "flags": flags("q8_0", kv["quant"]),
            "measured": row is not None,
            "status": row["status"] if row else None,
            "kv_bytes": size,
            "relative_size": _relative_size("q8_0", kv["quant"]),
        }
    return None


def _recommendation_sentence(rec: RecommendationDoc, baseline: str) -> str:
    ctx, cid = rec["ctx"], rec["config"]
    if not rec["equivalent"]:
        text = (
            f"At {ctx:,} tokens, keep the {cid} cache ({rec['flags']}): no cheaper configuration was shown "
            f"equivalent to it"
        )
    else:
        text = (
            f"At {ctx:,} tokens, use {cid} ({rec['flags']}): equivalent to {baseline} at every checkpoint "
            f"up to {ctx:,} ({'; '.join(rec['evidence'])})"
        )
        mem, train = rec["memory_at_ctx"], rec["memory_at_training_context"]
        if mem:
            text += (
                f". Its KV cache takes {_mib(mem['bytes'])} instead of {_mib(mem['reference_bytes'])} "
                f"at {ctx:,} tokens (saves {_mib(mem['saved_bytes'])}, {mem['saved_pct']:.0f}%)"
            )
            if train and rec["n_ctx_train"] != ctx:
                text += (
                    f" and {_mib(train['bytes'])} instead of {_mib(train['reference_bytes'])} at the "
                    f"training context of {rec['n_ctx_train']:,} (saves {_mib(train['saved_bytes'])})"
                )
    text += "."
    if rec["not_chosen"]:
        text += (
            " Cheaper, not chosen: "
            + "; ".join(f"{n['config']} ({n['why']})" for n in rec["not_chosen"])
            + "."
        )
    pair = rec.get("asymmetric")
    if pair and not pair["measured"]:
        text += (
            f" The K half of {pair['quant']} is the more sensitive, so K q8_0 with V {pair['quant']} "
            f"({pair['flags']}, {pair['relative_size']:.0%} of f16's KV memory) may hold: "
            "measure it with --split-kv."
        )
    if ConfigId.parse(cid).cache.type_k != ConfigId.parse(cid).cache.type_v:
        text += (
            " On CUDA, a K/V pair of different types runs flash attention fast only in a llama.cpp build "
            "with GGML_CUDA_FA_ALL_QUANTS=ON."
        )
    return text


# --- the source documents' rules of thumb ---------------------------------------------------------

HOLDS, FAILS, OPEN, UNTESTED = "holds", "does not hold", "undecided", "not tested in this run"


def _first_loss(v: JsonObject) -> int | None:
    """The first checkpoint that is worse beyond a margin or at a significant loss: where the
    configuration degrades (an undecided checkpoint is not evidence of it). None if none."""
    for c in (v.get("equivalence") or {}).get("checkpoints", []):
        if c["status"] == WORSE or c["significant_loss"]:
            return int(c["ctx"])
    return None


def _line(rule: str, finding: str, evidence: str) -> FolkloreDoc:
    return {"rule": rule, "finding": finding, "evidence": evidence}


def _rule_long_context(quantized: dict[str, JsonObject], ctx: int) -> FolkloreDoc:
    """Checked against growth (kvprobe.stats.shape), not against the first checkpoint: the rule
    holds for a cache whose loss is within the margins short and grows with context."""
    rule = "a quantized KV cache degrades at 4K+ context"
    if not quantized:
        return _line(rule, UNTESTED, "no quantized cache was measured")
    found = {cid: long_context_finding(v.get("shape") or {}, v, LONG_CONTEXT) for cid, v in quantized.items()}
    findings = {f for f, _ in found.values()}
    finding = next((f for f in (HOLDS, FAILS, OPEN) if f in findings), "not measured")
    # A configuration whose finding differs from the line's says its own.
    said = [f"{cid}: {why}" if f == finding else f"{cid}: {f}: {why}" for cid, (f, why) in found.items()]
    return _line(rule, finding, "; ".join(said))


def _rule_q8_floor(configs: dict[str, JsonObject], baseline: str, ctx: int) -> FolkloreDoc:
    rule = "q8_0 is the comfortable cache floor (near-lossless)"
    v = configs.get("q8_0") or next((x for c, x in configs.items() if c.endswith(":q8_0")), None)
    if v is None:
        return _line(rule, UNTESTED, "q8_0 was not measured (add --cache q8_0)")
    status = v["equivalence"]["status"]
    finding = {EQUIVALENT: HOLDS, WORSE: FAILS}.get(status, OPEN)
    return _line(rule, finding, f"q8_0 is {status} to {baseline} up to {ctx:,} tokens")


def _rule_below_q8(configs: dict[str, JsonObject], ctx: int) -> FolkloreDoc:
    rule = "don't quantize KV below Q8 for long context"
    low = {cid: v for cid, v in configs.items() if min(type_bits(t.upper()) for t in _types(cid)) < 8}
    if not low:
        return _line(rule, UNTESTED, "no cache below 8 bits was measured")
    if ctx < LONG_CONTEXT:
        return _line(
            rule, UNTESTED, f"the longest context measured is {ctx:,} tokens (below {LONG_CONTEXT:,})"
        )
    ok = [cid for cid, v in low.items() if v["equivalence"]["status"] == EQUIVALENT]
    statuses = ", ".join(f"{cid} {v['equivalence']['status']}" for cid, v in low.items())
    finding = (
        FAILS if ok else HOLDS if all(v["equivalence"]["status"] == WORSE for v in low.values()) else OPEN
    )
    return _line(rule, finding, f"at {ctx:,} tokens: {statuses}")


def _rule_k_more_sensitive(halves: list[KVsVDoc]) -> FolkloreDoc:
    rule = "the K cache is more sensitive to quantization than V"
    if not halves:
        return _line(rule, UNTESTED, "K and V were not measured apart (add --split-kv)")
    sensitive = {h["quant"]: h.get("more_sensitive") for h in halves}
    finding = (
        HOLDS if "K" in sensitive.values() and "V" not in sensitive.values()
        else FAILS if "V" in sensitive.values() and "K" not in sensitive.values()
        else OPEN
    )  # fmt: skip
    return _line(rule, finding, "; ".join(
        f"{h['quant']}: {h['fault']} at fault"
        + (f", {h['more_sensitive']} more so" if h["fault"] == "both" and h.get("more_sensitive") else "")
        for h in halves
    ))  # fmt: skip


def _rule_kv_over_weights(attribution: WeightsVsKvDoc | None) -> FolkloreDoc:
    rule = "a Q4 KV cache hurts more than weight quantization does"
    if not attribution:
        return _line(
            rule, UNTESTED, "one weight file was measured (give two --model files for the 2x2 design)"
        )
    return _line(rule, {"kv": HOLDS, "weights": FAILS}.get(attribution["fault"], OPEN), attribution["reason"])


def folklore(result: ResultDoc | JsonObject, verdict: VerdictDoc) -> list[FolkloreDoc]:
    """One line per rule of thumb: does this model show it, with the measured numbers."""
    ctx = result["run"]["ctx"]
    configs = {cid: v for cid, v in verdict["configs"].items() if cid in _same_weights(result)}
    quantized = {cid: v for cid, v in configs.items() if _types(cid)[0] == _types(cid)[1] != "f16"}
    return [
        _rule_long_context(quantized, ctx),
        _rule_q8_floor(configs, result["baseline"], ctx),
        _rule_below_q8(configs, ctx),
        _rule_k_more_sensitive(verdict.get("k_vs_v") or []),
        _rule_kv_over_weights(verdict.get("weights_vs_kv")),
    ]


def decide(result: ResultDoc | JsonObject, verdict: VerdictDoc) -> DecisionDoc:
    """The verdict's decision fields: `recommendation` and `folklore` (items only)."""
    rows = frontier(result, verdict, with_speed=False)
    return {
        "recommendation": recommend(result, verdict, rows) if rows else None,
        "folklore": folklore(result, verdict),
    }


def speed_sentence(result: ResultDoc | JsonObject, rows: Sequence[FrontierRow]) -> str | None:
    """The recommended configuration's measured prefill speed against the reference's; through
    llama-server, the server's own prefill and generation speeds, naming its build."""
    rec = (result.get("verdict") or {}).get("recommendation")
    if not rec or not rows:
        return None
    ref, chosen = rows[0], next((r for r in rows if r["config"] == rec["config"]), None)
    if chosen is None or not chosen["prefill_tokens_per_s"] or not ref["prefill_tokens_per_s"]:
        return None
    # Keeping the reference: what the cheaper ones would have cost in speed instead.
    shown = [chosen] if chosen is not ref else [r for r in rows[1:] if r["prefill_tokens_per_s"]]
    if not shown:
        return None
    if chosen["speed_source"] == "server":
        return _server_speed_sentence(ref, shown, rows)
    lo, hi = chosen["prefill_depth"]
    logits = (
        " (every position's logits computed, for the probes that compare them)"
        if chosen["prefill_all_logits"]
        else ""
    )
    each = "; ".join(
        f"{r['config']} {r['prefill_tokens_per_s']:,.0f} tokens/s "
        f"({r['prefill_tokens_per_s'] / ref['prefill_tokens_per_s']:.2f}x)"
        for r in shown
    )
    return (
        f"Prefill on this host at depth {lo:,}-{hi:,}{logits}: {each}, against "
        f"{ref['prefill_tokens_per_s']:,.0f} for {ref['config']}."
    )


def rate(tokens_per_s: float) -> str:
    """A speed in tokens/s, to three figures or so (a server's generation is often below 100)."""
    return f"{tokens_per_s:,.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.1f}"


def server_builds(rows: Sequence[FrontierRow]) -> str:
    """The llama-server build(s) of the rows: one, or each configuration's where they differ."""
    builds = {r["server_build"] for r in rows}
    if len(builds) == 1:
        return f"llama-server {next(iter(builds)) or '(build unknown)'}"
    return "llama-servers " + "; ".join(f"{r['config']}: {r['server_build'] or '?'}" for r in rows)


def _server_speed_sentence(
    ref: FrontierRow, shown: Sequence[FrontierRow], rows: Sequence[FrontierRow]
) -> str:
    """Whose speed it is: the server's own timings over the whole run (its prefill: the document
    and every scored prompt; its generation: the greedy continuations at the checkpoints)."""

    def each(key: str, what: str) -> str | None:
        if not ref[key] or not all(r[key] for r in shown):
            return None
        said = ", ".join(f"{r['config']} {rate(r[key])} tokens/s ({r[key] / ref[key]:.2f}x)" for r in shown)
        return f"{what} {said} against {rate(ref[key])} for {ref['config']}"

    prefill = each("prefill_tokens_per_s", "prefill")
    found = [s for s in (prefill, each("generation_tokens_per_s", "generation")) if s]
    return f"Speed of the {server_builds(rows)} by its own timings, over the whole run: {'; '.join(found)}."
