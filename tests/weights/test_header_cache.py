"""Headers read once: a model file's facts and metadata are kept in kvprobe's cache folder and
used again only for the very same file (path, size, modification time, kvprobe and gguf
versions); the sha256 is computed every time; a damaged cache is ignored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra.memo import CACHE_DIR_ENV
from kvprobe.weights import doctor, model_info
from kvprobe.weights.doctor import read_facts
from kvprobe.weights.facts import CACHE_NAME
from kvprobe.weights.model_info import read_model_info
from tests.helpers import write_tiny_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_NAME


def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, parsing a header fails the test: what is returned comes from the cache."""

    def refuse(path: Path) -> Any:
        raise AssertionError(f"{path} was parsed again")

    monkeypatch.setattr(doctor, "open_gguf", refuse)
    monkeypatch.setattr(model_info, "open_gguf", refuse)


def test_a_file_read_once_is_not_parsed_again(
    cache: Path, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_model_path.read_bytes())
    facts, info = read_facts(model), read_model_info(model)
    assert cache.is_file()
    no_parsing(monkeypatch)
    assert read_facts(model) == facts
    assert read_model_info(model) == info
    monkeypatch.setattr(model_info, "sha256_file", lambda path: "computed now")
    assert read_model_info(model)["sha256"] == "computed now"  # never from the cache
    link = tmp_path / "other-name.gguf"
    link.symlink_to(model)
    again = read_facts(link)  # the same file under another name: its facts, with this name
    assert (again["path"], again["name"]) == (str(link), "other-name.gguf")
    assert {k: v for k, v in again.items() if k not in ("path", "name")} == {
        k: v for k, v in facts.items() if k not in ("path", "name")
    }


def test_a_file_changed_in_place_is_read_again(cache: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", name="first")
    assert read_facts(model)["general_name"] == "first"
    write_tiny_model(model, name="second model")  # another size, another modification time
    assert read_facts(model)["general_name"] == "second model"
    assert read_model_info(model)["metadata"]["general.name"] == "second model"


@pytest.mark.parametrize("damage", ["not json", "[1, 2]", "entries", "a value edited"])
def test_a_damaged_cache_is_ignored(damage: str, cache: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_model_path.read_bytes())
    facts = read_facts(model)
    data = json.loads(cache.read_text())
    if damage == "entries":  # a value changed behind the checksum, a key lost
        changed = {k: {**v, "value": {**v["value"], "n_layer": None}} for k, v in data.items()}
        changed |= {f"{k}x": {**v, "value": {"n_layer": 2}} for k, v in data.items()}
        cache.write_text(json.dumps(changed))
    elif damage == "a value edited":  # keys and checksum kept, one number changed
        cache.write_text(cache.read_text().replace('"n_layer": 2', '"n_layer": 3'))
        assert '"n_layer": 3' in cache.read_text()
    else:
        cache.write_text(damage)
    assert read_facts(model) == facts  # parsed again, not taken from the damaged file
    assert json.loads(cache.read_text())  # and the cache written anew


def test_an_unwritable_cache_only_costs_the_parse(tmp_path: Path, tiny_model_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocked / "cache"))
    assert read_facts(tiny_model_path)["n_layer"] == 2
    assert os.path.isfile(blocked)
