"""Reading result files back: validated like a scenario, migrated from older schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvprobe.cache_types import CacheConfig, ConfigId
from kvprobe.errors import UserError
from kvprobe.result.store import SCHEMA_VERSION, Result, load_result

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "results" / "examples").glob("*.json"))


def _v1_with_repetition() -> dict[str, object]:
    return {
        "schema_version": 1,
        "configs": [
            {"id": "f16", "type_k": "f16", "type_v": "f16"},
            {"id": "q4_0", "type_k": "q4_0", "type_v": "q4_0"},
        ],
        "baseline": "f16",
        "model": {"sha256": "0" * 64},
        "scenario": {"name": "x", "sha256": "0" * 64},
        "run": {"ctx": 1024, "seed": 0, "checkpoints": [1024]},
        "items": [{"probe": "repetition", "config": "q4_0", "ctx": 1024, "divergence_index": 7}],
        "text_items": [{"probe": "repetition", "config": "(text)", "ctx": 1024, "divergence_index": None}],
        "summary": [{"probe": "repetition", "metric": "divergence_index", "config": "q4_0", "ctx": 1024}],
        "statistics": {"complete": True, "errors": []},
    }


def test_a_v1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(_v1_with_repetition()))
    result = Result.load(path)
    assert result.read_version == 1
    assert result.doc["schema_version"] == SCHEMA_VERSION == 3
    assert result.doc["items"][0]["first_difference"] == 7
    assert "divergence_index" not in result.doc["items"][0]
    assert "first_difference" in result.doc["text_items"][0]
    assert result.doc["summary"][0]["metric"] == "first_difference"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"schema_version": 4}, "schema_version 4"),
        ({"schema_version": "1"}, "schema_version '1'"),
        ({"configs": {}}, "configs must be a list"),
        ({"configs": [{"id": 5, "type_k": "f16", "type_v": "f16"}]}, "configs[0].id must be text"),
        ({"baseline": "q8_0"}, "baseline 'q8_0' is not one of its configs"),
        ({"model": {"sha256": None}}, "model.sha256 must be text"),
        ({"run": {"ctx": "1024", "seed": 0, "checkpoints": []}}, "run.ctx must be a whole number"),
        (
            {"items": [{"probe": "needle", "config": "f16", "ctx": True}]},
            "items[0].ctx must be a whole number",
        ),
        ({"summary": [3]}, "summary[0] must be an object"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_field(
    tmp_path: Path, change: dict[str, object], names: str
) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**_v1_with_repetition(), **change}))
    with pytest.raises(UserError) as info:
        load_result(path)
    assert names in str(info.value)
    assert "\n" not in str(info.value)


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
