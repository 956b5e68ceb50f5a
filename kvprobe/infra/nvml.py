"""NVML, opened for one block: what kvprobe reads of NVIDIA GPUs (the host's GPUs, a GPU's free
memory, a server's GPU memory) goes through `nvml()`, so the optional pynvml import, its
initialisation and its shutdown are written once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def nvml() -> Iterator[Any | None]:
    """The pynvml module, initialised, for the block; None where there is no NVML to open:
    nvidia-ml-py absent, or its init failing (no NVIDIA driver or its library). Shut down
    after the block however it ends. An NVMLError raised inside the block is the caller's to
    catch (`except lib.NVMLError`): each caller says what a failed read means to it."""
    try:
        import pynvml  # here, not at the top: nvidia-ml-py is optional at run time

        lib: Any | None = pynvml
    except ImportError:
        lib = None
    if lib is None or not _opened(lib):  # outside the handlers: the block's errors carry no NVML context
        yield None
        return
    try:
        yield lib
    finally:
        lib.nvmlShutdown()


def _opened(lib: Any) -> bool:
    """NVML initialised (False: no NVIDIA driver or its library)."""
    try:
        lib.nvmlInit()
    except lib.NVMLError:
        return False
    return True
