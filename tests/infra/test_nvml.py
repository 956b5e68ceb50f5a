"""`nvml()`, the one way kvprobe opens NVML, and its three readers (the host's GPUs, the first
GPU's free memory, a server's GPU memory): without an NVIDIA driver each says "nothing" (None or
an empty list), never an error; with one, NVML is open inside the block and shut after it, however
the block ends. Whether NVML opens here is asked of pynvml directly, not of the code under test."""

from __future__ import annotations

import os
import sys

import pynvml
import pytest

from kvprobe.engine.server.process import process_vram_mib
from kvprobe.infra.nvml import nvml
from kvprobe.infra.provenance import gpus, host_info
from kvprobe.weights.memory import gpu_free_bytes


def _init_error() -> str | None:
    """Why NVML does not open here, as pynvml says it; None where it opens."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return str(error) or type(error).__name__
    pynvml.nvmlShutdown()
    return None


def _is_open() -> bool:
    try:
        pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError_Uninitialized:
        return False
    return True


def test_without_a_driver_nvml_is_none_and_every_reader_says_nothing() -> None:
    said = _init_error()
    if said is None:
        pytest.skip("NVML opens here (an NVIDIA driver is present): the path without one is not reachable")
    print(f"NVML does not open here ({said}): checking the path without a driver")
    with nvml() as lib:
        assert lib is None
    assert gpus() == []
    assert host_info()["gpus"] == []
    assert gpu_free_bytes() is None
    assert process_vram_mib(os.getpid()) is None


def test_with_a_driver_nvml_is_open_in_the_block_and_shut_after_it() -> None:
    said = _init_error()
    if said is not None:
        pytest.skip(f"NVML does not open here ({said}): an NVIDIA driver is needed")
    with nvml() as lib:
        assert lib is pynvml
        assert _is_open()
        count = int(lib.nvmlDeviceGetCount())
    assert not _is_open(), "nvml() left NVML initialised"
    found = gpus()
    assert [g["index"] for g in found] == list(range(count))
    assert all(g["memory_gb"] > 0 and g["name"] and g["driver"] for g in found)
    free = gpu_free_bytes()
    assert (free is not None and free > 0) if count else free is None
    assert not _is_open(), "a reader left NVML initialised"


def test_nvml_is_shut_when_the_block_raises() -> None:
    said = _init_error()
    if said is not None:
        pytest.skip(f"NVML does not open here ({said}): an NVIDIA driver is needed")

    def no_such_device() -> None:
        with nvml() as lib:
            assert lib is not None
            lib.nvmlDeviceGetHandleByIndex(10_000)  # an NVMLError leaves the block

    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        no_such_device()
    assert not _is_open(), "nvml() left NVML initialised after an error"


def test_an_error_in_the_block_carries_no_nvml_context() -> None:
    """Whatever NVML said on opening, an error of the caller's block is its own (no "During
    handling of NVMLError" above a user's traceback)."""
    with pytest.raises(ValueError, match="the block's own") as raised, nvml():
        raise ValueError("the block's own")
    assert raised.value.__context__ is None


def test_without_nvidia_ml_py_nvml_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-ml-py uninstalled (an import that fails, as Python does for a missing package)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with nvml() as lib:
        assert lib is None
    assert gpus() == []
