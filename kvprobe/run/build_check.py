"""`--reference in-process`: before the cache comparison is trusted, is the llama-server's f16
what kvprobe's own llama.cpp computes? Both engines are fed one document in the server's
request sequence (the same batches), their top n read at every sampled position, and
kvprobe.probes.divergence.build_check turns the two into the result's `runtime.build_check`
and its sentence. It runs after the probes, while the server engine is still loaded: its f16
server is a context of its own (a spawned one is started for it; an attached one is the
reference server)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from kvprobe import __version__
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings, Model, TopLogprobs, TopRequest
from kvprobe.api.registry import margins
from kvprobe.engine import DEFAULT_ENGINE, get_engine
from kvprobe.infra.errors import EngineError, UserError
from kvprobe.plan.documents import plant
from kvprobe.probes.divergence.build_check import build_check
from kvprobe.probes.divergence.probe import DivergenceSpec
from kvprobe.run.request import RunRequest

IN_PROCESS = "in-process"
MAX_TOKENS = 2048  # 512 positions at the default stride: a bound tight against the 1e-3 floor
F16 = CacheConfig("f16", "f16")


def _settings(request: RunRequest, tokens: int, n_threads: int) -> ContextSettings:
    return ContextSettings(
        n_ctx=-(-(tokens + 1) // 256) * 256,
        chunk=request.scenario.plan.chunk,
        n_threads=n_threads,
        flash_attn=request.settings.flash_attn,
        attn_rotation=request.settings.attn_rotation,
        n_seq_max=1,
    )


def _rows(model: Model, settings: ContextSettings, top: TopRequest) -> TopLogprobs:
    """The top-n rows of one f16 context fed the whole document in the server's request sequence."""
    found: list[TopLogprobs] = []
    with model.context(F16, settings) as context:
        model.feed_lockstep([context], top.document, top=top, on_top=found.extend)
    return found[0]


def run_build_check(
    request: RunRequest, server: Model, console: Console, *, stopped: str | None = None
) -> dict[str, Any] | None:
    """The build check's record (None unless the run asked for `--reference in-process`). A
    check that cannot be made (the run stopped before it, kvprobe's llama.cpp cannot load the
    model, memory, the server) is recorded as failed with its reason: the run's measurements
    are kept either way."""
    if request.reference != IN_PROCESS:
        return None
    if stopped is not None:
        return {"status": "failed", "reason": f"the run stopped ({stopped}) before it"}
    try:
        return _build_check(request, server, console)
    except (UserError, EngineError) as failure:
        reason = str(failure).split("\n")[0]
        console.print(f"build check: not made: {reason}", markup=False, highlight=False, soft_wrap=True)
        return {"status": "failed", "reason": reason}


def _build_check(request: RunRequest, server: Model, console: Console) -> dict[str, Any]:
    spec = request.scenario.spec(DivergenceSpec)
    tokens = min(request.settings.ctx, MAX_TOKENS)
    console.print(
        f"build check: {tokens:,} tokens through kvprobe's own llama.cpp and the server, both f16",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    started = time.perf_counter()
    engine = get_engine(DEFAULT_ENGINE)
    path = request.model_paths[0]
    kernels, _ = engine.check_kernels(
        [path], n_gpu_layers=request.gpu_layers, n_threads=request.threads, no_repack=request.no_repack
    )
    with engine.load(
        path, n_gpu_layers=request.gpu_layers, n_threads=request.threads, use_extra_bufts=kernels.extra_bufts
    ) as local:
        document = plant(local, request.scenario.haystack, 0, tokens, [], seed=request.settings.seed).tokens
        top = TopRequest(document, spec.server_stride, spec.server_n_probs)
        settings = _settings(request, tokens, local.n_threads)
        mine = _rows(local, settings, top)
        info, n_vocab = engine.runtime_info(), local.n_vocab
    theirs = _rows(server, settings, top)
    margin = request.margins.get("kld_mean", margins()["kld_mean"])  # --margin, else the metric's own
    check = build_check(mine, theirs, margin=margin, seed=request.settings.seed)
    check.update({
        "tokens": tokens,
        "stride": top.stride,
        "n_probs": min(top.n_probs, n_vocab),
        "in_process": {
            "kvprobe": __version__,
            "llama_cpp_python": info.get("llama_cpp_python"),
            "llama_cpp_version": info.get("llama_cpp_version"),
            "llama_cpp_build": info.get("llama_cpp_build"),
            "extra_bufts": kernels.extra_bufts,
        },
        "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    return check  # its sentence opens the run's report (kvprobe.views.terminal)
