"""The llama.cpp engine on real llama.cpp with a tiny random-weight GGUF (fast plumbing checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.forks import feed_lockstep, packs
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import EngineError

CHUNK = 64


def settings(n_ctx: int = 1024, chunk: int = CHUNK, rotation: bool = True) -> ContextSettings:
    return ContextSettings(n_ctx=n_ctx, chunk=chunk, n_threads=2, flash_attn=True, attn_rotation=rotation)


def document(model: Model, n: int) -> list[int]:
    text = " ".join(f"Sentence {i} is about the number {i * 7 % 13}." for i in range(400))
    toks = [model.bos or 1, *model.tokenize(text)]
    assert len(toks) >= n
    return toks[:n]


@pytest.mark.parametrize(
    "cache",
    [
        CacheConfig("f16", "f16"),
        CacheConfig("q8_0", "q8_0"),
        CacheConfig("q4_0", "q4_0"),
        CacheConfig("q4_0", "f16"),
        CacheConfig("f16", "q8_0"),
        CacheConfig("bf16", "bf16"),
    ],
    ids=lambda c: c.id,
)
def test_requested_cache_types_take_effect(tiny_model: Model, cache: CacheConfig) -> None:
    with tiny_model.context(cache, settings()) as ctx:
        assert (ctx.applied.type_k, ctx.applied.type_v) == (cache.type_k, cache.type_v)
        assert ctx.applied.flash_attn
        # llama.cpp rotates a quantized cache when the head dim is a multiple of 64
        assert ctx.applied.attn_rot_k == cache.k_quantized
        assert ctx.applied.attn_rot_v == cache.v_quantized


def test_rotation_can_be_disabled(tiny_model: Model) -> None:
    cache = CacheConfig("q4_0", "q4_0")
    with tiny_model.context(cache, settings(rotation=False)) as ctx:
        assert not ctx.applied.attn_rot_k
        assert not ctx.applied.attn_rot_v
        off = ctx.feed_logits(document(tiny_model, 200))
    with tiny_model.context(cache, settings(rotation=True)) as ctx:
        on = ctx.feed_logits(document(tiny_model, 200))
    assert not np.array_equal(on, off)  # the setting changes numerics, hence it is recorded


def test_cache_type_changes_logits(tiny_model: Model) -> None:
    doc = document(tiny_model, 300)
    with tiny_model.context(CacheConfig("f16", "f16"), settings()) as ctx:
        ref = ctx.feed_logits(doc)
    with tiny_model.context(CacheConfig("q4_0", "q4_0"), settings()) as ctx:
        q4 = ctx.feed_logits(doc)
    assert np.abs(ref - q4).max() > 0  # the quantized cache really is in use


def test_chunked_feed_is_bit_identical_to_monolithic(tiny_model: Model) -> None:
    doc = document(tiny_model, 700)
    cache = CacheConfig("q8_0", "q8_0")
    with tiny_model.context(cache, settings()) as ctx:
        whole = ctx.feed_logits(doc)
    with tiny_model.context(cache, settings()) as ctx:
        # stop at checkpoints (some off the chunk grid); batches stay aligned to the grid
        parts = [ctx.feed_logits(doc[a:b]) for a, b in [(0, 128), (128, 300), (300, 512), (512, 700)]]
    assert np.array_equal(whole, np.concatenate(parts))


def test_same_run_twice_is_bit_identical(tiny_model: Model) -> None:
    doc = document(tiny_model, 300)
    cache = CacheConfig("q4_0", "q4_0")
    runs = []
    for _ in range(2):
        with tiny_model.context(cache, settings()) as ctx:
            runs.append(ctx.feed_logits(doc))
    assert np.array_equal(runs[0], runs[1])


def _fresh_query_logits(model: Model, cache: CacheConfig, prefix: list[int], query: list[int]) -> Any:
    with model.context(cache, settings()) as ctx:
        ctx.feed(prefix)
        return ctx.feed_logits(query)


@pytest.mark.parametrize(
    "cache", [CacheConfig("f16", "f16"), CacheConfig("q4_0", "q4_0")], ids=lambda c: c.id
)
def test_forked_query_equals_fresh_evaluation(tiny_model: Model, cache: CacheConfig) -> None:
    doc = document(tiny_model, 640)
    query = tiny_model.tokenize("\n\nThe number is")
    answer = tiny_model.tokenize(" 1234")
    with tiny_model.context(cache, settings()) as ctx:
        scores = {}
        for length in (256, 512, 640):
            ctx.feed(doc[ctx.n_past : length])
            scores[length] = ctx.score(query, answer)
            ctx.generate(query, 5)  # a second fork must not disturb the document either
    for length, scored in scores.items():
        fresh = _fresh_query_logits(tiny_model, cache, doc[:length], query + answer[:-1])
        rows = fresh[len(query) - 1 :]
        lps = []
        for row, tok in zip(rows, answer, strict=True):
            x = row.astype(np.float64)
            lps.append(x[tok] - (x.max() + np.log(np.exp(x - x.max()).sum())))
        assert scored.token_logprobs == pytest.approx(lps, abs=0, rel=0), length
        assert scored.argmax_match == all(int(np.argmax(r)) == t for r, t in zip(rows, answer, strict=True))


def test_fork_leaves_document_untouched(tiny_model: Model) -> None:
    doc = document(tiny_model, 512)
    cache = CacheConfig("q8_0", "q8_0")
    query = tiny_model.tokenize("\n\nThe number is")
    with tiny_model.context(cache, settings()) as ctx:
        ctx.feed(doc[:256])
        ctx.score(query, tiny_model.tokenize(" 42"))
        ctx.generate(query, 8)
        after_forks = ctx.feed_logits(doc[256:])
    with tiny_model.context(cache, settings()) as ctx:
        ctx.feed(doc[:256])
        plain = ctx.feed_logits(doc[256:])
    assert np.array_equal(after_forks, plain)


def test_teacher_forcing_agrees_with_greedy(tiny_model: Model) -> None:
    doc = document(tiny_model, 300)
    query = tiny_model.tokenize("\n\nThe number is")
    with tiny_model.context(CacheConfig("f16", "f16"), settings()) as ctx:
        ctx.feed(doc)
        greedy = ctx.generate(query, 4)
        assert 1 <= len(greedy) <= 4  # stops early at an end-of-generation token
        assert ctx.score(query, greedy).argmax_match  # greedy output is the argmax path
        wrong = [(greedy[0] + 1) % tiny_model.n_vocab, *greedy[1:]]
        scored = ctx.score(query, wrong)
        assert not scored.argmax_match
        assert scored.first_mismatch == 0


def test_batch_larger_than_chunk_is_refused(tiny_model: Model) -> None:
    with tiny_model.context(CacheConfig("f16", "f16"), settings()) as ctx, pytest.raises(EngineError):
        ctx._decode(list(range(CHUNK + 1)), 0, 0, want=())


def _single_fork_reference(model: Model, cache: CacheConfig, prefix: list[int], n: int) -> list[int]:
    """Greedy continuation in a fresh context: the prefix minus its last token fed in chunks,
    then one token per batch, as a single fork does it."""
    with model.context(cache, settings()) as ctx:
        ctx.feed(prefix[:-1])
        out: list[int] = []
        tok, pos = prefix[-1], len(prefix) - 1
        for _ in range(n):
            ctx._decode([tok], pos, 0, want=[0])
            tok = int(np.argmax(ctx._logits(0)))
            if model.is_eog(tok):
                break
            out.append(tok)
            pos += 1
        return out


def test_single_fork_continuation_equals_fresh_generation(tiny_model: Model) -> None:
    doc = document(tiny_model, 400)
    cache = CacheConfig("q4_0", "q4_0")
    with tiny_model.context(cache, settings()) as ctx:
        ctx.feed(doc)
        (forked,) = ctx.generate_forks([doc[:300]], 20)
    assert forked == _single_fork_reference(tiny_model, cache, doc[:300], 20)


def test_parallel_forks_are_deterministic_and_leave_the_document(tiny_model: Model) -> None:
    doc = document(tiny_model, 600)
    cache = CacheConfig("q8_0", "q8_0")
    s = settings()
    s = ContextSettings(s.n_ctx, s.chunk, s.n_threads, s.flash_attn, s.attn_rotation, n_seq_max=5)
    runs = []
    for _ in range(2):
        with tiny_model.context(cache, s) as ctx:
            ctx.feed(doc[:384])
            outs = ctx.generate_forks([doc[:p] for p in (384, 300, 200, 100)], 24)
            rest = ctx.feed_logits(doc[384:])
            runs.append((outs, rest))
    assert runs[0][0] == runs[1][0]
    assert all(len(o) > 0 for o in runs[0][0])
    with tiny_model.context(cache, s) as ctx:
        ctx.feed(doc[:384])
        plain = ctx.feed_logits(doc[384:])
    assert np.array_equal(runs[0][1], plain)  # the document never sees the forks


def test_too_many_forks_for_the_context(tiny_model: Model) -> None:
    doc = document(tiny_model, 200)
    with tiny_model.context(CacheConfig("f16", "f16"), settings()) as ctx:  # n_seq_max = 2
        ctx.feed(doc)
        with pytest.raises(EngineError):
            ctx.generate_forks([doc[:100], doc[:150]], 4)


def test_lockstep_streaming_equals_direct_computation_from_full_logits(tiny_model: Model) -> None:
    from kvprobe.probes.divergence.metrics import DivergenceRecorder, kl_divergence, log_softmax

    doc = document(tiny_model, 300)  # 300 is not a multiple of the chunk: a partial last chunk
    ref_cfg, test_cfg = CacheConfig("f16", "f16"), CacheConfig("q4_0", "q4_0")
    recorder = DivergenceRecorder("f16")
    with tiny_model.context(ref_cfg, settings()) as ref, tiny_model.context(test_cfg, settings()) as test:
        # fed in two pieces, as the runner does between checkpoints
        for piece in (doc[:128], doc[128:]):
            feed_lockstep(
                [ref, test],
                piece,
                lambda pos0, logits: recorder.add_chunk(0, doc, pos0, {"f16": logits[0], "q4_0": logits[1]}),
            )
    with tiny_model.context(ref_cfg, settings()) as ref:
        full_ref = ref.feed_logits(doc)
    with tiny_model.context(test_cfg, settings()) as test:
        full_test = test.feed_logits(doc)
    assert full_ref.shape == (300, tiny_model.n_vocab)
    streamed = recorder.records[("q4_0", 0)].arrays()
    nxt = np.array(doc[1:])
    direct_kld = kl_divergence(full_ref[:-1], full_test[:-1])
    assert len(streamed["kld"]) == 299
    assert direct_kld.max() > 1e-6  # q4_0 does move the distribution
    assert np.allclose(streamed["kld"], direct_kld, rtol=1e-4, atol=1e-9)
    assert np.array_equal(streamed["top1_agree"], full_ref[:-1].argmax(1) == full_test[:-1].argmax(1))
    assert np.allclose(streamed["nll"], -log_softmax(full_test[:-1])[np.arange(299), nxt], rtol=1e-6)
    ref_nll = recorder.records[("f16", 0)].arrays()["nll"]
    assert np.allclose(ref_nll, -log_softmax(full_ref[:-1])[np.arange(299), nxt], rtol=1e-6)


def test_null_check_gives_exactly_zero_on_cpu(tiny_model: Model) -> None:
    from kvprobe.probes.divergence.metrics import DivergenceRecorder

    doc = document(tiny_model, 400)
    recorder = DivergenceRecorder("f16")
    cfg = CacheConfig("f16", "f16")
    with tiny_model.context(cfg, settings()) as a, tiny_model.context(cfg, settings()) as b:
        feed_lockstep(
            [a, b], doc, lambda pos0, lg: recorder.add_chunk(0, doc, pos0, {"f16": lg[0], "null": lg[1]})
        )
    null = recorder.records[("null", 0)].arrays()
    assert len(null["kld"]) == 399
    assert np.count_nonzero(null["kld"]) == 0
    assert null["top1_agree"].all()
    assert np.array_equal(null["nll"], recorder.records[("f16", 0)].arrays()["nll"])


def test_lockstep_refuses_contexts_out_of_step(tiny_model: Model) -> None:
    doc = document(tiny_model, 100)
    cfg = CacheConfig("f16", "f16")
    with tiny_model.context(cfg, settings()) as a, tiny_model.context(cfg, settings()) as b:
        a.feed(doc[:10])
        with pytest.raises(EngineError, match="equal length"):
            feed_lockstep([a, b], doc[10:])


def test_reading_every_positions_logits_leaves_the_cache_unchanged(tiny_model: Model) -> None:
    """The default scenario scores divergence on the document that needles are asked about:
    computing all logits must not change what a later query sees."""
    doc = document(tiny_model, 300)
    cfg = CacheConfig("q4_0", "q4_0")
    prompt, answer = doc[10:20], doc[20:25]
    with tiny_model.context(cfg, settings()) as plain:
        plain.feed(doc)
        expected = plain.score(prompt, answer)
    with tiny_model.context(cfg, settings()) as logged:
        feed_lockstep([logged], doc, lambda pos0, logits: None)
        assert logged.score(prompt, answer) == expected


def _queries(model: Model) -> list[tuple[list[int], list[int]]]:
    """Ten needle-like (query, answer) pairs: more tokens than one chunk holds."""
    return [
        (model.tokenize(f"\n\nThe number of sentence {i} is"), model.tokenize(f" {i * 7 % 13} and {i}"))
        for i in range(10)
    ]


@pytest.mark.parametrize(
    "cache", [CacheConfig("f16", "f16"), CacheConfig("q4_0", "q4_0")], ids=lambda c: c.id
)
def test_batched_queries_agree_with_one_at_a_time(tiny_model: Model, cache: CacheConfig) -> None:
    doc = document(tiny_model, 400)
    requests = _queries(tiny_model)
    s = settings()
    s = ContextSettings(s.n_ctx, s.chunk, s.n_threads, s.flash_attn, s.attn_rotation, n_seq_max=5)
    with tiny_model.context(cache, s) as ctx:
        ctx.feed(doc)
        sizes = [len(q) + len(a) - 1 for q, a in requests]
        packed = packs(sizes, ctx)
        assert len(packed) > 1
        assert [j for p in packed for j in p] == list(range(10))  # in order
        assert all(sum(sizes[j] for j in p) <= CHUNK and len(p) <= 4 for p in packed)
        before = ctx.tokens_evaluated
        batched = ctx.score_many(requests)
        assert ctx.tokens_evaluated - before == sum(sizes)  # every query token once, no more
        again = ctx.score_many(requests)
        alone = [ctx.score(q, a) for q, a in requests]
        prompts = [q for q, _ in requests]
        generated = ctx.generate_many(prompts, [6] * len(prompts))
        one_by_one = [ctx.generate(q, 6) for q in prompts]
        rest = ctx.feed_logits(doc[:0] + document(tiny_model, 450)[400:])
    assert [b.token_logprobs for b in batched] == [a.token_logprobs for a in again]  # deterministic
    for b, a in zip(batched, alone, strict=True):
        # Another batch shape: not bit-identical, but the same numbers to float precision.
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-3)
    assert generated == one_by_one
    with tiny_model.context(cache, s) as ctx:
        ctx.feed(doc)
        plain = ctx.feed_logits(document(tiny_model, 450)[400:])
    assert np.array_equal(rest, plain)  # the document never sees the forks


def test_a_traced_context_replays_to_the_same_state(tiny_model: Model, tmp_path: Path) -> None:
    """The bare replay behind the P2 benchmark makes the same llama.cpp calls: a context
    traced through the engine's hook (Model.context_class) and replayed from the trace
    continues with bit-identical logits."""
    import pickle

    from benchmarks.replay import replay_ops
    from benchmarks.trace import TracedContext, tracing

    doc = document(tiny_model, 450)
    s = settings()
    s = ContextSettings(s.n_ctx, s.chunk, s.n_threads, s.flash_attn, s.attn_rotation, n_seq_max=5)
    cache = CacheConfig("q8_0", "q8_0")
    with tracing(tmp_path), tiny_model.context(cache, s) as ctx:
        assert isinstance(ctx, TracedContext)
        ctx.feed(doc[:400])
        ctx.score_many(_queries(tiny_model))
        ctx.generate_forks([doc[:300], doc[:200]], 5)
        ctx._decode(doc[400:], 400, 0, want=range(50))
        original = ctx._logits_rows(50).copy()
    with tiny_model.context(cache, s) as plain:
        assert not isinstance(plain, TracedContext)  # the hook is put back
    (path,) = tmp_path.glob("*.pkl")
    trace = pickle.loads(path.read_bytes())
    assert trace["cache"] == ["q8_0", "q8_0"]
    decodes = [op for op in trace["ops"] if op[0] == "decode"]
    assert (
        sum(len(op[1]) for op in decodes)
        == 400 + sum(len(q) + len(a) - 1 for q, a in _queries(tiny_model)) + 2 * 5 + 50
    )
    assert {op[0] for op in trace["ops"]} == {"decode", "cp", "rm"}
    with tiny_model.context(cache, ContextSettings(**trace["settings"])) as again:
        assert replay_ops(again, trace["ops"][:-1]) > 0  # all but the last batch
        again._decode(doc[400:], 400, 0, want=range(50))
        assert np.array_equal(again._logits_rows(50), original)


def test_a_trace_that_cannot_be_written_costs_the_run_nothing(
    tiny_model: Model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.trace import tracing

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with tracing(blocked / "trace"), tiny_model.context(CacheConfig("f16", "f16"), settings()) as ctx:
        ctx.feed(document(tiny_model, 100))
    assert "could not write the trace" in capsys.readouterr().err
