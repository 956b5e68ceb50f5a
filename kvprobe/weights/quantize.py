"""`kvprobe quantize`: weight variants of one model, made by llama.cpp's own quantizer, to
measure the weights' share of the damage. Plans and checks everything before the first file is
written; llama.cpp does the work (engine.quantize)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from kvprobe.errors import UserError, did_you_mean
from kvprobe.weights.doctor import QUANT_TAG, SOURCE_TYPE_KEY, UNQUANTIZED_FILE_TYPES, read_facts, short_type

DEQUANTIZED = ("F16", "BF16", "F32")


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
    force: bool,
    ftype_of: dict[str, int],
    pure: bool = False,
) -> tuple[list[Job], str]:
    """One job per type, or a one-line UserError before anything is written. `ftype_of` maps
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
        if dst.exists() and not force:
            raise UserError(f"{dst} already exists: remove it, choose --out-dir, or pass --force")
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
    metadata llama-quantize writes into the model."""
    if not path.is_file():
        raise UserError(f"--imatrix {path}: file not found")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, IndexError, OSError, EOFError):
        raise UserError(
            f"--imatrix {path} is not a GGUF imatrix; convert a legacy .dat file with "
            f"`llama-imatrix --in-file {path.name} -o {path.stem}.gguf`"
        ) from None
    tensors = {t.name: t for t in reader.tensors}
    data: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        counts_t = tensors.get(base + ".counts")
        if counts_t is None:
            raise UserError(f"--imatrix {path}: {base} has sums but no counts; the file is damaged")
        sums = np.asarray(t.data, dtype=np.float32).reshape(-1)
        counts = np.asarray(counts_t.data, dtype=np.float32).reshape(-1)
        per = sums.reshape(len(counts), -1)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        data[base] = np.where(counts[:, None] > 0, per / safe, 1.0).reshape(-1)
    if not data:
        raise UserError(f"--imatrix {path}: no importance data (no *.in_sum2 tensors)")
    datasets = reader.get_field("imatrix.datasets")
    chunks = reader.get_field("imatrix.chunk_count")
    metadata: dict[str, str | int] = {
        "quantize.imatrix.file": path.name,
        "quantize.imatrix.entries_count": len(data),
    }
    if datasets is not None and datasets.contents():
        metadata["quantize.imatrix.dataset"] = str(datasets.contents()[0])
    if chunks is not None:
        metadata["quantize.imatrix.chunks_count"] = int(chunks.contents())
    return data, metadata


def provenance_metadata(origin: str) -> dict[str, str | int]:
    """What `kvprobe doctor` reads later to tell a file made from quantized weights."""
    return {SOURCE_TYPE_KEY: origin}
