"""Per-position arrays bit for bit, as the run journal keeps them (the result file rounds them:
kvprobe.result.arrays). Imports nothing of kvprobe: the probes that journal arrays use it."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def encode_exact(values: np.ndarray) -> dict[str, Any]:
    """A per-position array bit for bit (float64, bool as uint8): a resumed run's statistics
    must equal an uninterrupted run's, so the journal keeps what the result file rounds."""
    kind = "bool" if values.dtype == np.bool_ else "f8"
    raw = np.ascontiguousarray(values, dtype=np.uint8 if kind == "bool" else "<f8").tobytes()
    return {"kind": kind, "b64": base64.b64encode(raw).decode()}


def decode_exact(record: dict[str, Any]) -> np.ndarray:
    """An array `encode_exact` wrote; ValueError (binascii.Error is one) where it is damaged."""
    raw = base64.b64decode(record["b64"], validate=True)
    if record["kind"] == "bool":
        return np.frombuffer(raw, dtype=np.uint8).astype(bool)
    return np.frombuffer(raw, dtype="<f8").copy()
