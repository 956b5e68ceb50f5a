"""`kvprobe run`: its options, and the command: --resume's options from the journal, the
result path's lock and journal, then the request validated (kvprobe.run.validate) and executed
(kvprobe.run.execute)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from kvprobe.cli.options import Parser, Subparsers, ctx_tokens, duration, margin_option, root_parser
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import refuse_if_locked, same_file
from kvprobe.plan.scenario import bundled_scenarios
from kvprobe.result.journal import SUFFIX, SavedRun, journal_path, read_journal
from kvprobe.result.store import load_result
from kvprobe.run.validate import validate_run


def add_parser(subparsers: Subparsers) -> None:
    run = subparsers.add_parser("run", help="run a scenario across KV cache types and context lengths")
    add_compared_options(run)
    add_scenario_options(run)
    add_engine_options(run)
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
        help="cache type for K and V (repeatable): f16 bf16 q8_0 q5_1 q5_0 q4_1 q4_0 iq4_nl",
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
        "--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the model's own"
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


def cmd_run(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    """`kvprobe run`: the options (a --resume's from its journal), the result path free, the
    request validated, then executed with a journal and written."""
    command_start = time.monotonic()  # --time-budget counts from here: hashing and loading too
    saved = None
    if args.resume:
        args, saved = resume_args(args, words)
    if args.out:
        refuse_if_locked(Path(args.out))  # a run writing it now is the real problem, if there is one
    if not args.resume and args.out and journal_path(Path(args.out)).exists() and not args.force:
        raise UserError(
            f"{journal_path(Path(args.out))} holds an interrupted run: continue it with "
            f"`kvprobe run --resume {journal_path(Path(args.out))}`, or pass --force to start again"
        )
    request = validate_run(args)
    from kvprobe.run.execute import run_request  # llama_cpp, slow: only a valid request pays for it

    return run_request(
        request,
        saved=saved,
        console=console,
        argv=words[words.index("run") + 1 :],
        command_start=command_start,
    )


# Options of this invocation only, never compared with the journal's.
CARRIED = frozenset({"resume", "time_budget", "force", "html", "no_html"})
PATH_OPTIONS = frozenset({"model", "scenario", "haystack", "chat_template"})  # compared as files
# Options kvprobe chooses when they are not given, and the identity field that records its choice.
CHOSEN = {"threads": "n_threads", "gpu_layers": "n_gpu_layers", "max_contexts": "max_contexts"}


def typed_options(words: list[str]) -> dict[str, Any]:
    """The `run` options the command line gives, by name, as parsed: abbreviations and
    --option=value count, and an option typed with its default value counts too (argparse
    fills in no default here)."""
    parser = run_parser()
    section = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    for action in section._actions:
        action.default = argparse.SUPPRESS
    typed, _ = parser.parse_known_args(words)
    return {k: v for k, v in vars(typed).items() if k != "command"}


def comparable(key: str, value: Any, folder: Path) -> Any:
    """An option's value as the run understood it: a file named relative to `folder` (where
    the command ran) as its real path; a bundled scenario or haystack by its name."""
    if isinstance(value, list):
        return [comparable(key, v, folder) for v in value]
    if key not in PATH_OPTIONS or not isinstance(value, str):
        return value
    if (key == "scenario" and value in bundled_scenarios()) or (
        key == "haystack" and value in ("prose", "noise")
    ):
        return value
    return os.path.realpath(folder / Path(value).expanduser())


def resume_args(args: argparse.Namespace, words: list[str]) -> tuple[argparse.Namespace, SavedRun]:
    """For `--resume PATH`: the journal, and the options to run with: the journal's own, read
    with relative paths taken from the folder the run started in. Options typed with --resume
    must say what the journal says (else one line names them); --out must be the run's own."""
    given = Path(args.resume).expanduser().absolute()  # before a chdir to where the run started
    if args.html:
        args.html = str(Path(args.html).expanduser().absolute())
    here = Path.cwd()
    typed = {k: comparable(k, v, here) for k, v in typed_options(words).items() if k not in CARRIED}
    out_given = typed.pop("out", None)
    saved = read_journal(given if given.name.endswith(SUFFIX) else journal_path(given))
    args.resume = str(saved.path)  # the journal, whichever of the two names was given
    args = saved_args(saved, run_parser(), args, set(CARRIED))
    started_in = Path(saved.header["cwd"])
    identity = saved.header["identity"]
    conflicts = [
        f"{key} ({brief(then)} then, {brief(now)} now)"
        for key, now in typed.items()
        if (then := comparable(key, getattr(args, key, None), started_in)) != now
        # an option the run left to kvprobe, typed now as kvprobe chose it (--threads 16)
        and not (then is None and key in CHOSEN and identity.get(CHOSEN[key]) == now)
    ]
    if conflicts:
        raise UserError(
            f"--resume {saved.path} is the journal of another request: {'; '.join(conflicts)}: drop those "
            "options (the journal has the run's own), or start again without --resume"
        )
    if args.max_contexts is None:
        # The groups the run started with (chosen for the memory then, perhaps): its units are
        # theirs. A run that started in one group stays in one.
        args.max_contexts = saved.header["identity"].get("max_contexts")
        args.one_group = args.max_contexts is None
    out = Path(saved.header["out"])
    if out_given is not None and Path(out_given).resolve() != out:
        raise UserError(f"--resume {saved.path} continues the run that writes {out}: drop --out or give that")
    args.out = str(out)
    if not same_file(saved.path, journal_path(out)):
        raise UserError(
            f"--resume {saved.path}: its run writes {out}, whose journal is {journal_path(out)}, not this "
            "file: resume from the journal beside the result, or start the run again"
        )
    # Only the run's own partial result is replaced without --force: a journal never makes
    # kvprobe overwrite a file that some other run, or the user, put there.
    args.out_is_partial = is_partial_result(out, saved.header)
    return args, saved


def brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def saved_args(
    saved: SavedRun, parser: argparse.ArgumentParser, args: argparse.Namespace, carried: set[str]
) -> argparse.Namespace:
    """The original options, read from the folder the run started in: relative paths (model,
    scenario, haystack) then mean what they meant, and the scenario hashes the same; the
    `carried` options are this invocation's."""
    started_in = Path(saved.header["cwd"])
    try:
        os.chdir(started_in)
    except OSError:
        raise UserError(
            f"--resume {saved.path}: the run started in {started_in}, which is gone; give the original "
            "options again with --resume"
        ) from None
    resumed = parser.parse_args(["run", *saved.header["argv"]])
    for key in carried:
        setattr(resumed, key, getattr(args, key))
    return resumed


def is_partial_result(out: Path, header: dict[str, Any]) -> bool:
    """Whether `out` is the result file the journal's run wrote before it stopped: a kvprobe
    result with the same start time and model."""
    if not out.is_file():
        return False
    try:
        doc = load_result(out)
    except UserError:
        return False
    models = header["identity"].get("models_sha256") or [None]
    return bool(doc.get("created") == header.get("created") and doc["model"].get("sha256") == models[0])
