"""Do llama.cpp's CPU kernels for "extra buffer types" work on this host?

llama.cpp's CPU backend moves quantized weights into extra buffer types at load time:
repacked layouts (REPACK) and, on Intel CPUs with AMX, AMX tiles. On some Intel Xeon VMs the
AMX kernels die with SIGSEGV on the first decode (`ldtilecfg` in `ggml_backend_amx_mul_mat`).
A crash inside llama.cpp cannot be caught in Python, so before the run decodes anything,
kvprobe decodes a few tokens of the same model in a child process. If the child dies by a
signal, the run loads its models with `use_extra_bufts = False`, which is llama.cpp's
`--no-repack`, and says so. The answer is cached per llama.cpp build, CPU and weight types,
so the check costs nothing after the first time.

The parent side (`check_models`, `decide`) runs in the run's process; the child is this module
run as `python -m kvprobe.engine.llamacpp.kernel_check`, decoding through this engine's Model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings, KernelDecision
from kvprobe.engine.llamacpp.model import Model
from kvprobe.engine.llamacpp.tools import gpu_offload_supported, runtime_info
from kvprobe.infra.memo import memo_path, read_memo, write_memo
from kvprobe.weights.doctor import read_facts

# Weight types that llama.cpp's CPU extra buffer types handle: ggml-cpu/repack.cpp
# (ggml_repack_get_optimal_repack_type) and ggml-cpu/amx/common.h (qtype_has_amx_kernels).
# F32, F16 and BF16 weights never leave the plain CPU buffer, so they need no check.
EXTRA_BUFT_WEIGHT_TYPES = frozenset(
    {"Q1_0", "Q2_K", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS", "MXFP4"}
)
# Build features (llama_print_system_info) that turn the extra buffer types on.
EXTRA_BUFT_FEATURES = ("AMX_INT8", "REPACK")

# Tests only: "1" makes the child segfault where the kernels would (a real crash, for the
# fallback); "kill" makes it die by SIGKILL, as under the OOM killer (no verdict on kernels).
CRASH_SWITCH_ENV = "KVPROBE_TEST_KERNEL_CHECK_CRASH"
CHILD_MODULE = "kvprobe.engine.llamacpp.kernel_check"  # this module, run as the child
CHILD_TIMEOUT_S = 900.0
CHECK_CHUNK = 64  # the child decodes one 64-token batch (matrix kernels), then one token (vector)
# Deaths that a broken kernel causes; SIGKILL (the OOM killer) or SIGTERM say nothing about it.
CRASH_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT"})
NON_FINITE_EXIT = 3  # the child decoded, but the logits hold NaN or infinity

# How to get the fast path back when the AMX kernels crash. A native build (llama-cpp-python's
# default, GGML_NATIVE=ON) compiles with -march=native, which turns AMX on wherever the CPU has
# it; GGML_AMX_TILE/INT8/BF16 only take effect with GGML_NATIVE=OFF, where they default to OFF
# (llama.cpp ggml/CMakeLists.txt and ggml/src/ggml-cpu/CMakeLists.txt).
NO_AMX_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON '
    '-DGGML_AMX_INT8=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)


def build_features(system_info: str) -> set[str]:
    """Features llama.cpp reports as on, from `llama_print_system_info` ("AVX2 = 1 | ...")."""
    on: set[str] = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.partition("=")
        if sep and value.strip() not in ("", "0"):
            on.add(name.strip())
    return on


def skip_reason(features: Iterable[str], weight_types: Iterable[str], all_layers_on_gpu: bool) -> str | None:
    """Why the check cannot matter here, or None when it must run."""
    if all_layers_on_gpu:
        return "all layers are offloaded to the GPU"
    active = [f for f in EXTRA_BUFT_FEATURES if f in set(features)]
    if not active:
        return "this llama.cpp build has neither AMX nor repacked CPU kernels"
    if not set(weight_types) & EXTRA_BUFT_WEIGHT_TYPES:
        return "no weight type of the model uses the extra buffer types"
    return None


def cpu_signature() -> str:
    """The CPU model and its feature flags: kernels are chosen from these."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        import platform

        return f"{platform.machine()} {platform.processor()}"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if fields:
                break  # the first processor is enough
            continue
        if key in ("vendor_id", "model name", "cpu family", "model", "flags", "Features", "CPU part"):
            fields.setdefault(key, value.strip())
    flags = " ".join(sorted(fields.pop("flags", fields.pop("Features", "")).split()))
    return " | ".join(f"{k}={v}" for k, v in sorted(fields.items())) + f" | flags={flags}"


def cache_key(build: str, cpu: str, weight_types: Iterable[str], crash_switch: bool = False) -> str:
    text = json.dumps([build, cpu, sorted(set(weight_types)), crash_switch])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_path() -> Path:
    return memo_path("kernel-checks.json")


@dataclass(frozen=True)
class ChildOutcome:
    returncode: int | None  # None: timed out
    detail: str  # the child's last stderr line, or its report

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def run_child(
    model: Path, n_gpu_layers: int, n_threads: int | None, timeout: float, *, extra_bufts: bool = True
) -> ChildOutcome:
    """Load `model` (with or without extra buffer types) in a child process and decode a few
    tokens."""
    cmd = [sys.executable, "-m", CHILD_MODULE, str(model), "--gpu-layers", str(n_gpu_layers)]
    if n_threads:
        cmd += ["--threads", str(n_threads)]
    if not extra_bufts:
        cmd.append("--no-extra-bufts")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ChildOutcome(None, f"no answer within {timeout:.0f} s")
    lines = (proc.stdout if proc.returncode == 0 else proc.stderr).strip().splitlines()
    return ChildOutcome(proc.returncode, lines[-1] if lines else "")


def decide(
    models: Sequence[tuple[Path, Iterable[str]]],
    *,
    system_info: str,
    build: str | None = None,
    all_layers_on_gpu: bool,
    n_gpu_layers: int,
    n_threads: int | None,
    no_repack: bool,
    timeout: float = CHILD_TIMEOUT_S,
    on_check: Callable[[Path], None] | None = None,
) -> KernelDecision:
    """One setting for the whole run: extra buffer types stay on unless --no-repack asks
    otherwise, or a child decode of any of `models` (path, weight types) dies of a crash signal
    (or gives non-finite logits) while the same decode without them runs. `build` identifies
    the llama.cpp build in the cache key (default: `system_info`)."""
    if no_repack:
        return KernelDecision(False, "forced_off", "--no-repack")
    features = build_features(system_info)
    crash_switch = bool(os.environ.get(CRASH_SWITCH_ENV))
    cpu = cpu_signature()
    path = cache_path()
    passed: list[str] = []
    cached_all = True
    for model, weight_types in models:
        types = sorted(set(weight_types))
        why_not = skip_reason(features, types, all_layers_on_gpu)
        if why_not is not None:
            passed.append(f"{model.name}: not checked, {why_not}")
            continue
        key = cache_key(build or system_info, cpu, types, crash_switch)
        found = read_memo(path).get(key)
        cached = isinstance(found, dict) and isinstance(found.get("ok"), bool)
        entry: dict[str, object] = found if cached and isinstance(found, dict) else {}
        if not cached:
            cached_all = False
            if on_check is not None:
                on_check(model)
            t0 = time.perf_counter()
            outcome = run_child(model, n_gpu_layers, n_threads, timeout)
            seconds = round(time.perf_counter() - t0, 2)
            why = outcome.signal_name or outcome.detail or f"exit code {outcome.returncode}"
            if outcome.returncode == 0:
                failed = False
            elif outcome.returncode == NON_FINITE_EXIT or outcome.signal_name in CRASH_SIGNALS:
                # Blame the extra buffer types only if the same decode without them works: an
                # unrelated assert or a broken file fails both ways.
                without = run_child(model, n_gpu_layers, n_threads, timeout, extra_bufts=False)
                if without.returncode != 0:
                    return _inconclusive(model, f"{why}, and the same without extra buffer types")
                failed = True
            else:  # a hang, a kill from outside (the OOM killer) or an ordinary error
                return _inconclusive(model, why)
            entry = {
                "ok": not failed,
                "signal": outcome.signal_name or ("non-finite logits" if failed else None),
                "detail": outcome.detail,
                "weight_types": types,
                "seconds": seconds,
                "checked_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_memo(path, key, entry)
        if not entry["ok"]:
            where = ", ".join(f for f in EXTRA_BUFT_FEATURES if f in features)
            what = entry.get("signal") or "a signal"
            verb = "gave" if what == "non-finite logits" else "died with"
            reason = (
                f"a test decode of {model.name} ({'/'.join(types)} weights) with llama.cpp's {where} "
                f"CPU kernels {verb} {what}, and the same decode without them ran"
            )
            return KernelDecision(False, "crashed", reason, cached=cached)
        passed.append(f"{model.name}: a test decode with extra buffer types ran")
    checked = any("test decode" in p for p in passed)
    return KernelDecision(
        True, "passed" if checked else "skipped", "; ".join(passed), cached=checked and cached_all
    )


def build_id(runtime: dict[str, object]) -> str:
    """What identifies the llama.cpp build for the cache: versions and compiled features."""
    return " | ".join(str(runtime[k]) for k in ("llama_cpp_python", "llama_cpp_version", "llama_cpp_build"))


def _inconclusive(model: Path, why: str) -> KernelDecision:
    """Nothing learned (not cached): extra buffer types stay on, and the run says so."""
    return KernelDecision(
        True, "inconclusive", f"the kernel check of {model.name} failed ({why}); extra buffer types stay on"
    )


def check_models(
    paths: Sequence[Path],
    *,
    n_gpu_layers: int,
    n_threads: int | None,
    no_repack: bool,
    on_check: Callable[[Path], None] | None = None,
) -> tuple[KernelDecision, str]:
    """`decide` for model files: reads their weight types and this llama.cpp build's features.
    Returns the decision and the build's system info (for `fallback_message`)."""
    runtime = runtime_info()
    system_info = str(runtime["llama_cpp_build"])
    facts = [read_facts(p) for p in paths]
    on_gpu = gpu_offload_supported() and (n_gpu_layers < 0 or all(n_gpu_layers > f["n_layer"] for f in facts))
    decision = decide(
        [(p, f["weight_types"]) for p, f in zip(paths, facts, strict=True)],
        system_info=system_info,
        build=build_id(runtime),
        all_layers_on_gpu=on_gpu,
        n_gpu_layers=n_gpu_layers,
        n_threads=n_threads,
        no_repack=no_repack,
        on_check=on_check,
    )
    return decision, system_info


def fallback_message(decision: KernelDecision, system_info: str) -> str:
    """The one line a run prints when it falls back."""
    if "AMX_INT8" in build_features(system_info):
        fix = f"to get the fast path back, rebuild llama-cpp-python without AMX: {NO_AMX_BUILD}"
    else:
        fix = "no build option keeps these kernels: report it to llama.cpp with this line"
    return (
        f"{decision.reason}; running without extra buffer types (llama.cpp's --no-repack): slower, "
        f"and numbers differ from a run with them. {fix}"
    )


# --- the child ------------------------------------------------------------------------


def _child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {CHILD_MODULE}")
    parser.add_argument("model")
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-extra-bufts", action="store_true")
    args = parser.parse_args(argv)
    extra_bufts = not args.no_extra_bufts
    with Model(
        args.model, n_gpu_layers=args.gpu_layers, n_threads=args.threads, use_extra_bufts=extra_bufts
    ) as m:
        text = "The quick brown fox jumps over the lazy dog, and the number is 8995970. " * 16
        tokens = ([m.bos] if m.bos is not None else []) + m.tokenize(text)
        tokens = (tokens * (CHECK_CHUNK + 1))[: CHECK_CHUNK + 1]
        settings = ContextSettings(
            n_ctx=256, chunk=CHECK_CHUNK, n_threads=m.n_threads, flash_attn=True, attn_rotation=True
        )
        with m.context(CacheConfig("f16", "f16"), settings) as ctx:
            switch = os.environ.get(CRASH_SWITCH_ENV)
            if switch == "1" and extra_bufts:
                import ctypes

                ctypes.string_at(0)  # a real SIGSEGV, where llama.cpp's AMX kernels die
            elif switch == "kill":
                os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no verdict on kernels
            logits = ctx.feed_logits(tokens)  # 64 tokens in one batch, then one alone
        finite = bool(np.isfinite(logits).all())
        print(json.dumps({"buffers": m.weight_buffers, "finite": finite}))
    return 0 if finite else NON_FINITE_EXIT


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
