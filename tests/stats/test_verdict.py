"""The verdict: equivalence, effective context and sentences, K-vs-V attribution, and the
'how many more items' estimate."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kvprobe.stats.verdict import build_verdict, k_vs_v, more_items_needed
from tests.helpers import config_row


def test_more_items_needed_by_hand() -> None:
    # p = 0.1 with 40 items: z = 1.2816; 80% power at one-sided 0.05 needs (2.4865 / 1.2816)^2 = 3.764x
    assert more_items_needed(0.1, 40) == math.ceil(40 * (2.4865 / 1.28155) ** 2) - 40
    assert more_items_needed(0.7, 40) is None  # the effect points the other way
    assert more_items_needed(0.001, 40) == 0


def needle_items(
    config: str, correct_by_ctx: dict[int, list[bool]], logprob_shift: float = 0.0
) -> list[dict[str, Any]]:
    items = []
    for ctx, outcomes in correct_by_ctx.items():
        for i, ok in enumerate(outcomes):
            logprob = -1.0 - 0.01 * i + (0 if ok else logprob_shift)
            where = {"probe": "needle", "config": config, "doc": 0, "ctx": ctx, "key": f"k{i}"}
            items.append({**where, "correct": ok, "logprob": logprob})
    return items


def doc_with(configs: dict[str, dict[int, list[bool]]]) -> dict[str, Any]:
    items = []
    for cid, outcomes in configs.items():
        items += needle_items(cid, outcomes, logprob_shift=-4.0)

    return {
        "baseline": "f16",
        "configs": [config_row(c) for c in configs],
        "items": items,
        "summary": [],
        "divergence": None,
        "run": {"ctx": 2048, "seed": 0, "checkpoints": [1024, 2048]},
    }


GOOD = {1024: [True] * 30, 2048: [True] * 30}
LOSES_LATE = {1024: [True] * 30, 2048: [True] * 10 + [False] * 20}


def test_verdict_names_onset_and_effective_context() -> None:
    v = build_verdict(doc_with({"f16": GOOD, "q4_0": LOSES_LATE}), seed=0)
    assert v is not None
    q4 = v["configs"]["q4_0"]
    assert q4["onset_accuracy"] == 2048
    assert q4["effective_context"] == 1024
    assert "equivalent to f16 up to 1,024 tokens, worse beyond: from 2,048" in v["sentences"][0]
    assert "whether the loss grows with context is not measured" in v["sentences"][0]  # two checkpoints


def test_no_significant_loss_is_undecided_with_the_items_that_would_decide() -> None:
    slight = {1024: [True] * 30, 2048: [True] * 28 + [False] * 2}
    v = build_verdict(doc_with({"f16": GOOD, "q8_0": slight}), seed=0)
    assert v is not None
    q8 = v["configs"]["q8_0"]
    assert q8["onset_accuracy"] is None
    assert q8["equivalence"]["status"] == "undecided"
    assert q8["effective_context"] == 1024  # equivalent at 1,024 (identical items), undecided at 2,048
    at_2048 = q8["equivalence"]["checkpoints"][1]
    assert at_2048["ctx"] == 2048
    assert at_2048["items_needed"] > 30
    assert "is undecided" in v["sentences"][0]
    assert f"about {at_2048['items_needed']:,} items at 2,048 tokens would decide" in v["sentences"][0]
    assert "no loss at all" not in " ".join(v["sentences"])


def test_identical_items_are_equivalent_and_recommended() -> None:
    v = build_verdict(doc_with({"f16": GOOD, "q8_0": GOOD}), seed=0)
    assert v is not None
    assert v["configs"]["q8_0"]["equivalence"]["status"] == "equivalent"
    assert v["configs"]["q8_0"]["effective_context"] == 2048
    assert v["recommendation"]["config"] == "q8_0"
    assert v["margins"]["answer_logprob"] == 0.25


def test_margins_change_the_decision() -> None:
    slight = {1024: [True] * 30, 2048: [True] * 28 + [False] * 2}  # log-prob -0.27 at 2,048
    doc = doc_with({"f16": GOOD, "q8_0": slight})
    strict = build_verdict(doc, seed=0)
    loose = build_verdict(doc, seed=0, margin={"answer_logprob": 2.0, "accuracy": 0.5})
    assert strict is not None
    assert loose is not None
    assert strict["configs"]["q8_0"]["equivalence"]["status"] == "undecided"
    assert loose["configs"]["q8_0"]["equivalence"]["status"] == "equivalent"
    assert loose["margins"]["answer_logprob"] == 2.0


@pytest.mark.parametrize(
    ("k_only", "v_only", "fault"),
    [
        (LOSES_LATE, GOOD, "K"),
        (GOOD, LOSES_LATE, "V"),
        (LOSES_LATE, LOSES_LATE, "both"),
        (GOOD, GOOD, "neither"),
    ],
)
def test_k_vs_v_names_the_half_at_fault(
    k_only: dict[int, list[bool]], v_only: dict[int, list[bool]], fault: str
) -> None:
    doc = doc_with({"f16": GOOD, "q4_0": LOSES_LATE, "k=q4_0,v=f16": k_only, "k=f16,v=q4_0": v_only})
    v = build_verdict(doc, seed=0)
    assert v is not None
    assert len(v["k_vs_v"]) == 1
    assert v["k_vs_v"][0]["fault"] == fault
    assert v["k_vs_v"][0]["sentence"] in v["sentences"]


def test_k_vs_v_by_kl_when_needles_do_not_separate() -> None:
    summary = [
        {
            "probe": "divergence",
            "metric": "kld_mean",
            "config": c,
            "scope": "pooled",
            "value": m,
            "ci": [m * 0.9, m * 1.1],
        }
        for c, m in (("k=q4_0,v=f16", 0.1), ("k=f16,v=q4_0", 0.01))
    ]
    verdicts: dict[str, dict[str, Any]] = {
        cid: {"paired": [], "onset_accuracy": None, "onset_logprob": None}
        for cid in ("k=q4_0,v=f16", "k=f16,v=q4_0")
    }
    result = k_vs_v(verdicts, summary, "q4_0")
    assert result is not None
    assert result["fault"] == "K"
    assert "KL" in result["reason"]


def test_k_vs_v_conflicting_evidence_is_undecided() -> None:
    """KL points to K, the paired answer log-prob to V: neither overrules the other."""
    summary = [
        {"probe": "divergence", "metric": "kld_mean", "config": c, "scope": "pooled", "value": m,
         "ci": [m * 0.9, m * 1.1]}
        for c, m in (("k=q4_0,v=f16", 0.1), ("k=f16,v=q4_0", 0.01))
    ]  # fmt: skip
    items = needle_items("k=q4_0,v=f16", GOOD) + needle_items("k=f16,v=q4_0", LOSES_LATE, logprob_shift=-4.0)
    verdicts: dict[str, dict[str, Any]] = {
        cid: {"paired": [], "onset_accuracy": None, "onset_logprob": None}
        for cid in ("k=q4_0,v=f16", "k=f16,v=q4_0")
    }
    result = k_vs_v(verdicts, summary, "q4_0", items=items)
    assert result is not None
    assert result["fault"] == "undecided"
    assert {e["points_to"] for e in result["evidence"]} >= {"K", "V"}
    assert "conflicts" in result["reason"]


def test_a_marginal_p_on_a_tiny_effect_does_not_name_a_half() -> None:
    """A significant but immaterial log-prob contrast (0.02 nats, far below half the 0.25
    margin) does not point anywhere; KL, nine times larger for K, does."""
    summary = [
        {"probe": "divergence", "metric": "kld_mean", "config": c, "scope": "pooled", "value": m,
         "ci": [m * 0.95, m * 1.05]}
        for c, m in (("k=q4_0,v=f16", 0.108), ("k=f16,v=q4_0", 0.0126))
    ]  # fmt: skip
    k_items = needle_items("k=q4_0,v=f16", GOOD)
    v_items = needle_items("k=f16,v=q4_0", GOOD)
    for it in v_items:
        it["logprob"] -= 0.02 + 0.001 * (int(it["key"][1:]) % 3)  # V-only a hair lower on every item
    verdicts: dict[str, dict[str, Any]] = {
        cid: {"paired": [], "onset_accuracy": None, "onset_logprob": None}
        for cid in ("k=q4_0,v=f16", "k=f16,v=q4_0")
    }
    result = k_vs_v(verdicts, summary, "q4_0", items=k_items + v_items)
    assert result is not None
    lp = next(e for e in result["evidence"] if e["metric"] == "answer_logprob")
    assert lp["p"] < 0.05
    assert lp["points_to"] is None
    assert result["fault"] == "K"


def test_k_vs_v_is_neither_when_both_halves_are_equivalent() -> None:
    """A material, significant difference between two halves that are both equivalent to the
    reference does not make one of them "at fault"; it still says which is more sensitive."""
    base = {1024: [True] * 30, 2048: [True] * 30}
    items = needle_items("f16", base) + needle_items("q4_0", base)
    items += needle_items("k=q4_0,v=f16", base)
    v_only = needle_items("k=f16,v=q4_0", base)
    for it in v_only:
        it["logprob"] += 0.15 + 0.001 * (int(it["key"][1:]) % 3)  # better by 0.15, within ±0.25
    doc = doc_with({"f16": base, "q4_0": base, "k=q4_0,v=f16": base, "k=f16,v=q4_0": base})
    doc["items"] = items + v_only
    v = build_verdict(doc, seed=0)
    assert v is not None
    kv = v["k_vs_v"][0]
    assert v["configs"]["k=f16,v=q4_0"]["equivalence"]["status"] == "equivalent"
    assert kv["fault"] == "neither"
    assert kv["more_sensitive"] == "K"
