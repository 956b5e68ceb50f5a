"""Configuration groups: which cache configurations share llama.cpp contexts at once when
they do not all fit in memory together (--max-contexts). Pure arithmetic, no llama.cpp: the
pre-flight plans with it before anything is loaded."""

from __future__ import annotations


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_groups(
    n: int, max_contexts: int | None, *, reference: bool, extra_first: int = 0
) -> list[list[int]]:
    """Which configurations (indices into the run's list, the reference first) share contexts
    at once. One group holds them all unless that is more than `max_contexts`; then each
    group holds the reference (when `reference`: a probe compares logits with it in lockstep)
    and the next configurations in order. `extra_first` contexts (the null check) go with the
    first group."""
    if max_contexts is None or n + extra_first <= max_contexts:
        return [list(range(n))]
    head = [0] if reference else []
    rest = list(range(len(head), n))
    room = max_contexts - len(head)
    if room < 1:
        raise ValueError(f"{max_contexts} contexts cannot hold a group")
    groups = [head + rest[: room - extra_first]]
    for i in range(room - extra_first, len(rest), room):
        groups.append(head + rest[i : i + room])
    return groups
