"""Configuration groups (--max-contexts): which caches share contexts, what the groups' peak
memory is, and when the pre-flight chooses groups by itself. The numbers of a grouped run are
checked against one group in test_resume.py, on the real llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvprobe.cli import build_parser
from kvprobe.infra.errors import UserError
from kvprobe.plan.groups import plan_groups
from kvprobe.plan.scenario import load_scenario
from kvprobe.run.validate import estimate_memory, parse_configs
from kvprobe.weights import memory
from kvprobe.weights.doctor import read_facts


def test_one_group_when_everything_fits() -> None:
    assert plan_groups(8, None, reference=True) == [list(range(8))]
    assert plan_groups(8, 8, reference=True) == [list(range(8))]


def test_the_reference_goes_again_in_every_group() -> None:
    assert plan_groups(8, 4, reference=True) == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7]]
    # The null check's context goes with the first group and takes a place in it.
    assert plan_groups(8, 4, reference=True, extra_first=1) == [[0, 1, 2], [0, 3, 4, 5], [0, 6, 7]]
    assert plan_groups(3, 2, reference=True, extra_first=1) == [[0], [0, 1], [0, 2]]


def test_without_a_logits_reference_the_caches_are_just_split() -> None:
    assert plan_groups(5, 2, reference=False) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="cannot hold a group"):
        plan_groups(3, 1, reference=True)


def test_the_peak_is_the_largest_group() -> None:
    need = memory.RunMemory(
        weights=100, kv=0, logits=0, arrays=5, process=7, contexts=4,
        kv_each=(10, 20, 30, 40), logits_each=(1, 2, 3, 4),
    )  # fmt: skip
    grouped = need.for_groups([[0, 1], [0, 2]], extra_first=1)  # context 3 is the null check's
    assert (grouped.kv, grouped.logits, grouped.contexts) == (10 + 20 + 40, 1 + 2 + 4, 3)
    assert grouped.total == 100 + 70 + 7 + 5 + 7


def _estimate(model: Path, argv: list[str]) -> tuple[str, int | None]:
    args = build_parser().parse_args(["run", "--model", str(model), *argv])
    configs, baseline = parse_configs(args)
    return estimate_memory(
        [read_facts(model)], configs, baseline=baseline, scenario=load_scenario(args.scenario), ctx=args.ctx,
        mode=args.mode, null_check=args.null_check, max_contexts=args.max_contexts, gpu_layers=0,
    )  # fmt: skip


def test_groups_are_chosen_when_the_contexts_do_not_fit_together(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--cache", "q8_0", "--cache", "q4_0", "--split-kv", "--ctx", "2048"]  # 8 caches
    facts = [read_facts(tiny_model_path)]
    configs, _ = parse_configs(build_parser().parse_args(["run", *argv]))
    need = memory.run_memory(facts, configs, 2048 + 2 * 512, 512, scored_positions=2048)
    monkeypatch.setattr(memory, "available_bytes", lambda: need.total + 1)
    words, max_contexts = _estimate(tiny_model_path, argv)
    assert max_contexts is None
    assert "groups" not in words
    assert len(configs) == 8
    # One byte short of all eight together: seven at once, the reference again in the second group.
    monkeypatch.setattr(memory, "available_bytes", lambda: need.total - 1)
    words, max_contexts = _estimate(tiny_model_path, argv)
    assert max_contexts == 7
    assert "in 2 groups of at most 7 contexts (the reference again in each), since all 8 need" in words
    # What the user asks for is kept, and checked.
    assert _estimate(tiny_model_path, [*argv, "--max-contexts", "3"])[1] == 3
    with pytest.raises(UserError, match="--max-contexts 1 is too few: give at least 2"):
        _estimate(tiny_model_path, [*argv, "--max-contexts", "1"])
    # Not even the reference beside one cache fits: refused, as before groups.
    monkeypatch.setattr(memory, "available_bytes", lambda: need.weights)
    with pytest.raises(UserError, match="are available"):
        _estimate(tiny_model_path, argv)


def test_a_group_of_one_config_when_nothing_compares_logits(tiny_model_path: Path) -> None:
    words, max_contexts = _estimate(
        tiny_model_path,
        ["--scenario", "repetition", "--cache", "q8_0", "--ctx", "2048", "--max-contexts", "1"],
    )
    assert max_contexts == 1
    assert "in 2 groups of at most 1 contexts" in words
    assert "reference again" not in words


def test_a_resumed_run_keeps_its_one_group_or_says_why_it_cannot(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--cache", "q8_0", "--ctx", "2048"]
    args = build_parser().parse_args(["run", "--model", str(tiny_model_path), *argv])
    args.one_group = True  # what --resume sets for a journal without groups
    configs, baseline = parse_configs(args)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    with pytest.raises(UserError, match="the run being resumed had all 2 contexts at once"):
        estimate_memory(
            [read_facts(tiny_model_path)], configs, baseline=baseline, scenario=load_scenario(args.scenario),
            ctx=args.ctx, mode=args.mode, null_check=args.null_check, max_contexts=args.max_contexts,
            one_group=args.one_group, gpu_layers=0,
        )  # fmt: skip
