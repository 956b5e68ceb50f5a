"""The check of llama.cpp's extra-buffer-type CPU kernels (repacked, AMX) and its fallback.

The crash is real: a test-only switch makes the child process segfault where llama.cpp's AMX
kernels die, and the real llama.cpp then runs the model without extra buffer types."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kvprobe.api.engine import KernelDecision
from kvprobe.engine.llamacpp import kernel_check
from kvprobe.engine.llamacpp.kernel_check import (
    CRASH_SWITCH_ENV,
    build_features,
    cache_key,
    check_models,
    skip_reason,
)
from kvprobe.engine.llamacpp.tools import runtime_info
from kvprobe.infra.memo import CACHE_DIR_ENV
from tests.helpers import kvprobe

SYSTEM_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | REPACK = 1 | "


def test_build_features_are_read_from_system_info() -> None:
    features = build_features(SYSTEM_INFO)
    assert {"AVX2", "AMX_INT8", "REPACK"} <= features
    assert "AMX_INT8" not in build_features("CPU : AVX2 = 1 | AMX_INT8 = 0 | REPACK = 1")


@pytest.mark.parametrize(
    ("features", "types", "on_gpu", "skipped"),
    [
        ({"AMX_INT8"}, ["Q4_K", "Q6_K"], False, False),
        ({"REPACK"}, ["Q4_0"], False, False),
        ({"AVX2"}, ["Q4_0"], False, True),  # neither kernel family built in
        ({"REPACK", "AMX_INT8"}, ["F32", "F16", "BF16"], False, True),  # weights stay in plain buffers
        ({"REPACK", "AMX_INT8"}, ["Q4_0"], True, True),  # no layer on the CPU
    ],
)
def test_the_check_runs_only_where_it_can_matter(
    features: set[str], types: list[str], on_gpu: bool, skipped: bool
) -> None:
    assert (skip_reason(features, types, on_gpu) is not None) == skipped


def test_cache_key_separates_build_cpu_and_weight_types() -> None:
    key = cache_key("build A", "cpu X", ["Q4_0", "Q8_0"])
    assert key == cache_key("build A", "cpu X", ["Q8_0", "Q4_0", "Q4_0"])
    others = {
        cache_key("build B", "cpu X", ["Q4_0", "Q8_0"]),
        cache_key("build A", "cpu Y", ["Q4_0", "Q8_0"]),
        cache_key("build A", "cpu X", ["Q4_0"]),
        cache_key("build A", "cpu X", ["Q4_0", "Q8_0"], crash_switch=True),
    }
    assert key not in others
    assert len(others) == 4


def test_no_repack_needs_no_check() -> None:
    decision = kernel_check.decide(
        [(Path("/nonexistent.gguf"), ["Q4_0"])],
        system_info=SYSTEM_INFO,
        all_layers_on_gpu=False,
        n_gpu_layers=0,
        n_threads=1,
        no_repack=True,
        on_check=lambda path: pytest.fail("no child for --no-repack"),
    )
    assert decision == KernelDecision(False, "forced_off", "--no-repack")


def _needs_extra_bufts(model: Path) -> None:
    from kvprobe.weights.doctor import read_facts

    why = skip_reason(
        build_features(str(runtime_info()["llama_cpp_build"])), read_facts(model)["weight_types"], False
    )
    if why is not None:
        pytest.skip(f"the check does not run here: {why}")


def test_the_check_is_cached_whatever_it_found(
    tiny_q4_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real check on this host: passed (most CPUs) or crashed (some AMX hosts, where
    llama.cpp's AMX kernels die); either way it is cached, and the second call runs no child."""
    _needs_extra_bufts(tiny_q4_model_path)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    checked: list[Path] = []
    first, _ = check_models(
        [tiny_q4_model_path], n_gpu_layers=0, n_threads=2, no_repack=False, on_check=checked.append
    )
    assert first.check in ("passed", "crashed"), first
    assert (first.extra_bufts, first.cached) == (first.check == "passed", False)
    assert checked == [tiny_q4_model_path]
    cache = json.loads((tmp_path / "kernel-checks.json").read_text())
    [entry] = cache.values()
    assert entry["ok"] is (first.check == "passed")
    assert entry["weight_types"] == sorted(set(entry["weight_types"]))
    assert "Q4_0" in entry["weight_types"]

    again, _ = check_models(
        [tiny_q4_model_path], n_gpu_layers=0, n_threads=2, no_repack=False, on_check=checked.append
    )
    assert (again.extra_bufts, again.check, again.cached) == (first.extra_bufts, first.check, True)
    assert checked == [tiny_q4_model_path]  # no second child


def _needs_working_extra_bufts(model: Path, cache: Path) -> None:
    """Skips (saying why) where llama.cpp's extra-buffer kernels really crash on this host."""
    _needs_extra_bufts(model)
    os.environ[CACHE_DIR_ENV] = str(cache)
    try:
        decision, _ = check_models([model], n_gpu_layers=0, n_threads=2, no_repack=False)
    finally:
        del os.environ[CACHE_DIR_ENV]
    if decision.check == "crashed":
        pytest.skip(f"needs kernels that work on this host: {decision.reason}")


def _run(model: Path, out: Path, *extra: str) -> dict[str, Any]:
    proc = kvprobe(
        "run", "--model", str(model), "--scenario", "quick", "--ctx", "512", "--cache", "q4_0",
        "--threads", "2", "--out", str(out), *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_stdout"] = proc.stdout
    return doc


def test_a_crashing_kernel_check_falls_back_and_the_run_completes(
    tiny_q4_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_extra_bufts(tiny_q4_model_path)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CRASH_SWITCH_ENV, "1")
    doc = _run(tiny_q4_model_path, tmp_path / "crash.json")

    stdout = str(doc["_stdout"])
    [line] = [ln for ln in stdout.splitlines() if ln.startswith("kernels:")]
    assert "died with SIGSEGV" in line
    assert "--no-repack" in line
    runtime = doc["runtime"]
    assert isinstance(runtime, dict)
    assert runtime["extra_bufts"] is False
    assert runtime["extra_bufts_check"] == "crashed"
    assert "SIGSEGV" in runtime["extra_bufts_reason"]
    buffers = runtime["weight_buffers_mib"][tiny_q4_model_path.name]
    assert not any("REPACK" in b or "AMX" in b for b in buffers), buffers  # the fallback took effect
    items = doc["items"]
    assert isinstance(items, list)
    assert {i["config"] for i in items if i["probe"] == "needle"} == {"f16", "q4_0"}

    # the crash is cached: the next run falls back without another child
    again = _run(tiny_q4_model_path, tmp_path / "again.json")
    assert "checking llama.cpp's CPU kernels" not in str(again["_stdout"])
    assert again["runtime"]["extra_bufts_check_cached"] is True
    assert again["runtime"]["extra_bufts"] is False


def test_no_repack_is_recorded_and_compare_says_the_numerics_differ(
    tiny_q4_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_working_extra_bufts(tiny_q4_model_path, tmp_path / "cache")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    default = _run(tiny_q4_model_path, tmp_path / "default.json")
    plain = _run(tiny_q4_model_path, tmp_path / "plain.json", "--no-repack")
    rt_default, rt_plain = default["runtime"], plain["runtime"]
    assert isinstance(rt_default, dict)
    assert isinstance(rt_plain, dict)
    assert (rt_default["extra_bufts"], rt_default["extra_bufts_check"]) == (True, "passed")
    assert (rt_plain["extra_bufts"], rt_plain["extra_bufts_check"]) == (False, "forced_off")
    assert "checking llama.cpp's CPU kernels" not in str(plain["_stdout"])
    # the setting takes effect: repacked weight buffers only without --no-repack
    assert any("REPACK" in b or "AMX" in b for b in rt_default["weight_buffers_mib"][tiny_q4_model_path.name])
    assert not any(
        "REPACK" in b or "AMX" in b for b in rt_plain["weight_buffers_mib"][tiny_q4_model_path.name]
    )

    proc = kvprobe("compare", str(tmp_path / "default.json"), str(tmp_path / "plain.json"))
    assert proc.returncode == 0, proc.stderr
    assert "differ in extra buffer types" in proc.stdout
    same = kvprobe("compare", str(tmp_path / "default.json"), str(tmp_path / "default.json"))
    assert "extra buffer types" not in same.stdout


def test_a_child_killed_from_outside_says_nothing_about_the_kernels(
    tiny_q4_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL (the OOM killer) is no kernel crash: the run keeps the extra buffer types, says
    the check was inconclusive, and caches nothing."""
    _needs_extra_bufts(tiny_q4_model_path)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(CRASH_SWITCH_ENV, "kill")
    decision, _ = check_models([tiny_q4_model_path], n_gpu_layers=0, n_threads=2, no_repack=False)
    assert (decision.extra_bufts, decision.check) == (True, "inconclusive")
    assert "SIGKILL" in decision.reason
    assert not (tmp_path / "kernel-checks.json").exists()
