"""What `--no-repack` (llama.cpp's extra buffer types off) costs: tokens/s with and without.

Like `llama-bench -p 512 -n 32 -d 2048`: each cache type's context first holds `--depth`
tokens of the prose haystack; then a 512-token batch (prompt processing) and 32 single-token
steps (generation) are decoded in a fork of that document, `--reps` times each, and the
median time inside `llama_decode` gives tokens/s. Both settings load the same model file.

    python benchmarks/no_repack.py [--model PATH] [--depth 2048] [--cache f16 --cache q4_0]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import Context, ContextSettings, Model
from kvprobe.engine import get_engine
from kvprobe.infra.provenance import cpu_name, default_model_path
from kvprobe.plan.haystack import prose_essays

BATCH = 512


def _rate(ctx: Context, step: Callable[[], object]) -> float:
    busy, evaluated = ctx.busy_s, ctx.tokens_evaluated
    step()
    return (ctx.tokens_evaluated - evaluated) / (ctx.busy_s - busy)


def measure(model: Model, cache: str, depth: int, n_gen: int, reps: int) -> tuple[float, float]:
    """Median prompt-processing and generation tokens/s at `depth`."""
    tokens = [model.bos or 0, *model.tokenize("\n\n".join(prose_essays()))]
    if len(tokens) < depth + BATCH:
        raise SystemExit(f"the prose haystack has only {len(tokens)} tokens; lower --depth")
    settings = ContextSettings(
        n_ctx=depth + BATCH + n_gen + 256, chunk=BATCH, n_threads=model.n_threads,
        flash_attn=True, attn_rotation=True,
    )  # fmt: skip
    batch = tokens[depth : depth + BATCH]
    with model.context(CacheConfig(cache, cache), settings) as ctx:
        ctx.feed(tokens[:depth])
        ctx.score(batch[:-1], batch[-1:])  # warm-up: page in the weights, untimed
        pp = [_rate(ctx, lambda: ctx.score(batch[:-1], batch[-1:])) for _ in range(reps)]
        tg = [_rate(ctx, lambda: ctx.generate(batch[:1], n_gen)) for _ in range(reps)]
    return statistics.median(pp), statistics.median(tg)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--cache", action="append", default=[])
    parser.add_argument("--depth", type=int, default=2048)
    parser.add_argument("--gen", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--twice", action="store_true", help="on, off, on, off: the second pair is reported")
    args = parser.parse_args()
    path = args.model or default_model_path()
    caches = args.cache or ["f16", "q4_0"]
    results: dict[tuple[bool, str], tuple[float, float]] = {}
    for extra_bufts in (True, False, True, False) if args.twice else (True, False):
        load = get_engine().load
        with load(path, n_gpu_layers=0, n_threads=args.threads, use_extra_bufts=extra_bufts) as model:
            buffers = ", ".join(f"{k} {v:.1f} MiB" for k, v in model.weight_buffers.items())
            print(f"extra_bufts={extra_bufts}: weights in {buffers}")
            for cache in caches:
                pp, tg = measure(model, cache, args.depth, args.gen, args.reps)
                print(f"  {cache}: pp512 {pp:.0f} t/s, tg {tg:.1f} t/s")
                results[extra_bufts, cache] = (pp, tg)
    print(f"\n{path.name} on {cpu_name()}, depth {args.depth}, median of {args.reps}")
    print("| cache | pp512 t/s | pp512 --no-repack | change | tg t/s | tg --no-repack | change |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cache in caches:
        (pp_on, tg_on), (pp_off, tg_off) = results[True, cache], results[False, cache]
        print(
            f"| {cache} | {pp_on:.0f} | {pp_off:.0f} | {pp_off / pp_on - 1:+.1%} "
            f"| {tg_on:.1f} | {tg_off:.1f} | {tg_off / tg_on - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
