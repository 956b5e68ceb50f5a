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
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()
