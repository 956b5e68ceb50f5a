"""Header-only GGUF files for `kvprobe doctor` tests, written with the `gguf` package.

The doctor reads metadata and tensor headers, never tensor data, so the data region is a
sparse hole (os.truncate): a "14B" file costs no disk and no time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
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
    metadata: dict[str, Any] = field(default_factory=dict)  # see set_metadata
    tensor_layers: int | None = None  # blocks whose tensors the file holds (default n_layer)
    big_endian: bool = False

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


def _value_type(value: Any) -> V:
    """The GGUF type a plain value is written as: ints as uint32, or the signed or 64-bit type
    that holds them."""
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return V.UINT32
        return V.UINT64 if value > 0 else (V.INT32 if value >= -(2**31) else V.INT64)
    if isinstance(value, float):
        return V.FLOAT32
    if isinstance(value, (str, bytes)):
        return V.STRING  # bytes: written as they are, UTF-8 or not
    if isinstance(value, list):
        return V.ARRAY
    raise TypeError(f"no GGUF type for {value!r}")


def set_metadata(w: gguf.GGUFWriter, items: Mapping[str, Any]) -> None:
    """Replace metadata entries, or with None remove them. A plain value gets `_value_type`'s
    type (a list: gguf's type for its first element); a tuple (GGUFValueType, value) or, for an
    array, (GGUFValueType.ARRAY, values, element type) gets exactly that type."""
    for key, value in items.items():
        for kv in w.kv_data:
            kv.pop(key, None)
        if value is None:
            continue
        if isinstance(value, tuple):
            w.add_key_value(key, value[1], value[0], value[2] if len(value) > 2 else None)
        else:
            w.add_key_value(key, value, _value_type(value))


def _nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_gguf(path: Path, spec: Spec) -> Path:
    order = gguf.GGUFEndian.BIG if spec.big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(str(path), "llama", endianess=order)
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
    set_metadata(w, spec.metadata)
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
    for i in range(spec.n_layer if spec.tensor_layers is None else spec.tensor_layers):
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


# --- raw headers, byte by byte: what no writer would produce -----------------------------------


def raw_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def raw_kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata entry: its name, its value type and the value's bytes as given."""
    return raw_string(key) + struct.pack("<I", vtype) + payload


def raw_tensor(name: str | bytes, dims: list[int], qtype: int = T.F32, offset: int = 0) -> bytes:
    """One tensor's header entry."""
    return raw_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)


def raw_gguf(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    data: bytes = bytes(64),
) -> bytes:
    """A GGUF file from raw parts; the counts default to the parts given, and `data` follows the
    header (aligned to 32 bytes where there are tensors)."""
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    head += b"".join(kvs) + b"".join(tensors)
    if tensors:
        head += bytes(-len(head) % gguf.GGUF_DEFAULT_ALIGNMENT)
    return head + data
