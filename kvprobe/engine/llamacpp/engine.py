"""`ENGINE`: llama.cpp in this process as kvprobe.api.engine's Engine (and Quantizer), the
object the registry hands out as "llamacpp"."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from kvprobe.api.engine import Engine, EngineOptions, KernelDecision
from kvprobe.engine.llamacpp import kernel_check, tools
from kvprobe.engine.llamacpp.context import FIXED_SETTINGS
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import UserError


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python's low-level API, in this process."""

    name = "llamacpp"

    @property
    def fixed_settings(self) -> Mapping[str, object]:
        return FIXED_SETTINGS

    def load(self, path: Path, *, n_gpu_layers: int, n_threads: int | None, use_extra_bufts: bool) -> Model:
        return Model(path, n_gpu_layers=n_gpu_layers, n_threads=n_threads, use_extra_bufts=use_extra_bufts)

    def runtime_info(self) -> dict[str, object]:
        return tools.runtime_info()

    def configured(self, options: EngineOptions) -> Engine:
        if options != EngineOptions():
            raise UserError("the in-process engine takes no server options: drop --llama-server/--server")
        return self

    def gpu_offload_supported(self) -> bool:
        return tools.gpu_offload_supported()

    def check_kernels(
        self,
        paths: Sequence[Path],
        *,
        n_gpu_layers: int,
        n_threads: int | None,
        no_repack: bool,
        on_check: Callable[[Path], None] | None = None,
    ) -> tuple[KernelDecision, str | None]:
        """kernel_check.check_models; the line is the fallback's (a crash) or the reason (a
        check that said nothing)."""
        decision, system_info = kernel_check.check_models(
            paths, n_gpu_layers=n_gpu_layers, n_threads=n_threads, no_repack=no_repack, on_check=on_check
        )
        if decision.check == "crashed":
            return decision, kernel_check.fallback_message(decision, system_info)
        if decision.check == "inconclusive":
            return decision, decision.reason
        return decision, None

    # Quantizer ---------------------------------------------------------------------
    def ftype_id(self, name: str) -> int | None:
        return tools.ftype_id(name)

    def quantize(
        self,
        src: Path,
        dst: Path,
        ftype: int,
        *,
        allow_requantize: bool,
        pure: bool,
        n_threads: int,
        imatrix: Mapping[str, np.ndarray] | None = None,
        metadata: Mapping[str, str | int] | None = None,
    ) -> None:
        tools.quantize(
            src, dst, ftype, allow_requantize=allow_requantize, pure=pure, n_threads=n_threads,
            imatrix=imatrix, metadata=metadata,
        )  # fmt: skip


ENGINE = LlamaCppEngine()
