"""The command line as a user runs it: subprocesses, real llama.cpp, tiny GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def kvprobe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvprobe", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]


def test_missing_model(tmp_path: Path) -> None:
    assert_one_line_error(kvprobe("run", "--model", str(tmp_path / "nope.gguf")), "not found")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    assert_one_line_error(kvprobe("run", "--model", str(bad)), "not a GGUF file")


def test_truncated_gguf(tmp_path: Path, tiny_model_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model_path.read_bytes()[:3000])
    assert_one_line_error(kvprobe("run", "--model", str(cut)), "GGUF")


def test_unknown_cache_type(tiny_model_path: Path) -> None:
    assert_one_line_error(kvprobe("run", "--model", str(tiny_model_path), "--cache", "q3_0"), "q3_0", "q8_0")


@pytest.mark.parametrize(
    ("ctx", "word"), [("100", "at least 256"), ("8k", "whole number"), ("100000000", "at most 1048576")]
)
def test_bad_ctx(tiny_model_path: Path, ctx: str, word: str) -> None:
    assert_one_line_error(kvprobe("run", "--model", str(tiny_model_path), "--ctx", ctx), word)


def test_malformed_scenario(tmp_path: Path, tiny_model_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text("[needle]\nper_segmnet = 2\n")
    assert_one_line_error(
        kvprobe("run", "--model", str(tiny_model_path), "--scenario", str(bad)), "needle.per_segmnet"
    )


def test_half_an_asymmetric_pair(tiny_model_path: Path) -> None:
    assert_one_line_error(kvprobe("run", "--model", str(tiny_model_path), "--cache-k", "q4_0"), "--cache-v")


def test_scenarios_lists_bundled() -> None:
    proc = kvprobe("scenarios")
    assert proc.returncode == 0
    assert "default" in proc.stdout
    assert "noise" in proc.stdout


REQUIRED = {
    "schema_version",
    "kvprobe_version",
    "created",
    "model",
    "runtime",
    "host",
    "configs",
    "baseline",
    "scenario",
    "items",
    "summary",
    "timing",
}


@pytest.mark.parametrize("mode", ["onepass", "classic"])
def test_run_writes_a_complete_result(tmp_path: Path, tiny_model_path: Path, mode: str) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run",
        "--model",
        str(tiny_model_path),
        "--scenario",
        "quick",
        "--ctx",
        "1024",
        "--cache",
        "q4_0",
        "--cache-k",
        "q8_0",
        "--cache-v",
        "f16",
        "--mode",
        mode,
        "--threads",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(str(out).split("/")[-1])
    doc = json.loads(out.read_text())
    assert set(doc) >= REQUIRED
    assert doc["schema_version"] == 1
    assert doc["baseline"] == "f16"
    assert [c["id"] for c in doc["configs"]] == ["f16", "q4_0", "k=q8_0,v=f16"]
    assert [(c["type_k"], c["type_v"]) for c in doc["configs"]] == [
        ("f16", "f16"),
        ("q4_0", "q4_0"),
        ("q8_0", "f16"),
    ]
    assert doc["model"]["sha256"]
    assert doc["model"]["architecture"] == "llama"
    assert {
        "llama_cpp_python",
        "llama_cpp_build",
        "n_threads",
        "n_batch",
        "n_ubatch",
        "attn_rotation",
    } <= set(doc["runtime"])
    needle_items = [i for i in doc["items"] if i["probe"] == "needle"]
    per_config = {c: [i for i in needle_items if i["config"] == c] for c in ("f16", "q4_0", "k=q8_0,v=f16")}
    # identical items for every configuration: the basis of paired comparisons
    keys = [sorted((i["doc"], i["ctx"], i["key"]) for i in items) for items in per_config.values()]
    assert keys[0] == keys[1] == keys[2]
    assert keys[0]
    acc = [r for r in doc["summary"] if r["metric"] == "accuracy"]
    assert {r["config"] for r in acc} == set(per_config)
    for r in acc:
        assert 0 <= r["ci"][0] <= r["value"] <= r["ci"][1] <= 1
    assert doc["timing"]["tokens_evaluated"] > 0
    if mode == "onepass":
        assert doc["timing"]["tokens_evaluated"] < doc["timing"]["naive_tokens"]


def test_run_warns_past_training_context(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run",
        "--model",
        str(tiny_model_path),
        "--scenario",
        "quick",
        "--ctx",
        "4352",
        "--baseline",
        "f16",
        "--threads",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "exceeds the model's training context (4096" in " ".join(proc.stdout.split())
    assert json.loads(out.read_text())["warnings"]


def test_existing_out_is_never_overwritten(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "earlier.json"
    out.write_text('{"schema_version": 1}')
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "256", "--out", str(out)
    )
    assert_one_line_error(proc, "already exists", "--force")
    assert out.read_text() == '{"schema_version": 1}'


def test_result_file_is_written_atomically_and_readable(tmp_path: Path) -> None:
    from kvprobe.results import load_result, write_result

    path = tmp_path / "sub" / "r.json"
    write_result({"schema_version": 1, "items": []}, path)
    assert load_result(path)["items"] == []
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_repetition_scenario_writes_items_and_summary(tmp_path: Path, tiny_model_path: Path) -> None:
    scenario = tmp_path / "rep.toml"
    scenario.write_text(
        'probes = ["repetition"]\n[plan]\ndocuments = 2\nchunk = 128\n'
        "[repetition]\ntokens = 24\noffsets = 3\nstride = 40\n"
    )
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", str(scenario), "--ctx", "512",
        "--cache", "q4_0", "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    reps = [i for i in doc["items"] if i["probe"] == "repetition"]
    assert not [i for i in doc["items"] if i["probe"] == "needle"]
    # 2 documents x 1 checkpoint (512) x 3 continuation points x 2 configurations
    assert len(reps) == 12
    for it in reps:
        assert 0 < len(it["tokens"]) <= 24
        assert 0.0 <= it["seq_rep_4"] <= 1.0
        assert it["distinct_2"] == pytest.approx(1 - it["seq_rep_2"], abs=1e-6)
        assert (it["divergence_index"] is None) == (it["config"] == "f16")
    assert {i["offset"] for i in reps} == {512, 472, 432}
    metrics = {(r["metric"], r["config"]) for r in doc["summary"] if r["probe"] == "repetition"}
    for metric in ("seq_rep_4", "distinct_2", "compression_ratio", "loop_rate"):
        assert {(metric, "f16"), (metric, "q4_0"), (metric, "(text)")} <= metrics
    assert ("divergence_index", "q4_0") in metrics
    assert ("divergence_index", "f16") not in metrics
    assert len(doc["text_items"]) == 6
    assert "Repetition" in proc.stdout


def test_classic_mode_needs_the_needle_probe(tmp_path: Path, tiny_model_path: Path) -> None:
    proc = kvprobe("run", "--model", str(tiny_model_path), "--scenario", "repetition", "--mode", "classic",
                   "--ctx", "512", "--out", str(tmp_path / "x.json"))  # fmt: skip
    assert_one_line_error(proc, "classic")


def test_own_text_file_as_haystack(tmp_path: Path, tiny_model_path: Path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text(
        "\n\n".join(
            f"Paragraph {i} describes the harbour at dawn. Boats leave early and come back late. "
            f"The nets are mended on the quay while the gulls argue overhead."
            for i in range(60)
        )
    )
    out = tmp_path / "r.json"
    proc = kvprobe("run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512",
                   "--haystack", str(text), "--threads", "2", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["scenario"]["spec"]["haystack"] == {"kind": "file", "path": str(text)}
    assert [i for i in doc["items"] if i["probe"] == "needle"]


def test_too_short_text_file(tmp_path: Path, tiny_model_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.")
    proc = kvprobe("run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512",
                   "--haystack", str(text), "--out", str(tmp_path / "r.json"))  # fmt: skip
    assert_one_line_error(proc, "fewer than 50 words")


def test_divergence_scenario_writes_curve_pooled_rows_and_null_check(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    out = tmp_path / "d.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "divergence", "--ctx", "1024",
        "--cache", "q8_0", "--cache", "q4_0", "--threads", "2", "--null-check", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    section = doc["divergence"]
    assert section["bin_edges"] == [1, 64, 128, 256, 512, 1024]
    assert section["null_check"]["passed"]
    assert section["null_check"]["positions"] == 2 * 1023
    assert set(section["onset"]) == {"q8_0", "q4_0"}
    rows = [r for r in doc["summary"] if r["probe"] == "divergence"]
    for config in ("q8_0", "q4_0"):
        for metric in ("kld_mean", "kld_p99", "top1_agree", "ppl"):
            mine = [r for r in rows if r["config"] == config and r["metric"] == metric]
            assert [r["ctx"] for r in mine if r["scope"] == "bin"] == [64, 128, 256, 512, 1024]
            pooled = [r for r in mine if r["scope"] == "pooled"]
            assert len(pooled) == 1
            assert pooled[0]["n"] == 2 * 1023
    assert {r["metric"] for r in rows if r["config"] == "f16"} == {"ppl"}
    # the per-position arrays travel compactly and agree with the pooled rows
    from kvprobe.results import decode_array

    q4 = [p for p in section["positions"] if p["config"] == "q4_0"]
    kld = np.concatenate([decode_array(p["kld"]) for p in q4])
    pooled_mean = next(
        r for r in rows if r["config"] == "q4_0" and r["metric"] == "kld_mean" and r["scope"] == "pooled"
    )
    assert kld.mean() == pytest.approx(pooled_mean["value"], rel=1e-5)
    assert kld.mean() > 0
    assert "Mean KL divergence from f16" in proc.stdout
    assert "null check" in proc.stdout
    assert "passed" in proc.stdout


def test_null_check_needs_the_divergence_probe(tiny_model_path: Path) -> None:
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "256", "--null-check"
    )
    assert_one_line_error(proc, "--null-check", "divergence")


def test_divergence_needs_a_reference(tiny_model_path: Path) -> None:
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "divergence", "--ctx", "256",
        "--cache", "q4_0", "--baseline", "none",
    )  # fmt: skip
    assert_one_line_error(proc, "reference", "--baseline none")
