"""`kvprobe doctor`: one header-only GGUF per rule, each built to trigger exactly that rule,
one that triggers none, and the KV memory formula against llama.cpp's own allocation."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from kvprobe.weights.doctor import (
    COMPUTE_HEADROOM,
    SOURCE_TYPE_KEY,
    diagnose,
    kv_cache_bytes,
    longest_fit,
    read_facts,
)
from tests.helpers import BIG, Spec, T, imatrix_metadata, write_gguf

F = gguf.LlamaFileType


def with_imatrix(spec: Spec, **extra: object) -> Spec:
    spec.metadata = {**imatrix_metadata(spec), **extra}
    return spec


CASES: dict[str, tuple[str, Spec, set[str]]] = {
    "clean": ("clean.gguf", Spec(F.MOSTLY_Q8_0, T.Q8_0), set()),
    "legacy": (
        "legacy.gguf",
        with_imatrix(Spec(F.MOSTLY_Q4_0, T.Q4_0, output=T.Q6_K, **BIG)),
        {"legacy_quant"},
    ),
    "small aggressive": (
        "small-aggressive.gguf",
        with_imatrix(Spec(F.MOSTLY_Q3_K_M, T.Q3_K, output=T.Q6_K)),
        {"small_model_aggressive_quant"},
    ),
    "small below Q5_K_M": (
        "small-q4km.gguf",
        with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K)),
        {"small_model_below_q5_k_m"},
    ),
    "unprotected output": (
        "unprotected.gguf",
        with_imatrix(Spec(F.MOSTLY_Q5_K_M, T.Q5_K, token_embd=T.Q6_K, output=T.Q5_K, **BIG)),
        {"unprotected_output"},
    ),
    "pure": (
        "pure.gguf",
        with_imatrix(Spec(F.MOSTLY_Q5_K_M, T.Q5_K, **BIG)),
        {"unprotected_output", "unprotected_embedding"},
    ),
    "pure, tied output": (
        "pure-tied.gguf",
        with_imatrix(Spec(F.MOSTLY_Q5_K_M, T.Q5_K, tied=True, **BIG)),
        {"unprotected_output"},
    ),
    "IQ without imatrix": (
        "iq.gguf",
        Spec(F.MOSTLY_IQ2_XS, T.IQ2_XS, output=T.Q6_K, **BIG),
        {"iq_without_imatrix"},
    ),
    "no imatrix": ("noim.gguf", Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG), {"no_imatrix"}),
    "imatrix of another model": (
        "mismatch.gguf",
        with_imatrix(
            Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG), **{"quantize.imatrix.entries_count": 100}
        ),
        {"imatrix_mismatch"},
    ),
    "imatrix file named for another model": (
        "imname.gguf",
        with_imatrix(
            Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG),
            **{"quantize.imatrix.file": "mistral-7b.imatrix"},
        ),
        {"imatrix_name"},
    ),
    "re-quantized (kvprobe provenance)": (
        "requant.gguf",
        with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG), **{SOURCE_TYPE_KEY: "MOSTLY_Q8_0"}),
        {"requantized"},
    ),
    "re-quantized (file name)": (
        "testmodel-Q8_0.gguf",
        with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG)),
        {"requantized_name"},
    ),
    "MoE at low bits": (
        "moe.gguf",
        with_imatrix(
            Spec(
                F.MOSTLY_Q4_K_M,
                T.Q4_K,
                output=T.Q6_K,
                n_layer=10,
                n_embd=4096,
                n_ff=14336,
                n_vocab=32000,
                n_expert=8,
            )
        ),
        {"moe_low_bits"},
    ),
    "K-quant fallback": (
        "fallback.gguf",
        with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, overrides={"attn_k": T.Q5_0}, **BIG)),
        {"k_quant_fallback"},
    ),
    "dequantized": (
        "deq.gguf",
        Spec(F.MOSTLY_F16, T.F16, metadata={SOURCE_TYPE_KEY: "MOSTLY_Q4_K_M"}),
        {"dequantized"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_fires_alone(tmp_path: Path, case: str) -> None:
    name, spec, expected = CASES[case]
    report = diagnose(write_gguf(tmp_path / name, spec))
    assert {f["rule"] for f in report["findings"]} == expected
    for f in report["findings"]:
        assert f["evidence"]
        assert f["fix"]
        assert f["severity"] in ("serious", "warning", "info")


def test_facts_of_a_header_only_file(tmp_path: Path) -> None:
    spec = with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG))
    facts = read_facts(write_gguf(tmp_path / "m.gguf", spec))
    assert facts["file_type"] == "MOSTLY_Q4_K_M"
    assert facts["n_params"] == pytest.approx(13.33e9, rel=1e-3)
    assert facts["token_embd_type"] == "Q4_K"
    assert facts["output_type"] == "Q6_K"
    assert facts["block_weight_tensors"] == 280
    assert facts["imatrix"]["entries_count"] == 280
    assert facts["tensor_types"]["F32"]["tensors"] == 41


def test_serious_findings_sort_first(tmp_path: Path) -> None:
    spec = Spec(F.MOSTLY_IQ2_XS, T.IQ2_XS, output=T.Q6_K)  # small and without an imatrix
    found = diagnose(write_gguf(tmp_path / "x.gguf", spec))["findings"]
    assert {f["rule"] for f in found} == {"iq_without_imatrix", "small_model_aggressive_quant"}
    severities = [f["severity"] for f in found]
    assert severities[0] == "serious"
    rank = {"serious": 0, "warning": 1, "info": 2}
    assert [rank[s] for s in severities] == sorted(rank[s] for s in severities)


def test_kv_formula_matches_llama_cpp_on_the_tiny_model(tiny_model_path: Path) -> None:
    from kvprobe.api.cache_types import CacheConfig
    from kvprobe.engine.llamacpp.model import Model
    from kvprobe.engine.llamacpp.tools import kv_buffers

    facts = read_facts(tiny_model_path)
    with Model(tiny_model_path, n_threads=1) as model:
        for n_ctx in (1000, 4096):
            for t in ("f16", "q8_0", "q4_0"):
                logged = kv_buffers(model, n_ctx, CacheConfig(t, t), swa_full=False)
                ours = kv_cache_bytes(facts, n_ctx, t, t)
                assert len(logged) == 1
                assert logged[0].cells == ours["cells"]  # n_ctx padded to 256
                assert logged[0].k_mib == pytest.approx(ours["k"] / 2**20, abs=0.006)
                assert logged[0].v_mib == pytest.approx(ours["v"] / 2**20, abs=0.006)


def test_vram_fit(tmp_path: Path) -> None:
    spec = with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG))
    path = write_gguf(tmp_path / "m.gguf", spec)
    rows = diagnose(path, vram_gb=9.0)["kv_cache"]
    fits = {(r["n_ctx"], r["cache"]): r["fits"] for r in rows}
    # 7.0 GiB of weights; f16 KV of a 40-layer, 5120-wide model is 3.1 GiB at 4K
    assert fits[(4096, "q4_0")] == "yes"
    assert fits[(4096, "f16")] == "no"
    assert fits[(32768, "q4_0")] == "no"
    assert "fits" not in diagnose(path)["kv_cache"][0]


def test_the_first_line_says_how_far_the_f16_cache_fits(tmp_path: Path) -> None:
    """With --vram, whether f16 fits at the training context, else each cache's longest context,
    and those contexts really are the longest that leave the compute headroom."""
    spec = with_imatrix(Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K, **BIG))
    path = write_gguf(tmp_path / "m.gguf", spec)
    facts = read_facts(path)
    train = facts["n_ctx_train"]
    roomy = diagnose(path, vram_gb=200.0)["fit"]
    assert roomy.startswith("200 GB: the f16 cache fits at the training context")
    assert f"{train:,}" in roomy
    tight = diagnose(path, vram_gb=9.0)["fit"]
    assert tight.startswith("9 GB: the f16 cache fits up to ")
    for cache in ("f16", "q8_0", "q4_0"):
        n = longest_fit(facts, 9.0, cache)
        room = 9.0 * 2**30 - facts["weights_bytes"] - COMPUTE_HEADROOM
        assert kv_cache_bytes(facts, n, cache, cache)["total"] <= room
        if n < train:
            assert kv_cache_bytes(facts, n + 256, cache, cache)["total"] > room
            assert f"{n:,}" in tight
    assert "no room" in diagnose(path, vram_gb=7.0)["fit"]
    assert diagnose(path)["fit"] is None


def test_findings_name_where_their_advice_comes_from(tmp_path: Path) -> None:
    """No "source documents" without a name: each cited claim names its guide."""
    path = write_gguf(tmp_path / "s.gguf", Spec(F.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K))
    found = {f["rule"]: f for f in diagnose(path)["findings"]}
    assert "RunLocalAI" in found["small_model_below_q5_k_m"]["message"]
    assert found["small_model_below_q5_k_m"]["severity"] == "info"  # Q4_K_M is the guides' floor
    assert "Leeroopedia" in found["no_imatrix"]["message"]
    assert not any("source documents" in f["message"] for f in found.values())
