"""KV cache types and configurations (plain data; no llama.cpp import)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvprobe.infra.errors import UserError, did_you_mean

# GGML type ids, from ggml.h (stable across llama.cpp versions).
GGML_TYPE_IDS: dict[str, int] = {
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
UNQUANTIZED = frozenset({"f16", "bf16"})


def check_cache_type(name: str) -> str:
    """Normalise a cache type name or raise a one-line UserError."""
    key = name.strip().lower()
    if key not in GGML_TYPE_IDS:
        choices = " ".join(GGML_TYPE_IDS)
        raise UserError(
            f"unknown cache type {name!r}{did_you_mean(name, GGML_TYPE_IDS)}: choose one of {choices}"
        )
    return key


@dataclass(frozen=True)
class CacheConfig:
    """One KV cache configuration: the K and V types."""

    type_k: str
    type_v: str

    @property
    def id(self) -> str:
        """Stable identifier: 'q4_0' when K and V agree, 'k=q4_0,v=f16' otherwise."""
        if self.type_k == self.type_v:
            return self.type_k
        return f"k={self.type_k},v={self.type_v}"

    @property
    def v_quantized(self) -> bool:
        return self.type_v not in UNQUANTIZED

    @property
    def k_quantized(self) -> bool:
        return self.type_k not in UNQUANTIZED


def check_flash_attn(configs: Iterable[CacheConfig], flash_attn: bool) -> None:
    """llama.cpp cannot create a context with a quantized V cache without flash attention:
    the one place that rule is checked."""
    if flash_attn:
        return
    for c in configs:
        if c.v_quantized:
            raise UserError(
                f"cache {c.id}: a quantized V cache needs flash attention: drop --no-flash-attn "
                "or use an f16/bf16 V cache"
            )


def parse_config_id(config_id: str) -> CacheConfig:
    """Inverse of CacheConfig.id."""
    if config_id.startswith("k="):
        k_part, v_part = config_id.split(",", 1)
        return CacheConfig(check_cache_type(k_part[2:]), check_cache_type(v_part[2:]))
    name = check_cache_type(config_id)
    return CacheConfig(name, name)


TEXT_ROWS = "(text)"  # rows from the document's own text (repetition's calibration level)
NULL_ROWS = "(null)"  # rows from a second context with the reference's settings (the null check)


@dataclass(frozen=True)
class ConfigId:
    """The name of one configuration in items, summaries and tables: the cache types, and in
    the weights-vs-KV design which model's weights ("ref" or "test") ran them.

    Its text form is what result files store: "q4_0", "k=q4_0,v=f16", "ref:q4_0"."""

    type_k: str
    type_v: str
    weights: str | None = None

    @classmethod
    def of(cls, cache: CacheConfig, weights: str | None = None) -> ConfigId:
        return cls(cache.type_k, cache.type_v, weights)

    @property
    def cache(self) -> CacheConfig:
        return CacheConfig(self.type_k, self.type_v)

    def __str__(self) -> str:
        cache = self.cache.id
        return f"{self.weights}:{cache}" if self.weights else cache

    @classmethod
    def parse(cls, text: str) -> ConfigId:
        """Inverse of str(); a UserError for text that names no configuration."""
        weights, sep, cache = text.rpartition(":")
        parsed = parse_config_id(cache)
        return cls(parsed.type_k, parsed.type_v, weights if sep else None)
