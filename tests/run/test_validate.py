"""`kvprobe run`'s validation of the cache types: without --cache the usual ladder (q8_0 and
q4_0 against f16), what the user names otherwise, and a running server's stated cache only;
the one-line GPU notice's rebuild command is the one the docs give."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.run.options import run_parser
from kvprobe.run.request import RunRequest
from kvprobe.run.validate import GPU_BUILD, validate_run

ROOT = Path(__file__).resolve().parents[2]


def request(tmp_path: Path, model: Path, *words: str) -> RunRequest:
    args = run_parser().parse_args(
        ["run", "--model", str(model), "--ctx", "512", "--out", str(tmp_path / "r.json"), "--no-html", *words]
    )
    return validate_run(args)


def ids(req: RunRequest) -> list[str]:
    return [c.id for c in req.configs]


def test_no_cache_measures_the_usual_ladder(tmp_path: Path, tiny_model_path: Path) -> None:
    req = request(tmp_path, tiny_model_path)
    assert ids(req) == ["f16", "q8_0", "q4_0"]
    assert req.ladder
    assert req.baseline == "f16"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("--cache", "f16"), ["f16"]),  # f16 alone, asked explicitly
        (("--cache", "q4_0"), ["f16", "q4_0"]),
        (("--cache-k", "q8_0", "--cache-v", "q4_0"), ["f16", "k=q8_0,v=q4_0"]),
        (("--cache", "q8_0", "--split-kv"), ["f16", "q8_0", "k=q8_0,v=f16", "k=f16,v=q8_0"]),
    ],
)
def test_named_caches_are_measured_as_named(
    tmp_path: Path, tiny_model_path: Path, words: tuple[str, ...], expected: list[str]
) -> None:
    req = request(tmp_path, tiny_model_path, *words)
    assert ids(req) == expected
    assert not req.ladder


def test_split_kv_and_no_reference_still_need_a_named_cache(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(UserError, match="--split-kv splits a quantized cache"):
        request(tmp_path, tiny_model_path, "--split-kv")
    with pytest.raises(UserError, match="nothing to run"):
        request(tmp_path, tiny_model_path, "--baseline", "none")


def test_a_running_server_measures_only_its_stated_cache(tmp_path: Path, tiny_model_path: Path) -> None:
    req = request(
        tmp_path, tiny_model_path, "--server", "http://127.0.0.1:9", "--server-cache", "q4_0",
        "--reference-server", "http://127.0.0.1:10",
    )  # fmt: skip
    assert ids(req) == ["f16", "q4_0"]
    assert not req.ladder


def test_the_gpu_notice_gives_the_rebuild_the_docs_give() -> None:
    command = GPU_BUILD.format(version=importlib.metadata.version("llama-cpp-python"))
    assert "--force-reinstall --no-cache-dir" in command
    assert "-DGGML_CUDA_FA_ALL_QUANTS=ON" in command
    assert command in (ROOT / "docs" / "hardware.md").read_text().replace(" \\\n    ", " ")


def test_a_mixed_pair_on_a_gpu_is_told_the_build_it_needs(tiny_model_path: Path) -> None:
    """Flash attention for mixed K/V types needs FA_ALL_QUANTS: without it, one line with the
    rebuild (for kvprobe's own llama.cpp; a server's build is the server's); with it, nothing."""
    from kvprobe.api.cache_types import CacheConfig
    from kvprobe.engine import get_engine
    from kvprobe.run.validate import has_all_fa_pairs, run_warnings
    from kvprobe.weights.doctor import read_facts

    facts = [read_facts(tiny_model_path)]
    mixed = [CacheConfig("f16", "f16"), CacheConfig("q8_0", "q4_0")]
    [line] = run_warnings(512, facts, mixed, -1)
    assert "FA_ALL_QUANTS" in line
    assert "--force-reinstall --no-cache-dir" in line
    [served] = run_warnings(512, facts, mixed, -1, server=True)
    assert "rebuild" not in served
    assert run_warnings(512, facts, mixed, -1, all_fa_pairs=True) == []
    assert run_warnings(512, facts, mixed, 0) == []  # on the CPU every pair has its kernels
    build = str(get_engine().runtime_info()["llama_cpp_build"])
    assert has_all_fa_pairs() == ("FA_ALL_QUANTS = 1" in build)
