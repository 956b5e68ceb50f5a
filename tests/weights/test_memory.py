"""The pre-flight memory estimate (kvprobe.weights.memory, kvprobe.run.validate.estimate_memory), on
plain header facts: every part by hand, the groups chosen when the contexts do not fit
together, and the refusal when not even one group does."""

from __future__ import annotations

from typing import Any

import pytest

from kvprobe.api.cache_types import CacheConfig
from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import load_scenario
from kvprobe.run.validate import estimate_memory, memory_need
from kvprobe.weights import memory
from kvprobe.weights.memory import (
    ACTIVATION_FLOATS_PER_TOKEN,
    ARRAY_BYTES_PER_POSITION,
    PROCESS_BYTES,
    check_fits,
    run_memory,
)

MiB = 1 << 20

# A small llama-like model: 4 layers, 2 KV heads of 64, no sliding window.
FACTS: dict[str, Any] = {
    "n_layer": 4, "n_head_kv": [2, 2, 2, 2], "head_dim_k": 64, "head_dim_v": 64, "n_swa": 0,
    "swa_layers": [False] * 4, "n_embd": 256, "n_vocab": 1000, "weights_bytes": 50 * MiB,
}  # fmt: skip
F16, Q8, Q4 = CacheConfig("f16", "f16"), CacheConfig("q8_0", "q8_0"), CacheConfig("q4_0", "q4_0")


def kv_by_hand(n_ctx: int, bytes_per_value: float) -> int:
    """K and V: n_ctx cells x layers x heads x head dim, at the type's bytes per value."""
    return int(2 * n_ctx * 4 * 2 * 64 * bytes_per_value)


def test_every_part_of_the_estimate_by_hand() -> None:
    need = run_memory([FACTS], [F16, Q8, Q4], 1024, 512, all_logits=True, scored_positions=1024)
    # f16: 2 bytes a value; q8_0: 34 bytes per 32 values; q4_0: 18 per 32.
    assert need.kv_each == (kv_by_hand(1024, 2), kv_by_hand(1024, 34 / 32), kv_by_hand(1024, 18 / 32))
    per_context = ACTIVATION_FLOATS_PER_TOKEN * 512 * 256 * 4 + 2 * 512 * 1000 * 4  # logits twice
    assert need.logits_each == (per_context,) * 3
    assert need.arrays == 1024 * ARRAY_BYTES_PER_POSITION * 3
    assert need.total == 50 * MiB + sum(need.kv_each) + 3 * per_context + need.arrays + PROCESS_BYTES
    assert need.contexts == 3


def test_without_every_positions_logits_a_context_keeps_a_few_rows() -> None:
    need = run_memory([FACTS], [F16], 1024, 512, all_logits=False)
    assert need.logits_each == (ACTIVATION_FLOATS_PER_TOKEN * 512 * 256 * 4 + 8 * 1000 * 4,)


def test_the_null_check_adds_an_f16_context_and_two_models_double_everything() -> None:
    one = run_memory([FACTS], [F16, Q4], 1024, 512, extra_contexts=1)
    assert one.kv_each[-1] == kv_by_hand(1024, 2)
    two = run_memory([FACTS, FACTS], [F16, Q4], 1024, 512)
    assert two.contexts == 4
    assert two.weights == 2 * 50 * MiB


def test_groups_peak_at_their_largest_group() -> None:
    need = run_memory([FACTS], [F16, Q8, Q4], 1024, 512)
    # The reference in both groups: {f16, q8_0} and {f16, q4_0}; the first is the larger.
    peak = need.for_groups([[0, 1], [0, 2]])
    assert peak.kv == need.kv_each[0] + need.kv_each[1]
    assert peak.contexts == 2
    assert peak.total < need.total


def test_a_run_that_cannot_fit_is_refused_with_its_numbers() -> None:
    need = run_memory([FACTS], [F16], 1 << 20, 512)
    with pytest.raises(UserError, match=r"--ctx 1,048,576 needs about .* GiB .* lower --ctx") as err:
        check_fits(need, need.total - 1, 1 << 20)
    assert "\n" not in str(err.value)
    check_fits(need, need.total, 1 << 20)  # exactly enough is enough
    check_fits(need, None, 1 << 20)  # where the limit is unknown nothing is refused


def test_the_estimate_goes_in_groups_when_the_contexts_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = load_scenario("default")  # the divergence probe reads every position: the reference repeats
    kwargs: dict[str, Any] = {"baseline": "f16", "scenario": scenario, "ctx": 2048, "mode": "onepass",
                              "null_check": False, "max_contexts": None, "gpu_layers": 0}  # fmt: skip
    configs = [F16, Q8, Q4, CacheConfig("q4_0", "f16")]
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 50)
    words, chosen = estimate_memory([FACTS], configs, **kwargs)
    assert chosen is None  # all four at once
    assert "groups" not in words
    need, _, _ = memory_need(
        [FACTS], configs, **{k: kwargs[k] for k in ("baseline", "scenario", "ctx", "mode", "null_check")}
    )
    everything = need.total
    # Room for about three contexts: groups of the reference and two others.
    monkeypatch.setattr(memory, "available_bytes", lambda: everything - 1)
    words, chosen = estimate_memory([FACTS], configs, **kwargs)
    assert chosen is not None
    assert 2 <= chosen < 4
    assert "groups of at most" in words
    assert "the reference again in each" in words
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    with pytest.raises(UserError, match="needs about"):
        estimate_memory([FACTS], configs, **kwargs)
