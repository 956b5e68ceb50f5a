"""llama.cpp's other services: the KV buffers it allocates, its quantizer, its build."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import llama_cpp
import numpy as np

from kvprobe.api.cache_types import GGML_TYPE_IDS, CacheConfig
from kvprobe.engine.llamacpp.log import KvBuffer, captured_log, kv_buffers_logged, last_error
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import EngineError


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
    with captured_log() as log:
        ctx = llama_cpp.llama_init_from_model(model._model, params)
    if not ctx:
        raise EngineError(f"llama.cpp could not create a {n_ctx}-token context for cache {cache.id}")
    llama_cpp.llama_free(ctx)
    return kv_buffers_logged(log)


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
    imatrix: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, str | int] | None = None,
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
        overrides = _overrides(metadata)
        params.kv_overrides = overrides
        keep.append(overrides)
    with captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        reason = last_error(log, ("error", "failed"))
        raise EngineError(f"llama.cpp could not quantize {src.name} to {dst.name}: {reason.strip()}")


def _overrides(metadata: Mapping[str, str | int]) -> ctypes.Array[llama_cpp.llama_model_kv_override]:
    """Key-value overrides as llama.cpp reads them: an array ended by an empty key."""
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
    return overrides


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
