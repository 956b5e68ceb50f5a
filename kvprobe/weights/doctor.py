"""`kvprobe doctor`: what a GGUF file says about its weights, read with the `gguf` package
(metadata and tensor headers only: no model load, fast on a 40 GB file).

Facts are plain data; findings are pure functions of the facts. The rules are the weight-side
causes of degradation that common llama.cpp troubleshooting guides list (RunLocalAI's
"Quantization quality loss", Leeroopedia's "llama.cpp quantization quality tips" and the
"llama.cpp quality drops after switching to a more aggressive quant" guide): legacy uniform
quants, tiers too aggressive for the model size, `--pure` files whose embedding and output
lost their protection, IQ quants without (or with someone else's) importance matrix, files
re-quantized from an already quantized GGUF, and MoE models at low bits.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kvprobe.infra.errors import UserError
from kvprobe.weights import facts as facts_cache
from kvprobe.weights.gguf_header import field_value, printable
from kvprobe.weights.hparams import LLAMA_MAX_LAYERS, read_hparams, whole_number
from kvprobe.weights.model_info import open_gguf

# Layers with a sliding window, for architectures whose pattern llama.cpp hard-codes
# (src/models/<arch>.cpp: load_swa_pattern(ml, n[, dense_first])); the GGUF key
# `<arch>.attention.sliding_window_pattern` overrides it.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "olmo2": (4, False),
    "exaone4": (4, False),
}
LEGACY_FILE_TYPES = {"MOSTLY_Q4_0", "MOSTLY_Q4_1", "MOSTLY_Q5_0", "MOSTLY_Q5_1"}
VERY_LOW_FILE_TYPES = {  # below Q4_K_M: "coherence breaks down" for sub-13B models
    "MOSTLY_Q2_K", "MOSTLY_Q2_K_S", "MOSTLY_Q3_K_S", "MOSTLY_Q3_K_M", "MOSTLY_Q3_K_L",
    "MOSTLY_IQ1_S", "MOSTLY_IQ1_M", "MOSTLY_IQ2_XXS", "MOSTLY_IQ2_XS", "MOSTLY_IQ2_S", "MOSTLY_IQ2_M",
    "MOSTLY_IQ3_XXS", "MOSTLY_IQ3_XS", "MOSTLY_IQ3_S", "MOSTLY_IQ3_M", "MOSTLY_TQ1_0", "MOSTLY_TQ2_0",
}  # fmt: skip
BELOW_Q5_K_M_FILE_TYPES = {
    "MOSTLY_Q4_0", "MOSTLY_Q4_1", "MOSTLY_Q4_K_S", "MOSTLY_Q4_K_M", "MOSTLY_IQ4_NL", "MOSTLY_IQ4_XS",
}  # fmt: skip
AT_THE_FLOOR = {"MOSTLY_Q4_K_M", "MOSTLY_IQ4_XS"}  # "the safe floor"; IQ4_XS "comparable to Q4_K_M"
IMATRIX_REQUIRED = {  # llama-quantize refuses or warns without one
    "MOSTLY_IQ1_S", "MOSTLY_IQ1_M", "MOSTLY_IQ2_XXS", "MOSTLY_IQ2_XS", "MOSTLY_IQ2_S", "MOSTLY_IQ2_M",
    "MOSTLY_IQ3_XXS", "MOSTLY_IQ3_XS", "MOSTLY_Q2_K_S",
}  # fmt: skip
UNQUANTIZED_FILE_TYPES = {"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"}
SMALL_MODEL_PARAMS = 13e9
QUANT_TAG = re.compile(r"(?i)(?<![A-Za-z0-9])(I?Q\d(?:_[0-9A-Z]+)*|BF16|F16|F32)(?![A-Za-z0-9])")
SOURCE_TYPE_KEY = "kvprobe.weights.quantize.source_file_type"  # written by `kvprobe quantize`

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "serious" | "warning" | "info"
    message: str
    evidence: str  # the metadata key or tensor that shows it
    fix: str


def type_bits(type_name: str) -> float:
    """Bits per weight of a ggml type (block bytes x 8 / block size)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def row_bytes(type_name: str, n: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    return n // block * size


def short_type(file_type: str | None) -> str:
    """MOSTLY_Q4_K_M -> Q4_K_M."""
    return (file_type or "?").removeprefix("MOSTLY_").removeprefix("ALL_")


KNOWN_FILE_TYPES = sorted(  # names `kvprobe quantize --type` accepts (llama-quantize's)
    {"F32", "F16", "BF16"}
    | {
        short_type(t.name)
        for t in gguf.LlamaFileType
        if t.name.startswith("MOSTLY_") and "GUESSED" not in t.name
    }
)


def _per_layer(value: Any, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layer]
    return [int(value)] * n_layer


# A metadata value of a shape no check foresaw: still one line, never a traceback.
FACT_ERRORS = (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError, OverflowError)


def read_facts(path: Path) -> dict[str, Any]:
    """Everything the findings and the KV table need, from metadata and tensor headers; a
    damaged header, a value of the wrong type or an implausible one (`hparams`) is one
    UserError naming the file, never a traceback. Kept between runs (kvprobe.weights.facts):
    the gguf package takes seconds over a large vocabulary, and a sweep reads each file again
    in every cell."""
    cached = facts_cache.get(path)
    if cached is not None:
        return cached
    try:
        facts = _read_facts(path)
    except FACT_ERRORS as exc:
        raise UserError(
            f"model file {path}: its metadata does not hold what GGUF expects ({type(exc).__name__}: "
            f"{printable(str(exc), 80)}): convert the model again"
        ) from None
    facts_cache.put(path, facts)
    return facts


def _read_facts(path: Path) -> dict[str, Any]:
    reader = open_gguf(path)
    hp = read_hparams(path, reader)
    types: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "params": 0, "bytes": 0})
    tensor_type: dict[str, str] = {}
    block_weights = 0
    total_bytes = 0
    n_params = 0
    for t in reader.tensors:
        name_t = t.tensor_type.name
        count = int(np.prod(t.shape))
        types[name_t]["tensors"] += 1
        types[name_t]["params"] += count
        types[name_t]["bytes"] += int(t.n_bytes)
        tensor_type[t.name] = name_t
        n_params += count
        total_bytes += int(t.n_bytes)
        if t.name.startswith("blk.") and len(t.shape) >= 2:
            block_weights += 1
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight" and len(t.shape) >= 2), None)
    source = field_value(reader, SOURCE_TYPE_KEY)
    return {
        "path": str(path),
        "name": path.name,
        "general_name": _text(field_value(reader, "general.name")),
        "basename": _text(field_value(reader, "general.basename")),
        "architecture": hp.architecture,
        "n_params": n_params,
        "n_experts": hp.n_experts,
        "n_experts_used": hp.n_experts_used,
        "n_ctx_train": hp.n_ctx_train,
        "file_type": hp.file_type,
        "bits_per_weight": 8 * total_bytes / n_params if n_params else 0.0,
        "weights_bytes": total_bytes,
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1]["params"])),
        "token_embd_type": tensor_type.get("token_embd.weight"),
        "output_type": tensor_type.get("output.weight"),  # None: tied to token_embd
        "block_weight_tensors": block_weights,
        "bulk_type": _bulk_type(reader),
        "weight_types": sorted({tensor_type[t.name] for t in reader.tensors if len(t.shape) >= 2}),
        "imatrix": _imatrix_facts(path, reader),
        "source_file_type": None if source is None else _text(source),
        "n_layer": hp.n_layer,
        "n_embd": hp.n_embd,
        "n_vocab": int(embd.shape[1]) if embd is not None else 0,
        "n_head_kv": hp.n_head_kv,
        "head_dim_k": hp.head_dim_k,
        "head_dim_v": hp.head_dim_v,
        "n_swa": hp.n_swa,
        "swa_layers": _swa_layers(hp.architecture, hp.n_layer, hp.n_swa, hp.swa_pattern),
        **chat_facts(reader),
    }


MAX_TEMPLATE_CHARS = 1 << 20  # real templates are a few KB (the longest seen, ~20 KB)


def chat_facts(reader: Any) -> dict[str, Any]:
    """The chat template and the BOS/EOS texts a template renders with (None where absent)."""
    template = field_value(reader, "tokenizer.chat_template")
    tokens = reader.get_field("tokenizer.ggml.tokens")

    def token_text(key: str) -> str | None:
        token_id = field_value(reader, key)
        if not isinstance(token_id, int) or tokens is None or not 0 <= token_id < len(tokens.data):
            return None
        return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8", "replace")

    return {
        "chat_template": template
        if isinstance(template, str) and len(template) <= MAX_TEMPLATE_CHARS
        else None,
        "bos_text": token_text("tokenizer.ggml.bos_token_id"),
        "eos_text": token_text("tokenizer.ggml.eos_token_id"),
    }


def _text(value: Any) -> str | None:
    """A metadata value shown as text (a converter may have written a number or a list)."""
    return None if value is None else str(value)


def _imatrix_facts(path: Path, reader: gguf.GGUFReader) -> dict[str, Any] | None:
    """The quantize.imatrix.* metadata llama-quantize writes: the counts as whole numbers (the
    findings compare them), the names as text."""
    found: dict[str, Any] = {}
    for key in ("file", "dataset", "entries_count", "chunks_count"):
        value = field_value(reader, f"quantize.imatrix.{key}")
        if value is None:
            continue
        found[key] = _count(path, f"quantize.imatrix.{key}", value) if key.endswith("_count") else str(value)
    return found or None


def _count(path: Path, key: str, value: Any) -> int:
    n = whole_number(path, key, value)
    if n < 0:
        raise UserError(f"model file {path}: metadata {key} = {n}, not a count: convert the model again")
    return n


def _swa_layers(arch: str, n_layer: int, n_swa: int, swa_pattern: Any) -> list[bool]:
    """Which layers use sliding-window attention: the file's pattern, else llama.cpp's
    default period for the architecture."""
    if isinstance(swa_pattern, list):
        return [bool(v) for v in swa_pattern][:n_layer]
    period, dense_first = SWA_PATTERNS.get(arch, (0, False))
    if swa_pattern is not None:
        period = int(swa_pattern)
    if n_swa == 0 or period == 0:
        return [n_swa > 0 and period == 0 and arch in SWA_PATTERNS] * n_layer
    if dense_first:
        return [i % period != 0 for i in range(n_layer)]
    return [i % period < period - 1 for i in range(n_layer)]


def kv_layout_from_metadata(arch: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The KV layout from the metadata a result file keeps (files from before `kv_layout` was
    recorded); None when it lacks what the layout needs."""
    try:
        n_layer = int(metadata[f"{arch}.block_count"])
        if not 0 < n_layer <= LLAMA_MAX_LAYERS:  # a damaged result file must not size a huge list
            return None
        n_head = metadata[f"{arch}.attention.head_count"]
        heads = _per_layer(n_head, n_layer)
        default_dim = int(metadata[f"{arch}.embedding_length"]) // heads[0]
        n_swa = int(metadata.get(f"{arch}.attention.sliding_window", 0))
        return {
            "n_layer": n_layer,
            "n_head_kv": _per_layer(metadata.get(f"{arch}.attention.head_count_kv", n_head), n_layer),
            "head_dim_k": int(metadata.get(f"{arch}.attention.key_length", default_dim)),
            "head_dim_v": int(metadata.get(f"{arch}.attention.value_length", default_dim)),
            "n_swa": n_swa,
            "swa_layers": _swa_layers(arch, n_layer, n_swa, None),
        }
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def _bulk_type(reader: gguf.GGUFReader) -> str | None:
    """The type holding most parameters of the repeating blocks' weight matrices."""
    params: dict[str, int] = defaultdict(int)
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) >= 2:
            params[t.tensor_type.name] += int(np.prod(t.shape))
    return max(params, key=lambda k: params[k]) if params else None


# --- findings ---------------------------------------------------------------------------------


def findings(facts: dict[str, Any]) -> list[Finding]:
    """Every rule that applies, most serious first."""
    found = [
        *_legacy(facts),
        *_too_aggressive(facts),
        *_unprotected_output(facts),
        *_imatrix(facts),
        *_requantized(facts),
        *_moe(facts),
        *_fallback_types(facts),
    ]
    order = {"serious": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: order[f.severity])


def _legacy(facts: dict[str, Any]) -> list[Finding]:
    ft = facts["file_type"]
    if ft not in LEGACY_FILE_TYPES:
        return []
    k_equivalent = "Q4_K_M" if "Q4" in ft else "Q5_K_M"
    return [
        Finding(
            "legacy_quant",
            "warning",
            f"{short_type(ft)} is a legacy uniform quant: every weight gets the same precision, so it "
            f"loses noticeably more than the K-quant of nearly the same size",
            f"general.file_type = {ft}",
            f"use {k_equivalent} (or IQ4_XS with a good importance matrix) instead",
        )
    ]


def _too_aggressive(facts: dict[str, Any]) -> list[Finding]:
    ft, n = facts["file_type"], facts["n_params"]
    if n >= SMALL_MODEL_PARAMS or ft is None:
        return []
    size = f"{n / 1e9:.2f}B parameters" if n >= 1e9 else f"{n / 1e6:.0f}M parameters"
    evidence = f"general.file_type = {ft}; {size} (sum of tensor sizes)"
    if ft in VERY_LOW_FILE_TYPES:
        return [
            Finding(
                "small_model_aggressive_quant",
                "serious",
                f"{short_type(ft)} on a model below 13B: small models lose coherence at Q2/Q3 tiers",
                evidence,
                "step up to Q4_K_M at the very least; Q5_K_M or higher is recommended below 13B",
            )
        ]
    if ft in BELOW_Q5_K_M_FILE_TYPES:
        return [
            Finding(
                "small_model_below_q5_k_m",
                "info" if ft in AT_THE_FLOOR else "warning",  # the guides' floor is advice, not a fault
                f"{short_type(ft)} on a model below 13B: llama.cpp troubleshooting guides put Q4_K_M at the "
                "floor (RunLocalAI: 'the safe floor') and give 13B models Q5_K_M where it fits; small "
                "models lose more per bit",
                evidence,
                "use Q5_K_M or higher (Q6_K, Q8_0) if it fits",
            )
        ]
    return []


def _unprotected_output(facts: dict[str, Any]) -> list[Finding]:
    """The output projection (or the embedding it is tied to) at no more bits than the bulk
    of the weights, below 8 bits: what `llama-quantize --pure` produces."""
    bulk = facts["bulk_type"]
    if bulk is None or facts["file_type"] in UNQUANTIZED_FILE_TYPES or type_bits(bulk) >= 8:
        return []
    out: list[Finding] = []
    tied = facts["output_type"] is None
    output_type = facts["output_type"] or facts["token_embd_type"]
    pure = len(facts["weight_types"]) == 1
    why = "like every other weight matrix (a --pure file)" if pure else f"no more bits than the bulk ({bulk})"
    if output_type and type_bits(output_type) <= type_bits(bulk):
        tensor = "token_embd.weight" if tied else "output.weight"
        what = (
            "the token embedding, which is also the output projection (tied),"
            if tied
            else "the output projection"
        )
        out.append(
            Finding(
                "unprotected_output",
                "warning",
                f"{what} is {output_type}, {why}: the most sensitive layer lost the extra precision "
                "llama-quantize normally gives it",
                f"{tensor}: {output_type}; bulk of the blocks: {bulk}",
                "re-quantize from the f16/bf16 source without --pure (or with --leave-output-tensor)",
            )
        )
    embd = facts["token_embd_type"]
    if not tied and embd and pure:
        out.append(
            Finding(
                "unprotected_embedding",
                "warning",
                f"the token embedding is {embd} like every other weight (a --pure file)",
                f"token_embd.weight: {embd}; all weight matrices: {', '.join(facts['weight_types'])}",
                "re-quantize from the f16/bf16 source without --pure",
            )
        )
    return out


def _imatrix(facts: dict[str, Any]) -> list[Finding]:
    ft = facts["file_type"]
    if ft is None or ft in UNQUANTIZED_FILE_TYPES or ft == "MOSTLY_Q8_0":
        return []
    im = facts["imatrix"]
    if im is None:
        if ft in IMATRIX_REQUIRED:
            return [
                Finding(
                    "iq_without_imatrix",
                    "serious",
                    f"{short_type(ft)} was made without an importance matrix; these types need one",
                    "no quantize.imatrix.* metadata",
                    "re-quantize with `--imatrix` computed by llama-imatrix on this model",
                )
            ]
        return [
            Finding(
                "no_imatrix",
                "info",
                "no importance matrix was used (for Llama 3 8B Q4_K_M, Leeroopedia's llama.cpp "
                "quantization-quality tips give KL 0.042 without one vs 0.028 with)",
                "no quantize.imatrix.* metadata",
                "quantize from the f16 source with --imatrix for lower loss at the same size",
            )
        ]
    out: list[Finding] = []
    entries = im.get("entries_count")
    expected = facts["block_weight_tensors"]
    if entries is not None and expected and not 0.9 * expected <= int(entries) <= 1.1 * expected + 2:
        out.append(
            Finding(
                "imatrix_mismatch",
                "warning",
                f"the importance matrix has {entries} entries but the model has {expected} block weight "
                "matrices: it was probably computed on another model",
                f"quantize.imatrix.entries_count = {entries}",
                "compute the importance matrix on this exact model (llama-imatrix -m THIS.gguf)",
            )
        )
    file_name = str(im.get("file", ""))
    words = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", str(facts["basename"] or "")) if len(w) > 2}
    if file_name and words and not any(w in file_name.lower() for w in words):
        out.append(
            Finding(
                "imatrix_name",
                "info",
                f"the importance matrix file name does not mention the model ({facts['basename']})",
                f"quantize.imatrix.file = {file_name}",
                "check that it was computed on this model family, from text like your use",
            )
        )
    return out


def _requantized(facts: dict[str, Any]) -> list[Finding]:
    ft = facts["file_type"]
    source = facts["source_file_type"]
    if source and source not in UNQUANTIZED_FILE_TYPES:
        if ft in UNQUANTIZED_FILE_TYPES:
            return [
                Finding(
                    "dequantized",
                    "info",
                    f"dequantized from {short_type(source)}: these {short_type(ft)} weights carry "
                    f"{short_type(source)}'s quantization error (a reference for weight variants of it, "
                    "not the original model)",
                    f"{SOURCE_TYPE_KEY} = {source}",
                    "for the original model's quality, start from its f16/bf16 release",
                )
            ]
        return [
            Finding(
                "requantized",
                "serious",
                f"made from weights already quantized to {short_type(source)}: quantization error applied "
                "twice",
                f"{SOURCE_TYPE_KEY} = {source}",
                "quantize from the original f16/bf16 weights",
            )
        ]
    out: list[Finding] = []
    for label, text in (("file name", facts["name"]), ("general.name", facts["general_name"] or "")):
        tags = {m.upper() for m in QUANT_TAG.findall(str(text))}
        if tags and ft and short_type(ft) not in tags and ft not in UNQUANTIZED_FILE_TYPES:
            out.append(
                Finding(
                    "requantized_name",
                    "warning",
                    f"the {label} says {', '.join(sorted(tags))} but the weights are {short_type(ft)}: "
                    "possibly re-quantized from that file, or renamed",
                    f"{label} = {text}; general.file_type = {ft}",
                    "if it was made from a quantized GGUF, quantize again from the f16/bf16 source",
                )
            )
    return out


def _moe(facts: dict[str, Any]) -> list[Finding]:
    if facts["n_experts"] <= 1 or facts["bits_per_weight"] >= 5.0:
        return []
    return [
        Finding(
            "moe_low_bits",
            "warning",
            f"a mixture-of-experts model ({facts['n_experts']} experts) at "
            f"{facts['bits_per_weight']:.2f} bits per weight: MoE models lose more at the same bpw",
            f"{facts['architecture']}.expert_count = {facts['n_experts']}",
            "use Q5_K_M or higher for MoE models",
        )
    ]


def _fallback_types(facts: dict[str, Any]) -> list[Finding]:
    ft = facts["file_type"] or ""
    if "_K" not in ft:
        return []
    legacy = [t for t in facts["tensor_types"] if t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")]
    if not legacy:
        return []
    return [
        Finding(
            "k_quant_fallback",
            "info",
            f"some tensors of this K-quant file are {', '.join(legacy)}: llama-quantize falls back to "
            "them where a row is not a multiple of 256 weights (or for the embedding), by design",
            ", ".join(f"{t}: {facts['tensor_types'][t]['tensors']} tensors" for t in legacy),
            "nothing to do",
        )
    ]


# --- KV cache memory --------------------------------------------------------------------------


def kv_cache_bytes(
    facts: dict[str, Any],
    n_ctx: int,
    type_k: str,
    type_v: str,
    *,
    n_ubatch: int = 512,
    n_seq: int = 1,
    swa_full: bool = False,
) -> dict[str, int]:
    """KV cache bytes as llama.cpp allocates them for a context of n_ctx tokens (llama.cpp's
    defaults: sliding-window layers keep n_swa + n_ubatch cells, padded to 256)."""
    cells = -(-n_ctx // 256) * 256
    swa_cells = cells if swa_full else min(cells, -(-(facts["n_swa"] * n_seq + n_ubatch) // 256) * 256)
    k = v = 0
    for layer in range(facts["n_layer"]):
        n = swa_cells if facts["swa_layers"][layer] else cells
        k += n * row_bytes(type_k, facts["n_head_kv"][layer] * facts["head_dim_k"])
        v += n * row_bytes(type_v, facts["n_head_kv"][layer] * facts["head_dim_v"])
    return {
        "k": k,
        "v": v,
        "total": k + v,
        "cells": cells,
        "swa_cells": swa_cells if any(facts["swa_layers"]) else 0,
    }


KV_LAYOUT_KEYS = ("n_layer", "n_head_kv", "head_dim_k", "head_dim_v", "n_swa", "swa_layers")


def kv_layout(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts `kv_cache_bytes` needs: a result file keeps them, so `report` can size any
    cache type without the model."""
    return {key: facts[key] for key in KV_LAYOUT_KEYS}


KV_TYPES = ("f16", "q8_0", "q4_0")
COMPUTE_HEADROOM = 0.5 * GiB  # compute buffers and the CUDA context need room beside weights + KV


def kv_table(facts: dict[str, Any], vram_gb: float | None = None) -> list[dict[str, Any]]:
    """KV memory for f16, q8_0 and q4_0 at 4K, 8K, 32K and the training context, as llama-server
    and llama-cli allocate it (and with --swa-full, the default of llama.cpp's C API and of
    llama-cpp-python); with a VRAM size, whether weights + cache leave the compute headroom."""
    contexts = sorted({4096, 8192, 32768, facts["n_ctx_train"]} - {0})
    rows = []
    for n_ctx in contexts:
        for t in KV_TYPES:
            size = kv_cache_bytes(facts, n_ctx, t, t)
            row: dict[str, Any] = {
                "n_ctx": n_ctx,
                "cache": t,
                "kv_bytes": size["total"],  # llama-server / llama-cli defaults
                "kv_bytes_swa_full": kv_cache_bytes(facts, n_ctx, t, t, swa_full=True)["total"],
            }
            if vram_gb is not None:
                free = vram_gb * GiB - facts["weights_bytes"] - size["total"]
                row["free_bytes"] = int(free)
                row["fits"] = "yes" if free >= COMPUTE_HEADROOM else ("tight" if free >= 0 else "no")
            rows.append(row)
    return rows


def longest_fit(facts: dict[str, Any], vram_gb: float, cache: str) -> int:
    """The longest context (a multiple of 256, at most the training context) whose weights and
    `cache` KV leave the compute headroom in vram_gb; 0 when not even 256 tokens do."""
    room = vram_gb * GiB - facts["weights_bytes"] - COMPUTE_HEADROOM
    top = max(facts["n_ctx_train"], 256) // 256
    lo, hi = 0, top  # in units of 256 tokens: the KV size grows with the context
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kv_cache_bytes(facts, mid * 256, cache, cache)["total"] <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo * 256 if lo < top else max(facts["n_ctx_train"], 256)


def fit_headline(facts: dict[str, Any], vram_gb: float) -> str:
    """What matters most on a GPU of vram_gb, in one line: whether the f16 cache fits at the
    model's training context, else the longest context each cache type fits."""
    train = facts["n_ctx_train"]
    fits = {t: longest_fit(facts, vram_gb, t) for t in KV_TYPES}
    head = f"{vram_gb:g} GB: "
    if train and fits["f16"] >= train:
        return (
            head + f"the f16 cache fits at the training context, {train:,} tokens (no quantized cache needed)"
        )
    if not fits["f16"]:
        return (
            head + f"the weights ({facts['weights_bytes'] / GiB:.2f} GiB) and 0.5 GiB for compute "
            "leave no room for a cache"
        )
    others = ", ".join(
        f"{t} up to {fits[t]:,}" + (" (the training context)" if fits[t] >= train > 0 else "")
        for t in KV_TYPES[1:]
    )
    return (
        head
        + f"the f16 cache fits up to {fits['f16']:,} tokens, not the training context's {train:,}; "
        + others
    )


def diagnose(path: Path, vram_gb: float | None = None) -> dict[str, Any]:
    """The doctor's report as plain data (what `--json` prints)."""
    facts = read_facts(path)
    return {
        "facts": facts,
        "fit": fit_headline(facts, vram_gb) if vram_gb is not None else None,
        "findings": [asdict(f) for f in findings(facts)],
        "kv_cache": kv_table(facts, vram_gb),
        "vram_gb": vram_gb,
    }
