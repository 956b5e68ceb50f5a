"""Model metadata read with the `gguf` package: no model load, fast on large files."""

from __future__ import annotations

import functools
import gc
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import open_input, stamp
from kvprobe.infra.provenance import MODEL_FIX, sha256_file
from kvprobe.weights import facts as header_cache
from kvprobe.weights.gguf_header import MAGIC as GGUF_MAGIC
from kvprobe.weights.gguf_header import field_value, read_gguf
from kvprobe.weights.hparams import read_hparams, whole_number

__all__ = ["GGUF_MAGIC", "field_value", "open_gguf", "read_model_info", "whole_number"]


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A reader over the file's metadata and tensor headers; a one-line UserError if it is not
    a readable GGUF file (every count and length in the header is checked against the file's
    size first: `gguf_header`). Parsed once per process: gguf parses every tokenizer entry one
    by one (about 9 s for a 262,144-token vocabulary), whatever the size of the weights."""
    with open_input(path, "model file", MODEL_FIX) as (fh, st):  # a FIFO or a device would hang
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(
            f"model file {path} is not a GGUF file (starts with {magic!r}): convert it to GGUF first"
        )
    return _parse(str(path.resolve()), *stamp(st))


def forget_headers() -> None:
    """Drop the parsed headers. A GGUFReader holds every metadata array as numpy views (2.1
    million objects, about 0.7 GiB, for Gemma 3's 262K-token vocabulary): a run lets go of them
    before it loads the model, or they would stay resident for the whole run."""
    _parse.cache_clear()
    gc.collect()


@functools.lru_cache(maxsize=4)
def _parse(path: str, *when: int) -> gguf.GGUFReader:  # `when`: its stamp; a file changed is read again
    return read_gguf(Path(path), "model file")  # a failure is not cached: UserError propagates


def file_type_name(value: Any) -> str | None:
    """general.file_type as llama.cpp's name (MOSTLY_Q4_K_M)."""
    if value is None:
        return None
    try:
        return gguf.LlamaFileType(int(value)).name
    except (ValueError, TypeError):
        return f"unknown ({str(value)[:40]})"


def read_model_info(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """Path, sha256 and metadata of a GGUF file; a one-line UserError if it is not one. The
    metadata is kept between runs (kvprobe.weights.facts); the sha256 is computed every time
    (or given: a run's fingerprint of the file)."""
    info = header_cache.get(path, "info")
    if info is None:
        info = _read_info(path)
        header_cache.put(path, info, "info")
    return {**info, "sha256": sha256 or sha256_file(path)}


def _read_info(path: Path) -> dict[str, Any]:
    reader = open_gguf(path)
    hparams = read_hparams(path, reader)
    arch = hparams.architecture
    n_params = int(sum(int(np.prod(t.shape)) for t in reader.tensors))
    metadata = {
        key: field_value(reader, key)
        for key in (
            "general.name",
            "general.basename",
            "general.size_label",
            "general.quantization_version",
            f"{arch}.block_count",
            f"{arch}.embedding_length",
            f"{arch}.attention.head_count",
            f"{arch}.attention.head_count_kv",
            f"{arch}.attention.key_length",
            f"{arch}.attention.value_length",
            f"{arch}.attention.sliding_window",
        )
        if reader.get_field(key) is not None
    }
    return {
        "path": str(path.resolve()),
        "name": path.name,
        "size_bytes": path.stat().st_size,
        "architecture": arch,
        "n_ctx_train": hparams.n_ctx_train,
        "file_type": hparams.file_type,
        "n_params": n_params,
        "metadata": metadata,
    }
