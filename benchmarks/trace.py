"""Record the llama.cpp calls of a `kvprobe run`, for benchmarks/replay.py to time bare (P2:
kvprobe's wall time over llama.cpp's own for the same calls).

    python benchmarks/trace.py DIR run --cache q4_0 --ctx 8192     # `kvprobe run ...`, traced
    python benchmarks/replay.py DIR

Every context of the run is a `TracedContext`, installed through the llama.cpp engine's one
hook for this (`Model.context_class`): it records each call that changes llama.cpp's state
(every batch's tokens, positions, sequences and logits flags; sequence copies and removals;
clears) and, when closed, writes them to DIR with what it takes to create the same context
again (model, threads, GPU layers, weight buffers, cache types, settings). Nothing in kvprobe
knows of it; the kernel check's child process is never traced (a test decode, no run's).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kvprobe.cli import main as kvprobe_main
from kvprobe.engine.llamacpp.context import Context
from kvprobe.engine.llamacpp.model import Model

Op = tuple[Any, ...]  # ("decode", tokens, positions, seqs, wanted) | ("cp", ...) | ("rm", ...) | ("clear",)
_written = itertools.count()


class TracedContext(Context):
    """A llama.cpp context that records its state-changing calls and writes them when closed."""

    folder: ClassVar[Path] = Path("trace")  # set by `tracing`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ops: list[Op] | None = []
        super().__init__(*args, **kwargs)

    def _clear(self) -> None:
        super()._clear()
        self._record(("clear",))

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        super()._seq_cp(src, dst, p0, p1)
        self._record(("cp", src, dst, p0, p1))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        super()._seq_rm(seq, p0, p1)
        self._record(("rm", seq, p0, p1))

    def _decode_rows(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], want: Sequence[int]
    ) -> None:
        super()._decode_rows(tokens, positions, seqs, want)
        wanted = np.isin(np.arange(len(tokens)), list(set(want)))
        self._record(("decode", np.array(tokens, np.int32), np.array(positions, np.int32),
                      np.array(seqs, np.int32), wanted))  # fmt: skip

    def _record(self, op: Op) -> None:
        if self.ops is not None:
            self.ops.append(op)

    def close(self) -> None:
        if self.ops is not None:
            self._write(self.folder)
        super().close()

    def _write(self, folder: Path) -> None:
        m = self.model
        record = {"cache": [self.cache.type_k, self.cache.type_v], "settings": asdict(self.settings),
                  "model": str(m.path), "n_threads": m.n_threads, "n_gpu_layers": m.n_gpu_layers,
                  "extra_bufts": m.use_extra_bufts, "busy_s": self.busy_s, "ops": self.ops}  # fmt: skip
        self.ops = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"{os.getpid()}-{next(_written)}.pkl").open("wb") as fh:
                pickle.dump(record, fh)
        except OSError as exc:  # a benchmark's aid: never the reason a run loses its results
            print(f"trace: could not write the trace to {folder}: {exc}", file=sys.stderr)


@contextlib.contextmanager
def tracing(folder: Path) -> Iterator[None]:
    """Every llama.cpp context opened inside the block is traced into `folder`."""
    previous = Model.context_class
    TracedContext.folder = folder
    Model.context_class = TracedContext
    try:
        yield
    finally:
        Model.context_class = previous


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "run":
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(sys.argv[1])
    sys.argv = [sys.argv[0], *sys.argv[2:]]  # what kvprobe records as its command
    with tracing(folder):
        return kvprobe_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
