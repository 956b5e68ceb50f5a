"""The one-pass plan against the model's own tokenizer (tiny GGUF)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvprobe.api import selected
from kvprobe.api.engine import Model
from kvprobe.api.scenario import HaystackKind
from kvprobe.plan.documents import build_plan, default_checkpoints
from kvprobe.plan.scenario import load_scenario
from kvprobe.probes.needle.plan import ClassicSpec, NeedleSpec, build_classic_cells, items_at


def test_default_checkpoints() -> None:
    assert default_checkpoints(8192) == [1024, 2048, 4096, 8192]
    assert default_checkpoints(3000) == [1024, 2048, 3000]
    assert default_checkpoints(512) == [512]
    assert default_checkpoints(4096, [512, 1500, 9000]) == [512, 1500, 4096]


@pytest.mark.parametrize("haystack", ["prose", "noise"])
def test_needle_positions_and_depths_match_tokens(tiny_model: Model, haystack: HaystackKind) -> None:
    scenario = load_scenario("default")
    scenario = replace(scenario, haystack=replace(scenario.haystack, kind=haystack))
    # The needle probe alone: the repetition probe would make the documents longer than --ctx.
    checkpoints, docs = build_plan(tiny_model, scenario, 2048, seed=3, probes=selected(["needle"]))
    assert checkpoints == [256, 512, 1024, 2048]  # the default scenario measures from 256
    assert len(docs) == scenario.plan.documents
    for doc in docs:
        assert len(doc.tokens) == 2048
        assert doc.tokens[0] == tiny_model.bos
        keys = [n.key for n in doc.spans]
        assert len(set(keys)) == len(keys)
        for needle in doc.spans:
            expected = tiny_model.tokenize(
                " " + scenario.spec(NeedleSpec).template.format(key=needle.key, value=needle.value)
            )
            assert doc.tokens[needle.position : needle.end] == expected
            assert needle.value in tiny_model.detokenize(doc.tokens[needle.position : needle.end])
        for length in checkpoints:
            items = items_at(doc, length)
            assert len(items) >= scenario.spec(NeedleSpec).per_segment * checkpoints.index(length) + 1
            for item in items:
                # Where the needle's text really is in the first `length` tokens, found by search,
                # not by the plan's own arithmetic.
                needle = next(n for n in doc.spans if n.key == item.key)
                text = tiny_model.tokenize(
                    " " + scenario.spec(NeedleSpec).template.format(key=item.key, value=needle.value)
                )
                found = [i for i in range(length - len(text) + 1) if doc.tokens[i : i + len(text)] == text]
                assert len(found) == 1, item.key
                assert item.depth == pytest.approx(found[0] / length, abs=5e-5 + 1e-12)  # 4 decimals
                assert 0 <= item.depth < 1
                assert item.distance == length - (found[0] + len(text))
                assert item.distance >= 0
    values = [n.value for d in docs for n in d.spans]
    assert all(len(v) == scenario.spec(NeedleSpec).value_digits for v in values)


def test_every_checkpoint_sees_shallow_and_deep_needles(tiny_model: Model) -> None:
    scenario = load_scenario("default")
    checkpoints, docs = build_plan(tiny_model, scenario, 4096, seed=0, probes=selected(scenario.probes))
    for length in checkpoints:
        depths = [it.depth for d in docs for it in items_at(d, length)]
        # 16 planned per checkpoint; in the first 256 tokens a needle may not fit (the tiny
        # model's tokenizer spends more tokens per word than a real one)
        assert len(depths) >= (16 if length >= 1024 else 12)
        assert max(depths) > 0.7
        # a needle lands at a sentence end after its aim: in 256 tokens, not in the first 30%
        assert min(depths) < (0.3 if length >= 1024 else 0.4)


def test_plan_is_seeded(tiny_model: Model) -> None:
    scenario = load_scenario("quick")
    a = build_plan(tiny_model, scenario, 1024, seed=1, probes=selected(scenario.probes))
    b = build_plan(tiny_model, scenario, 1024, seed=1, probes=selected(scenario.probes))
    c = build_plan(tiny_model, scenario, 1024, seed=2, probes=selected(scenario.probes))
    assert a == b
    assert a[1][0].tokens != c[1][0].tokens


def test_classic_cells_one_needle_each(tiny_model: Model) -> None:
    scenario = load_scenario("quick")
    cells = build_classic_cells(tiny_model, scenario, 2048, seed=0)
    assert len(cells) == 2 * len(scenario.spec(ClassicSpec).depths) * scenario.spec(ClassicSpec).repeats
    for cell in cells:
        assert len(cell.document.spans) == 1
        assert len(cell.document.tokens) == cell.item.ctx
        assert cell.item.depth == pytest.approx(cell.document.spans[0].position / cell.item.ctx, abs=1e-4)


@pytest.mark.parametrize("n", [100, 300])
def test_keys_are_distinct_for_every_seed(n: int) -> None:
    """Pairing is by (doc, ctx, key): a repeated key merged two needles. Before the fix, 22 of
    these 200 seeds repeated a key at 100 needles and 142 at 300."""
    import random

    from kvprobe.probes.needle.plan import DEFAULT_ATTRIBUTES, draw_keys_values

    repeated = [
        seed
        for seed in range(200)
        if len({k for k, _ in draw_keys_values(n, 7, random.Random(seed), list(DEFAULT_ATTRIBUTES))}) < n
    ]
    assert repeated == []


def test_a_plan_with_more_needles_than_values_is_refused_not_looped_on() -> None:
    """value_digits = 4 allows 9,000 values: 10,000 needles used to loop forever."""
    import random

    from kvprobe.infra.errors import UserError
    from kvprobe.probes.needle.plan import DEFAULT_ATTRIBUTES, draw_keys_values

    with pytest.raises(UserError, match="value_digits"):
        draw_keys_values(10_000, 4, random.Random(0), list(DEFAULT_ATTRIBUTES))
    with pytest.raises(UserError, match="distinct needle keys"):
        draw_keys_values(2_000, 7, random.Random(0), ["locker number"])  # 40 x 40 x 1 keys


@pytest.mark.parametrize("n", [1, 20, 41, 100, 300])
def test_keys_and_values_are_distinct_at_any_size(n: int) -> None:
    import random

    from kvprobe.probes.needle.plan import DEFAULT_ATTRIBUTES, draw_keys_values

    pairs = draw_keys_values(n, 7, random.Random(0), list(DEFAULT_ATTRIBUTES))
    assert len(pairs) == n
    assert len({k for k, _ in pairs}) == n
    assert len({v for _, v in pairs}) == n
    assert all(len(v) == 7 for _, v in pairs)


def test_classic_cells_for_the_default_scenario(tiny_model: Model) -> None:
    scenario = load_scenario("default")
    cells = build_classic_cells(tiny_model, scenario, 4096, seed=0)
    plan = scenario.plan
    lengths = default_checkpoints(4096, plan.checkpoints, plan.first_checkpoint)  # 256 ... 4096
    assert (
        len(cells)
        == len(lengths) * len(scenario.spec(ClassicSpec).depths) * scenario.spec(ClassicSpec).repeats
    )
    assert len({c.item.key for c in cells}) == len(cells)
