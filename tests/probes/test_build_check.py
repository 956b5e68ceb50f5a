"""The build check's parts in this process, on the real llama.cpp and the tiny GGUF: the server's
request sequence fed in-process (forks.feed_sampled) gives the rows of the full logits of those
batches, and the check's record and words from real rows of two caches."""

from __future__ import annotations

import numpy as np

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings, TopLogprobs, TopRequest
from kvprobe.engine.llamacpp.model import Model
from kvprobe.probes.divergence.build_check import build_check, build_check_sentence
from kvprobe.probes.divergence.metrics import truncated_kl

SETTINGS = ContextSettings(n_ctx=512, chunk=64, n_threads=2, flash_attn=True, attn_rotation=True, n_seq_max=1)
STRIDE, N_PROBS = 4, 50


def document(model: Model, n: int = 300) -> list[int]:
    text = "The quick brown fox jumps over the lazy dog, and then it rests by the river. " * 40
    return [model.bos or 1, *model.tokenize(text)][:n]


def sampled_rows(model: Model, cache: str, doc: list[int]) -> TopLogprobs:
    found: list[TopLogprobs] = []
    with model.context(CacheConfig(cache, cache), SETTINGS) as context:
        model.feed_lockstep([context], doc, top=TopRequest(doc, STRIDE, N_PROBS), on_top=found.extend)
        assert context.n_past == len(doc)
    (rows,) = found
    return rows


def test_feed_sampled_reads_every_strideth_position_in_the_servers_batches(tiny_model: Model) -> None:
    doc = document(tiny_model)
    rows = sampled_rows(tiny_model, "f16", doc)
    assert rows.positions.tolist() == list(range(1, len(doc), STRIDE))
    # The rows are the log-softmax of those batches' logits: the top n sorted, the target exact.
    with tiny_model.context(CacheConfig("f16", "f16"), SETTINGS) as context:
        fed, targets = 0, []
        for p in rows.positions:
            part = doc[fed:p]
            context._decode(part, fed, 0, want=[len(part) - 1])  # one batch per request, as a server
            context.n_past = fed = int(p)
            logits = context._logits(len(part) - 1).astype(np.float64)
            lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
            targets.append(logits[doc[p]] - lse)
            assert rows.ids[len(targets) - 1, 0] == int(np.argmax(logits))
    assert np.allclose(rows.target_logprob, targets, atol=1e-6)
    assert (np.diff(rows.logprobs, axis=1) <= 0).all()  # most likely first


def test_the_same_rows_match_and_another_cache_differs(tiny_model: Model) -> None:
    doc = document(tiny_model)
    f16, q4 = sampled_rows(tiny_model, "f16", doc), sampled_rows(tiny_model, "q4_0", doc)
    same = build_check(f16, f16, margin=0.02, seed=0)
    assert same["status"] == "matches"
    assert same["kl_mean"] == 0.0
    assert same["top1_agreement"] == 1.0
    assert same["positions"] == len(f16.positions)
    kl = truncated_kl(f16.ids, f16.logprobs, q4.ids, q4.logprobs)
    other = build_check(f16, q4, margin=0.02, seed=0)
    assert other["kl_mean"] == float(kl.mean())
    lo, hi = other["kl_ci"]
    # q4_0 on the tiny model: KL 0.086 [0.060, 0.129], all of it above the 0.02 margin.
    assert 0.02 < lo < other["kl_mean"] < hi
    assert other["status"] == "differs_beyond_margin"
    # The same rows against other margins: each outcome where the interval puts it.
    assert build_check(f16, q4, margin=10.0, seed=0)["status"] == "differs"
    assert build_check(f16, q4, margin=float(kl.mean()), seed=0)["status"] == "differs_near_margin"
    sentences = {
        status: build_check_sentence({**build_check(f16, q4, margin=m, seed=0), "tokens": len(doc)})
        for status, m in (("differs", 10.0), ("near", float(kl.mean())), ("beyond", 0.02))
    }
    assert "the cache verdict (server against server) stands" in sentences["differs"]
    assert "the interval reaches the equivalence margin" in sentences["near"]
    assert "a fault of the build, not of the cache" in sentences["beyond"]
    assert "matches kvprobe's own llama.cpp f16" in build_check_sentence({**same, "tokens": len(doc)})
    failed = build_check_sentence({"status": "failed", "reason": "the run stopped (time budget) before it"})
    assert failed.startswith("Build check: not made (the run stopped (time budget) before it)")


def test_a_stride_longer_than_the_chunk_splits_like_a_server(tiny_model: Model) -> None:
    """A server splits a prompt's new tokens at its batch size from their own start: so does
    feed_sampled, and each position's row is the last token of its last batch."""
    settings = ContextSettings(
        n_ctx=512, chunk=8, n_threads=2, flash_attn=True, attn_rotation=True, n_seq_max=1
    )
    doc, stride = document(tiny_model, 130), 20
    found: list[TopLogprobs] = []
    with tiny_model.context(CacheConfig("f16", "f16"), settings) as context:
        tiny_model.feed_lockstep([context], doc, top=TopRequest(doc, stride, N_PROBS), on_top=found.extend)
    (rows,) = found
    assert rows.positions.tolist() == list(range(1, len(doc), stride))
    with tiny_model.context(CacheConfig("f16", "f16"), settings) as context:
        fed, targets = 0, []
        for p in rows.positions:
            span = doc[fed:p]
            for i in range(0, len(span), 8):  # batches of 8 from the span's own start
                piece = span[i : i + 8]
                context._decode(piece, fed + i, 0, want=[len(piece) - 1])
            logits = context._logits(len(piece) - 1).astype(np.float64)
            lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
            targets.append(logits[doc[p]] - lse)
            context.n_past = fed = int(p)
    assert np.allclose(rows.target_logprob, targets, atol=1e-6)
