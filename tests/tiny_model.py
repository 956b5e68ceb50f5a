"""Write a tiny random-weight llama-architecture GGUF with the `gguf` package.

Real llama.cpp loads and runs it; outputs are meaningless but deterministic,
which is what plumbing tests (chunking, forks, cache types) need.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tests.gguf_files import set_metadata

N_EMBD = 128
N_HEAD = 2  # head dim 64: quantized caches (block 32) and Hadamard rotation (multiple of 64) apply
N_HEAD_KV = 1
N_FF = 256
N_LAYER = 2
N_CTX_TRAIN = 4096


def _vocab(extra: str = "\n", control: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += ["\u2581the", "\u2581is", "\u2581of", "\u2581and", "\u2581number", extra]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # longer pieces score higher so SPM prefers them
    scores = [0.0] * 259 + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    tokens += list(control)  # a chat template's markers (<|im_start|>), parsed as special tokens
    types += [gguf.TokenType.CONTROL] * len(control)
    scores += [0.0] * len(control)
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path,
    seed: int = 0,
    last_piece: str = "\n",
    *,
    name: str = "kvprobe-tiny-test",
    arch: str = "llama",
    context_length: int | str = N_CTX_TRAIN,
    metadata: Mapping[str, Any] | None = None,
    alignment: int | None = None,
    chat_template: str | None = None,
    control_tokens: tuple[str, ...] = (),
    eos_token: str | None = None,
) -> Path:
    """`last_piece` changes one vocabulary entry: a model with another tokenizer. `name`,
    `arch` and a string `context_length` make hostile or broken files for the error tests;
    `metadata` replaces or removes entries (`gguf_files.set_metadata`), and `alignment` sets
    general.alignment with the data laid out for it. `chat_template` and `control_tokens` make
    an "instruct" model: its template and the markers it uses, as control tokens (`eos_token`,
    one of them, becomes EOS: the end of a turn)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(last_piece, control_tokens)
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name(name)
    if isinstance(context_length, str):
        w.add_string(f"{arch}.context_length", context_length)
    else:
        w.add_context_length(context_length)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(tokens.index(eos_token) if eos_token else 2)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    set_metadata(w, metadata or {})

    def t(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, N_EMBD, scale=0.5))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", t(n_vocab, N_EMBD, scale=0.2))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(N_EMBD, N_EMBD, scale=0.3))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(N_HEAD_KV * head_dim, N_EMBD, scale=0.3))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
