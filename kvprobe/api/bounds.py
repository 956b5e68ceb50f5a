"""The bounds and shapes every typed field of a result file keeps: they keep every reader's
arithmetic finite and its loops short (kvprobe.api.result, .verdict; the probes' schema parts
through kvprobe.result.blocks)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

MAX_TOKENS = 2**31 - 1  # positions, token counts: llama.cpp's int32
MAX_CTX = 2**24  # --ctx (kvprobe takes up to 2**20): bounds what a per-position array may decompress to
MAX_LAYERS = 100_000  # kv_cache_bytes loops over the layers
MAX_DEPTH = 64  # nesting: the deepest real file is about 10 levels deep
MAX_BYTES = 2**63 - 1

Count = Annotated[int, Field(ge=0, le=MAX_TOKENS)]  # a position, a token or item count
Length = Annotated[int, Field(ge=1, le=MAX_TOKENS)]  # a context length in tokens: a checkpoint
Big = Annotated[int, Field(ge=0, le=MAX_BYTES)]  # bytes, parameters, tokens of a whole run
Look = Annotated[int, Field(ge=1, le=MAX_TOKENS)]  # a look of --until-decided, 1-based
Seconds = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Interval = Annotated[list[float], Field(min_length=2, max_length=2)]  # [lo, hi]
OpenInterval = Annotated[list[float | None], Field(min_length=2, max_length=2)]  # an end may be missing
Status = Literal["equivalent", "undecided", "worse"]
