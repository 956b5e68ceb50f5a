"""kvprobe: measure how KV-cache quantization degrades long-context behaviour in llama.cpp."""

__version__ = "0.1.0"
