"""The decision: the recommendation (cheapest equivalent cache, with KV memory from the
doctor's formula), the asymmetric pair where K is at fault, the frontier and the rules of
thumb. Pure functions of result data."""

from __future__ import annotations

from typing import Any

from kvprobe.stats.decision import flags, folklore, frontier, kv_bytes, recommend
from kvprobe.stats.verdict import build_verdict
from kvprobe.weights.doctor import kv_cache_bytes
from tests.helpers import config_row

# Gemma 3 270M's layout: 18 layers, one KV head of 256, sliding window 512 on 5 of 6 layers.
LAYOUT = {
    "n_layer": 18, "n_head_kv": [1] * 18, "head_dim_k": 256, "head_dim_v": 256, "n_swa": 512,
    "swa_layers": [i % 6 < 5 for i in range(18)],
}  # fmt: skip
CHECKPOINTS = [1024, 2048, 4096]


def items(config: str, shift: float) -> list[dict[str, Any]]:
    out = []
    for ctx in CHECKPOINTS:
        for i in range(40):
            lp = -1.0 - 0.05 * (i % 7) + (shift * (1 + 0.1 * (i % 5)) if ctx >= 2048 else 0.0)
            out.append({"probe": "needle", "config": config, "doc": 0, "ctx": ctx, "key": f"k{i}",
                        "correct": i % 10 != 0, "logprob": lp})  # fmt: skip
    return out


def result(shifts: dict[str, float]) -> dict[str, Any]:
    return {
        "baseline": "f16",
        "configs": [config_row(c) for c in shifts],
        "items": [it for c, s in shifts.items() for it in items(c, s)],
        "summary": [],
        "divergence": None,
        "run": {"ctx": 4096, "seed": 0, "checkpoints": CHECKPOINTS},
        "model": {"n_ctx_train": 32768, "kv_layout": LAYOUT},
    }


def test_the_cheapest_equivalent_cache_is_recommended_with_its_memory() -> None:
    doc = result({"f16": 0.0, "q8_0": 0.0, "q4_0": -2.0})
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    rec = verdict["recommendation"]
    assert rec["config"] == "q8_0"
    assert rec["equivalent"]
    assert rec["flags"] == "-ctk q8_0 -ctv q8_0 -fa on"
    f16 = kv_cache_bytes(LAYOUT, 4096, "f16", "f16")["total"]
    q8 = kv_cache_bytes(LAYOUT, 4096, "q8_0", "q8_0")["total"]
    assert rec["memory_at_ctx"]["bytes"] == q8
    assert rec["memory_at_ctx"]["reference_bytes"] == f16
    assert rec["memory_at_ctx"]["saved_pct"] == 100 * (f16 - q8) / f16
    train = rec["memory_at_training_context"]
    assert train["bytes"] == kv_cache_bytes(LAYOUT, 32768, "q8_0", "q8_0")["total"]
    assert [n["config"] for n in rec["not_chosen"]] == ["q4_0"]
    assert "worse" in rec["not_chosen"][0]["why"]
    assert "saves" in rec["sentence"]
    assert "-ctk q8_0 -ctv q8_0 -fa on" in rec["sentence"]


def test_without_an_equivalent_cache_the_reference_stays() -> None:
    verdict = build_verdict(result({"f16": 0.0, "q8_0": -2.0, "q4_0": -3.0}), seed=0)
    assert verdict is not None
    rec = verdict["recommendation"]
    assert rec["config"] == "f16"
    assert not rec["equivalent"]
    assert rec["sentence"].startswith("At 4,096 tokens, keep the f16 cache")


def test_k_at_fault_names_the_asymmetric_pair_and_it_wins_when_measured() -> None:
    shifts = {"f16": 0.0, "q4_0": -2.0, "k=q4_0,v=f16": -2.0, "k=f16,v=q4_0": 0.0}
    verdict = build_verdict(result(shifts), seed=0)
    assert verdict is not None
    assert verdict["k_vs_v"][0]["more_sensitive"] == "K"
    pair = verdict["recommendation"]["asymmetric"]
    assert pair["config"] == "k=q8_0,v=q4_0"
    assert not pair["measured"]
    assert "measure it with --split-kv" in verdict["recommendation"]["sentence"]
    measured = build_verdict(result({**shifts, "k=q8_0,v=q4_0": 0.0}), seed=0)
    assert measured is not None
    assert measured["recommendation"]["config"] == "k=q8_0,v=q4_0"
    assert "GGML_CUDA_FA_ALL_QUANTS" in measured["recommendation"]["sentence"]


def test_frontier_marks_what_no_other_configuration_beats() -> None:
    doc = result({"f16": 0.0, "q8_0": 0.0, "k=q8_0,v=f16": 0.0, "q4_0": -2.0})
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    rows = {r["config"]: r for r in frontier(doc, verdict)}
    assert rows["q8_0"]["frontier"]  # equivalent and smaller than the K-only pair
    assert not rows["k=q8_0,v=f16"]["frontier"]
    assert rows["q4_0"]["frontier"]  # worse, but the smallest
    assert rows["f16"]["status"] == "reference"
    assert kv_bytes(doc, "q4_0", "q4_0", 4096) == rows["q4_0"]["kv_bytes"]


def test_rules_of_thumb_are_checked_or_said_untested() -> None:
    doc = result({"f16": 0.0, "q8_0": 0.0, "q4_0": -2.0})
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    lines = {f["rule"]: f for f in folklore(doc, verdict)}
    assert lines["q8_0 is the comfortable cache floor (near-lossless)"]["finding"] == "holds"
    assert lines["don't quantize KV below Q8 for long context"]["finding"] == "holds"
    degrades = lines["a quantized KV cache degrades at 4K+ context"]
    # fine at 1,024, then a loss that grows (judged by growth, not by the first checkpoint)
    assert degrades["finding"] == "holds"
    assert (
        "q4_0: fine short, the loss grows with context from about 2,048 (earlier than 4K)"
        in degrades["evidence"]
    )
    assert "q8_0: does not hold: equivalent at every length measured" in degrades["evidence"]
    assert (
        lines["the K cache is more sensitive to quantization than V"]["finding"] == "not tested in this run"
    )
    assert (
        lines["a Q4 KV cache hurts more than weight quantization does"]["finding"] == "not tested in this run"
    )


def test_flags() -> None:
    assert flags("q8_0", "q4_0") == "-ctk q8_0 -ctv q4_0 -fa on"
    assert flags("f16", "f16").startswith("-ctk f16 -ctv f16")


def test_recommend_without_a_layout_still_ranks_by_bits() -> None:
    doc = result({"f16": 0.0, "q8_0": 0.0})
    del doc["model"]["kv_layout"]
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    rows = frontier(doc, verdict)
    rec = recommend(doc, verdict, rows)
    assert rec["config"] == "q8_0"
    assert rec["memory_at_ctx"] is None


def _with_speed(doc: dict[str, Any], speeds: dict[str, float]) -> dict[str, Any]:
    doc["timing"] = {"prefill": {
        c: [{"ctx": 4096, "depth": [2048, 4096], "tokens": 2048, "s": 2048 / v, "tokens_per_s": v,
             "all_logits": False}]
        for c, v in speeds.items()
    }}  # fmt: skip
    return doc


def test_the_speed_sentence_compares_the_choice_or_else_what_was_not_chosen() -> None:
    from kvprobe.stats.decision import speed_sentence

    chosen = _with_speed(
        result({"f16": 0.0, "q8_0": 0.0, "q4_0": -2.0}), {"f16": 600, "q8_0": 300, "q4_0": 150}
    )
    chosen["verdict"] = build_verdict(chosen, seed=0)
    sentence = speed_sentence(chosen, frontier(chosen, chosen["verdict"]))
    assert (
        sentence
        == "Prefill on this host at depth 2,048-4,096: q8_0 300 tokens/s (0.50x), against 600 for f16."
    )
    # Keeping f16: never f16 against itself, but what the cheaper caches would cost.
    kept = _with_speed(result({"f16": 0.0, "q4_0": -2.0}), {"f16": 600.0, "q4_0": 150.0})
    kept["verdict"] = build_verdict(kept, seed=0)
    assert kept["verdict"]["recommendation"]["config"] == "f16"
    sentence = speed_sentence(kept, frontier(kept, kept["verdict"]))
    assert (
        sentence
        == "Prefill on this host at depth 2,048-4,096: q4_0 150 tokens/s (0.25x), against 600 for f16."
    )
