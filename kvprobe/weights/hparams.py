"""A model's hyperparameters from its GGUF metadata, each checked before anything sizes a
table, a KV cache or a context from it.

The bounds are llama.cpp's where llama.cpp has one (llama-model.cpp `load_hparams` asserts
0 < block_count <= LLAMA_MAX_LAYERS and expert_count <= LLAMA_MAX_EXPERTS, aborting the process
otherwise; `get_key_or_arr` wants one entry per layer; ggml's matrix product wants a whole
number of query heads per KV head), elsewhere far beyond any released model. A value outside
them is one line naming the key, never a traceback or a report "as if fine".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kvprobe.infra.errors import UserError
from kvprobe.weights.gguf_header import field_value, printable

LLAMA_MAX_LAYERS = 512  # llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h
MAX_CONTEXT = 2**31  # positions are int32 (llama_pos)
MAX_EMBD = 2**20  # 64 x the widest released model (16,384)
MAX_HEADS = 2**14  # 128 x the most heads of a released model
MAX_HEAD_DIM = 2**16
FIX = "the file is damaged or was written by a broken converter; convert or download the model again"
# Weights only an attention layer has (norms excluded: recurrent layers have an attn_norm too).
ATTENTION_WEIGHTS = frozenset(
    {"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "attn_q_a", "attn_kv_a_mqa"}
)
LAYER_TENSOR = re.compile(r"blk\.([0-9]+)\.([^.]+)")


@dataclass(frozen=True)
class HParams:
    architecture: str
    n_layer: int  # 0: no block_count (and no layer tensors)
    n_ctx_train: int  # 0: not given
    n_embd: int  # 0: not given
    n_head: list[int]  # per layer
    n_head_kv: list[int]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_swa: int
    swa_pattern: int | list[bool] | None  # the file's <arch>.attention.sliding_window_pattern
    n_experts: int
    n_experts_used: int  # the most any layer routes to
    file_type: str | None  # a gguf.LlamaFileType name


def whole_number(path: Path, key: str, value: Any) -> int:
    """A metadata value that must be an integer, or a one-line UserError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(
            f"model file {path}: metadata {printable(key)} is {str(value)[:60]!r}, not a whole number: "
            "the file was written by a broken converter; convert the model again"
        )
    return int(value)


class _Meta:
    """Metadata of one file, `{arch}` in a key standing for its architecture."""

    def __init__(self, path: Path, reader: gguf.GGUFReader, arch: str) -> None:
        self.path, self.reader, self.arch = path, reader, arch

    def key(self, name: str) -> str:
        return name.replace("{arch}", self.arch)

    def shown(self, name: str) -> str:
        """The key for a one-line message (the architecture's name comes from the file)."""
        return printable(self.key(name))

    def raw(self, name: str) -> Any:
        return field_value(self.reader, self.key(name))

    def refuse(self, name: str, value: object, expect: str) -> UserError:
        shown = printable(str(value), 60)
        return UserError(
            f"model file {self.path}: metadata {self.shown(name)} = {shown}, but {expect}: {FIX}"
        )

    def count(self, name: str, low: int, high: int, expect: str, default: int = 0) -> int:
        """A whole number in [low, high]; `default` when the key is absent."""
        value = self.raw(name)
        if value is None:
            return default
        n = whole_number(self.path, self.key(name), value)
        if not low <= n <= high:
            raise self.refuse(name, n, expect)
        return n

    def per_layer(self, name: str, n_layer: int, high: int, default: list[int]) -> list[int]:
        """One whole number in [0, high] per layer: an array of n_layer, or one value for all."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, list):
            self.layer_array(name, value, n_layer)
            values = [whole_number(self.path, self.key(name), v) for v in value]
        else:
            values = [whole_number(self.path, self.key(name), value)] * n_layer
        if bad := [v for v in values if not 0 <= v <= high]:
            raise self.refuse(name, bad[0], f"it must be 0 to {high:,}")
        return values

    def layer_array(self, name: str, value: list[Any], n_layer: int) -> None:
        if len(value) != n_layer:
            raise UserError(
                f"model file {self.path}: metadata {self.shown(name)} has {len(value)} entr"
                f"{'y' if len(value) == 1 else 'ies'} but "
                f"{self.shown('{arch}.block_count')} is {n_layer}: llama.cpp needs one per layer; {FIX}"
            )


def read_hparams(path: Path, reader: gguf.GGUFReader) -> HParams:
    """The checked hyperparameters of a parsed GGUF file."""
    arch = _architecture(path, reader)
    m = _Meta(path, reader, arch)
    layers = _layer_tensors(reader)
    n_layer = _block_count(m, layers, split=_is_split(m))
    n_embd = m.count("{arch}.embedding_length", 1, MAX_EMBD, f"a model is 1 to {MAX_EMBD:,} wide")
    n_head = m.per_layer("{arch}.attention.head_count", n_layer, MAX_HEADS, [0] * n_layer)
    n_head_kv = m.per_layer("{arch}.attention.head_count_kv", n_layer, MAX_HEADS, n_head)
    attention = any(ATTENTION_WEIGHTS & bases for bases in layers.values())
    _check_heads(m, n_head, n_head_kv, attention)
    dim_k, dim_v = _head_dims(m, n_embd, n_head, attention)
    n_experts, n_used = _experts(m, n_layer)
    return HParams(
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=m.count(
            "{arch}.context_length", 1, MAX_CONTEXT, f"a context is 1 to {MAX_CONTEXT:,} tokens"
        ),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=dim_k,
        head_dim_v=dim_v,
        n_swa=m.count(
            "{arch}.attention.sliding_window", 0, MAX_CONTEXT, f"a window is 0 to {MAX_CONTEXT:,} tokens"
        ),
        swa_pattern=_swa_pattern(m, n_layer),
        n_experts=n_experts,
        n_experts_used=n_used,
        file_type=_file_type(m),
    )


def _architecture(path: Path, reader: gguf.GGUFReader) -> str:
    """general.architecture: every other key is named after it."""
    value = field_value(reader, "general.architecture")
    if value is None:
        return "unknown"
    if not isinstance(value, str) or not value:
        raise UserError(
            f"model file {path}: metadata general.architecture is {str(value)[:60]!r}, not the name of an "
            f"architecture: {FIX}"
        )
    return value


def _layer_tensors(reader: gguf.GGUFReader) -> dict[int, set[str]]:
    """Layer index -> the names of its tensors without the suffix (blk.3.attn_q.weight: attn_q)."""
    layers: dict[int, set[str]] = {}
    for t in reader.tensors:
        if match := LAYER_TENSOR.match(t.name):
            layers.setdefault(int(match[1]), set()).add(match[2])
    return layers


def _is_split(m: _Meta) -> bool:
    """One file of a split model (llama-gguf-split) holds only some layers' tensors."""
    count = m.raw("split.count")
    return isinstance(count, int) and count > 1


def _block_count(m: _Meta, layers: dict[int, set[str]], split: bool) -> int:
    top = max(layers) + 1 if layers else 0  # layers the tensors reach
    key = m.shown("{arch}.block_count")
    if m.raw("{arch}.block_count") is None:
        if top:
            raise UserError(
                f"model file {m.path}: metadata {key} is missing but the file has tensors for {top} "
                f"layers (blk.0 to blk.{top - 1}): {FIX}"
            )
        return 0
    n = m.count("{arch}.block_count", 1, LLAMA_MAX_LAYERS, f"llama.cpp loads 1 to {LLAMA_MAX_LAYERS} layers")
    if top > n:
        raise m.refuse("{arch}.block_count", n, f"the file has tensors for layer {top - 1} (blk.{top - 1}.*)")
    nextn = m.count("{arch}.nextn_predict_layers", 0, n, f"{key} is {n}")  # MTP layers may be left out
    if top and not split and top < n - nextn:
        raise m.refuse(
            "{arch}.block_count", n, f"the file has tensors for only {top} layers (blk.0 to blk.{top - 1})"
        )
    return n


def _check_heads(m: _Meta, n_head: list[int], n_head_kv: list[int], attention: bool) -> None:
    """Recurrent layers of hybrid models have no heads (and Mamba or RWKV models none at all),
    but a model with attention weights needs some, and each layer with KV heads a whole number
    of query heads per KV head."""
    if attention and not any(n_head):
        raise m.refuse("{arch}.attention.head_count", 0, "the file has attention weights, which need heads")
    if attention and not any(n_head_kv):
        raise m.refuse(
            "{arch}.attention.head_count_kv", 0, "the file has attention weights, which need KV heads"
        )
    for layer, (heads, kv) in enumerate(zip(n_head, n_head_kv, strict=True)):
        if kv and (heads == 0 or heads % kv):
            raise m.refuse(
                "{arch}.attention.head_count_kv",
                kv,
                f"layer {layer} has {heads} query heads, not a multiple of it (llama.cpp shares each KV "
                "head between a whole number of query heads)",
            )


def _head_dims(m: _Meta, n_embd: int, n_head: list[int], attention: bool) -> tuple[int, int]:
    """Key and value head widths: the file's, else n_embd / head_count of layer 0 (llama.cpp's)."""
    default = n_embd // n_head[0] if n_head and n_head[0] else 0
    widths = []
    for which in ("key", "value"):
        name = f"{{arch}}.attention.{which}_length"
        width = m.count(name, 0, MAX_HEAD_DIM, f"a head is 0 to {MAX_HEAD_DIM:,} wide", default)
        if width > MAX_HEAD_DIM:  # the default, from embedding_length and head_count
            raise m.refuse(
                name, f"{width} (embedding_length / head_count)", f"a head is at most {MAX_HEAD_DIM:,} wide"
            )
        if attention and width == 0:
            raise m.refuse(name, 0, "attention layers need heads at least 1 wide")
        widths.append(width)
    return widths[0], widths[1]


def _experts(m: _Meta, n_layer: int) -> tuple[int, int]:
    """llama.cpp asserts expert_count <= LLAMA_MAX_EXPERTS, 0 < used <= expert_count with
    experts, and no used experts without."""
    n = m.count(
        "{arch}.expert_count", 0, LLAMA_MAX_EXPERTS, f"llama.cpp loads 0 to {LLAMA_MAX_EXPERTS:,} experts"
    )
    used = max(m.per_layer("{arch}.expert_used_count", n_layer, MAX_HEADS, [0]), default=0)
    if used > n:
        raise m.refuse("{arch}.expert_used_count", used, f"{m.shown('{arch}.expert_count')} is {n}")
    if n and n_layer and not used:
        raise m.refuse(
            "{arch}.expert_used_count", used, f"a model with {n} experts routes each token to some"
        )
    return n, used


def _swa_pattern(m: _Meta, n_layer: int) -> int | list[bool] | None:
    """Which layers use a sliding window: a period, or one flag per layer."""
    value = m.raw("{arch}.attention.sliding_window_pattern")
    if isinstance(value, list):
        m.layer_array("{arch}.attention.sliding_window_pattern", value, n_layer)
        if bad := [v for v in value if not isinstance(v, (bool, int, np.integer))]:
            raise m.refuse("{arch}.attention.sliding_window_pattern", bad[0], "it must hold flags")
        return [bool(v) for v in value]
    if value is None:
        return None
    return m.count("{arch}.attention.sliding_window_pattern", 0, MAX_CONTEXT, "a period is 0 or more layers")


def _file_type(m: _Meta) -> str | None:
    value = m.raw("general.file_type")
    if value is None:
        return None
    n = whole_number(m.path, "general.file_type", value)
    try:
        return gguf.LlamaFileType(n).name
    except ValueError:
        raise UserError(
            f"model file {m.path}: metadata general.file_type = {n}, not a llama.cpp file type the gguf "
            "package knows: the file is damaged, or newer than kvprobe's gguf package (pip install -U gguf)"
        ) from None
