"""Fuzzing the small readers: scenarios, haystack files, --margin, --fail-on, --map and the
numeric options. Each test starts from VALID input (the bundled scenarios, real text, the
metrics' own names), mutates it, and checks the outcome: a one-line UserError, or an accepted
value that is exactly what the input said. `nox -s fuzz -- --examples N` runs them longer."""

from __future__ import annotations

import argparse
import copy
import math
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvprobe.api import by_name, compared_metrics, margins
from kvprobe.cli import build_parser
from kvprobe.infra.errors import UserError
from kvprobe.plan.haystack import read_user_text
from kvprobe.plan.scenario import bundled_scenarios, load_scenario, parse_scenario
from kvprobe.run.validate import MAX_GPU_LAYERS, MAX_SEED, MAX_THREADS, check_numbers, parse_margins
from kvprobe.stats.compare import FailRule, match_configs

pytestmark = pytest.mark.fuzz

BUNDLED = {
    name: tomllib.loads(path.read_text(encoding="utf-8")) for name, path in bundled_scenarios().items()
}


def _one_line(exc: UserError, *words: str) -> None:
    assert str(exc).strip()
    assert "\n" not in str(exc)
    assert any(w in str(exc) for w in words) if words else True


# --- scenarios -------------------------------------------------------------------------------

odd_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 255, 256, 257, 4096, 4097, 2**20, 2**20 + 1, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.lists(st.one_of(st.integers(-10, 2**21), st.floats(allow_nan=True), st.text(max_size=4)), max_size=6),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=30),
)


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...], Any]:
    """A bundled scenario with one key set to an odd value, deleted, or added; and where."""
    base = copy.deepcopy(BUNDLED[draw(st.sampled_from(sorted(BUNDLED)))])
    tables = [k for k, v in base.items() if isinstance(v, dict)]
    section = draw(st.sampled_from([*tables, ""]))
    target = base[section] if section else base
    keys = sorted(target)
    how = draw(st.sampled_from(["set", "delete", "add"]))
    if how == "add" or not keys:
        key = draw(st.text(min_size=1, max_size=10))
        value = draw(odd_values)
    else:
        key = draw(st.sampled_from(keys))
        value = None if how == "delete" else draw(odd_values)
    if how == "delete":
        target.pop(key, None)
    else:
        target[key] = value
    return base, (section, key), value


@given(mutated_scenarios())
def test_a_mutated_scenario_is_refused_in_one_line_or_holds_what_it_says(
    case: tuple[dict[str, Any], tuple[str, ...], Any],
) -> None:
    data, (section, key), _ = case
    try:
        scenario = parse_scenario(data, "s.toml")
    except UserError as exc:
        _one_line(exc, "s.toml")  # the message names the file
        return
    # Accepted: every value the file gives is the value the scenario holds.
    for name, given_value in data.items():
        if isinstance(given_value, dict):
            held = asdict(
                scenario.haystack
                if name == "haystack"
                else scenario.plan
                if name == "plan"
                else scenario.sections[name]
            )
            for k, v in given_value.items():
                assert held[k] == v, (name, k)
        else:
            assert getattr(scenario, name) == given_value
    # ... and the odd value set was in range where the scenario took it.
    if section == "plan" and key == "documents":
        assert 1 <= scenario.plan.documents <= 256
    if section == "plan" and key == "chunk":
        assert 16 <= scenario.plan.chunk <= 4096


@given(
    st.sampled_from(sorted(BUNDLED)), st.integers(0, 10_000), st.binary(min_size=0, max_size=3), st.booleans()
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_scenario_file_with_a_changed_byte_or_cut_short(
    tmp_path: Path, name: str, at: int, insert: bytes, cut: bool
) -> None:
    text = bundled_scenarios()[name].read_bytes()
    at %= max(1, len(text))
    data = text[:at] if cut else text[:at] + insert + text[at + len(insert) :]
    path = tmp_path / "s.toml"
    path.write_bytes(data)
    try:
        scenario = load_scenario(str(path))
    except UserError as exc:
        _one_line(exc)
        assert data == path.read_bytes()  # reading changes nothing
        return
    parsed = tomllib.loads(data.decode("utf-8"))  # accepted: it is valid TOML, and what it says holds
    assert scenario.probes == parsed.get("probes", ["needle"])
    assert scenario.plan.documents == parsed.get("plan", {}).get("documents", 4)


# --- haystack files --------------------------------------------------------------------------

WORDS = "the ferry crossed the river at dawn while gulls circled the harbour and its lights".split()


@given(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=120),
    st.sampled_from(["none", "nul", "controls", "latin1", "bom", "cut-utf8"]),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_haystack_file_is_refused_in_one_line_or_read_as_written(
    tmp_path: Path, words: list[str], damage: str
) -> None:
    text = " ".join(words) + " Ünïcödé ✓"
    data = text.encode("utf-8")
    if damage == "nul":
        data = data[: len(data) // 2] + b"\x00" + data[len(data) // 2 :]
    elif damage == "controls":
        data = b"\x01\x02\x1b[31m" * 40 + data
    elif damage == "latin1":
        data += "café".encode("latin-1")
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "cut-utf8":
        data = data[:-1]  # the last character (✓, three bytes) cut in half
    path = tmp_path / "h.txt"
    path.write_bytes(data)
    try:
        got = read_user_text(str(path))
    except UserError as exc:
        _one_line(exc, "haystack file")
        return
    assert damage in ("none", "bom")
    assert len(words) >= 50 - 2  # fewer than 50 words (2 more come from the suffix) is refused
    assert got == data.decode("utf-8").strip()


# --- --margin, --fail-on, --map ---------------------------------------------------------------

metric_names = st.sampled_from([*sorted(margins()), "accuracy ", "kld", "", "ACCURACY"])
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["0", "-0", "1", "0.999", "1e308", "1e400", "nan", "inf", "-inf", "", " ", "0x10", "1_0"]
    ),
    st.text(max_size=6),
)


@given(st.lists(st.tuples(metric_names, st.sampled_from(["=", ":", "=="]), numbers), max_size=4))
def test_margins_are_refused_in_one_line_or_taken_as_given(parts: list[tuple[str, str, str]]) -> None:
    texts = [f"{m}{sep}{v}" for m, sep, v in parts]
    try:
        got = parse_margins(texts)
    except UserError as exc:
        _one_line(exc)
        return
    defaults = margins()
    assert set(got) == set(defaults)
    for name, value in got.items():
        assert math.isfinite(value)
        assert 0 < value < (1.0 if by_name(name).binary else 1000.0)
    expected = dict(defaults)
    for text in texts:  # the last one given for a metric wins, exactly as written
        name, _, number = text.partition("=")
        expected[name.strip()] = float(number)
    assert got == expected


@given(
    st.sampled_from([*sorted(compared_metrics()), "speed", ""]),
    st.sampled_from(["", "±", "+-", "+", "-"]),
    numbers,
)
def test_fail_on_rules_are_refused_in_one_line_or_taken_as_given(metric: str, sign: str, value: str) -> None:
    text = f"{metric}:{sign}{value}"
    try:
        rule = FailRule.parse(text)
    except UserError as exc:
        _one_line(exc)
        return
    assert rule.metric == metric
    assert math.isfinite(rule.threshold)
    assert rule.equivalence == f"{sign}{value}".strip().startswith(("±", "+-"))
    if rule.equivalence:
        assert rule.threshold > 0


IDS = ["f16", "q8_0", "q4_0", "k=q4_0,v=f16", "k=f16,v=q4_0"]


@given(
    st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True),
    st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True),
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from([*IDS, "", "q9_9"]), st.sampled_from(IDS)).map("=".join),
            st.text(max_size=12),
        ),
        max_size=3,
    ),
)
def test_maps_are_refused_in_one_line_or_pair_known_ids(
    old: list[str], new: list[str], maps: list[str]
) -> None:
    docs = [{"baseline": ids[0], "configs": [{"id": c} for c in ids]} for ids in (old, new)]
    try:
        pairs, unmatched_old, unmatched_new = match_configs(docs[0], docs[1], maps)
    except UserError as exc:
        _one_line(exc)
        return
    for a, b in pairs:
        assert a in old
        assert b in new
    assert set(unmatched_old) | {a for a, _ in pairs} == set(old)
    assert set(unmatched_new) | {b for _, b in pairs} == set(new)
    assert len(pairs) == len(set(pairs))


# --- numeric options -------------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 1, 512, 513, 2**31 - 1, 2**31, 2**32])
)


@given(
    big_ints, st.one_of(st.none(), big_ints), st.one_of(st.none(), big_ints), st.one_of(st.none(), big_ints)
)
def test_numeric_options_are_refused_in_one_line_or_in_range(
    seed: int, threads: int | None, gpu_layers: int | None, max_contexts: int | None
) -> None:
    args = argparse.Namespace(seed=seed, threads=threads, gpu_layers=gpu_layers, max_contexts=max_contexts)
    try:
        check_numbers(args)
    except UserError as exc:
        _one_line(exc)
        return
    assert 0 <= seed <= MAX_SEED
    assert threads is None or 1 <= threads <= MAX_THREADS
    assert gpu_layers is None or -1 <= gpu_layers <= MAX_GPU_LAYERS
    assert max_contexts is None or 1 <= max_contexts <= 1024


@given(st.sampled_from(["--ctx", "--seed", "--threads", "--time-budget", "--max-contexts"]), numbers)
def test_the_parser_refuses_in_one_line_what_it_cannot_take(option: str, value: str) -> None:
    try:
        build_parser().parse_args(["run", option, value])
    except UserError as exc:
        _one_line(exc, option, "argument")
