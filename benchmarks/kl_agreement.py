"""Check kvprobe's KL divergence against llama.cpp's own `llama-perplexity --kl-divergence`.

Both evaluate the same tokens with the same context size and the same batch shape:
llama-perplexity's base file holds the tokens; each chunk of n_ctx tokens starts with BOS,
and the second half of each chunk is scored (positions n_ctx/2 .. n_ctx-2). kvprobe
evaluates those chunks with its lockstep engine (f16 reference and the test cache in
step) and pools the same positions.

    python benchmarks/kl_agreement.py --llama-perplexity PATH/llama-perplexity \
        --text FILE --ctx 8192 --chunks 2 --cache q4_0

This is a check to run by hand (it needs a llama-perplexity binary built from the llama.cpp
sources that llama-cpp-python vendors); CI does not run it.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from kvprobe.cache_types import CacheConfig
from kvprobe.engine import ContextSettings, Model, feed_lockstep
from kvprobe.probes.divergence import DivergenceRecorder
from kvprobe.provenance import default_model_path


def read_base_tokens(path: Path) -> tuple[int, int, np.ndarray]:
    with path.open("rb") as fh:
        if fh.read(8) != b"_logits_":
            raise SystemExit(f"{path} is not a llama-perplexity base file")
        (n_ctx,) = struct.unpack("<I", fh.read(4))
        _n_vocab, n_chunk = struct.unpack("<ii", fh.read(8))
        tokens = np.frombuffer(fh.read(4 * n_ctx * n_chunk), dtype="<i4")
    return n_ctx, n_chunk, tokens


def llama_perplexity(binary: str, args: list[str]) -> str:
    proc = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"llama-perplexity failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def parse_llama(text: str) -> dict[str, float]:
    def grab(pattern: str) -> list[float]:
        found = re.search(pattern, text)
        if not found:
            raise SystemExit(f"no match for {pattern!r} in llama-perplexity's output")
        return [float(g) for g in found.groups()]

    mean, unc = grab(r"Mean\s+KLD:\s+([-\d.e]+)\s+±\s+([-\d.e]+)")
    (p99,) = grab(r"99\.0%\s+KLD:\s+([-\d.e]+)")
    same, same_unc = grab(r"Same top p:\s+([-\d.e]+)\s+±\s+([-\d.e]+)")
    return {
        "kld_mean": mean,
        "kld_mean_unc": unc,
        "kld_p99": p99,
        "top1": same / 100,
        "top1_unc": same_unc / 100,
    }


def kvprobe_side(
    model_path: Path, chunks: np.ndarray, cache: str, *, batch: int, threads: int
) -> dict[str, float]:
    n_ctx = chunks.shape[1]
    model = Model(model_path, n_threads=threads)
    settings = ContextSettings(
        n_ctx=n_ctx, chunk=batch, n_threads=threads, flash_attn=True, attn_rotation=True
    )
    first = n_ctx // 2
    kld, top1 = [], []
    recorder = DivergenceRecorder("f16")
    with (
        model.context(CacheConfig("f16", "f16"), settings) as ref,
        model.context(CacheConfig(cache, cache), settings) as test,
    ):

        def evaluate(c: int, tokens: list[int]) -> None:
            ref.reset()
            test.reset()
            feed_lockstep(
                [ref, test],
                tokens,
                lambda pos0, lg: recorder.add_chunk(c, tokens, pos0, {"f16": lg[0], cache: lg[1]}),
            )

        for c, chunk in enumerate(chunks):
            tokens = [int(t) for t in chunk]
            if model.bos is not None:
                tokens[0] = model.bos  # as llama-perplexity does for the first batch of a chunk
            evaluate(c, tokens)
            arrays = recorder.records[(cache, c)].arrays()
            # row j predicts token j + 1; llama-perplexity scores rows first .. n_ctx - 2
            kld.append(arrays["kld"][first:])
            top1.append(arrays["top1_agree"][first:])
    values = np.concatenate(kld)
    same = np.concatenate(top1).astype(float)
    n = len(values)
    return {
        "kld_mean": float(values.mean()),
        "kld_mean_unc": float(values.std() / np.sqrt(n - 1)),
        "kld_p99": float(np.quantile(values, 0.99)),
        "top1": float(same.mean()),
        "top1_unc": float(np.sqrt(same.mean() * (1 - same.mean()) / (n - 1))),
        "positions": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-perplexity", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--cache", default="q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keeps the (large) base file here")
    args = ap.parse_args()
    model_path = Path(args.model) if args.model else default_model_path()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kvprobe-kl-"))
    base = work / "base.kld"
    common = ["-m", str(model_path), "-c", str(args.ctx), "-b", str(args.batch), "-ub", str(args.batch),
              "-fa", "on", "-t", str(args.threads)]  # fmt: skip
    llama_perplexity(args.llama_perplexity, [*common, "-f", args.text, "--chunks", str(args.chunks),
                                             "--kl-divergence-base", str(base)])  # fmt: skip
    test = [
        *common,
        "-ctk",
        args.cache,
        "-ctv",
        args.cache,
        "--kl-divergence-base",
        str(base),
        "--kl-divergence",
    ]
    out = llama_perplexity(args.llama_perplexity, test)
    (work / "llama-perplexity.log").write_text(out)
    llama = parse_llama(out)
    n_ctx, n_chunk, tokens = read_base_tokens(base)
    chunks = tokens.reshape(n_chunk, n_ctx)
    ours = kvprobe_side(model_path, chunks, args.cache, batch=args.batch, threads=args.threads)
    print(f"{'':24}{'llama-perplexity':>28}{'kvprobe':>28}")
    for key, label in (
        ("kld_mean", "mean KL"),
        ("kld_p99", "99th percentile KL"),
        ("top1", "top-1 agreement"),
    ):
        unc = f" ± {llama[key + '_unc']:.6f}" if key + "_unc" in llama else ""
        unc2 = f" ± {ours[key + '_unc']:.6f}" if key + "_unc" in ours else ""
        print(f"{label:24}{llama[key]:>18.6f}{unc:>10}{ours[key]:>18.6f}{unc2:>10}")
        if key + "_unc" in llama:
            gap = abs(llama[key] - ours[key])
            print(f"{'':24}difference {gap:.6f} = {gap / llama[key + '_unc']:.2f} x its uncertainty")
    print(f"positions: {ours['positions']} (kvprobe), chunks {n_chunk} of {n_ctx}; work dir {work}")


if __name__ == "__main__":
    main()
