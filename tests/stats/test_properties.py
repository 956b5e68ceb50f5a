"""Property-based tests (hypothesis): arbitrary input gives a result or a UserError, never
another exception, and the results keep their invariants. Seeded and bounded (conftest.py's
"kvprobe" profile), so CI runs the same examples every time."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvprobe.api.cache_types import parse_config_id
from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import load_scenario, parse_scenario
from kvprobe.probes.needle.plan import NeedleSpec
from kvprobe.probes.repetition.metrics import repetition_metrics
from kvprobe.result.store import load_result
from kvprobe.stats.analysis import effective_context, fit_decay, halving_interval, halving_length, onset
from kvprobe.stats.compare import compare
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


# Integer keys of the first probes' sections with their valid ranges (the validators' bounds).
RANGES = {
    ("plan", "documents"): (1, 256), ("plan", "chunk"): (16, 4096), ("needle", "per_segment"): (1, 256),
    ("needle", "value_digits"): (4, 12), ("needle", "generate_tokens"): (1, 512),
    ("repetition", "tokens"): (1, 2048), ("repetition", "offsets"): (1, 32),
    ("divergence", "block"): (1, 1024), ("classic", "repeats"): (1, 256),
}  # fmt: skip


@st.composite
def valid_scenarios(draw: st.DrawFn) -> dict[tuple[str, str], int]:
    """Values for some of the keys, each inside its range."""
    keys = draw(st.lists(st.sampled_from(sorted(RANGES)), min_size=1, max_size=5, unique=True))
    return {k: draw(st.integers(*RANGES[k])) for k in keys}


def toml_text(values: dict[tuple[str, str], int]) -> str:
    sections: dict[str, list[str]] = {}
    for (section, key), value in values.items():
        sections.setdefault(section, []).append(f"{key} = {value}")
    return "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())


def held(scenario: Any, section: str, key: str) -> Any:
    return getattr(scenario.plan if section == "plan" else scenario.sections[section], key)


@given(valid_scenarios(), st.sampled_from(["below", "above", "text", "float"]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_valid_scenario_file_holds_what_it_says_and_one_bad_value_is_named(
    tmp_path: Path, values: dict[tuple[str, str], int], how: str
) -> None:
    """Valid files, written as TOML and read by the loader, hold exactly the values written;
    the same file with one value out of its range or of the wrong type is refused in one line
    that names that key."""
    path = tmp_path / "s.toml"
    path.write_text(toml_text(values))
    scenario = load_scenario(str(path))
    for (section, key), value in values.items():
        assert held(scenario, section, key) == value
    (section, key), value = next(iter(values.items()))
    low, high = RANGES[(section, key)]
    bad = {"below": low - 1, "above": high + 1, "text": f'"{value}"', "float": f"{value}.5"}[how]
    path.write_text(toml_text({**values, (section, key): bad}))  # type: ignore[dict-item]
    with pytest.raises(UserError) as err:
        load_scenario(str(path))
    assert f"{section}.{key}" in str(err.value)
    assert "\n" not in str(err.value)


# --- compare on results read back through the loader (more: tests/result/test_fuzz_results.py) ----------


@pytest.fixture(scope="module")
def result_doc() -> dict[str, Any]:
    """A real result with three checkpoints (needles only), so a mutation at one leaves others."""
    path = Path(__file__).resolve().parents[2] / "results" / "examples" / "onepass-f16-q4_0-4096.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def every_leaf(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in every_leaf(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in every_leaf(v, (*path, i))]
    return [path]


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    node: Any = new
    for step in path[:-1]:
        node = node[step]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return new


_DELETE = object()
WRONG = st.one_of(st.just(_DELETE), st.none(), st.text(max_size=4), st.just([]), st.just({"x": 1}),
                  st.just(float("nan")), st.integers(-(2**70), 2**70))  # fmt: skip


@given(st.data(), WRONG)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_a_mutated_item_is_refused_by_the_loader_or_compares_as_before(
    result_doc: dict[str, Any], tmp_path: Path, data: st.DataObject, value: Any
) -> None:
    """A real result with one field of one item (what compare pairs) deleted, emptied, of the
    wrong type or NaN, written and read back through the loader: refused in one line, or read
    and compared with the rows of the original against itself wherever the mutation did not
    reach (the rows of other contexts)."""
    leaves = every_leaf(result_doc["items"])
    path = ("items", *data.draw(st.sampled_from(leaves)))
    mutant = _set(result_doc, path, value)
    file = tmp_path / "m.json"
    file.write_text(json.dumps(mutant))
    try:
        loaded = load_result(file)
    except UserError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 - the property is about any input, raised or not
        return
    ctx = result_doc["items"][path[1]]["ctx"]
    untouched = compare(result_doc, result_doc)["rows"]
    rows = compare(result_doc, loaded)["rows"]
    elsewhere = [(b, a) for b, a in zip(untouched, rows, strict=True)
                 if b["ctx"] != ctx and b.get("scope") != "pooled"]  # fmt: skip
    assert elsewhere  # other contexts' rows exist: the property is checked, not skipped
    for before, after in elsewhere:
        assert (after["old"], after["new"], after["mark"]) == (before["old"], before["new"], before["mark"])


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
