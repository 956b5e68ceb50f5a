"""Reading result files back: validated like a scenario, migrated from older schemas."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kvprobe.api.cache_types import CacheConfig, ConfigId
from kvprobe.api.result import SCHEMA_VERSION
from kvprobe.infra.errors import UserError
from kvprobe.result.store import Result, load_result
from tests.helpers import examples

EXAMPLES = examples("results/examples/*.json")


RUN = {"ctx": 1024, "seed": 0, "mode": "onepass", "checkpoints": [1024]}
NEEDLE = {"probe": "needle", "config": "f16", "doc": 0, "ctx": 1024, "key": "k", "depth": 0.5,
          "correct": True, "logprob": -0.5}  # fmt: skip
ROW = {"probe": "repetition", "metric": "seq_rep_4", "config": "q4_0", "ctx": 1024, "value": 0.0,
       "ci": [0.0, 0.0], "n": 1}  # fmt: skip


def _v1_with_repetition() -> dict[str, Any]:
    """A schema-1 file as kvprobe wrote them: repetition's `divergence_index`, no `kv_layout`."""
    row = {"probe": "repetition", "config": "q4_0", "ctx": 1024, "value": 7.0, "ci": [6.0, 8.0], "n": 1}
    item = {"probe": "repetition", "config": "q4_0", "doc": 0, "ctx": 1024, "offset": 1024, "text": "a b",
            "tokens": [1, 2], "seq_rep_4": 0.0, "loop": False, "divergence_index": 7}  # fmt: skip
    return {
        "schema_version": 1,
        "configs": [
            {"id": "f16", "type_k": "f16", "type_v": "f16"},
            {"id": "q4_0", "type_k": "q4_0", "type_v": "q4_0"},
        ],
        "baseline": "f16",
        "model": {"sha256": "0" * 64},
        "scenario": {"name": "x", "sha256": "0" * 64, "spec": {"repetition": {"tokens": 2}}},
        "run": RUN,
        "items": [item, {**item, "config": "f16", "divergence_index": None}],
        "text_items": [{**item, "config": "(text)", "divergence_index": None}],
        "summary": [{**row, "metric": "divergence_index"}],
        "timing": {"wall_s": 1.0, "per_config_s": {"f16": 0.5}, "tokens_evaluated": 10, "naive_tokens": 20},
        "statistics": {"complete": True, "errors": []},
    }


def test_a_v1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(_v1_with_repetition()))
    result = Result.load(path)
    assert result.read_version == 1
    assert result.doc["schema_version"] == SCHEMA_VERSION == 4
    assert result.doc["items"][0]["first_difference"] == 7
    assert "divergence_index" not in result.doc["items"][0]
    assert "first_difference" in result.doc["text_items"][0]
    assert result.doc["summary"][0]["metric"] == "first_difference"


def _as_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """A schema-3 file as schema 2 wrote it: no KV layout, no KL tail rows, no spans."""
    old = copy.deepcopy(doc)
    old["schema_version"] = 2
    del old["model"]["kv_layout"]
    old["summary"] = [r for r in old["summary"] if r["metric"] != "kld_p999"]
    del old["divergence"]["spans"]
    return old


def test_a_v2_file_gets_the_decisions_of_v3(tmp_path: Path, tiny_quick_result: Path) -> None:
    doc = json.loads(tiny_quick_result.read_text())
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(_as_v2(doc)))
    migrated = Result.load(path)
    assert migrated.read_version == 2
    assert migrated.doc.written()["model"]["kv_layout"] == doc["model"]["kv_layout"]  # from the metadata
    spans, again = doc["divergence"]["spans"]["q8_0"], migrated.doc["divergence"]["spans"]["q8_0"]
    assert [s["ctx"] for s in again] == [s["ctx"] for s in spans]  # from the float32 arrays:
    assert [s["kld_mean"]["value"] for s in again] == pytest.approx([s["kld_mean"]["value"] for s in spans])
    assert migrated.doc["verdict"]["migrated_from_schema"] == 2
    assert migrated.doc["items"] == doc["items"]


def test_what_a_migration_makes_is_checked_too(tmp_path: Path, tiny_quick_result: Path) -> None:
    """A schema-2 file's KV layout comes from its metadata: metadata that names more layers than
    it has heads for would make a layout the memory figures index out of range."""
    old = _as_v2(json.loads(tiny_quick_result.read_text()))
    arch = old["model"]["architecture"]
    old["model"]["metadata"][f"{arch}.attention.head_count_kv"] = [1]
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(old))
    with pytest.raises(UserError) as info:
        load_result(path)
    assert "(schema 2) cannot be read as schema 4: model.kv_layout.n_head_kv must have an entry per" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"schema_version": 5}, "schema_version 5"),
        ({"schema_version": "1"}, "schema_version '1'"),
        ({"configs": {}}, "configs must be a list, not an object"),
        ({"configs": []}, "configs must hold at least 1 entries, not 0"),
        ({"configs": [{"id": 5, "type_k": "f16", "type_v": "f16"}]}, "configs[0].id must be text, not 5"),
        ({"baseline": "q8_0"}, 'baseline "q8_0" is not one of its configs'),
        ({"model": {"sha256": None}}, "model.sha256 must be text, not null"),
        ({"run": {**RUN, "ctx": "1024"}}, "run.ctx must be a whole number"),
        ({"run": {**RUN, "checkpoints": [1024, 512]}}, "run.checkpoints must ascend"),
        ({"run": {**RUN, "mode": "other"}}, 'run.mode must be "onepass" or "classic", not "other"'),
        ({"items": [{**NEEDLE, "ctx": True}]}, "items[0].ctx must be a whole number, not true"),
        ({"items": [{**NEEDLE, "depth": 7}]}, "items[0].depth must be at most 1, not 7"),
        ({"items": [{"probe": "needle", "config": "f16", "ctx": 1024}]}, "missing items[0].doc"),
        ({"summary": [3]}, "summary[0] must be an object, not 3"),
        ({"verdict": "equivalent"}, "verdict must be an object or null, not a string"),
        ({"verdict": []}, "verdict must be an object or null, not a list"),
        ({"summary": [{**ROW, "value": "7"}]}, "summary[0].value must be a number or null, not a string"),
        ({"verdict": {"sentences": [1]}}, "verdict.sentences[0] must be text, not 1"),
        ({"timing": []}, "timing must be an object, not a list"),
        ({"divergence": "x"}, "divergence must be an object or null, not a string"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_refused_naming_the_field(
    tmp_path: Path, change: dict[str, object], names: str
) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**_v1_with_repetition(), **change}))
    before = path.read_bytes()
    with pytest.raises(UserError) as info:
        load_result(path)
    assert names in str(info.value)
    assert str(info.value).startswith(f"result file {path}")
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('{"schema_version": NaN}', "NaN is not JSON"),
        ('{"schema_version": 3, "x": -Infinity}', "-Infinity is not JSON"),
        ('{"schema_version": 3, "x": 1e999}', "beyond a double"),
        ("[" * 200_000 + "]" * 200_000, "nests far too deep"),
    ],
)
def test_what_is_not_strict_json_is_refused(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(UserError, match=names):
        load_result(path)


def test_nesting_deeper_than_any_result_is_refused(tmp_path: Path) -> None:
    """Deep enough to pass json.loads, too deep for what reads it next."""
    doc = _v1_with_repetition()
    doc["scenario"]["spec"]["deep"] = json.loads("[" * 500 + "]" * 500)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="deeper than 64 levels"):
        load_result(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads_with_a_verdict(path: Path) -> None:
    result = Result.load(path)
    assert result.doc["schema_version"] == SCHEMA_VERSION
    assert result.doc["verdict"] is not None
    assert result.doc["statistics"]["complete"]


def test_config_ids_round_trip() -> None:
    for text in ("q4_0", "k=q4_0,v=f16", "ref:q8_0", "test:k=f16,v=q4_0"):
        assert str(ConfigId.parse(text)) == text
    cid = ConfigId.parse("ref:k=q8_0,v=f16")
    assert (cid.weights, cid.type_k, cid.type_v) == ("ref", "q8_0", "f16")
    assert ConfigId.of(CacheConfig("q4_0", "q4_0"), "test") == ConfigId("q4_0", "q4_0", "test")
    with pytest.raises(UserError, match="unknown cache type"):
        ConfigId.parse("(text)")
