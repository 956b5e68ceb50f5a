"""Header-only GGUF files for `kvprobe doctor` tests, written with the `gguf` package.

The doctor reads metadata and tensor headers, never tensor data, so the data region is a
sparse hole (os.truncate): a "14B" file costs no disk and no time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
BLOCK_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Spec:
    file_type: gguf.LlamaFileType
    bulk: T
    token_embd: T | None = None  # default: bulk
    output: T | None = None  # default: bulk; use tied=True for no output tensor
    tied: bool = False
    overrides: dict[str, T] = field(default_factory=dict)  # block tensor suffix -> type
    n_layer: int = 2
    n_embd: int = 256
    n_ff: int = 512
    n_vocab: int = 1024
    n_expert: int = 0
    basename: str = "testmodel"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def block_weights(self) -> int:
        return self.n_layer * len(BLOCK_WEIGHTS)


class Dims(TypedDict):
    n_layer: int
    n_embd: int
    n_ff: int
    n_vocab: int


BIG: Dims = {"n_layer": 40, "n_embd": 5120, "n_ff": 14336, "n_vocab": 32000}  # 13.3B parameters


def imatrix_metadata(spec: Spec, file: str = "testmodel-wiki.imatrix.gguf") -> dict[str, Any]:
    return {
        "quantize.imatrix.file": file,
        "quantize.imatrix.dataset": "wiki.train.raw",
        "quantize.imatrix.entries_count": spec.block_weights,
        "quantize.imatrix.chunks_count": 125,
    }


def _nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_gguf(path: Path, spec: Spec) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"{spec.basename} test")
    w.add_basename(spec.basename)
    w.add_context_length(4096)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_embd // 128)
    w.add_head_count_kv(spec.n_embd // 128)
    w.add_file_type(spec.file_type)
    if spec.n_expert:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(2)
    for key, value in spec.metadata.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, str(value))
    tensors: list[tuple[str, tuple[int, ...], T]] = [
        ("token_embd.weight", (spec.n_vocab, spec.n_embd), spec.token_embd or spec.bulk),
        ("output_norm.weight", (spec.n_embd,), T.F32),
    ]
    if not spec.tied:
        tensors.append(("output.weight", (spec.n_vocab, spec.n_embd), spec.output or spec.bulk))
    experts = (spec.n_expert,) if spec.n_expert else ()
    shapes = {
        "attn_q": (spec.n_embd, spec.n_embd),
        "attn_k": (spec.n_embd, spec.n_embd),
        "attn_v": (spec.n_embd, spec.n_embd),
        "attn_output": (spec.n_embd, spec.n_embd),
        "ffn_gate": (*experts, spec.n_ff, spec.n_embd),
        "ffn_up": (*experts, spec.n_ff, spec.n_embd),
        "ffn_down": (*experts, spec.n_embd, spec.n_ff),
    }
    for i in range(spec.n_layer):
        tensors.append((f"blk.{i}.attn_norm.weight", (spec.n_embd,), T.F32))
        for name in BLOCK_WEIGHTS:
            tensors.append((f"blk.{i}.{name}.weight", shapes[name], spec.overrides.get(name, spec.bulk)))
    for name, shape, qtype in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    start = w.fout[0].tell()
    w.close()
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    data_start = -(-start // align) * align
    total = data_start + sum(-(-_nbytes(s, q) // align) * align for _, s, q in tensors)
    os.truncate(path, total)  # a sparse hole where the weights would be
    return path
