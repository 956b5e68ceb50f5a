"""`kvprobe quantize`: weight variants of one model, made by llama.cpp's own quantizer, to
measure the weights' share of the damage. Plans and checks everything before the first file is
written; llama.cpp does the work (kvprobe.engine.quantizer())."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, ReaderTensor

from kvprobe.infra.errors import UserError, did_you_mean
from kvprobe.infra.paths import open_input
from kvprobe.weights.doctor import QUANT_TAG, SOURCE_TYPE_KEY, UNQUANTIZED_FILE_TYPES, read_facts, short_type
from kvprobe.weights.gguf_header import MAGIC as GGUF_MAGIC
from kvprobe.weights.gguf_header import field_value, printable, read_gguf

DEQUANTIZED = ("F16", "BF16", "F32")
F32 = GGMLQuantizationType.F32


@dataclass(frozen=True)
class Job:
    type_name: str  # e.g. Q4_K_M
    ftype: int
    dst: Path
    note: str  # shown to the user and kept as the reason the job is allowed


def output_path(src: Path, type_name: str, out_dir: Path, pure: bool = False) -> Path:
    """<source stem without its quant tag>-<TYPE>[-pure].gguf: the name says the type."""
    stem = QUANT_TAG.sub("", src.stem).strip("-_. ") or src.stem
    return out_dir / f"{stem}-{type_name}{'-pure' if pure else ''}.gguf"


def plan_jobs(
    src: Path,
    types: list[str],
    out_dir: Path,
    *,
    allow_requantize: bool,
    ftype_of: dict[str, int],
    pure: bool = False,
) -> tuple[list[Job], str]:
    """One job per type, or a one-line UserError before anything is written (the files a job
    writes are checked by paths.check_outputs, with the other outputs). `ftype_of` maps
    every quant name llama.cpp knows to its id. Returns the jobs and the file type the weights
    were last quantized to (the source's, or for a dequantized source the one before it)."""
    facts = read_facts(src)
    source_type = facts["file_type"] or "unknown"
    quantized_source = source_type not in UNQUANTIZED_FILE_TYPES
    origin = source_type
    earlier = facts["source_file_type"]
    if not quantized_source and earlier and earlier not in UNQUANTIZED_FILE_TYPES:
        origin = str(earlier)  # an F16 made from a Q4_K_M still carries Q4_K_M's error
    jobs: list[Job] = []
    for raw in types:
        name = raw.upper()
        if name not in ftype_of:
            known = " ".join(sorted(ftype_of))
            raise UserError(
                f"--type {raw!r} is not a llama.cpp quant type{did_you_mean(raw, ftype_of)}; "
                f"choose from: {known}"
            )
        dst = output_path(src, name, out_dir, pure)
        if dst.resolve() == src.resolve():
            raise UserError(f"--type {name} would overwrite the source {src}: give --out-dir")
        if quantized_source and name in DEQUANTIZED:
            note = f"dequantization of {short_type(source_type)}: no new quantization error" + (
                " (F16/BF16 round the dequantized values; F32 keeps them exactly)" if name != "F32" else ""
            )
        elif quantized_source:
            if not allow_requantize:
                raise UserError(
                    f"{src.name} is already quantized ({short_type(source_type)}): quantizing it to {name} "
                    "applies quantization error twice. Quantize from the f16/bf16 original; or make an "
                    "F16 with --type f16 and quantize that (its variants still carry the first error); "
                    "or pass --allow-requantize"
                )
            note = f"re-quantized from {short_type(source_type)} (--allow-requantize): error applied twice"
        else:
            note = f"quantized from {short_type(source_type)}"
        jobs.append(Job(name, ftype_of[name], dst, note))
    if len({j.dst for j in jobs}) != len(jobs):
        raise UserError("the same --type was given twice")
    return jobs, origin


def load_imatrix(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str | int]]:
    """Importance matrix from a GGUF imatrix file (llama-imatrix's output), normalised as
    llama-quantize does (sum of squared activations / count), and the quantize.imatrix.*
    metadata llama-quantize writes into the model. The header is walked within the file's
    bounds first (`gguf_header`); a damaged file is one UserError, never a traceback."""
    with open_input(path, "--imatrix", "give the GGUF file llama-imatrix wrote") as (fh, _):
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise UserError(
            f"--imatrix {path} is not a GGUF imatrix; convert a legacy .dat file with "
            f"`llama-imatrix --in-file {path.name} -o {path.stem}.gguf`"
        )
    reader = read_gguf(path, "--imatrix")
    tensors = {t.name: t for t in reader.tensors}
    data = {
        name.removesuffix(".in_sum2"): _importance(path, tensors, name.removesuffix(".in_sum2"))
        for name in tensors
        if name.endswith(".in_sum2")
    }
    if not data:
        raise UserError(f"--imatrix {path}: no importance data (no *.in_sum2 tensors)")
    metadata: dict[str, str | int] = {
        "quantize.imatrix.file": path.name,
        "quantize.imatrix.entries_count": len(data),
    }
    datasets = field_value(reader, "imatrix.datasets")
    if isinstance(datasets, list) and datasets:
        metadata["quantize.imatrix.dataset"] = str(datasets[0])
    elif isinstance(datasets, str):
        metadata["quantize.imatrix.dataset"] = datasets
    chunks = field_value(reader, "imatrix.chunk_count")
    if chunks is not None:
        metadata["quantize.imatrix.chunks_count"] = _imatrix_count(path, chunks)
    return data, metadata


def _importance(path: Path, tensors: dict[str, ReaderTensor], base: str) -> np.ndarray:
    """One tensor's importance per input column: sums / counts, 1 where nothing was counted."""
    sums_t, counts_t = tensors[base + ".in_sum2"], tensors.get(base + ".counts")
    where = f"--imatrix {path}: {printable(base)}"
    if counts_t is None:
        raise UserError(f"{where} has sums but no counts; the file is damaged")
    if sums_t.tensor_type != F32 or counts_t.tensor_type != F32:  # llama-imatrix writes both as F32
        raise UserError(
            f"{where} is stored as {sums_t.tensor_type.name} sums and {counts_t.tensor_type.name} counts, "
            "not F32; the file is damaged"
        )
    sums = np.asarray(sums_t.data, dtype=np.float32).reshape(-1)
    counts = np.asarray(counts_t.data, dtype=np.float32).reshape(-1)
    if counts.size == 0 or sums.size == 0 or sums.size % counts.size:
        raise UserError(
            f"{where} has {sums.size} sums for {counts.size} counts, not a whole number per count; "
            "the file is damaged"
        )
    if not (np.isfinite(sums).all() and np.isfinite(counts).all() and (sums >= 0).all()):
        raise UserError(
            f"{where} holds values that are not finite, non-negative numbers; the file is damaged"
        )
    per = sums.reshape(counts.size, -1)
    with np.errstate(over="ignore"):  # a huge sum over a tiny count: refused just below
        importance = np.where(counts[:, None] > 0, per / np.where(counts > 0, counts, 1.0)[:, None], 1.0)
    if not np.isfinite(importance).all():
        raise UserError(f"{where} has sums too large for its counts; the file is damaged")
    return np.asarray(importance.reshape(-1), dtype=np.float32)


def _imatrix_count(path: Path, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UserError(
            f"--imatrix {path}: metadata imatrix.chunk_count is {str(value)[:40]!r}, not a count; "
            "the file is damaged"
        )
    return int(value)


def provenance_metadata(origin: str) -> dict[str, str | int]:
    """What `kvprobe doctor` reads later to tell a file made from quantized weights."""
    return {SOURCE_TYPE_KEY: origin}
