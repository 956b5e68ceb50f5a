"""Check kvprobe's KL divergence against llama.cpp's own `llama-perplexity --kl-divergence`.

Both evaluate the same tokens with the same context size, the same batch shape and the same
KV layout (kvprobe's contexts keep every sliding-window cell and a unified cache, so
llama-perplexity gets `--swa-full -kvu`; `--llama-default-layout` drops them to show what the
layout alone changes):
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

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine import get_engine
from kvprobe.infra.provenance import default_model_path
from kvprobe.probes.divergence.metrics import DivergenceRecorder


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


def llama_perplexity_kl(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """KL as llama-perplexity computes it, to explain any gap: the base log-probs are stored
    as uint16 over [max - 16, max] (lower logits clamped), and terms whose stored base
    log-prob is <= -16 are left out of the sum."""
    out = np.empty(len(ref))
    for start in range(0, len(ref), 16):
        x = np.asarray(ref[start : start + 16], dtype=np.float32)
        y = np.asarray(test[start : start + 16], dtype=np.float32)
        mx = x.max(axis=1, keepdims=True)
        mn = np.maximum(x.min(axis=1, keepdims=True), mx - 16)
        lse_x = np.log(np.exp(x - mx).sum(axis=1, keepdims=True, dtype=np.float64))
        scale = (mx - mn) / 65535
        stored = np.where(x > mn, np.rint((x - mn) / scale), 0)
        lp_base = scale * stored + (mn - mx - lse_x)
        lse_y = y.max(axis=1, keepdims=True) + np.log(
            np.exp(y - y.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True, dtype=np.float64)
        )
        terms = np.exp(lp_base) * (lp_base - (y - lse_y))
        out[start : start + 16] = np.where(lp_base > -16, terms, 0).sum(axis=1)
    return out


def kvprobe_side(
    model_path: Path, chunks: np.ndarray, cache: str, *, batch: int, threads: int
) -> dict[str, float]:
    n_ctx = chunks.shape[1]
    # the same kernel check as `kvprobe run`, so a host whose AMX kernels crash still runs it
    engine = get_engine()
    kernels, _ = engine.check_kernels([model_path], n_gpu_layers=0, n_threads=threads, no_repack=False)
    model = engine.load(model_path, n_gpu_layers=0, n_threads=threads, use_extra_bufts=kernels.extra_bufts)
    settings = ContextSettings(
        n_ctx=n_ctx, chunk=batch, n_threads=threads, flash_attn=True, attn_rotation=True
    )
    first = n_ctx // 2
    kld, top1, approx, nll_ref = [], [], [], []
    recorder = DivergenceRecorder("f16")
    with (
        model.context(CacheConfig("f16", "f16"), settings) as ref,
        model.context(CacheConfig(cache, cache), settings) as test,
    ):

        def evaluate(c: int, tokens: list[int]) -> None:
            ref.reset()
            test.reset()
            model.feed_lockstep(
                [ref, test],
                tokens,
                lambda pos0, lg: on_chunk(c, tokens, pos0, lg),
            )

        def on_chunk(c: int, tokens: list[int], pos0: int, lg: list[np.ndarray]) -> None:
            recorder.add_chunk(c, tokens, pos0, {"f16": lg[0], cache: lg[1]})
            skip = max(0, first - pos0)
            n = max(0, min(len(lg[0]), n_ctx - 1 - pos0) - skip)
            if n:
                approx.append(llama_perplexity_kl(lg[0][skip : skip + n], lg[1][skip : skip + n]))

        for c, chunk in enumerate(chunks):
            tokens = [int(t) for t in chunk]
            if model.bos is not None:
                tokens[0] = model.bos  # as llama-perplexity does for the first batch of a chunk
            evaluate(c, tokens)
            arrays = recorder.records[(cache, c)].arrays()
            # row j predicts token j + 1; llama-perplexity scores rows first .. n_ctx - 2
            kld.append(arrays["kld"][first:])
            top1.append(arrays["top1_agree"][first:])
            nll_ref.append(recorder.records[("f16", c)].arrays()["nll"][first:])
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
        "kld_mean_llama_approx": float(np.concatenate(approx).mean()),
        "kld_p99_llama_approx": float(np.quantile(np.concatenate(approx), 0.99)),
        "ppl_base": float(np.exp(np.concatenate(nll_ref).mean())),
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
    ap.add_argument(
        "--reuse", action="store_true", help="reuse llama-perplexity's base file and log in --workdir"
    )
    ap.add_argument(
        "--llama-default-layout",
        action="store_true",
        help="run llama-perplexity without --swa-full -kvu (its own defaults)",
    )
    args = ap.parse_args()
    model_path = Path(args.model) if args.model else default_model_path()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kvprobe-kl-"))
    common = ["-m", str(model_path), "-c", str(args.ctx), "-b", str(args.batch), "-ub", str(args.batch),
              "-fa", "on", "-t", str(args.threads)]  # fmt: skip
    if not args.llama_default_layout:
        common += ["--swa-full", "-kvu"]
    layout = "default" if args.llama_default_layout else "swafull"
    base = work / f"base-{layout}.kld"
    log = work / f"llama-perplexity-{args.cache}-{layout}.log"
    if args.reuse and log.is_file():
        out = log.read_text()
    else:
        if not (args.reuse and base.is_file()):
            llama_perplexity(args.llama_perplexity, [*common, "-f", args.text, "--chunks", str(args.chunks),
                                                     "--kl-divergence-base", str(base)])  # fmt: skip
        test = [*common, "-ctk", args.cache, "-ctv", args.cache, "--kl-divergence-base", str(base)]
        out = llama_perplexity(args.llama_perplexity, [*test, "--kl-divergence"])
        log.write_text(out)
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
    print(
        f"kvprobe with llama-perplexity's approximation (base clamped at max - 16, uint16): "
        f"mean KL {ours['kld_mean_llama_approx']:.6f}, 99th percentile {ours['kld_p99_llama_approx']:.6f}"
    )
    (ln_ppl_base,) = [float(v) for v in re.findall(r"Mean PPL\(base\)\s+:\s+([\d.]+)", out)] or [float("nan")]
    print(f"reference perplexity: llama-perplexity {ln_ppl_base:.4f}, kvprobe {ours['ppl_base']:.4f}")
    print(f"positions: {ours['positions']} (kvprobe), chunks {n_chunk} of {n_ctx}; work dir {work}")


if __name__ == "__main__":
    main()
