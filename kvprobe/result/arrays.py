"""Per-position arrays in a result file: little-endian binary, zlib-compressed, base64 text."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import numpy as np

from kvprobe.errors import UserError

ARRAY_DTYPES = {"kld": "<f4", "nll": "<f4", "top1_agree": "|u1"}


def encode_array(values: np.ndarray, dtype: str) -> dict[str, Any]:
    raw = np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()
    return {"dtype": dtype, "n": len(values), "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode()}


def decode_array(record: dict[str, Any]) -> np.ndarray:
    """A per-position array back from the file; a damaged one is a UserError, not a traceback."""
    try:
        if record["dtype"] not in ARRAY_DTYPES.values():
            raise ValueError(f"unknown dtype {str(record['dtype'])[:20]!r}")
        raw = zlib.decompress(base64.b64decode(record["zlib_base64"], validate=True))
        values = np.frombuffer(raw, dtype=np.dtype(record["dtype"]))
    except (zlib.error, binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"a per-position array in the result is damaged ({type(exc).__name__}: {str(exc)[:80]}): "
            "use an intact copy of the file or run it again"
        ) from None
    if len(values) != record["n"]:
        raise UserError(f"a per-position array holds {len(values)} values, not the {record['n']} it declares")
    return values
