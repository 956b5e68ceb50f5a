"""Per-position arrays in a result file: little-endian binary, zlib-compressed, base64 text."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import numpy as np

from kvprobe.infra.errors import UserError

ARRAY_DTYPES = {"kld": "<f4", "nll": "<f4", "top1_agree": "|u1"}


def encode_array(values: np.ndarray, dtype: str) -> dict[str, Any]:
    raw = np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()
    return {"dtype": dtype, "n": len(values), "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode()}


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib data of at most `limit` bytes: a few compressed bytes must not fill the memory."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data, limit + 1)
    if len(raw) > limit or inflater.unconsumed_tail:
        raise ValueError("more values than it declares")
    if not inflater.eof:
        raise ValueError("the compressed data is cut short")
    return raw


def decode_array(record: dict[str, Any]) -> np.ndarray:
    """A per-position array back from the file; a damaged one is a UserError, not a traceback."""
    try:
        if record["dtype"] not in ARRAY_DTYPES.values():
            raise ValueError(f"unknown dtype {str(record['dtype'])[:20]!r}")
        dtype = np.dtype(record["dtype"])
        if not isinstance(record["n"], int) or record["n"] < 0:
            raise ValueError("n is not a count")
        raw = _inflate(base64.b64decode(record["zlib_base64"], validate=True), record["n"] * dtype.itemsize)
        values = np.frombuffer(raw, dtype=dtype)
    except (zlib.error, binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"a per-position array in the result is damaged ({type(exc).__name__}: {str(exc)[:80]}): "
            "use an intact copy of the file or run it again"
        ) from None
    if len(values) != record["n"]:
        raise UserError(f"a per-position array holds {len(values)} values, not the {record['n']} it declares")
    return values
