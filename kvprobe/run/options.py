"""`kvprobe run`'s options: its section of the command line (`add_parser`), the parser that
reads a journal's or a sweep cell's words back (`run_parser`), and the option types and options
other commands share (`--ctx`, `--time-budget`, `--margin`). Here, in the pipeline's package,
so that a sweep checks each cell's words with the very parser `kvprobe run` uses, without
importing the command line above it."""

from __future__ import annotations

import argparse
import re

from kvprobe.infra.parser import Parser, Subparsers, root_parser

MIN_CTX = 256
MAX_CTX = 1 << 20  # the longest contexts GGUF models ship with; beyond it is a typo, not a plan


def ctx_tokens(text: str) -> int:
    """--ctx: a whole number of tokens from MIN_CTX to MAX_CTX."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ctx must be a whole number of tokens, got {text!r}") from None
    if value < MIN_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at least {MIN_CTX} tokens, got {value}")
    if value > MAX_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at most {MAX_CTX} tokens, got {value}")
    return value


def duration(text: str) -> float:
    """ "15m", "1h30m", "90s" or plain seconds -> seconds."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"--time-budget must be longer than zero, got {text!r}")
    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or parts is None or not any(parts.groups()):
        raise argparse.ArgumentTypeError(
            f"--time-budget takes a duration such as 15m, 2h or 90s, got {text!r}"
        )
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"--time-budget must be longer than zero, got {text!r}")
    return seconds


def margin_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--margin",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="equivalence margin for the verdict (repeatable; defaults accuracy=0.05, answer_logprob=0.25 "
        "nats, kld_mean=0.02 and kld_p999=0.5 nats, upper bounds for KL)",
    )


RUN_DESCRIPTION = """\
Measure whether quantized KV caches lose what the f16 cache keeps, on one GGUF
model, from the first tokens up to --ctx: needles, repetition and divergence,
one pass through llama.cpp, then the decision (the cheapest cache shown
equivalent to f16, its memory and flags). Without --cache it measures the usual
ladder, q8_0 and q4_0 against f16 (--cache f16 alone: f16 only). Before it
starts it says what it needs in memory and, after its first unit, how long it
takes."""

# Wrapped at 78 columns: RawDescriptionHelpFormatter keeps these lines as they are.
RUN_EXAMPLES = """\
examples:
  kvprobe run --cache q4_0 --ctx 8192
      the main job, on the default model
  kvprobe run --model ~/models/M.gguf --cache q8_0 --cache q4_0 --ctx 32768
      your own model: the two usual caches
  kvprobe run --model M.gguf --cache q4_0 --split-kv
      which half (K or V) is at fault
  kvprobe run --model M.gguf --until-decided
      stop once every cache is decided
  kvprobe run --llama-server ~/llama.cpp/build/bin/llama-server \\
      --model M.gguf --cache q4_0
      through your own llama-server build
  kvprobe run --resume results/x.json.journal.jsonl
      continue an interrupted run"""


def add_parser(subparsers: Subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a scenario across KV cache types and context lengths",
        description=RUN_DESCRIPTION,
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_compared_options(run)
    add_scenario_options(run)
    add_engine_options(run)
    add_server_options(run)
    add_output_options(run)


def add_compared_options(run: Parser) -> None:
    """What is compared: the models, the cache types, the context, the margins, the reference."""
    run.add_argument(
        "--model",
        action="append",
        default=[],
        help="GGUF model file (default: the embedded Gemma 3 270M Q4_K_M); give it twice, REF then TEST, "
        "for the weights-vs-KV design",
    )
    run.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="TYPE",
        help="cache type for K and V (repeatable): f16 bf16 q8_0 q5_1 q5_0 q4_1 q4_0 iq4_nl "
        "(default: q8_0 and q4_0, each against the f16 reference)",
    )
    run.add_argument("--cache-k", metavar="TYPE", help="K cache type of an asymmetric pair (with --cache-v)")
    run.add_argument("--cache-v", metavar="TYPE", help="V cache type of an asymmetric pair (with --cache-k)")
    run.add_argument(
        "--split-kv",
        action="store_true",
        help="also run K-only (K quantized, V f16) and V-only (K f16, V quantized) for each --cache",
    )
    run.add_argument("--ctx", type=ctx_tokens, default=8192, help="longest context in tokens (default 8192)")
    margin_option(run)
    run.add_argument(
        "--baseline", default="f16", help="reference cache type, run first, or 'none' (default f16)"
    )


def add_scenario_options(run: Parser) -> None:
    """What is measured, and how the model is spoken to."""
    run.add_argument(
        "--scenario", default="default", help="bundled scenario name or TOML file (default: default)"
    )
    run.add_argument("--haystack", help="override the scenario's haystack: prose, noise, or a text file path")
    run.add_argument(
        "--mode",
        choices=("onepass", "classic"),
        default="onepass",
        help="onepass: one document, queries forked at checkpoints; classic: one prompt per cell",
    )
    run.add_argument(
        "--prompt-format",
        choices=("auto", "chat", "raw"),
        default=None,
        help="auto (the scenario's default): chat when the model has a chat template, else raw text; "
        "chat: every probe through the template; raw: completion text",
    )
    run.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template to use instead of the model's own; with --llama-server the servers "
        "get it too (--jinja --chat-template-file); not with --server URL (that server renders its own)",
    )
    run.add_argument(
        "--system",
        metavar="TEXT",
        help="a system message in chat form (default: only what the template adds)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the plan (needles, documents)")


def add_engine_options(run: Parser) -> None:
    """How llama.cpp runs, and how many contexts it holds."""
    run.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    run.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="layers to offload (default: all when a GPU is usable, else 0)",
    )
    run.add_argument(
        "--no-repack",
        action="store_true",
        help="keep weights out of llama.cpp's extra CPU buffer types (repacked and AMX kernels), like "
        "llama.cpp's --no-repack; kvprobe does this by itself where those kernels crash",
    )
    run.add_argument(
        "--no-flash-attn",
        action="store_true",
        help="disable flash attention (not possible with a quantized V cache)",
    )
    run.add_argument(
        "--no-rotation",
        action="store_true",
        help="disable llama.cpp's Hadamard rotation of quantized caches (LLAMA_ATTN_ROT_DISABLE=1)",
    )
    run.add_argument(
        "--null-check",
        action="store_true",
        help="divergence probe: also run the reference against a second identical context (KL must be 0)",
    )
    run.add_argument(
        "--max-contexts",
        type=int,
        metavar="N",
        help="at most N llama.cpp contexts at once: the cache types run in groups, the reference again in "
        "each (same numbers on CPU; default: as many as fit in memory)",
    )


def add_server_options(run: Parser) -> None:
    """The llama-server engine: a binary kvprobe starts per cache type, or servers already running."""
    group = run.add_argument_group("your own llama-server (default: llama.cpp inside kvprobe)")
    group.add_argument(
        "--llama-server",
        metavar="PATH",
        help="start this llama-server binary once per --cache (with -m --model -c -ctk -ctv -fa -np 1) on a "
        "loopback port and measure through it; its logs go beside the result",
    )
    group.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for every spawned server, repeatable (e.g. --server-arg=--mlock); "
        "not those kvprobe sets (cache types, context, slots, threads, GPU layers; the chat template "
        "with --chat-template: without it, your own --chat-template-file passes and the chat form "
        "uses the framing the servers render)",
    )
    group.add_argument(
        "--server",
        metavar="URL",
        help="measure a llama-server already running (loopback, started with --parallel 1 and a "
        "context of at least --ctx plus the probes' forks: the run says how much), whose cache "
        "types you state with --server-cache",
    )
    group.add_argument(
        "--server-cache", metavar="TYPE", help="the cache types --server runs: f16, q8_0, q4_0 or k=..,v=.."
    )
    group.add_argument(
        "--reference-server",
        metavar="URL",
        help="an f16 llama-server of the same model: the reference for --server",
    )
    group.add_argument(
        "--reference",
        choices=["in-process"],
        help="also check the server's f16 against kvprobe's own llama.cpp f16 on the same batches "
        "(a build check: does the server compute what llama.cpp computes?), said before the verdict",
    )


def add_output_options(run: Parser) -> None:
    """Where the result and its page go; resuming; the time budget."""
    run.add_argument("--out", help="result file (default results/<utc>-<model>-<caches>-<ctx>.json)")
    run.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    run.add_argument(
        "--html",
        metavar="PAGE",
        help="the HTML page with the figures (default: beside the result, <out>.html, when matplotlib "
        "from the plot extra is installed)",
    )
    run.add_argument("--no-html", action="store_true", help="write no HTML page")
    run.add_argument(
        "--verbose", action="store_true", help="host notices in full (the kernel check, memory) and the "
        "report's details (intervals, p-values, fits: as `kvprobe report --details`)",
    )  # fmt: skip
    run.add_argument(
        "--resume",
        metavar="PATH",
        help="continue an interrupted run from its journal (<out>.journal.jsonl, or the partial result "
        "beside it); the original options are read from the journal",
    )
    run.add_argument(
        "--time-budget",
        type=duration,
        metavar="TIME",
        help="end cleanly after the last whole unit that fits, e.g. 15m, 2h, 90s (resumable)",
    )
    run.add_argument(
        "--until-decided",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure a cache type no more once its decision is known (group-sequential tests that keep "
        "the error rates) and end when every one is decided (default: the scenario's plan.until_decided)",
    )


def run_parser() -> argparse.ArgumentParser:
    """`kvprobe` with only its `run` section: what a journal's options are read back with."""
    parser, subparsers = root_parser()
    add_parser(subparsers)
    return parser
