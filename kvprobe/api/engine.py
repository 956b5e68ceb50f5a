"""What kvprobe needs from an engine, stated once: the `Engine`, `Model` and `Context` protocols
and the plain data that crosses them. Nothing here imports an engine; the probes and the run
pipeline type against these names, and `kvprobe.engine` (the registry) hands out an engine by
name. The llama.cpp engine in this process (`kvprobe/engine/llamacpp/`) is the one
implementation today; a llama-server reached over HTTP is the next (issue 41).

Design, and why:

- **Three objects, one job each.** An `Engine` loads models and says what it is (its build,
  whether it can offload, the settings it always applies, whether its kernels work on this
  host). A `Model` is the tokenizer and the model's facts, and opens contexts. A `Context` is
  one cache configuration holding one document (its sequence) from which throw-away forks
  branch: a needle query, a question, a continuation. A fork shares the document's prefix and
  leaves it untouched, so every checkpoint's queries cost only their own tokens. Structural
  protocols (as inspect_ai's `Scorer`), not base classes: an engine implements the methods and
  nothing else; `runtime_checkable` lets a test check it at run time, mypy at every call.
- **Identical batches across configurations** is the one numerical contract. Batch shape
  changes llama.cpp's numerics (its kernels differ by batch size; measured through a
  llama-server on the default model, two batch shapes of the same f16 cache differ by a mean
  KL of 0.007, a tenth of q4_0's effect), so `Model.feed_lockstep` feeds every context the same
  chunks on the same absolute chunk grid, and `score_many`/`generate_many` pack forks by token
  counts alone. An engine that cannot honour this must not pretend to: a server engine sends
  the reference and the test servers the same request sequence.
- **The distribution at chosen positions.** Today one probe (divergence) reads the full
  next-token logits of every position of a document, a chunk at a time, through
  `ChunkCallback` (`Model.feed_lockstep(..., on_chunk=...)`); teacher forcing (`score`) reads
  the answer tokens' log-probs and whether each was the argmax. Full logits are a llama.cpp
  luxury: a llama-server returns the top n log-probs at one position per request, an exact
  log-prob for a token forced with `logit_bias`, and no full row. That extension is left as a
  documented point, not typed yet, because its numbers mean something else (a KL over the top
  n plus a tail bucket is a lower bound of the full KL) and the probe must say so:
  a server engine adds `Context.top_logprobs(positions, n) -> TopLogprobs` (ids and log-probs
  per position, from the reference's top n) and feeds without `on_chunk`; the divergence probe
  then reads those at its sampled positions, and the runner refuses (one line) a probe that
  needs full logits from an engine that has none. `TeacherForced` gains a flag where a
  log-prob is only a bound (an underflow, a token the server could not report).
- **What took effect, never what was asked.** `Context.applied` is what the engine reports it
  did (llama.cpp's log today; a server's log or /props), checked against the request;
  `Engine.runtime_info` names the build; `KernelDecision` says whether the extra CPU kernels
  were on. A result records these, so two runs can be told apart by build and settings.
- **Registry, lazily.** `kvprobe.engine` maps a name to "module:attribute" and imports the
  module only when asked (as lm-evaluation-harness's model registry): llama_cpp takes seconds
  to import and most commands never need it. A second engine is one module plus one line in
  `kvprobe.engine.ENGINES`; only modules inside its own package may import it.

Mapping for a llama-server engine (issue 41): `Engine.load` reaches or spawns servers
(`/props`, `/v1/models` give n_ctx, the vocabulary size, the model path); `Model.tokenize` is
`/tokenize` with `parse_special` false; `Model.context` starts one server per cache
configuration (`-ctk/-ctv`, `-fa on`, `--parallel 1`, `--swa-full`); `feed_lockstep` appends
to each context's document (the prefix rides on the next request, `cache_prompt` on); `score`
is one forced-token request per answer token; `generate` is `/completion` with `n_predict`
and greedy sampling; `applied` comes from the server's log at `-lv 4`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kvprobe.api.cache_types import CacheConfig

if TYPE_CHECKING:
    from typing import Self, TypeAlias

    import numpy as np

# `on_chunk(first_position, [rows of each context])`: the full next-token logits of every
# position of one chunk, one (positions x n_vocab) array per context in the order given, valid
# only during the call (views into the engine's buffers: copy what must outlive it).
ChunkCallback: TypeAlias = "Callable[[int, list[np.ndarray]], None]"
# `on_fed(n)`: n tokens were just evaluated over all contexts (progress).
FedCallback: TypeAlias = Callable[[int], None]


@dataclass(frozen=True)
class TopLogprobs:
    """An engine without full logits (a llama-server): the next-token distribution at sampled
    positions of the document, as top n plus the document's own next token forced.

    Row j is position `positions[j]` = P: the prediction of document token P from tokens
    0 .. P-1 (the same indexing as the full-logits rows: position P <-> row index P - 1).
    `ids`/`logprobs` (k x n): the n most likely tokens, sorted, over the full vocabulary.
    `target_logprob` (k): the log-prob of document token P (forced, so exact whether or not it
    is in the top n); NaN where the engine could report only a bound, which is
    `target_bound` (an upper bound; equal to the value where known)."""

    positions: np.ndarray  # int64 (k,)
    ids: np.ndarray  # int32 (k, n)
    logprobs: np.ndarray  # float32 (k, n)
    target_logprob: np.ndarray  # float64 (k,), NaN where only a bound is known
    target_bound: np.ndarray  # float64 (k,)


@dataclass(frozen=True)
class TopRequest:
    """What `feed_lockstep` reads from an engine without full logits: every `stride`-th
    position P = 1, 1 + stride, ... of `document` (P < len(document)), the top `n_probs`."""

    document: Sequence[int]  # the document's tokens the positions predict (the probe's ctx)
    stride: int
    n_probs: int


# `on_top(rows per context)`: one TopLogprobs per context, in the order given, for the sampled
# positions of one fed segment (empty segments are not reported).
TopCallback: TypeAlias = "Callable[[list[TopLogprobs]], None]"


@dataclass(frozen=True)
class TeacherForced:
    """An answer scored by teacher forcing."""

    logprob: float  # sum of log p(answer token | prefix)
    token_logprobs: list[float]
    argmax_match: bool  # greedy decoding would produce the answer exactly
    first_mismatch: int | None  # index of the first answer token that is not the argmax
    # Answer tokens whose log-prob the engine could only bound from above (a server that could
    # not report a token: `logprob` then sums those bounds, so it is an upper bound).
    bounded_tokens: int = 0


@dataclass(frozen=True)
class AppliedSettings:
    """What the engine reports it actually did when creating the context."""

    type_k: str
    type_v: str
    flash_attn: bool
    attn_rot_k: bool
    attn_rot_v: bool
    n_ctx: int


@dataclass(frozen=True)
class ContextSettings:
    """What a run asks of every context; every configuration gets the same."""

    n_ctx: int
    chunk: int  # n_batch = n_ubatch: the fixed batch shape for every configuration
    n_threads: int
    flash_attn: bool
    attn_rotation: bool  # False sets LLAMA_ATTN_ROT_DISABLE=1 while the context is created
    n_seq_max: int = 2  # the document plus forks: 1 for queries, k for parallel continuations


@dataclass(frozen=True)
class KernelDecision:
    """Whether this run loads its models with extra buffer types, and why. One per run: the
    setting changes numerics the way batch shape does, so every configuration shares it."""

    extra_bufts: bool
    check: str  # passed, crashed, skipped, forced_off (--no-repack), inconclusive
    reason: str
    cached: bool = False

    def runtime(self) -> dict[str, object]:
        """The fields the result's `runtime` records."""
        return {
            "extra_bufts": self.extra_bufts,
            "extra_bufts_check": self.check,
            "extra_bufts_reason": self.reason,
            "extra_bufts_check_cached": self.cached,
        }


@dataclass(frozen=True)
class EngineOptions:
    """What the user said about the engine beyond the model file: for a llama-server, either
    a binary kvprobe starts per cache configuration (spawn) or the URLs of servers already
    running whose cache types the user states (attach)."""

    binary: Path | None = None  # spawn: the llama-server to start
    server_args: tuple[str, ...] = ()  # spawn: the user's own arguments (-ngl 99, ...)
    url: str | None = None  # attach: the server under test
    url_cache: str | None = None  # attach: its cache types as the user states them (q4_0, q8_0/q4_0)
    reference_url: str | None = None  # attach: the f16 reference server
    chat_template: Path | None = None  # spawn: --chat-template FILE, given to every server (--jinja)
    log_dir: Path | None = None  # where spawned servers' logs go (beside the result)

    @property
    def attach(self) -> bool:
        return self.url is not None


@runtime_checkable
class Context(Protocol):
    """One cache configuration: a document (its sequence) and throw-away forks of it. Closed
    on leaving a `with` block."""

    @property
    def settings(self) -> ContextSettings:
        """What it was opened with."""

    @property
    def applied(self) -> AppliedSettings:
        """What the engine reports it applied (cache types, flash attention, rotation, n_ctx),
        already checked against the requested cache types."""

    @property
    def n_past(self) -> int:
        """Tokens of the document held so far."""

    @property
    def tokens_evaluated(self) -> int:
        """Tokens this context has evaluated, forks included (what the run's progress counts)."""

    @property
    def busy_s(self) -> float:
        """Seconds spent in the engine's own evaluation (prefill speed, the run's timing)."""

    def __enter__(self) -> Self:
        """The context itself."""

    def __exit__(self, *exc: object) -> None:
        """Closes it."""

    def close(self) -> None:
        """Frees it; closing twice is harmless."""

    def reset(self) -> None:
        """Forget the document: a fresh one starts at position 0."""

    def feed(self, tokens: Sequence[int]) -> None:
        """Append tokens to the document in fixed chunks aligned to the chunk grid (one
        context; `Model.feed_lockstep` feeds several)."""

    def score(self, prompt: Sequence[int], answer: Sequence[int]) -> TeacherForced:
        """Teacher-force `answer` after the document + `prompt`, in a fork of the document:
        each answer token's log-prob given all before it, and whether it is the argmax."""

    def score_many(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[TeacherForced]:
        """`score` for many (prompt, answer) pairs, each in its own fork, batched in a way that
        depends only on the token counts, so that every configuration gets the same batches."""

    def generate(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy continuation of the document + `prompt` in a fork, at most `max_tokens`
        tokens, ending before an end-of-generation token."""

    def generate_many(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int]) -> list[list[int]]:
        """`generate` for many prompts (`max_tokens` each), each in its own fork, batched by
        token counts alone as in `score_many`."""

    def generate_forks(
        self, prefixes: Sequence[Sequence[int]], max_tokens: int, prompt: Sequence[int] = ()
    ) -> list[list[int]]:
        """Greedy continuations of the document cut at several points: `prefixes[j]` are the
        document's first p_j tokens (2 <= p_j <= n_past), each continued after `prompt` (the
        same for every fork: a request in chat form) in its own fork."""


@runtime_checkable
class Model(Protocol):
    """A loaded model: its tokenizer, its facts, and the contexts opened from it."""

    @property
    def path(self) -> Path:
        """The model file."""

    @property
    def n_vocab(self) -> int:
        """Tokens in the vocabulary."""

    @property
    def n_ctx_train(self) -> int:
        """The context length the model was trained for."""

    @property
    def n_threads(self) -> int:
        """Threads its contexts compute with."""

    @property
    def bos(self) -> int | None:
        """The token the model's prompts start with, or None where the model adds none."""

    @property
    def weight_buffers(self) -> dict[str, float]:
        """Where the weights went, MiB by buffer type (CPU, CPU_REPACK, AMX, CUDA0, ...): which
        kernels they use."""

    def __enter__(self) -> Self:
        """The model itself."""

    def __exit__(self, *exc: object) -> None:
        """Closes it."""

    def close(self) -> None:
        """Frees the weights; closing twice is harmless."""

    def provenance(self) -> dict[str, object]:
        """What the engine records of this model's run beyond `Engine.runtime_info`: for a
        llama-server, each server's URL form, build, /props and what its log says took effect
        (empty where there is nothing more to say)."""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text`, without BOS; special-token syntax is not parsed."""

    def tokenize_special(self, text: str) -> list[int]:
        """Tokens of template text, without an added BOS: "<|im_start|>" and the like become
        their control tokens, as a rendered chat prompt is tokenized."""

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of `tokens`."""

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The prompt text the engine itself makes of chat `messages` ({"role", "content"}),
        generation prompt included and a reasoning template's thinking off: a llama-server's
        /apply-template, what its chat users get. None where the engine renders none (in
        process: kvprobe renders the template itself, kvprobe.plan.chat)."""

    def piece(self, token: int) -> str:
        """One token's text (special tokens not written out)."""

    def vocabulary_digest(self) -> str:
        """A hash of every token's text and of BOS: equal digests mean the same token ids
        mean the same text, so two models can be fed identical items."""

    def context(self, cache: CacheConfig, settings: ContextSettings) -> Context:
        """A new context for one cache configuration; fails in one line (EngineError) where the
        engine applied other cache types than asked."""

    def feed_lockstep(
        self,
        contexts: Sequence[Context],
        tokens: Sequence[int],
        on_chunk: ChunkCallback | None = None,
        on_fed: FedCallback | None = None,
        *,
        top: TopRequest | None = None,
        on_top: TopCallback | None = None,
    ) -> None:
        """Append the same tokens to the document of every context (opened from this model, or
        from another of the same engine with the same tokenizer), chunk by chunk on the
        absolute chunk grid: feeding 0..L then L..M gives the batches of feeding 0..M whenever
        L is on the grid. With `on_chunk` (engines with `full_logits`), every position's logits
        reach it a chunk at a time from every context together (see ChunkCallback); with `top`
        and `on_top` (engines without), the sampled positions' top n (see TopLogprobs), the
        same request sequence for every context. `on_fed` hears of every chunk."""

    @property
    def full_logits(self) -> bool:
        """Whether `feed_lockstep` can hand every position's full logits (`on_chunk`); else it
        reads sampled positions' top n (`top`)."""

    @property
    def concurrent_contexts(self) -> bool:
        """Whether its contexts may work at the same time from different threads without any
        number changing (each a separate server); else one at a time."""


@runtime_checkable
class Engine(Protocol):
    """A way to run models: loads them, and says what it is and what it did."""

    @property
    def name(self) -> str:
        """Its name in the registry (`kvprobe.engine.ENGINES`)."""

    @property
    def fixed_settings(self) -> Mapping[str, object]:
        """Settings every context gets whatever the user asks, recorded in the result's runtime."""

    def load(self, path: Path, *, n_gpu_layers: int, n_threads: int | None, use_extra_bufts: bool) -> Model:
        """Load a model file (`n_threads` None: all cores); `use_extra_bufts` False is llama.cpp's
        --no-repack. A file it cannot load is a one-line UserError."""

    def runtime_info(self) -> dict[str, object]:
        """The engine's build and backend, for the result file and the journal's identity."""

    def configured(self, options: EngineOptions) -> Engine:
        """This engine with the user's engine options (a server's binary or URLs); an engine
        without options returns itself, and refuses options it does not take (UserError)."""

    def gpu_offload_supported(self) -> bool:
        """Whether this build can put layers on a GPU."""

    def check_kernels(
        self,
        paths: Sequence[Path],
        *,
        n_gpu_layers: int,
        n_threads: int | None,
        no_repack: bool,
        on_check: Callable[[Path], None] | None = None,
    ) -> tuple[KernelDecision, str | None]:
        """Whether the engine's CPU kernels work on this host for these models (a crash inside
        the engine cannot be caught, so it is tried where a crash costs nothing), and the line
        the run prints about it (None: nothing to say). `on_check(path)` hears of each check
        actually run (not answered from the cache)."""


@runtime_checkable
class Quantizer(Protocol):
    """An engine that can also write quantized weight files (`kvprobe quantize`)."""

    def ftype_id(self, name: str) -> int | None:
        """The file type id of a quant name such as Q4_K_M, F16 or F32 (None: unknown)."""

    def quantize(
        self,
        src: Path,
        dst: Path,
        ftype: int,
        *,
        allow_requantize: bool,
        pure: bool,
        n_threads: int,
        imatrix: Mapping[str, np.ndarray] | None = None,
        metadata: Mapping[str, str | int] | None = None,
    ) -> None:
        """Write `src` quantized to `ftype` into `dst`; `metadata` is written as key-value
        overrides (as llama-quantize writes quantize.imatrix.*)."""
