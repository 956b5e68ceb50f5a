"""What a model file's header says, kept between runs in kvprobe's cache folder: its facts
(kvprobe.weights.doctor.read_facts) and its metadata for the result file
(kvprobe.weights.model_info.read_model_info, all but the sha256, which every run computes).
Parsing a header with the gguf package takes about 10 s for Gemma 3's 262,144-token
vocabulary, whatever the weights. An entry is found by the file's resolved path and stat
(size, times, inode: kvprobe.infra.paths.stamp) and by the versions of kvprobe and gguf that read
it: a file changed in place, or another reader, reads it again. Anything else in the cache is ignored."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from kvprobe import __version__
from kvprobe.infra.memo import memo_path, read_memo, write_memo
from kvprobe.infra.paths import stamp

CACHE_NAME = "model-facts.json"
KEEP = 64  # files remembered; the oldest go first
# What each kind holds; an entry with other keys is not trusted.
FACT_KEYS = frozenset({
    "path", "name", "general_name", "basename", "architecture", "n_params", "n_experts", "n_experts_used",
    "n_ctx_train", "file_type", "bits_per_weight", "weights_bytes", "tensor_types", "token_embd_type",
    "output_type", "block_weight_tensors", "bulk_type", "weight_types", "imatrix", "source_file_type",
    "n_layer", "n_embd", "n_vocab", "n_head_kv", "head_dim_k", "head_dim_v", "n_swa", "swa_layers",
    "chat_template", "bos_text", "eos_text",
})  # fmt: skip
INFO_KEYS = frozenset({"path", "name", "size_bytes", "architecture", "n_ctx_train", "file_type", "n_params",
                       "metadata"})  # fmt: skip
KINDS = {"facts": FACT_KEYS, "info": INFO_KEYS}


def _key(path: Path, kind: str) -> str | None:
    try:
        real = path.resolve()
        st = real.stat()
        reader = importlib.metadata.version("gguf")
    except (OSError, importlib.metadata.PackageNotFoundError):
        return None
    # The status change time and inode too: a file rewritten with its size and modification
    # time set back is read again.
    text = f"{kind}|{real}|{'|'.join(map(str, stamp(st)))}|{__version__}|gguf {reader}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def get(path: Path, kind: str = "facts") -> dict[str, Any] | None:
    """What was read before from this very file, with `path` as it is named now; None if none,
    or if the entry is not exactly what was written (each carries its own checksum)."""
    key = _key(path, kind)
    entry = read_memo(memo_path(CACHE_NAME)).get(key) if key else None
    if not isinstance(entry, dict) or not isinstance(value := entry.get("value"), dict):
        return None
    if set(value) != KINDS[kind] or entry.get("sha256") != _digest(value):
        return None
    found = copy.deepcopy(value)
    found["path"] = str(path.resolve()) if kind == "info" else str(path)
    found["name"] = path.name
    return found


def put(path: Path, value: dict[str, Any], kind: str = "facts") -> None:
    key = _key(path, kind)
    if key is not None and set(value) == KINDS[kind]:
        write_memo(memo_path(CACHE_NAME), key, {"sha256": _digest(value), "value": value}, keep=KEEP)
