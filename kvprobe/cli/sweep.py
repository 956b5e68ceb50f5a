"""`kvprobe sweep`: many `kvprobe run` cells (models × cache sets × contexts × ...) from a sweep
file or the command line's comma lists, into one folder; locally or on a Ray cluster;
`--resume` continues an interrupted sweep; `kvprobe report SWEEP_DIR` merges it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kvprobe.cli.options import Subparsers, margin_option
from kvprobe.infra.errors import UserError
from kvprobe.result.document import utc_now
from kvprobe.sweep.drive import SweepOptions, command_line, default_folder, load_for_resume, run_sweep
from kvprobe.sweep.ray_executor import host_and_port, import_ray
from kvprobe.sweep.spec import RUN_TYPES, RunOptions, from_command_line, load_sweep, override_run

AXIS_OPTIONS = {
    "model": "models",
    "cache": "caches",
    "ctx": "contexts",
    "scenario": "scenarios",
    "prompt_format": "formats",
    "llama_server": "servers",
}
MAX_RETRIES = 100


def add_parser(subparsers: Subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="run many `kvprobe run` cells (models x caches x contexts ...) into one folder, locally or "
        "on Ray",
    )
    sweep.add_argument(
        "file", nargs="?", metavar="SWEEP.toml", help="the sweep file (or give the axes below)"
    )
    axes = sweep.add_argument_group(
        "axes, without a sweep file (a comma separates cells, + joins within one)"
    )
    axes.add_argument(
        "--model",
        metavar="M[,M...]",
        help="GGUF files; REF.gguf+TEST.gguf for the 2x2 design (default: the embedded default model)",
    )
    axes.add_argument(
        "--cache", metavar="C[,C...]", help="cache types, one cell each; q8_0+q4_0: both in one cell"
    )
    axes.add_argument("--ctx", metavar="N[,N...]", help="context lengths (default 8192)")
    axes.add_argument("--scenario", metavar="S[,S...]", help="scenarios (default: default)")
    axes.add_argument("--prompt-format", metavar="F[,F...]", help="auto, chat, raw (default auto)")
    axes.add_argument(
        "--llama-server",
        metavar="PATH[,PATH...]",
        help="llama-server binaries, each cell started through one (kvprobe run --llama-server); "
        "in-process: llama.cpp inside kvprobe (the default)",
    )
    axes.add_argument("--split-kv", action="store_true", help="every cell also runs K-only and V-only")
    run = sweep.add_argument_group("options of every cell's kvprobe run (over the sweep file's [run])")
    run.add_argument("--threads", type=int, help="CPU threads of each run (Ray: CPUs each cell asks for)")
    run.add_argument("--seed", type=int, help="seed of the plan")
    run.add_argument("--gpu-layers", type=int, help="layers to offload (default: all when a GPU is usable)")
    run.add_argument(
        "--until-decided",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stop measuring a cache type once decided (kvprobe run --until-decided)",
    )
    margin_option(run)
    run.add_argument("--no-html", action="store_true", help="no HTML page per cell (the report makes one)")
    run.add_argument(
        "--server-arg",
        action="append",
        metavar="ARG",
        help="an argument for every spawned llama-server, repeatable (e.g. --server-arg=--mlock)",
    )
    how = sweep.add_argument_group("where and how")
    how.add_argument(
        "--out",
        metavar="DIR",
        help="the sweep folder (default results/sweeps/<utc>-<name>); on "
        "a cluster, a folder every node mounts",
    )
    how.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted sweep: finished cells are kept, a "
        "cell cut short resumes from its journal",
    )
    how.add_argument(
        "--dry-run", action="store_true", help="print the cells, their memory and time; run nothing"
    )
    how.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one cell after another (default); ray: each cell a Ray task",
    )
    how.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: start Ray on this machine)",
    )
    how.add_argument(
        "--retries", type=int, default=3, help="Ray: retries of a cell whose worker is lost (default 3)"
    )
    how.add_argument(
        "--gpus-per-cell",
        type=float,
        metavar="N",
        help="Ray: GPUs each cell asks for (default: 1 when the cluster has GPUs)",
    )


def _run_options(args: argparse.Namespace, base: RunOptions) -> RunOptions:
    """The command line's run options over the sweep file's [run]."""
    given: dict[str, object] = {}
    for key in ("threads", "seed", "gpu_layers", "until_decided"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    if args.no_html:
        given["html"] = False
    if args.server_arg:
        given["server_args"] = args.server_arg
    if args.margin:
        margins = {}
        for text in args.margin:
            name, sep, value = text.partition("=")
            try:
                margins[name.strip()] = float(value)
            except ValueError:
                raise UserError(f"--margin {text!r}: use METRIC=VALUE, e.g. --margin kld_mean=0.02") from None
            if not sep:
                raise UserError(f"--margin {text!r}: use METRIC=VALUE, e.g. --margin kld_mean=0.02")
        given["margins"] = {**base.margins, **margins}
    assert set(given) <= set(RUN_TYPES)
    return override_run(base, given, "(command line)")


def _options(args: argparse.Namespace) -> SweepOptions:
    if not 0 <= args.retries <= MAX_RETRIES:
        raise UserError(f"--retries must be from 0 to {MAX_RETRIES}, got {args.retries}")
    if args.gpus_per_cell is not None and not 0 <= args.gpus_per_cell <= 64:
        raise UserError(f"--gpus-per-cell must be from 0 to 64, got {args.gpus_per_cell:g}")
    if args.executor != "ray":
        for flag, value in (("--address", args.address), ("--gpus-per-cell", args.gpus_per_cell)):
            if value is not None:
                raise UserError(f"{flag} is for --executor ray: add --executor ray, or drop {flag}")
    if args.address is not None:
        host_and_port(args.address)  # its form checked before any cell, dry run included
    return SweepOptions(args.executor, args.address, args.retries, args.gpus_per_cell, args.dry_run)


def cmd_sweep(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    options = _options(args)
    axes = {key: getattr(args, name) for name, key in AXIS_OPTIONS.items()}
    given_axes = [f"--{n.replace('_', '-')}" for n, k in AXIS_OPTIONS.items() if axes[k] is not None]
    given_axes += ["--split-kv"] if args.split_kv else []
    if options.executor == "ray":
        import_ray()  # no Ray: one line now, before anything is read
    if args.resume:
        if args.file or given_axes or args.out:
            extra = args.file or (given_axes[0] if given_axes else "--out")
            raise UserError(f"--resume DIR continues the sweep as it was asked: drop {extra}")
        folder = Path(args.resume).absolute()
        manifest = load_for_resume(folder)
        return run_sweep(manifest.spec, folder, options, console, resume=manifest, command=command_line())
    if args.file:
        if given_axes:
            raise UserError(
                f"give the axes in {args.file} or on the command line, not both: drop {given_axes[0]}"
            )
        spec = load_sweep(Path(args.file))
        spec = type(spec)(**{**vars(spec), "run": _run_options(args, spec.run)})
    else:
        spec = from_command_line(axes, args.split_kv, _run_options(args, RunOptions()))
    folder = (Path(args.out) if args.out else default_folder(spec, utc_now())).absolute()
    return run_sweep(spec, folder, options, console, resume=None, command=command_line())
