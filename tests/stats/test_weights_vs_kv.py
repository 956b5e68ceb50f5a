"""The weights-vs-KV attribution (kvprobe.stats.weights_vs_kv) on planted 2x2 item sets: a
cache effect that grows with context, a weight effect present from the start, both, and
neither; and the interaction, computed by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kvprobe.stats.weights_vs_kv import weights_vs_kv

CONTEXTS = (1024, 2048, 4096)
CELLS = ("ref:f16", "ref:q4_0", "test:f16", "test:q4_0")
N = 24  # needles per checkpoint


def result(
    kv_loss: dict[int, float], weight_loss: float, interaction: float = 0.0, n: int = N
) -> dict[str, Any]:
    """A 2x2 result whose answer log-probs are a shared per-item base plus the planted effects
    plus noise (sd 0.05 nats); an answer is right while its log-prob stays above -2."""
    rng = np.random.default_rng(0)
    items = []
    for ctx in CONTEXTS:
        base = rng.uniform(-1.5, -0.2, n)
        for cell in CELLS:
            weights, cache = cell.split(":")
            shift = (weight_loss if weights == "test" else 0.0) + (kv_loss[ctx] if cache == "q4_0" else 0.0)
            shift += interaction if cell == "test:q4_0" else 0.0
            for i, b in enumerate(base):
                logprob = float(b + shift + rng.normal(0, 0.05))
                items.append({"probe": "needle", "config": cell, "doc": 0, "ctx": ctx, "key": f"k{i}",
                              "correct": logprob > -2.0, "logprob": logprob})  # fmt: skip
    return {
        "configs": [{"id": c} for c in CELLS],
        "models": {"ref": {"name": "m-F16.gguf"}, "test": {"name": "m-Q4_0.gguf"}},
        "items": items,
    }


GROWING = {1024: -0.4, 2048: -0.8, 4096: -1.2}
NONE = dict.fromkeys(CONTEXTS, 0.0)


@pytest.mark.parametrize(
    ("kv", "weights", "n", "fault"),
    [
        (GROWING, 0.0, N, "kv"),
        (NONE, -0.6, N, "weights"),
        (GROWING, -0.6, N, "both"),
        (NONE, 0.0, N, "inconclusive"),  # 24 answers cannot show accuracy within +-0.05
        (NONE, 0.0, 400, "neither"),  # 400 can
    ],
)
def test_the_fault_is_where_the_effect_was_planted(
    kv: dict[int, float], weights: float, n: int, fault: str
) -> None:
    found = weights_vs_kv(result(kv, weights, n=n), seed=0)
    assert found is not None
    assert found["fault"] == fault
    assert found["cache"] == "q4_0"
    assert "\n" not in found["sentence"]


def test_the_cache_effect_is_measured_at_each_context_and_said_to_grow() -> None:
    found = weights_vs_kv(result(GROWING, 0.0), seed=0)
    assert found is not None
    rows = found["effects"]["answer_logprob"]["kv_at_ref_weights"]
    assert [r["ctx"] for r in rows] == list(CONTEXTS)
    for r in rows:
        assert r["diff"] == pytest.approx(GROWING[r["ctx"]], abs=0.05)
        assert r["ci"][0] <= r["diff"] <= r["ci"][1]
    # In the shape's words (kvprobe.stats.shape): the cache's effect grows, the weights' does not.
    cache_part, weights_part = found["reason"].split("; the TEST weights")
    assert "per doubling (grows)" in cache_part
    assert "(grows)" not in weights_part
    assert found["trends"]["kv"]["grows"]
    flat = weights_vs_kv(result(dict.fromkeys(CONTEXTS, -0.8), 0.0), seed=0)
    assert flat is not None
    assert "(grows)" not in flat["reason"]
    assert not flat["trends"]["kv"]["grows"]


def test_the_interaction_is_the_difference_of_the_cache_effects() -> None:
    found = weights_vs_kv(result(GROWING, -0.3, interaction=-0.5), seed=0)
    assert found is not None
    for row in found["effects"]["answer_logprob"]["interaction"]:
        assert row["diff"] == pytest.approx(-0.5, abs=0.05)
        assert row["p"] < 0.01
        assert row["n"] == N
    plain = weights_vs_kv(result(GROWING, -0.3), seed=0)
    assert plain is not None
    assert all(abs(r["diff"]) < 0.05 for r in plain["effects"]["answer_logprob"]["interaction"])


def test_one_model_or_no_quantized_cache_is_not_a_2x2() -> None:
    one_model = {**result(GROWING, 0.0), "models": None}
    assert weights_vs_kv(one_model, seed=0) is None
    f16_only = result(GROWING, 0.0)
    f16_only["configs"] = [{"id": "ref:f16"}, {"id": "test:f16"}]
    assert weights_vs_kv(f16_only, seed=0) is None
