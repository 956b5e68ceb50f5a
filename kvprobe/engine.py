"""The one module that talks to llama.cpp (through llama-cpp-python's low-level API).

Why the low-level API: `Llama` fixes n_seq_max = 1 and, with logits_all, allocates
n_ctx x n_vocab floats up front. Here a context has several sequences on a unified KV
cache: sequence 0 holds the document, sequences 1..k are throw-away forks (a needle
query, or parallel continuations), so a fork shares the document prefix without
disturbing it. Logits are read only
at the positions asked for and reduced at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from kvprobe.api.cache_types import GGML_TYPE_IDS, CacheConfig, check_flash_attn
from kvprobe.infra.errors import EngineError, UserError
from kvprobe.infra.paths import open_input
from kvprobe.infra.provenance import MODEL_FIX

DOC_SEQ = 0
FORK_SEQ = 1
# Settings every context gets whatever the user asks, recorded in the result's runtime: a fork
# shares the document's cells (unified cache), and keeps every sliding-window cell, so a fork
# never evicts the prefix.
FIXED_SETTINGS = {"kv_unified": True, "swa_full": True}
# A folder: every context then writes there, when closed, each llama.cpp call that changed its
# state (batches and sequence copies and removals), for benchmarks/replay.py to time the same
# calls in a bare loop (P2: kvprobe's wall time over llama.cpp's own).
TRACE_ENV = "KVPROBE_TRACE"
_traced = itertools.count()


# --- llama.cpp log capture -------------------------------------------------------------
# llama.cpp reports the cache types and attention rotation it actually applied only in
# its log; we capture the log to check them, and keep it off the user's terminal.

_log_lock = threading.Lock()
_log_lines: list[str] = []


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    with _log_lock:
        _log_lines.append(text.decode("utf-8", errors="replace"))


llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@contextlib.contextmanager
def _captured_log() -> Iterator[list[str]]:
    with _log_lock:
        start = len(_log_lines)
    captured: list[str] = []
    try:
        yield captured
    finally:
        with _log_lock:
            captured.extend("".join(_log_lines[start:]).splitlines())
            if len(_log_lines) > 10_000:
                del _log_lines[:start]


# --- results of a forward pass -------------------------------------------------------


@dataclass(frozen=True)
class TeacherForced:
    """An answer scored by teacher forcing."""

    logprob: float  # sum of log p(answer token | prefix)
    token_logprobs: list[float]
    argmax_match: bool  # greedy decoding would produce the answer exactly
    first_mismatch: int | None  # index of the first answer token that is not the argmax


@dataclass(frozen=True)
class AppliedSettings:
    """What llama.cpp reports it actually did when creating the context."""

    type_k: str
    type_v: str
    flash_attn: bool
    attn_rot_k: bool
    attn_rot_v: bool
    n_ctx: int


@dataclass(frozen=True)
class ContextSettings:
    n_ctx: int
    chunk: int  # n_batch = n_ubatch: the fixed batch shape for every configuration
    n_threads: int
    flash_attn: bool
    attn_rotation: bool  # False sets LLAMA_ATTN_ROT_DISABLE=1 while the context is created
    n_seq_max: int = 2  # the document plus forks: 1 for queries, k for parallel continuations


_SPLIT_NAME = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama-gguf-split's names
_WEIGHT_BUFFER_LINE = re.compile(r"(\S+) model buffer size = +([\d.]+) MiB")


def _teacher_forced(rows: Sequence[np.ndarray], answer: Sequence[int]) -> TeacherForced:
    lps: list[float] = []
    first_bad: int | None = None
    for i, (row, tok) in enumerate(zip(rows, answer, strict=True)):
        lp, top = _log_softmax_at(row, tok)
        lps.append(lp)
        if top != tok and first_bad is None:
            first_bad = i
    return TeacherForced(float(sum(lps)), lps, first_bad is None, first_bad)


def _log_softmax_at(logits: np.ndarray, token: int) -> tuple[float, int]:
    x = logits.astype(np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    return float(x[token] - lse), int(np.argmax(logits))


class Model:
    """A loaded GGUF model: weights, vocabulary and tokenizer."""

    def __init__(
        self,
        path: str | Path,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        *,
        use_extra_bufts: bool = True,
    ):
        """`use_extra_bufts=False` is llama.cpp's --no-repack: weights stay in plain CPU buffers,
        without repacked or AMX kernels (see kernel_check for when kvprobe turns it off)."""
        self.path = Path(path)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = use_extra_bufts
        # The weights are read into the process's own memory, never mapped from the file: a file
        # rewritten during a run cannot change them, nor a truncated one end it with SIGBUS (the
        # run checks the file against its sha256 instead: kvprobe.infra.paths.Fingerprint).
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        params.lazy_mode = llama_cpp.LLAMA_LAZY_MODE_OFF
        self.n_gpu_layers = n_gpu_layers
        self.use_extra_bufts = use_extra_bufts
        # Loaded through the descriptor the bounded reader opened: the file checked (regular, not
        # a FIFO swapped in since) is the one read, inode and all. A split model's first file is
        # named, since llama.cpp finds the others by its name.
        with open_input(self.path, "model file", MODEL_FIX) as (fh, _), _captured_log() as log:
            source = str(self.path)
            if not _SPLIT_NAME.search(self.path.name) and os.path.isdir("/proc/self/fd"):
                source = f"/proc/self/fd/{fh.fileno()}"
            model = llama_cpp.llama_model_load_from_file(source.encode(), params)
        if not model:
            reason = next((ln for ln in reversed(log) if "error" in ln.lower()), "unknown error")
            raise UserError(f"llama.cpp could not load {self.path}: {reason.strip()}")
        self._model = model
        self.load_log = log
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._pieces: dict[int, str] = {}

    @property
    def weight_buffers(self) -> dict[str, float]:
        """The buffers llama.cpp put the weights in, MiB by buffer type, from its load log
        (CPU, CPU_REPACK, AMX, CUDA0, ...; CPU_Mapped while weights were mapped from the file): which
        kernels the weights actually use."""
        found: dict[str, float] = {}
        for line in self.load_log:
            m = _WEIGHT_BUFFER_LINE.search(line)
            if m:
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
        return found

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # tokenizer -------------------------------------------------------------------
    @property
    def bos(self) -> int | None:
        if not llama_cpp.llama_vocab_get_add_bos(self._vocab):
            return None
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text`, without BOS; special-token syntax is not parsed."""
        return self._tokenize(text, parse_special=False)

    def tokenize_special(self, text: str) -> list[int]:
        """Tokens of template text, without an added BOS: "<|im_start|>" and the like become
        their control tokens, as llama.cpp tokenizes a rendered chat prompt."""
        return self._tokenize(text, parse_special=True)

    def _tokenize(self, text: str, *, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, parse_special)
        return list(buf[:n])

    def token_text(self, token: int) -> str:
        """A token's text with special tokens written out ("<s>", "<|im_end|>"): what a chat
        template's bos_token and eos_token are."""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    @property
    def bos_id(self) -> int:
        """The vocabulary's BOS token, whether or not the model adds it (-1: none)."""
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos_id(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    def piece(self, token: int) -> str:
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            cached = buf.raw[: max(n, 0)].decode("utf-8", errors="replace")
            self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        if not tokens:
            return ""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        cap = 16 * len(tokens) + 16
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, False, False)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def vocabulary_digest(self) -> str:
        """A hash of every token's text and of BOS: equal digests mean the same token ids mean
        the same text, so two models can be fed identical items."""
        h = hashlib.sha256(f"{self.n_vocab}:{self.bos}".encode())
        for token in range(self.n_vocab):
            h.update(self.piece(token).encode("utf-8", errors="replace") + b"\0")
        return h.hexdigest()

    def context(self, cache: CacheConfig, settings: ContextSettings) -> Context:
        return Context(self, cache, settings)


def _parse_applied(log: list[str], n_ctx: int) -> AppliedSettings:
    text = "\n".join(log)
    ks = re.findall(r"K \((\w+)\):", text)
    vs = re.findall(r"V \((\w+)\):", text)
    fa = re.findall(r"flash_attn\s+=\s+(\w+)", text)
    rot_k = re.findall(r"attn_rot_k = (\d)", text)
    rot_v = re.findall(r"attn_rot_v = (\d)", text)
    if not ks or not vs or len(set(ks)) != 1 or len(set(vs)) != 1:
        raise EngineError(f"could not read the applied KV cache types from llama.cpp's log: K={ks} V={vs}")
    return AppliedSettings(
        type_k=ks[0],
        type_v=vs[0],
        flash_attn=bool(fa) and fa[-1] in ("enabled", "on", "1", "true"),
        attn_rot_k=any(r == "1" for r in rot_k),
        attn_rot_v=any(r == "1" for r in rot_v),
        n_ctx=n_ctx,
    )


class Context:
    """A llama.cpp context for one cache configuration: a document sequence plus a fork."""

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
            with _captured_log() as log:
                ctx = llama_cpp.llama_init_from_model(model._model, params)
        finally:
            if previous is None:
                del os.environ["LLAMA_ATTN_ROT_DISABLE"]
            else:
                os.environ["LLAMA_ATTN_ROT_DISABLE"] = previous
        if not ctx:
            reason = next((ln for ln in reversed(log) if "error" in ln.lower() or "fail" in ln.lower()), "")
            raise EngineError(f"llama.cpp could not create a context for cache {cache.id}: {reason.strip()}")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.log = log
        self.applied = _parse_applied(log, int(llama_cpp.llama_n_ctx(ctx)))
        if (self.applied.type_k, self.applied.type_v) != (cache.type_k, cache.type_v):
            raise EngineError(
                f"asked for K={cache.type_k} V={cache.type_v} but llama.cpp applied "
                f"K={self.applied.type_k} V={self.applied.type_v}"
            )
        self._batch = llama_cpp.llama_batch_init(settings.chunk, 0, 1)
        self._trace: list[tuple[Any, ...]] | None = [] if os.environ.get(TRACE_ENV) else None
        self.n_past = 0  # tokens of the document in sequence 0
        self.tokens_evaluated = 0
        self.busy_s = 0.0  # seconds spent in llama_decode

    def close(self) -> None:
        if self._trace is not None:
            self._write_trace(Path(os.environ[TRACE_ENV]))
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
        llama_cpp.llama_memory_clear(self._mem, True)
        if self._trace is not None:
            self._trace.append(("clear",))
        self.n_past = 0

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)
        if self._trace is not None:
            self._trace.append(("cp", src, dst, p0, p1))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, p1)
        if self._trace is not None:
            self._trace.append(("rm", seq, p0, p1))

    def replay(self, ops: Sequence[tuple[Any, ...]]) -> float:
        """Seconds a bare loop takes for a trace's calls (TRACE_ENV) in this fresh context:
        every batch is built before the clock starts, so only llama.cpp's own work is timed
        (benchmarks/replay.py: P2)."""
        batches: list[Any] = []
        try:
            for op in ops:
                if op[0] == "decode":
                    b = llama_cpp.llama_batch_init(len(op[1]), 0, 1)
                    batches.append(b)
                    for i, (t, pos, sq, want) in enumerate(zip(*op[1:], strict=True)):
                        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(t), int(pos), 1, int(want)
                        b.seq_id[i][0] = int(sq)
                    b.n_tokens = len(op[1])
            calls = iter(batches)
            started = time.perf_counter()
            for op in ops:
                if op[0] == "decode":
                    if llama_cpp.llama_decode(self._ctx, next(calls)) != 0:
                        raise EngineError("llama_decode failed in the replay")
                elif op[0] == "cp":
                    llama_cpp.llama_memory_seq_cp(self._mem, *op[1:])
                elif op[0] == "rm":
                    llama_cpp.llama_memory_seq_rm(self._mem, *op[1:])
                else:
                    llama_cpp.llama_memory_clear(self._mem, True)
            return time.perf_counter() - started
        finally:
            for b in batches:
                llama_cpp.llama_batch_free(b)

    def _write_trace(self, folder: Path) -> None:
        import pickle

        m = self.model
        record = {"cache": [self.cache.type_k, self.cache.type_v], "settings": asdict(self.settings),
                  "model": str(m.path), "n_threads": m.n_threads, "n_gpu_layers": m.n_gpu_layers,
                  "extra_bufts": m.use_extra_bufts, "busy_s": self.busy_s, "ops": self._trace}  # fmt: skip
        self._trace = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"{os.getpid()}-{next(_traced)}.pkl").open("wb") as fh:
                pickle.dump(record, fh)
        except OSError as exc:  # a benchmark's aid: never the reason a run loses its results
            print(f"kvprobe: could not write the trace to {folder}: {exc}", file=sys.stderr)

    # low level ----------------------------------------------------------------------
    def _decode(self, tokens: Sequence[int], pos0: int, seq: int, want: Sequence[int]) -> None:
        """Decode consecutive tokens of one sequence; `want` are batch indices whose logits are kept."""
        n = len(tokens)
        self._decode_rows(tokens, [pos0 + i for i in range(n)], [seq] * n, want)

    def _decode_rows(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], want: Sequence[int]
    ) -> None:
        """Decode one batch in which every token has its own position and sequence."""
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
        if self._trace is not None:
            self._trace.append(("decode", np.array(tokens, np.int32), np.array(positions, np.int32),
                                np.array(seqs, np.int32), np.isin(np.arange(n), list(wanted))))  # fmt: skip
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, b)
        self.busy_s += time.perf_counter() - t0
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} at position {positions[0]}")
        self.tokens_evaluated += n

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
        feed_lockstep([self], tokens)

    def feed_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Like feed, returning the logits of every fed position (tests and small inputs only)."""
        rows: list[np.ndarray] = []
        feed_lockstep([self], tokens, lambda _pos, logits: rows.append(logits[0].copy()))
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
        return _teacher_forced(rows, answer)

    def score_many(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[TeacherForced]:
        """`score` for many (prompt, answer) pairs at once: each in its own fork of the
        document, packed in order into as few llama_decode calls as the chunk and n_seq_max
        allow. The packing depends only on the token counts, so every configuration gets the
        same batches."""
        out: list[TeacherForced] = []
        for pack in _packs([len(p) + len(a) - 1 for p, a in requests], self):
            if (
                len(pack) == 1
                and len(requests[pack[0]][0]) + len(requests[pack[0]][1]) - 1 > self.settings.chunk
            ):
                out.append(self.score(*requests[pack[0]]))  # longer than a chunk: its own decodes
                continue
            with _ForkGroup(self, len(pack)) as seqs:
                tokens: list[int] = []
                positions: list[int] = []
                seq_ids: list[int] = []
                wanted: list[list[int]] = []
                for seq, j in zip(seqs, pack, strict=True):
                    self._seq_cp(DOC_SEQ, seq, -1, -1)
                    prompt, answer = requests[j]
                    part = list(prompt) + list(answer[:-1])
                    first = len(tokens) + len(part) - len(answer)
                    wanted.append(list(range(first, first + len(answer))))
                    tokens += part
                    positions += range(self.n_past, self.n_past + len(part))
                    seq_ids += [seq] * len(part)
                self._decode_rows(tokens, positions, seq_ids, [i for rows in wanted for i in rows])
                for j, rows in zip(pack, wanted, strict=True):
                    out.append(_teacher_forced([self._logits(i) for i in rows], requests[j][1]))
        return out

    def generate_many(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int]) -> list[list[int]]:
        """`generate` for many prompts at once (`max_tokens` each): each in its own fork of the
        document, the prompts packed as in score_many, then one token per unfinished fork per
        decode."""
        out: list[list[int]] = []
        for pack in _packs([len(p) for p in prompts], self):
            if len(prompts[pack[0]]) > self.settings.chunk:
                out.append(self.generate(prompts[pack[0]], max_tokens[pack[0]]))  # its own decodes
                continue
            with _ForkGroup(self, len(pack)) as seqs:
                for seq in seqs:
                    self._seq_cp(DOC_SEQ, seq, -1, -1)
                starts = [self.n_past] * len(pack)
                limits = [max_tokens[j] for j in pack]
                out += _greedy_parallel(self, seqs, [prompts[j] for j in pack], starts, limits)
        return out

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


ChunkCallback = Callable[[int, list[np.ndarray]], None]


def feed_lockstep(
    contexts: Sequence[Context],
    tokens: Sequence[int],
    on_chunk: ChunkCallback | None = None,
    on_fed: Callable[[int], None] | None = None,
) -> None:
    """Append the same tokens to the document of every context, chunk by chunk.

    Chunk boundaries sit on absolute positions, so feeding 0..L then L..M gives the same
    batches as feeding 0..M whenever L is a multiple of the chunk: every configuration sees
    identical batch shapes (batch shape changes numerics). With `on_chunk`, every position's
    logits are computed and `on_chunk(first_position, [logits of each context])` gets them
    as views into llama.cpp's buffers while they are valid, one chunk at a time, so memory
    never holds more than chunk x n_vocab floats per context. `on_fed(n)` hears of every chunk
    (n tokens over all contexts), for progress.
    """
    first = contexts[0]
    if any(c.n_past != first.n_past or c.settings.chunk != first.settings.chunk for c in contexts):
        raise EngineError("lockstep contexts must hold documents of equal length and equal chunk size")
    chunk = first.settings.chunk
    i = 0
    while i < len(tokens):
        pos0 = first.n_past
        part = tokens[i : i + chunk - (pos0 % chunk)]
        want = range(len(part)) if on_chunk else ()
        views = []
        for context in contexts:
            context._decode(part, pos0, DOC_SEQ, want=want)
            if on_chunk:
                views.append(context._logits_rows(len(part)))
        if on_chunk:
            on_chunk(pos0, views)
        for context in contexts:
            context.n_past += len(part)
        i += len(part)
        if on_fed is not None:
            on_fed(len(part) * len(contexts))


class _ForkGroup:
    """Bookkeeping for parallel forks: sequence ids 1..k, removed on exit."""

    def __init__(self, context: Context, n: int):
        if n + 1 > context.settings.n_seq_max:
            raise EngineError(f"{n} parallel forks need n_seq_max >= {n + 1}")
        self.context = context
        self.seqs = list(range(FORK_SEQ, FORK_SEQ + n))

    def __enter__(self) -> list[int]:
        return self.seqs

    def __exit__(self, *exc: object) -> None:
        for seq in self.seqs:
            self.context._seq_rm(seq, -1, -1)


def _packs(sizes: Sequence[int], context: Context) -> list[list[int]]:
    """Consecutive indices packed so each pack's tokens fit one chunk and its forks the
    context's sequences; an item longer than a chunk goes alone."""
    chunk, room = context.settings.chunk, context.settings.n_seq_max - 1
    packs: list[list[int]] = []
    size = 0
    for j, n in enumerate(sizes):
        if not packs or size + n > chunk or len(packs[-1]) >= room:
            packs.append([])
            size = 0
        packs[-1].append(j)
        size += n
    return packs


def _greedy_parallel(
    context: Context,
    seqs: Sequence[int],
    firsts: Sequence[Sequence[int]],
    starts: Sequence[int],
    max_tokens: Sequence[int],
) -> list[list[int]]:
    """Greedy continuations in parallel fork sequences: fork j first decodes `firsts[j]` from
    position `starts[j]` (all forks in one batch), then every step decodes one token per
    unfinished fork in a single batch. Fork j ends at end of generation or `max_tokens[j]`."""
    outs: list[list[int]] = [[] for _ in seqs]
    tokens = [t for f in firsts for t in f]
    positions = [p for f, s in zip(firsts, starts, strict=True) for p in range(s, s + len(f))]
    seq_ids = [q for f, q in zip(firsts, seqs, strict=True) for _ in f]
    last = list(itertools.accumulate(len(f) for f in firsts))
    context._decode_rows(tokens, positions, seq_ids, want=[i - 1 for i in last])
    nxt = [int(np.argmax(context._logits(i - 1))) for i in last]
    active = list(range(len(seqs)))
    positions = [s + len(f) for f, s in zip(firsts, starts, strict=True)]
    for _ in range(max(max_tokens, default=0)):
        still: list[int] = []
        for j, tok in zip(active, nxt, strict=True):
            if context.model.is_eog(tok):
                continue
            outs[j].append(tok)
            if len(outs[j]) < max_tokens[j] and positions[j] < context.applied.n_ctx:
                still.append(j)
        if not still:
            break
        step = [nxt[active.index(j)] for j in still]
        context._decode_rows(
            step, [positions[j] for j in still], [seqs[j] for j in still], want=range(len(still))
        )
        nxt = [int(np.argmax(context._logits(i))) for i in range(len(still))]
        for j in still:
            positions[j] += 1
        active = still
    return outs


def generate_forks(
    context: Context,
    prefixes: Sequence[Sequence[int]],
    max_tokens: int,
    prompt: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy continuations of the document cut at several points, in parallel sequences.

    `prefixes[j]` are the document's first p_j tokens (p_j <= context.n_past). Each fork shares
    the cells of positions < p_j - 1 and re-evaluates token p_j - 1 (then `prompt`, the same
    for every fork: a request in chat form) to get its first logits; every step then decodes
    one token per unfinished fork in a single batch.
    """
    points = [len(p) for p in prefixes]
    if any(p < 2 or p > context.n_past for p in points):
        raise EngineError(f"fork points {points} must lie in [2, {context.n_past}]")
    with _ForkGroup(context, len(prefixes)) as seqs:
        for seq, p in zip(seqs, points, strict=True):
            context._seq_cp(DOC_SEQ, seq, 0, p - 1)
        firsts = [[p[-1], *prompt] for p in prefixes]
        return _greedy_parallel(context, seqs, firsts, [p - 1 for p in points], [max_tokens] * len(points))


@dataclass(frozen=True)
class KvBuffer:
    """One KV cache llama.cpp allocated, as its log reports it (an SWA model has two)."""

    cells: int
    layers: int
    k_mib: float
    v_mib: float


_KV_SIZE_LINE = re.compile(
    r"llama_kv_cache: size = +[\d.]+ MiB \( *(\d+) cells, +(\d+) layers.*K \(\w+\): +([\d.]+) MiB, "
    r"V \(\w+\): +([\d.]+) MiB"
)


def kv_buffers(
    model: Model, n_ctx: int, cache: CacheConfig, *, swa_full: bool, n_ubatch: int = 512
) -> list[KvBuffer]:
    """The KV buffers llama.cpp allocates for a one-sequence context, read from its log.
    swa_full=False is what llama-server and llama-cli do by default (sliding-window layers keep
    n_swa + n_ubatch cells); the C API's and llama-cpp-python's default is True."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.swa_full = swa_full
    params.n_batch = n_ubatch
    params.n_ubatch = n_ubatch
    params.type_k = GGML_TYPE_IDS[cache.type_k]
    params.type_v = GGML_TYPE_IDS[cache.type_v]
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    with _captured_log() as log:
        ctx = llama_cpp.llama_init_from_model(model._model, params)
    if not ctx:
        raise EngineError(f"llama.cpp could not create a {n_ctx}-token context for cache {cache.id}")
    llama_cpp.llama_free(ctx)
    found = [_KV_SIZE_LINE.search(line) for line in log]
    return [
        KvBuffer(int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))) for m in found if m
    ]


def ftype_id(name: str) -> int | None:
    """llama.cpp's file type id for a quant name such as Q4_K_M, F16 or F32 (None if unknown)."""
    upper = name.upper()
    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{upper}", None)
    if upper == "F32":
        value = llama_cpp.LLAMA_FTYPE_ALL_F32
    return int(value) if value is not None else None


def quantize(
    src: Path,
    dst: Path,
    ftype: int,
    *,
    allow_requantize: bool,
    pure: bool,
    n_threads: int,
    imatrix: dict[str, np.ndarray] | None = None,
    metadata: dict[str, str | int] | None = None,
) -> None:
    """llama.cpp's own quantizer (llama_model_quantize); `metadata` is written into the output
    as key-value overrides, as llama-quantize writes quantize.imatrix.*."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.pure = pure
    params.nthread = n_threads
    keep: list[object] = []  # ctypes buffers that must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(data)
            entries[i].name = name.encode()
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        entries[len(imatrix)].name = None
        params.imatrix = entries
        keep.append(entries)
    if metadata:
        overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
        for i, (key, value) in enumerate(metadata.items()):
            overrides[i].key = key.encode()[:127]
            union = llama_cpp.llama_model_kv_override_value()
            if isinstance(value, int):
                overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                union.val_i64 = value
            else:
                overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                union.val_str = value.encode()[:127]
            overrides[i].value = union  # type: ignore[assignment]  # the stub types the union as its values
        overrides[len(metadata)].key = b""
        params.kv_overrides = overrides
        keep.append(overrides)
    with _captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        reason = next((ln for ln in reversed(log) if "error" in ln.lower() or "failed" in ln.lower()), "")
        raise EngineError(f"llama.cpp could not quantize {src.name} to {dst.name}: {reason.strip()}")


def runtime_info() -> dict[str, object]:
    """The llama.cpp build and backend, for the result file."""
    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_version": llama_cpp.llama_version().decode(errors="replace"),
        "llama_cpp_build": system,
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
    }


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())
