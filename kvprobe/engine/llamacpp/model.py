"""A loaded GGUF model in llama.cpp: weights, vocabulary and tokenizer, and the contexts
opened from it."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import llama_cpp

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ChunkCallback, ContextSettings, FedCallback, TopCallback, TopRequest
from kvprobe.api.engine import Context as AnyContext
from kvprobe.engine.llamacpp import forks
from kvprobe.engine.llamacpp.context import Context
from kvprobe.engine.llamacpp.log import captured_log, last_error, weight_buffers
from kvprobe.infra.errors import EngineError, UserError
from kvprobe.infra.paths import open_input
from kvprobe.infra.provenance import MODEL_FIX

_SPLIT_NAME = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama-gguf-split's names


class Model:
    """A loaded GGUF model: weights, vocabulary and tokenizer (kvprobe.api.engine.Model)."""

    # The class `context()` opens: the one hook for wrapping every context of a run (a subclass
    # of Context that overrides its state-changing calls; benchmarks/trace.py sets it).
    context_class: ClassVar[type[Context]] = Context

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
        with open_input(self.path, "model file", MODEL_FIX) as (fh, _), captured_log() as log:
            source = str(self.path)
            if not _SPLIT_NAME.search(self.path.name) and os.path.isdir("/proc/self/fd"):
                source = f"/proc/self/fd/{fh.fileno()}"
            model = llama_cpp.llama_model_load_from_file(source.encode(), params)
        if not model:
            reason = last_error(log, ("error",), "unknown error")
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
        return weight_buffers(self.load_log)

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

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        return None  # kvprobe renders the template itself (kvprobe.plan.chat)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def vocabulary_digest(self) -> str:
        """A hash of every token's text and of BOS: equal digests mean the same token ids mean
        the same text, so two models can be fed identical items."""
        h = hashlib.sha256(f"{self.n_vocab}:{self.bos}".encode())
        for token in range(self.n_vocab):
            h.update(self.piece(token).encode("utf-8", errors="replace") + b"\0")
        return h.hexdigest()

    # contexts ----------------------------------------------------------------------
    def context(self, cache: CacheConfig, settings: ContextSettings) -> Context:
        return self.context_class(self, cache, settings)

    @property
    def full_logits(self) -> bool:
        return True

    @property
    def concurrent_contexts(self) -> bool:
        return False  # one process, one CPU thread pool: contexts take turns

    def provenance(self) -> dict[str, object]:
        return {}

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
        """forks.feed_lockstep, for contexts of this engine (a stranger is refused): every
        position's full logits (`on_chunk`). With `top`, forks.feed_sampled instead: a
        llama-server's request sequence and rows, for comparing with one (the build check)."""
        if (top is None) != (on_top is None) or (top is not None and on_chunk is not None):
            raise EngineError("feed_lockstep takes on_chunk, or top with on_top")
        mine = [c for c in contexts if isinstance(c, Context)]
        if len(mine) != len(contexts):
            raise EngineError("the llama.cpp engine feeds only its own contexts in lockstep")
        if top is not None and on_top is not None:
            forks.feed_sampled(mine, tokens, top, on_top, on_fed)
            return
        forks.feed_lockstep(mine, tokens, on_chunk, on_fed)
