"""`ENGINE`: a llama-server as kvprobe.api.engine's Engine, the object the registry hands out as
"llama-server". Two ways to reach one (`EngineOptions`):

- **spawn** (`--llama-server PATH`): one server per cache configuration, started by kvprobe with
  the user's binary and arguments plus what kvprobe must set (`-c -ctk -ctv -fa -np 1 --swa-full
  -b/-ub` = the chunk, `-lv 4` so the log says what took effect), stopped on every way out; and a
  small f16 server for the tokenizer while the model is loaded.
- **attach** (`--server URL --server-cache T --reference-server URL`): servers already running,
  whose cache types kvprobe cannot see or change: the user states them, the result says so.

How the protocol maps (measured in docs/server-notes.md): a context is a server slot holding the
document as its cached prompt; every request is the document (plus a fork's tokens) as a token
array with `cache_prompt`, so the server evaluates only what follows the longest cached prefix:
a fork is a request, and the next feed rolls the cache back to the document. Reference and test
get the same request sequence, so their batch shapes match (batch shape changes numerics as much
as q4_0 does). Teacher forcing is one request per answer token with the token forced through
`logit_bias` and its log-prob read over the full vocabulary; the divergence probe gets top-n rows
at sampled positions (`TopLogprobs`), never full logits.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.api.cache_types import CacheConfig, parse_config_id
from kvprobe.api.engine import AppliedSettings as Applied
from kvprobe.api.engine import (
    ChunkCallback,
    ContextSettings,
    EngineOptions,
    FedCallback,
    KernelDecision,
    TeacherForced,
    TopCallback,
    TopLogprobs,
    TopRequest,
)
from kvprobe.api.engine import Context as AnyContext
from kvprobe.engine.server.client import NextToken, Props, ServerClient, ServerError, Timings, parse_url
from kvprobe.engine.server.process import ServerProcess, applied_settings, server_version
from kvprobe.infra.errors import EngineError, UserError

_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT}
SCORE_N_PROBS = 8  # teacher forcing reads the argmax (and a fallback's value) from the top n
TOKENIZER_CTX = 512
# What kvprobe sets on a spawned server: the user's arguments must not set them too (the last
# repeated argument wins silently in llama-server, measured).
RESERVED_ARGS = {
    "-m": "the model (give it with --model)",
    "--model": "the model (give it with --model)",
    "-c": "the context size (kvprobe sizes it from --ctx)",
    "--ctx-size": "the context size (kvprobe sizes it from --ctx)",
    "-ctk": "the K cache type (give --cache)",
    "--cache-type-k": "the K cache type (give --cache)",
    "-ctv": "the V cache type (give --cache)",
    "--cache-type-v": "the V cache type (give --cache)",
    "-fa": "flash attention (kvprobe's --flash-attn)",
    "--flash-attn": "flash attention (kvprobe's --flash-attn)",
    "-np": "the slots (kvprobe needs exactly 1)",
    "--parallel": "the slots (kvprobe needs exactly 1)",
    "-b": "the batch size (the scenario's chunk)",
    "--batch-size": "the batch size (the scenario's chunk)",
    "-ub": "the micro-batch size (the scenario's chunk)",
    "--ubatch-size": "the micro-batch size (the scenario's chunk)",
    "--swa-full": "the full-size SWA cache (always on)",
    "-lv": "the log verbosity (kvprobe reads the log at 4)",
    "--log-verbosity": "the log verbosity (kvprobe reads the log at 4)",
    "--host": "the address (kvprobe picks a loopback port)",
    "--port": "the address (kvprobe picks a loopback port)",
    "-a": "the alias (kvprobe names each server)",
    "--alias": "the alias (kvprobe names each server)",
    "-t": "the threads (kvprobe's --threads)",
    "--threads": "the threads (kvprobe's --threads)",
    "--no-repack": "the repacked weights (kvprobe's --no-repack)",
    "-nr": "the repacked weights (kvprobe's --no-repack)",
    "-ngl": "the GPU layers (kvprobe's --gpu-layers)",
    "--gpu-layers": "the GPU layers (kvprobe's --gpu-layers)",
    "--n-gpu-layers": "the GPU layers (kvprobe's --gpu-layers)",
}


# Set by kvprobe only with its own --chat-template FILE: without it, a user's own template
# arguments pass (the servers then render as the user's do, and the run uses their framing).
TEMPLATE_ARGS = {
    "--chat-template": "the chat template (--chat-template FILE)",
    "--chat-template-file": "the chat template (--chat-template FILE)",
    "--no-jinja": "the Jinja template engine (on for --chat-template FILE)",
}


def check_server_args(args: Sequence[str], *, chat_template: bool = False) -> None:
    """Refuse (one line) user arguments that set what kvprobe sets on a spawned server
    (`chat_template`: kvprobe gives the servers --chat-template FILE)."""
    reserved = {**RESERVED_ARGS, **(TEMPLATE_ARGS if chat_template else {})}
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in reserved:
            raise UserError(
                f"--server-arg {arg}: kvprobe sets {reserved[name]} itself; drop that --server-arg"
            )


@dataclass
class _Meter:
    """What the server's own timings say a context evaluated."""

    tokens: int = 0
    busy_s: float = 0.0
    prefill: list[tuple[int, float]] = field(default_factory=list)  # (tokens, ms) of prompt work
    generated: list[tuple[int, float]] = field(default_factory=list)

    def speeds(self) -> dict[str, float | None]:
        """Prefill and generation tokens/s from the server's own timings (None: none measured)."""
        out: dict[str, float | None] = {}
        for name, work in (("prefill_tps", self.prefill), ("generation_tps", self.generated)):
            tokens, ms = sum(n for n, _ in work), sum(m for _, m in work)
            out[name] = round(1000.0 * tokens / ms, 2) if ms > 0 else None
        return out

    def add(self, t: Timings) -> None:
        self.tokens += t.prompt_n + max(0, t.predicted_n - 1)
        self.busy_s += (t.prompt_ms + t.predicted_ms) / 1000.0
        if t.prompt_n:
            self.prefill.append((t.prompt_n, t.prompt_ms))
        if t.predicted_n > 1:
            self.generated.append((t.predicted_n - 1, t.predicted_ms))


class ServerContext:
    """One cache configuration on one server: the document is the slot's cached prompt."""

    def __init__(
        self,
        client: ServerClient,
        settings: ContextSettings,
        applied: Applied,
        *,
        owned: ServerProcess | None,
        record: dict[str, Any],
    ):
        self.client = client
        self._settings = settings
        self._applied = applied
        self.owned = owned
        self.record = record  # what the result's runtime says of this server
        self.doc: list[int] = []
        self.meter = _Meter()

    @property
    def settings(self) -> ContextSettings:
        return self._settings

    @property
    def applied(self) -> Applied:
        return self._applied

    @property
    def n_past(self) -> int:
        return len(self.doc)

    @property
    def tokens_evaluated(self) -> int:
        return self.meter.tokens

    @property
    def busy_s(self) -> float:
        return self.meter.busy_s

    def __enter__(self) -> ServerContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.owned is not None:
            self.owned.stop()

    def reset(self) -> None:
        self.doc = []

    def _check_room(self, n: int) -> None:
        if n >= self.applied.n_ctx:
            raise EngineError(f"a request of {n} tokens does not fit the server's {self.applied.n_ctx} cells")

    def advance(self, end: int, tokens: Sequence[int]) -> None:
        """Append `tokens` up to document length `end` in one request (the server evaluates what
        follows its cached prefix)."""
        self.doc += tokens
        self._check_room(len(self.doc))
        self.meter.add(self.client.generate(self.doc[:end], 1).timings)

    def feed(
        self, tokens: Sequence[int], on_fed: FedCallback | None = None, stop: threading.Event | None = None
    ) -> None:
        """One request per chunk of the absolute chunk grid (`stop`: give up between chunks)."""
        chunk = self.settings.chunk
        pos = 0
        while pos < len(tokens) and not (stop is not None and stop.is_set()):
            take = min(len(tokens) - pos, chunk - (self.n_past % chunk))
            self.advance(self.n_past + take, tokens[pos : pos + take])
            pos += take
            if on_fed is not None:
                on_fed(take)

    def next_token(self, prompt: Sequence[int], n_probs: int, force: int | None) -> NextToken:
        self._check_room(len(prompt) + 1)
        found = self.client.next_token(prompt, n_probs, force)
        self.meter.add(found.timings)
        return found

    def score(self, prompt: Sequence[int], answer: Sequence[int]) -> TeacherForced:
        base = [*self.doc, *prompt]
        values: list[float] = []
        first_mismatch: int | None = None
        bounded = 0
        for k, token in enumerate(answer):
            found = self.next_token([*base, *answer[:k]], SCORE_N_PROBS, token)
            if found.sampled_logprob is None:
                bounded += 1
            values.append(found.sampled_bound if found.sampled_logprob is None else found.sampled_logprob)
            if first_mismatch is None and found.top_ids[0] != token:
                first_mismatch = k
        return TeacherForced(float(sum(values)), values, first_mismatch is None, first_mismatch, bounded)

    def score_many(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[TeacherForced]:
        return [self.score(prompt, answer) for prompt, answer in requests]

    def _generate(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        self._check_room(len(prompt) + max_tokens)
        done = self.client.generate(prompt, max_tokens)
        self.meter.add(done.timings)
        return list(done.tokens)

    def generate(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        return self._generate([*self.doc, *prompt], max_tokens)

    def generate_many(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int]) -> list[list[int]]:
        return [self.generate(p, m) for p, m in zip(prompts, max_tokens, strict=True)]

    def generate_forks(
        self, prefixes: Sequence[Sequence[int]], max_tokens: int, prompt: Sequence[int] = ()
    ) -> list[list[int]]:
        return [self._generate([*prefix, *prompt], max_tokens) for prefix in prefixes]


def _top_rows(found: list[NextToken], positions: list[int], n_probs: int) -> TopLogprobs:
    """The checked answers at `positions` as one TopLogprobs (the client checked that each
    holds exactly `n_probs` entries, `n_probs` being at most the vocabulary)."""
    ids = np.empty((len(found), n_probs), dtype=np.int32)
    lps = np.empty((len(found), n_probs), dtype=np.float32)
    value = np.full(len(found), np.nan)
    bound = np.empty(len(found))
    for j, nt in enumerate(found):
        ids[j, : len(nt.top_ids)] = nt.top_ids
        lps[j, : len(nt.top_logprobs)] = nt.top_logprobs
        if nt.sampled_logprob is not None:
            value[j] = nt.sampled_logprob
        bound[j] = nt.sampled_bound
    return TopLogprobs(np.asarray(positions, dtype=np.int64), ids, lps, value, bound)


class ServerModel:
    """A GGUF served by llama-server: the tokenizer (a server's /tokenize), the model's facts,
    and one server per cache configuration."""

    def __init__(
        self,
        engine: ServerEngine,
        path: Path,
        *,
        n_gpu_layers: int,
        n_threads: int | None,
        use_extra_bufts: bool,
    ):
        self.engine = engine
        self._path = path
        self.n_gpu_layers = n_gpu_layers
        self._n_threads = n_threads
        self.use_extra_bufts = use_extra_bufts
        self.options = engine.options
        self._tokenizer_process: ServerProcess | None = None
        self.kernel_fallback: str | None = None  # why spawned servers run with --no-repack
        if self.options.attach:
            self.client = engine.attached(self.options.url or "")
        else:
            self._tokenizer_process = self._checked_tokenizer()
            self.client = self._tokenizer_process.client
        info = self.client.model_info()
        self._n_vocab, self._n_ctx_train = info.n_vocab, info.n_ctx_train
        if self.options.attach:
            self._check_same_model(self.client)
        with_bos = self.client.tokenize("a", add_special=True)
        without = self.client.tokenize("a")
        self._bos = with_bos[0] if len(with_bos) > len(without) else None
        self._pieces: dict[int, str] = {}
        self.servers: dict[str, dict[str, Any]] = {}  # per configuration: its server's record
        self.contexts: list[ServerContext] = []
        log = self._tokenizer_process.log_text() if self._tokenizer_process else ""
        self._buffers: dict[str, float] = applied_settings(log)["weight_buffers"] if log else {}
        threads = applied_settings(log)["n_threads"] if log else None
        self._threads_used = int(threads.split()[0]) if threads else (n_threads or 0)

    def _check_same_model(self, client: ServerClient) -> None:
        """An attached server must serve the --model file (its sha256 and metadata are what the
        result records): the file name /props reports must be the --model file's, and every
        attached server must have the tokenizer's vocabulary size."""
        served, n_vocab = Path(client.props().model_path).name, client.model_info().n_vocab
        if served != self._path.name or n_vocab != self._n_vocab:
            raise UserError(
                f"the server at {client.url.display} serves {served} ({n_vocab:,} tokens), --model is "
                f"{self._path.name} ({self._n_vocab:,} tokens): give --model the file the server loaded"
            )

    # --- spawning ---------------------------------------------------------------------------
    def _checked_tokenizer(self) -> ServerProcess:
        """The tokenizer's server, after one decode of a real batch: where the server's extra CPU
        kernels crash on this host (llama.cpp's AMX kernels die with SIGSEGV on some Xeons), every
        server of the run is started again with --no-repack, and the result says why."""
        process = self._spawn("tokenizer", TOKENIZER_CTX, ["-ctk", "f16", "-ctv", "f16"])
        if not self.use_extra_bufts:
            return process
        try:
            prompt = process.client.tokenize("The quick brown fox jumps over the lazy dog. " * 8)
            process.client.generate(prompt[: TOKENIZER_CTX // 2], 1)
            return process
        except ServerError:
            code = process.stop()
            if code is None or code >= 0 or -code not in _CRASH_SIGNALS:
                raise
        self.kernel_fallback = (
            f"the server died with {signal.Signals(-code).name} decoding with its extra CPU kernels "
            "(repacked/AMX weights); every server of this run runs with --no-repack"
        )
        self.use_extra_bufts = False
        return self._spawn("tokenizer", TOKENIZER_CTX, ["-ctk", "f16", "-ctv", "f16"])

    def server_args(self, n_ctx: int, cache_args: list[str], chunk: int = 512) -> list[str]:
        args = [
            "-m",
            str(self._path.resolve()),
            "-c",
            str(n_ctx),
            *cache_args,
            "-np",
            "1",
            "--swa-full",
            "-b",
            str(chunk),
            "-ub",
            str(chunk),
            "-lv",
            "4",
        ]
        # Reference and test servers compute side by side (one request stream each): half the
        # cores each unless --threads says otherwise.
        args += ["-t", str(self._n_threads or max(1, (os.cpu_count() or 2) // 2))]
        if not self.use_extra_bufts:
            args.append("--no-repack")
        # Always said: left unset, llama-server fits layers to the VRAM free when each server
        # starts, and reference and test could differ in where their layers run.
        args += ["-ngl", str(self.n_gpu_layers if self.n_gpu_layers >= 0 else 999)]
        if self.options.chat_template is not None:  # the servers render kvprobe's --chat-template too
            args += ["--jinja", "--chat-template-file", str(self.options.chat_template)]
        return [*args, *self.options.server_args]

    def _spawn(
        self,
        name: str,
        n_ctx: int,
        cache_args: list[str],
        *,
        chunk: int = 512,
        env: Mapping[str, str] | None = None,
    ) -> ServerProcess:
        binary = self.options.binary
        if binary is None:
            raise RuntimeError("spawning needs a binary")
        log_dir = self.options.log_dir or Path.cwd()
        base = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        process = ServerProcess(
            binary,
            self.server_args(n_ctx, cache_args, chunk),
            log_path=log_dir / f"llama-server-{name}.log",
            env={**base, **(env or {})},
        )
        process.start()
        return process

    # --- the Model protocol -------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_ctx_train(self) -> int:
        return self._n_ctx_train

    @property
    def n_threads(self) -> int:
        return self._threads_used

    @property
    def bos(self) -> int | None:
        return self._bos

    @property
    def weight_buffers(self) -> dict[str, float]:
        return dict(self._buffers)

    @property
    def full_logits(self) -> bool:
        return False

    @property
    def concurrent_contexts(self) -> bool:
        return True  # each context is its own server, with its own request sequence

    def __enter__(self) -> ServerModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tokenizer_process is not None:
            self._tokenizer_process.stop()

    def tokenize(self, text: str) -> list[int]:
        return self.client.tokenize(text, parse_special=False) if text else []

    def tokenize_special(self, text: str) -> list[int]:
        return self.client.tokenize(text, parse_special=True) if text else []

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.client.detokenize(tokens) if tokens else ""

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        # Thinking off, as kvprobe renders a template (Qwen 3's switch): the answer follows at once.
        # None from a build without /apply-template: kvprobe's own rendering stands (recorded so).
        return self.client.apply_template(messages, {"enable_thinking": False})

    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.client.detokenize([token])
        return self._pieces[token]

    def vocabulary_digest(self) -> str:
        raise UserError(
            "weights vs KV (two models) runs on the in-process engine: drop --llama-server/--server"
        )

    def context(self, cache: CacheConfig, settings: ContextSettings) -> ServerContext:
        if self.options.attach:
            found = self.engine.attached_context(cache, settings)
            self._check_same_model(found.client)
        else:
            found = self._spawned_context(cache, settings)
        # A second context of one cache type (the null check, a repeated reference) is its own.
        same = sum(1 for c in self.contexts if c.record["cache"] == cache.id)
        found.record["key"] = cache.id if not same else f"{cache.id} ({same + 1})"
        self.servers[found.record["key"]] = found.record
        self.contexts.append(found)
        return found

    def provenance(self) -> dict[str, object]:
        """Each configuration's server (URL form, build, what took effect), the tokenizer's
        log and the kernels fallback; speeds from the servers' own timings."""
        for context in self.contexts:
            self.servers[context.record["key"]].update(context.meter.speeds())
            if context.owned is not None:  # NVML's reading of a spawned server's process (process.py)
                self.servers[context.record["key"]]["vram_mib"] = context.owned.vram_mib
        return {
            "mode": "attach" if self.options.attach else "spawn",
            "binary": str(self.options.binary) if self.options.binary else None,
            "server_args": list(self.options.server_args),
            "score_n_probs": SCORE_N_PROBS,
            "cache_prompt": True,
            "kernel_fallback": self.kernel_fallback,
            "configs": self.servers,
        }

    def _spawned_context(self, cache: CacheConfig, settings: ContextSettings) -> ServerContext:
        cache_args = [
            "-ctk",
            cache.type_k,
            "-ctv",
            cache.type_v,
            "-fa",
            "on" if settings.flash_attn else "off",
        ]
        env = {"LLAMA_ATTN_ROT_DISABLE": "0" if settings.attn_rotation else "1"}  # whatever the user's is
        same = sum(1 for c in self.contexts if c.record["cache"] == cache.id)  # the null check's second f16
        name = cache.id.replace(",", "-").replace("=", "") + (f"-{same + 1}" if same else "")
        process = self._spawn(name, settings.n_ctx, cache_args, chunk=settings.chunk, env=env)
        try:
            found = applied_settings(process.log_text())
            applied = _applied(found, cache, process.where)
            if applied.n_ctx < settings.n_ctx:
                raise ServerError(
                    process.where,
                    f"holds {applied.n_ctx} cells, {settings.n_ctx} asked",
                    "check the --server-arg values",
                )
            props = process.client.props()
        except BaseException:
            process.stop()
            raise
        record = {
            "cache": cache.id,
            "mode": "spawn",
            "props": _props_record(props),
            "url": process.url,
            "version": process.version,
            "log": str(process.log_path),
            "args": process.args,
            "applied": found,
            "dropped_env": process.dropped_env,
        }
        return ServerContext(process.client, settings, applied, owned=process, record=record)

    def feed_lockstep(
        self,
        contexts: Sequence[AnyContext],
        tokens: Sequence[int],
        on_chunk: ChunkCallback | None = None,
        on_fed: FedCallback | None = None,
        *,
        top: TopRequest | None = None,
        on_top: TopCallback | None = None,
    ) -> None:
        """Every context gets the same requests in the same order. Without `top`: one request per
        chunk of the absolute chunk grid. With `top`: one forced-token request per sampled
        position (each evaluates the `stride` tokens since the last), then the segment's rest."""
        if on_chunk is not None:
            raise EngineError("a llama-server reports no full logits: the divergence probe reads top-n rows")
        mine = [c for c in contexts if isinstance(c, ServerContext)]
        if len(mine) != len(contexts):
            raise EngineError("the llama-server engine feeds only its own contexts in lockstep")
        if not mine or not tokens:
            return
        fed = _locked(on_fed)
        if top is None or on_top is None:
            _each(mine, lambda c, stop: c.feed(tokens, on_fed=fed, stop=stop))
            return
        _feed_sampled(mine, tokens, top, on_top, fed)


def _locked(on_fed: FedCallback | None) -> FedCallback:
    """`on_fed` callable from the contexts' threads (one call at a time)."""
    lock = threading.Lock()

    def fed(n: int) -> None:
        if on_fed is not None:
            with lock:
                on_fed(n)

    return fed


def _each(contexts: list[ServerContext], work: Callable[[ServerContext, threading.Event], None]) -> None:
    """`work` for every context at once, one thread each: each context is its own server, so
    their request sequences run side by side without changing any number. The first failure
    stops the others at their next request and is raised."""
    if len(contexts) == 1:
        work(contexts[0], threading.Event())
        return
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=len(contexts), thread_name_prefix="kvprobe-server")
    futures = [pool.submit(work, c, stop) for c in contexts]
    try:
        # The first failure, whichever context has it, stops the others at once (not after the
        # contexts before it in the list have finished their work).
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done():
                future.result()
        for future in futures:
            future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _feed_sampled(
    contexts: list[ServerContext],
    tokens: Sequence[int],
    top: TopRequest,
    on_top: TopCallback,
    on_fed: FedCallback,
) -> None:
    start = contexts[0].n_past
    end = start + len(tokens)
    # Position P = 1 + j * stride: its prompt is the document's first P tokens.
    positions = [p for p in range(start + 1, end + 1) if (p - 1) % top.stride == 0 and p < len(top.document)]
    n_probs = min(top.n_probs, contexts[0].client.n_vocab)  # a small vocabulary has fewer
    rows: dict[int, list[NextToken]] = {id(c): [] for c in contexts}

    def sample(c: ServerContext, stop: threading.Event) -> None:
        c.doc += tokens
        fed = start
        for p in positions:
            if stop.is_set():
                return
            rows[id(c)].append(c.next_token(c.doc[:p], n_probs, int(top.document[p])))
            on_fed(p - fed)
            fed = p
        if fed < end:
            c.meter.add(c.client.generate(c.doc[:end], 1).timings)
            on_fed(end - fed)

    _each(contexts, sample)
    if positions:
        on_top([_top_rows(rows[id(c)], positions, n_probs) for c in contexts])


def _props_record(props: Props) -> dict[str, Any]:
    """What the result keeps of /props: the build, the model as the server names it, the context
    per slot, the slots, and its chat template by sha256 (the text is the GGUF's or the user's)."""
    return {
        "build_info": props.build_info,
        "model_path": props.model_path,
        "model_alias": props.model_alias,
        "n_ctx": props.n_ctx,
        "total_slots": props.total_slots,
        "chat_template_sha256": hashlib.sha256(props.chat_template.encode("utf-8")).hexdigest(),
        "bos_token": props.bos_token,
        "eos_token": props.eos_token,
    }


def _applied(found: Mapping[str, Any], cache: CacheConfig, where: str) -> Applied:
    """The settings the server's log reports, checked against the cache types asked."""
    if found["type_k"] != [cache.type_k] or found["type_v"] != [cache.type_v]:
        raise ServerError(
            where,
            f"its log reports K {'/'.join(found['type_k']) or '?'}, V {'/'.join(found['type_v']) or '?'} "
            f"where {cache.type_k}/{cache.type_v} was asked",
            "check the --server-arg values and the server's build",
        )
    return Applied(
        type_k=cache.type_k,
        type_v=cache.type_v,
        flash_attn=found["flash_attn"] in ("enabled", "on", "1", "true"),
        attn_rot_k="1" in found["attn_rot_k"],
        attn_rot_v="1" in found["attn_rot_v"],
        n_ctx=int(found["n_ctx"] or 0),
    )


class ServerEngine:
    """llama-server over HTTP (kvprobe.api.engine.Engine), configured by EngineOptions."""

    name = "llama-server"

    def __init__(self, options: EngineOptions | None = None):
        self.options = options or EngineOptions()
        self._info: dict[str, object] | None = None
        self._clients: dict[str, ServerClient] = {}
        self._configured: dict[EngineOptions, ServerEngine] = {}

    @property
    def fixed_settings(self) -> Mapping[str, object]:
        return {"kv_unified": False, "swa_full": True, "n_parallel": 1, "cache_prompt": True}

    def configured(self, options: EngineOptions) -> ServerEngine:
        """One configured engine per set of options (its runtime info and clients are kept)."""
        if options not in self._configured:
            self._configured[options] = self._configure(options)
        return self._configured[options]

    def _configure(self, options: EngineOptions) -> ServerEngine:
        if (options.binary is None) == (options.url is None):
            raise UserError("the llama-server engine needs either --llama-server PATH or --server URL")
        check_server_args(options.server_args, chat_template=options.chat_template is not None)
        if options.url is not None and options.url_cache is None:
            raise UserError(
                "--server needs --server-cache (the cache types that server runs: f16, q8_0, q4_0 ...)"
            )
        return ServerEngine(options)

    def attached(self, url: str) -> ServerClient:
        if url not in self._clients:
            client = ServerClient(parse_url(url))
            if not client.health(timeout=10.0):
                raise ServerError(
                    parse_url(url).display, "not ready (/health)", "start it, or wait until it has loaded"
                )
            self._clients[url] = client
        return self._clients[url]

    def attached_context(self, cache: CacheConfig, settings: ContextSettings) -> ServerContext:
        opts = self.options
        stated = parse_config_id(opts.url_cache or "")
        if cache.id == stated.id:
            url = opts.url or ""
        elif cache.type_k == cache.type_v == "f16" and opts.reference_url:
            url = opts.reference_url
        else:
            raise UserError(
                f"no server runs cache {cache.id}: --server runs {stated.id}"
                + ("" if opts.reference_url else "; give the f16 one with --reference-server URL")
            )
        client = self.attached(url)
        props = client.props()
        if props.n_ctx < settings.n_ctx:
            raise UserError(
                f"the server at {parse_url(url).display} holds {props.n_ctx} tokens per slot; this run "
                f"needs {settings.n_ctx}: restart it with -c {settings.n_ctx}, or lower --ctx"
            )
        if props.total_slots != 1:
            raise UserError(
                f"the server at {parse_url(url).display} has {props.total_slots} slots; other clients' "
                "tokens would share kvprobe's batches: restart it with --parallel 1"
            )
        applied = Applied(cache.type_k, cache.type_v, settings.flash_attn, False, False, props.n_ctx)
        record = {
            "cache": cache.id,
            "mode": "attach",
            "url": parse_url(url).display,
            "stated_cache": cache.id,
            "build_info": props.build_info,
            "model_path": props.model_path,
            "n_ctx": props.n_ctx,
            "props": _props_record(props),
        }
        return ServerContext(client, settings, applied, owned=None, record=record)

    def load(
        self, path: Path, *, n_gpu_layers: int, n_threads: int | None, use_extra_bufts: bool
    ) -> ServerModel:
        return ServerModel(
            self, path, n_gpu_layers=n_gpu_layers, n_threads=n_threads, use_extra_bufts=use_extra_bufts
        )

    def runtime_info(self) -> dict[str, object]:
        if self._info is None:
            if self.options.binary is not None:
                version = server_version(self.options.binary)
                self._info = {
                    "engine": self.name,
                    "server_version": version,
                    "llama_cpp_build": version,
                    "gpu_offload_supported": bool(self.options.server_args) or False,
                }
            else:
                props = self.attached(self.options.url or "").props()
                self._info = {
                    "engine": self.name,
                    "server_version": props.build_info,
                    "llama_cpp_build": props.build_info,
                    "gpu_offload_supported": False,
                }
        return dict(self._info)

    def gpu_offload_supported(self) -> bool:
        return False

    def check_kernels(
        self,
        paths: Sequence[Path],
        *,
        n_gpu_layers: int,
        n_threads: int | None,
        no_repack: bool,
        on_check: Callable[[Path], None] | None = None,
    ) -> tuple[KernelDecision, str | None]:
        if no_repack:
            return KernelDecision(False, "forced_off", "--no-repack"), None
        return KernelDecision(True, "skipped", "a spawned server's kernels are checked when it starts"), None


ENGINE = ServerEngine()
