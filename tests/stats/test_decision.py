"""The decision: the recommendation (cheapest equivalent cache, with KV memory from the
doctor's formula), the asymmetric pair where K is at fault, the frontier and the rules of
thumb. Pure functions of result data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvprobe.stats.decision import flags, folklore, frontier, kv_bytes, recommend, speed_sentence
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
    assert not rows["q4_0"]["frontier"]  # the smallest, but worse: never marked as a choice
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


# --- a run through llama-server: the frontier speaks of the server ---------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return doc


def test_a_server_run_s_frontier_carries_the_server_s_own_figures() -> None:
    """KV MiB from the server's log, prefill and generation tokens/s from its timings, its build;
    the layout's bytes stay beside them (the stored recommendation sizes caches by them)."""
    doc = example("server-default-f16-q4_0-8192.json")
    servers = doc["runtime"]["server"]["configs"]
    rows = frontier(doc, doc["verdict"])
    assert [r["config"] for r in rows] == ["f16", "q4_0"]
    for r in rows:
        said = servers[r["config"]]
        assert r["kv_mib_server"] == said["applied"]["kv_mib"]
        assert r["kv_cells_server"] == said["applied"]["n_ctx"]
        assert r["prefill_tokens_per_s"] == said["prefill_tps"]
        assert r["generation_tokens_per_s"] == said["generation_tps"]
        assert r["speed_source"] == "server"
        assert r["prefill_depth"] is None  # the server's timings cover the whole run
        assert r["server_build"] == said["version"] == doc["runtime"]["server_version"]
        assert r["vram_mib"] is None  # measured on a host without a GPU
        assert r["kv_bytes"] == kv_bytes(doc, r["config"], r["config"], doc["run"]["ctx"])
    # The server's figure is what it allocated: the run's cells, sliding-window layers full.
    cells = servers["q4_0"]["applied"]["n_ctx"]
    full = kv_cache_bytes(doc["model"]["kv_layout"], cells, "q4_0", "q4_0", swa_full=True)["total"]
    assert abs(rows[1]["kv_mib_server"] - full / 2**20) < 0.01
    # Without speed (the stored verdict's rows), no wall-clock figure of either engine.
    assert all(r["generation_tokens_per_s"] is None for r in frontier(doc, doc["verdict"], with_speed=False))


def test_a_server_run_s_speed_sentence_names_the_server_and_its_build() -> None:
    doc = example("server-default-f16-q4_0-8192.json")
    servers = doc["runtime"]["server"]["configs"]
    f16, q4 = servers["f16"], servers["q4_0"]
    sentence = speed_sentence(doc, frontier(doc, doc["verdict"]))
    assert sentence == (
        f"Speed of the llama-server {doc['runtime']['server_version']} by its own timings, over the whole "
        f"run: prefill q4_0 {q4['prefill_tps']:.1f} tokens/s ({q4['prefill_tps'] / f16['prefill_tps']:.2f}x) "
        f"against {f16['prefill_tps']:.1f} for f16; generation q4_0 {q4['generation_tps']:.1f} tokens/s "
        f"({q4['generation_tps'] / f16['generation_tps']:.2f}x) against {f16['generation_tps']:.1f} for f16."
    )


def test_a_server_without_timings_for_every_row_leaves_kvprobe_s_spans() -> None:
    """One source of speed for all rows: where one server's timings are missing (an older file,
    an attached server that answered none), every row takes kvprobe's deepest span instead."""
    doc = example("server-default-f16-q4_0-8192.json")
    del doc["runtime"]["server"]["configs"]["q4_0"]["prefill_tps"]
    rows = frontier(doc, doc["verdict"])
    for r in rows:
        deepest = doc["timing"]["prefill"][r["config"]][-1]
        assert r["speed_source"] == "kvprobe"
        assert r["prefill_tokens_per_s"] == deepest["tokens_per_s"]
        assert r["prefill_depth"] == deepest["depth"]
    assert speed_sentence(doc, rows).startswith("Prefill on this host at depth")  # type: ignore[union-attr]


def test_an_in_process_frontier_has_no_server_figures() -> None:
    doc = example("default-f16-q4_0-8192.json")
    rows = frontier(doc, doc["verdict"])
    for r in rows:
        deepest = doc["timing"]["prefill"][r["config"]][-1]
        assert r["prefill_tokens_per_s"] == deepest["tokens_per_s"]
        assert r["prefill_depth"] == deepest["depth"]
        assert r["speed_source"] == "kvprobe"
        assert r["kv_bytes"] == kv_bytes(doc, r["config"], r["config"], doc["run"]["ctx"])
        for key in (
            "kv_mib_server",
            "kv_cells_server",
            "generation_tokens_per_s",
            "vram_mib",
            "server_build",
        ):
            assert r[key] is None, key
    q4, f16 = rows[1]["prefill_tokens_per_s"], rows[0]["prefill_tokens_per_s"]
    lo, hi = rows[1]["prefill_depth"]
    assert speed_sentence(doc, rows) == (
        f"Prefill on this host at depth {lo:,}-{hi:,}: q4_0 {q4:,.0f} tokens/s ({q4 / f16:.2f}x), "
        f"against {f16:,.0f} for f16."
    )
