"""Property-based tests (hypothesis): arbitrary input gives a result or a UserError, never
another exception, and the results keep their invariants. Seeded and bounded (conftest.py's
"kvprobe" profile), so CI runs the same examples every time."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvprobe.cache_types import parse_config_id
from kvprobe.compare import compare, pairing
from kvprobe.errors import UserError
from kvprobe.plan.scenario import load_scenario, parse_scenario
from kvprobe.probes.needle.plan import NeedleSpec
from kvprobe.probes.repetition.metrics import repetition_metrics
from kvprobe.stats.analysis import effective_context, fit_decay, halving_interval, halving_length, onset
from kvprobe.stats.verdict import build_verdict

# --- scenario loader -------------------------------------------------------------------------

SECTION_KEYS = {
    "needle": [
        "template",
        "query",
        "answer",
        "attributes",
        "value_digits",
        "per_segment",
        "generate_tokens",
        "x",
    ],
    "plan": ["documents", "checkpoints", "chunk", "y"],
    "repetition": ["tokens", "offsets", "stride"],
    "divergence": ["documents", "block", "onset_reference"],
    "classic": ["depths", "repeats"],
    "haystack": ["kind", "path"],
}
scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.one_of(st.integers(-5, 5000), st.text(max_size=8), st.floats(-1, 2)), max_size=5),
)
sections = st.fixed_dictionaries(
    {},
    optional={
        name: st.one_of(st.dictionaries(st.sampled_from(keys), scalars, max_size=4), scalars)
        for name, keys in SECTION_KEYS.items()
    },
)
scenario_data = st.builds(
    lambda s, extra: {**s, **extra},
    sections,
    st.dictionaries(st.sampled_from(["name", "description", "probes", "bogus"]), scalars, max_size=2),
)


@given(scenario_data)
def test_scenario_parser_returns_a_scenario_or_a_user_error(data: dict[str, Any]) -> None:
    try:
        scenario = parse_scenario(data, "s.toml")
    except UserError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 - the property is about any input, raised or not
        return
    assert scenario.plan.documents >= 1
    assert 1 <= scenario.spec(NeedleSpec).per_segment <= 256
    assert scenario.spec(NeedleSpec).attributes


@given(st.binary(max_size=300))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_scenario_files_of_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(data)
    with contextlib.suppress(UserError):
        load_scenario(str(path))


# --- damaged result documents (the loader's own property tests: tests/test_fuzz_results.py) ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


# --- compare's pairing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result_doc(tiny_quick_result: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(tiny_quick_result.read_text())
    return doc


def _mutate(doc: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    node: Any = new
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return new
    try:
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass
    return new


_DELETE = object()
paths = st.lists(
    st.one_of(
        st.sampled_from(
            ["configs", "items", "run", "runtime", "scenario", "model", "divergence", "positions",
             "baseline", "seed", "ctx", "id", "config", "correct", "logprob", "sha256", "zlib_base64",
             "dtype", "n", "kld"]
        ),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=4,
)  # fmt: skip


@given(paths, st.one_of(json_values, st.just(_DELETE)), st.booleans())
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_compare_of_a_damaged_result_is_a_report_or_a_user_error(
    result_doc: dict[str, Any], path: list[str | int], value: Any, damage_old: bool
) -> None:
    damaged = _mutate(result_doc, path, value)
    old, new = (damaged, result_doc) if damage_old else (result_doc, damaged)
    try:
        report = compare(old, new)
    except UserError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 - the property is about any input, raised or not
        return
    assert report["paired"] == pairing(old, new)[0]
    for row in report["rows"]:
        assert row["mark"] in ("worse", "better", "no significant change", "not testable")


# --- repetition metrics ----------------------------------------------------------------------


@given(st.lists(st.integers(0, 6), max_size=80), st.text(max_size=80))
def test_repetition_metrics_stay_in_range(tokens: list[int], text: str) -> None:
    m = repetition_metrics(tokens, text)
    for n in range(1, 5):
        assert 0.0 <= m.seq_rep[n] <= 1.0
        assert 0.0 <= m.distinct[n] <= 1.0
    assert m.compression_ratio >= 0.0
    if m.loop is not None:
        assert m.loop.period >= 1


# --- the statistics the verdict uses ---------------------------------------------------------

CONTEXTS = [1024, 2048, 4096]
CONFIGS = ["f16", "q4_0", "k=q4_0,v=f16", "k=f16,v=q4_0"]
logprobs = st.one_of(st.floats(-30, 0), st.sampled_from([0.0, -1.0, -1.0, -1.0]))  # ties are common


@st.composite
def needle_items(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Paired needle items over some checkpoints: any mix of right and wrong, ties, one item,
    a checkpoint with no items, a configuration that is all right or all wrong."""
    keys = draw(st.lists(st.sampled_from([f"k{i}" for i in range(6)]), min_size=0, max_size=6, unique=True))
    contexts = draw(st.lists(st.sampled_from(CONTEXTS), min_size=0, max_size=3, unique=True))
    mode = draw(st.sampled_from(["mixed", "all_right", "all_wrong"]))
    items = []
    for ctx in sorted(contexts):
        for key in keys:
            for config in CONFIGS:
                correct = {"mixed": draw(st.booleans()), "all_right": True, "all_wrong": False}[mode]
                items.append(
                    {"probe": "needle", "config": config, "doc": 0, "ctx": ctx, "key": key,
                     "correct": correct, "logprob": draw(logprobs)}
                )  # fmt: skip
    return items


# Each verdict with a decay fit runs 300 bootstrap fits (about 1 s per configuration), so these
# two take fewer examples than the rest.
@given(needle_items(), st.booleans())
@settings(max_examples=30, deadline=None)
def test_verdict_on_arbitrary_item_sets_never_raises(items: list[dict[str, Any]], with_kl: bool) -> None:
    summary = []
    if with_kl:
        for i, config in enumerate(CONFIGS[1:]):
            summary.append(
                {"probe": "divergence", "metric": "kld_mean", "config": config, "scope": "pooled",
                 "value": 0.01 * (i + 1), "ci": [0.009 * (i + 1), 0.011 * (i + 1)]}
            )  # fmt: skip
    doc = {
        "baseline": "f16",
        "configs": [
            {"id": c, "type_k": parse_config_id(c).type_k, "type_v": parse_config_id(c).type_v}
            for c in CONFIGS
        ],
        "items": items,
        "summary": summary,
        "divergence": None,
        "models": None,
        "run": {"ctx": max((it["ctx"] for it in items), default=1024), "seed": 0,
                "checkpoints": sorted({it["ctx"] for it in items})},
    }  # fmt: skip
    result_configs: list[dict[str, str]] = doc["configs"]  # type: ignore[assignment]
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    for cid, v in verdict["configs"].items():
        assert cid != "f16"
        if v.get("halving") and v["halving"]["length"] is not None:
            assert math.isfinite(v["halving"]["length"])
    for kv in verdict["k_vs_v"]:
        assert kv["fault"] in ("K", "V", "both", "neither", "undecided")
    rec = verdict["recommendation"]
    assert rec["config"] in {c["id"] for c in result_configs}
    assert all(line["finding"] for line in verdict["folklore"])


@given(needle_items())
@settings(max_examples=30, deadline=None)
def test_weights_vs_kv_on_arbitrary_item_sets_never_raises(items: list[dict[str, Any]]) -> None:
    renamed = {"f16": "ref:f16", "q4_0": "ref:q4_0", "k=q4_0,v=f16": "test:f16", "k=f16,v=q4_0": "test:q4_0"}
    cells = [{**it, "config": renamed[it["config"]]} for it in items]
    doc = {
        "baseline": "ref:f16",
        "configs": [
            {"id": c, "type_k": c.split(":")[1], "type_v": c.split(":")[1]} for c in renamed.values()
        ],
        "items": cells,
        "summary": [],
        "divergence": None,
        "models": {"ref": {"name": "a.gguf"}, "test": {"name": "b.gguf"}},
        "run": {"ctx": max((it["ctx"] for it in items), default=1024), "seed": 0,
                "checkpoints": sorted({it["ctx"] for it in items})},
    }  # fmt: skip
    verdict = build_verdict(doc, seed=0)
    assert verdict is not None
    attribution = verdict["weights_vs_kv"]
    assert attribution is not None
    assert attribution["fault"] in ("kv", "weights", "both", "neither", "inconclusive")


@given(
    st.lists(st.tuples(st.sampled_from(CONTEXTS), st.floats(0, 1)), max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
)
@settings(deadline=None)
def test_decay_fit_and_halving_are_total(points: list[tuple[int, float]], reference: float) -> None:
    ctx, correct = [c for c, _ in points], [y for _, y in points]
    fit = fit_decay(ctx, correct)
    if fit is not None:
        h = halving_length(fit, reference)
        assert h is None or (math.isfinite(h) and h > 0)
    result = halving_interval(ctx, correct, reference, seed=0, n_boot=10)
    assert (result.length is None) == (result.reason is not None)


@given(
    st.lists(
        st.fixed_dictionaries({"ctx": st.sampled_from(CONTEXTS), "p_holm": st.floats(0, 1)}), max_size=4
    ),
    st.dictionaries(st.sampled_from(CONTEXTS), st.floats(0, 1)),
    st.dictionaries(st.sampled_from(CONTEXTS), st.floats(0, 1)),
)
def test_onset_and_effective_context_are_checkpoints_or_none(
    rows: list[dict[str, Any]], test: dict[int, float], base: dict[int, float]
) -> None:
    found = onset(rows)
    assert found is None or found in {r["ctx"] for r in rows}
    eff = effective_context(test, base)
    assert eff is None or eff in test
