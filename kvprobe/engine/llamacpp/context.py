"""A llama.cpp context for one cache configuration: sequence 0 holds the document, forks
(sequences 1..k) branch off it and are removed after use."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from kvprobe.api.cache_types import GGML_TYPE_IDS, CacheConfig, check_flash_attn
from kvprobe.api.engine import ContextSettings, TeacherForced
from kvprobe.engine.llamacpp import forks
from kvprobe.engine.llamacpp.forks import DOC_SEQ, FORK_SEQ, teacher_forced
from kvprobe.engine.llamacpp.log import captured_log, last_error, parse_applied
from kvprobe.infra.errors import EngineError

if TYPE_CHECKING:
    from kvprobe.engine.llamacpp.model import Model

# Settings every context gets whatever the user asks, recorded in the result's runtime: a fork
# shares the document's cells (unified cache), and keeps every sliding-window cell, so a fork
# never evicts the prefix.
FIXED_SETTINGS = {"kv_unified": True, "swa_full": True}


class Context:
    """A llama.cpp context for one cache configuration: a document sequence plus forks
    (kvprobe.api.engine.Context).

    Every call that changes llama.cpp's state goes through four methods, `_decode_rows` (a
    batch), `_seq_cp`, `_seq_rm` (sequence copies and removals) and `_clear`; and `close` ends
    it. A subclass that overrides them (calling these) sees every such call in order: the hook
    benchmarks/trace.py uses, through `Model.context_class`, to replay a run's calls bare."""

    def __init__(self, model: Model, cache: CacheConfig, settings: ContextSettings):
        self.model = model
        self.cache = cache
        self.settings = settings
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = settings.chunk
        params.n_ubatch = settings.chunk
        params.n_seq_max = settings.n_seq_max
        params.kv_unified = FIXED_SETTINGS["kv_unified"]
        params.swa_full = FIXED_SETTINGS["swa_full"]
        params.n_threads = model.n_threads
        params.n_threads_batch = model.n_threads
        params.type_k = GGML_TYPE_IDS[cache.type_k]
        params.type_v = GGML_TYPE_IDS[cache.type_v]
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if settings.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        check_flash_attn([cache], settings.flash_attn)
        previous = os.environ.get("LLAMA_ATTN_ROT_DISABLE")
        os.environ["LLAMA_ATTN_ROT_DISABLE"] = "0" if settings.attn_rotation else "1"
        try:
            with captured_log() as log:
                ctx = llama_cpp.llama_init_from_model(model._model, params)
        finally:
            if previous is None:
                del os.environ["LLAMA_ATTN_ROT_DISABLE"]
            else:
                os.environ["LLAMA_ATTN_ROT_DISABLE"] = previous
        if not ctx:
            reason = last_error(log, ("error", "fail"))
            raise EngineError(f"llama.cpp could not create a context for cache {cache.id}: {reason.strip()}")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.log = log
        self.applied = parse_applied(log, int(llama_cpp.llama_n_ctx(ctx)))
        if (self.applied.type_k, self.applied.type_v) != (cache.type_k, cache.type_v):
            raise EngineError(
                f"asked for K={cache.type_k} V={cache.type_v} but llama.cpp applied "
                f"K={self.applied.type_k} V={self.applied.type_v}"
            )
        self._batch = llama_cpp.llama_batch_init(settings.chunk, 0, 1)
        self.n_past = 0  # tokens of the document in sequence 0
        self.tokens_evaluated = 0
        self.busy_s = 0.0  # seconds spent in llama_decode

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget everything: a fresh document (classic mode)."""
        self._clear()
        self.n_past = 0

    # the state-changing calls (the subclass hook) ----------------------------------
    def _clear(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, p1)

    def _decode_rows(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], want: Sequence[int]
    ) -> None:
        """Decode one batch in which every token has its own position and sequence; `want`
        are batch indices whose logits are kept."""
        n = len(tokens)
        if n > self.settings.chunk:
            raise EngineError(f"batch of {n} tokens exceeds the chunk size {self.settings.chunk}")
        if max(positions) >= self.applied.n_ctx:
            raise EngineError(f"position {max(positions)} exceeds the context size {self.applied.n_ctx}")
        b = self._batch
        wanted = set(want)
        for i, (t, p, sq) in enumerate(zip(tokens, positions, seqs, strict=True)):
            b.token[i] = t
            b.pos[i] = p
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = sq
            b.logits[i] = 1 if i in wanted else 0
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, b)
        self.busy_s += time.perf_counter() - t0
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} at position {positions[0]}")
        self.tokens_evaluated += n

    # low level ----------------------------------------------------------------------
    def _decode(self, tokens: Sequence[int], pos0: int, seq: int, want: Sequence[int]) -> None:
        """Decode consecutive tokens of one sequence; `want` are batch indices whose logits are kept."""
        n = len(tokens)
        self._decode_rows(tokens, [pos0 + i for i in range(n)], [seq] * n, want)

    def _logits(self, i: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def _logits_rows(self, n: int) -> np.ndarray:
        """The logits of the last batch's n outputs, a view into llama.cpp's buffer that is
        valid until this context decodes again."""
        ptr = llama_cpp.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab))

    # document --------------------------------------------------------------------
    def feed(self, tokens: Sequence[int]) -> None:
        """Append tokens to the document in fixed chunks aligned to the chunk grid."""
        forks.feed_lockstep([self], tokens)

    def feed_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Like feed, returning the logits of every fed position (tests and small inputs only)."""
        rows: list[np.ndarray] = []
        forks.feed_lockstep([self], tokens, lambda _pos, logits: rows.append(logits[0].copy()))
        return np.concatenate(rows)

    # forks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _fork(self) -> Iterator[None]:
        self._seq_cp(DOC_SEQ, FORK_SEQ, -1, -1)
        try:
            yield
        finally:
            self._seq_rm(FORK_SEQ, -1, -1)

    def _fork_decode(self, tokens: Sequence[int], want_tail: int) -> list[np.ndarray]:
        """Decode tokens after the document in the fork; logits of the last `want_tail`."""
        chunk = self.settings.chunk
        out: list[np.ndarray] = []
        first_wanted = len(tokens) - want_tail
        pos = self.n_past
        for start in range(0, len(tokens), chunk):
            part = tokens[start : start + chunk]
            want = [j for j in range(len(part)) if start + j >= first_wanted]
            self._decode(part, pos, FORK_SEQ, want=want)
            out.extend(self._logits(j).copy() for j in want)
            pos += len(part)
        return out

    def score(self, prompt: Sequence[int], answer: Sequence[int]) -> TeacherForced:
        """Teacher-force `answer` after document + `prompt`, in a fork of the document."""
        if not answer:
            raise ValueError("empty answer")
        tokens = list(prompt) + list(answer[:-1])
        with self._fork():
            rows = self._fork_decode(tokens, want_tail=len(answer))
        return teacher_forced(rows, answer)

    def score_many(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[TeacherForced]:
        """`score` for many (prompt, answer) pairs at once (forks.score_many)."""
        return forks.score_many(self, requests)

    def generate(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy continuation of document + `prompt`, in a fork of the document."""
        out: list[int] = []
        with self._fork():
            row = self._fork_decode(list(prompt), want_tail=1)[-1]
            pos = self.n_past + len(prompt)
            for _ in range(max_tokens):
                tok = int(np.argmax(row))
                if self.model.is_eog(tok):
                    break
                out.append(tok)
                if pos >= self.applied.n_ctx:
                    break
                self._decode([tok], pos, FORK_SEQ, want=[0])
                row = self._logits(0)
                pos += 1
        return out

    def generate_many(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int]) -> list[list[int]]:
        """`generate` for many prompts at once (forks.generate_many)."""
        return forks.generate_many(self, prompts, max_tokens)

    def generate_forks(
        self, prefixes: Sequence[Sequence[int]], max_tokens: int, prompt: Sequence[int] = ()
    ) -> list[list[int]]:
        """Greedy continuations of the document cut at several points (forks.generate_forks)."""
        return forks.generate_forks(self, prefixes, max_tokens, prompt)
