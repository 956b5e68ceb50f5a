"""Claims about model behaviour, on the real default model (Gemma 3 270M Q4_K_M)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.model import Model
from kvprobe.plan.scenario import load_scenario
from kvprobe.run.request import RunSettings
from kvprobe.run.runner import Runner, run_probes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(default_model_path: Path, default_model_extra_bufts: bool) -> Iterator[Model]:
    with Model(
        default_model_path, n_gpu_layers=0, n_threads=2, use_extra_bufts=default_model_extra_bufts
    ) as model:
        yield model


def test_f16_needle_accuracy_at_1024_is_high(gemma: Model) -> None:
    scenario = load_scenario("default")
    settings = RunSettings(ctx=1024, seed=0, mode="onepass", flash_attn=True, attn_rotation=True)
    runner = Runner(gemma, scenario, settings, baseline="f16")
    out = run_probes(runner, [CacheConfig("f16", "f16")], lambda n, what: None)
    items = [i for i in out.items if i["probe"] == "needle"]

    assert len(items) >= 16
    accuracy = sum(i["correct"] for i in items) / len(items)
    assert accuracy >= 0.9, [(i["key"], i["expected"], i["output"]) for i in items if not i["correct"]]


def test_fork_equals_fresh_on_sliding_window_model(gemma: Model) -> None:
    """Gemma 3 uses a 512-token sliding window on 5 of 6 layers: forking past the
    window must still give the logits of a fresh evaluation."""
    settings = ContextSettings(n_ctx=2048, chunk=256, n_threads=2, flash_attn=True, attn_rotation=True)
    text = " ".join(Path(p).read_text() for p in sorted(Path("kvprobe/plan/haystacks/prose").glob("a*.txt")))
    doc = [gemma.bos or 2, *gemma.tokenize(text)][:1300]
    query = gemma.tokenize("\n\nThe bells were cast in")
    answer = gemma.tokenize(" bronze and tin")
    cache = CacheConfig("q4_0", "q4_0")
    with gemma.context(cache, settings) as ctx:
        ctx.feed(doc[:768])
        ctx.score(query, answer)
        ctx.feed(doc[768:])
        forked = ctx.score(query, answer)
    with gemma.context(cache, settings) as ctx:
        ctx.feed(doc)
        rows = ctx.feed_logits(query + answer[:-1])[len(query) - 1 :]
    fresh = []
    for row, tok in zip(rows, answer, strict=True):
        x = row.astype(np.float64)
        fresh.append(x[tok] - (x.max() + np.log(np.exp(x - x.max()).sum())))
    assert forked.token_logprobs == fresh


def test_cache_types_take_effect_on_default_model(gemma: Model) -> None:
    settings = ContextSettings(n_ctx=512, chunk=256, n_threads=2, flash_attn=True, attn_rotation=True)
    for cache in (CacheConfig("q8_0", "q8_0"), CacheConfig("q4_0", "f16")):
        with gemma.context(cache, settings) as ctx:
            assert (ctx.applied.type_k, ctx.applied.type_v) == (cache.type_k, cache.type_v)
            assert ctx.applied.attn_rot_k  # head dim 256: rotated


# The peak of this process's own memory map. Not ru_maxrss: Linux carries the parent's
# high-water mark across fork/vfork + exec into it, so it would measure pytest's own memory.
PEAK_RSS = """
def PEAK_RSS_BYTES():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/self/status")
"""

MEMORY_PROBE = (
    PEAK_RSS
    + """
import sys
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.model import Model
with Model(sys.argv[1], n_gpu_layers=0, n_threads=2, use_extra_bufts=sys.argv[2] == '1') as m:
    s = ContextSettings(n_ctx=8448, chunk=512, n_threads=2, flash_attn=True, attn_rotation=True, n_seq_max=5)
    with m.context(CacheConfig("f16", "f16"), s) as ctx:
        text = " ".join("The ferry crossed the river at dawn and returned at dusk." for _ in range(300))
        ctx.feed([m.bos or 2, *m.tokenize(text)][:2048])
        ctx.score(m.tokenize(" The ferry crossed"), m.tokenize(" the river at dawn"))
        ctx.generate(m.tokenize(" The ferry"), 8)
print(PEAK_RSS_BYTES())
"""
)


def peak_rss_bytes(script: str, model_path: Path, extra_bufts: bool) -> int:
    """Run `script` in a fresh interpreter (so earlier tests' memory does not count); it
    prints its peak RSS last."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", script, str(model_path), "1" if extra_bufts else "0"],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return int(proc.stdout.strip().splitlines()[-1])


def test_logits_are_never_n_ctx_by_n_vocab(default_model_path: Path, default_model_extra_bufts: bool) -> None:
    """With logits_all, n_ctx 8448 x 262,144 vocab x 4 bytes would be 8.9 GB; the engine
    keeps only the rows it asks for, so the whole process stays far below that."""
    peak_bytes = peak_rss_bytes(MEMORY_PROBE, default_model_path, default_model_extra_bufts)
    assert peak_bytes < 2 * 2**30, f"peak RSS {peak_bytes / 2**30:.2f} GiB"


DIVERGENCE_MEMORY_PROBE = (
    PEAK_RSS
    + """
import sys
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.model import Model
from kvprobe.probes.divergence.metrics import DivergenceRecorder
with Model(sys.argv[1], n_gpu_layers=0, n_threads=2, use_extra_bufts=sys.argv[2] == '1') as m:
    s = ContextSettings(n_ctx=8448, chunk=512, n_threads=2, flash_attn=True, attn_rotation=True)
    text = " ".join("The ferry crossed the river at dawn and returned at dusk." for _ in range(300))
    doc = [m.bos or 2, *m.tokenize(text)][:2048]
    rec = DivergenceRecorder("f16")
    with m.context(CacheConfig("f16", "f16"), s) as a, m.context(CacheConfig("q4_0", "q4_0"), s) as b:
        m.feed_lockstep([a, b], doc, lambda p, lg: rec.add_chunk(0, doc, p, {"f16": lg[0], "q4_0": lg[1]}))
    assert len(rec.records[("q4_0", 0)].arrays()["kld"]) == 2047
print(PEAK_RSS_BYTES())
"""
)


def test_divergence_memory_is_bounded_by_the_chunk_not_the_context(
    default_model_path: Path, default_model_extra_bufts: bool
) -> None:
    """Every position's logits of two contexts at n_ctx 8448: holding them all would take
    2 x 8448 x 262,144 x 4 bytes = 17.7 GB; lockstep reduction keeps one chunk per context."""
    peak_bytes = peak_rss_bytes(DIVERGENCE_MEMORY_PROBE, default_model_path, default_model_extra_bufts)
    assert peak_bytes < 4 * 2**30, f"peak RSS {peak_bytes / 2**30:.2f} GiB"


def test_divergence_on_default_model_null_is_zero_and_q8_below_q4(gemma: Model) -> None:
    from dataclasses import replace

    from kvprobe.probes.divergence.probe import DivergenceSpec

    base = load_scenario("divergence")
    one_doc = replace(base.spec(DivergenceSpec), documents=1)
    scenario = replace(
        base, plan=replace(base.plan, documents=1), sections={**base.sections, "divergence": one_doc}
    )
    settings = RunSettings(ctx=1024, seed=0, mode="onepass", flash_attn=True, attn_rotation=True)
    runner = Runner(gemma, scenario, settings, baseline="f16", null_check=True)
    configs = [CacheConfig("f16", "f16"), CacheConfig("q8_0", "q8_0"), CacheConfig("q4_0", "q4_0")]
    out = run_probes(runner, configs, lambda n, what: None)
    null = out.sections["divergence"]["null_check"]
    assert null["positions"] == 1023
    assert null["nonzero_kld"] == 0  # the same settings reproduce the reference exactly
    assert null["max_nll_gap"] == 0.0
    assert null["passed"]
    arrays = out.measured["divergence"]
    q8, q4 = arrays["q8_0"][0]["kld"].mean(), arrays["q4_0"][0]["kld"].mean()
    assert 0 < q8 < q4


def test_doctor_on_default_model(default_model_path: Path) -> None:
    from kvprobe.weights.doctor import diagnose

    report = diagnose(default_model_path)
    facts = report["facts"]
    assert facts["file_type"] == "MOSTLY_Q4_K_M"
    assert facts["token_embd_type"] == "Q8_0"
    assert facts["output_type"] is None  # tied to the embedding
    assert facts["imatrix"] is None
    assert sum(facts["swa_layers"]) == 15  # gemma 3: 5 sliding-window layers in 6
    rules = {f["rule"] for f in report["findings"]}
    assert {"small_model_below_q5_k_m", "no_imatrix"} <= rules


def test_kv_formula_matches_llama_cpp_on_sliding_window_model(gemma: Model, default_model_path: Path) -> None:
    from kvprobe.engine.llamacpp.tools import kv_buffers
    from kvprobe.weights.doctor import kv_cache_bytes, read_facts

    facts = read_facts(default_model_path)
    for n_ctx in (4096, 8192):
        for t in ("f16", "q4_0"):
            for swa_full in (False, True):
                logged = kv_buffers(gemma, n_ctx, CacheConfig(t, t), swa_full=swa_full)
                ours = kv_cache_bytes(facts, n_ctx, t, t, swa_full=swa_full)
                assert sum(b.layers for b in logged) == 18
                assert sum(b.k_mib + b.v_mib for b in logged) == pytest.approx(
                    ours["total"] / 2**20, abs=0.02
                )
                swa = next(b for b in logged if b.layers == 15)
                assert swa.cells == (n_ctx if swa_full else 1024)
