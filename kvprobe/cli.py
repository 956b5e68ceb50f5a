"""Command line: the parser and one small function per command (`run`, `compare`, `doctor`,
`quantize`, `scenarios`); `kvprobe run` itself is in kvprobe.run.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from kvprobe import __version__
from kvprobe.display import SafeConsole
from kvprobe.errors import EngineError, Interrupted, UserError

if TYPE_CHECKING:  # runner imports llama.cpp: only `run` should pay for that
    pass

MIN_CTX = 256
MAX_CTX = 1 << 20  # the longest contexts GGUF models ship with; beyond it is a typo, not a plan
MAX_VRAM_GB = 100_000  # more GPU memory than any node has: a typo


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A value that starts with a minus and a digit (`--time-budget -5m`, `--seed -1`) is a
        # value to check, not an unknown option: its own check then names the real problem.
        # No option of kvprobe's looks like that.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _ctx(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ctx must be a whole number of tokens, got {text!r}") from None
    if value < MIN_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at least {MIN_CTX} tokens, got {value}")
    if value > MAX_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at most {MAX_CTX} tokens, got {value}")
    return value


def _duration(text: str) -> float:
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


def _margin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--margin",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="equivalence margin for the verdict (repeatable; defaults accuracy=0.05, answer_logprob=0.25 "
        "nats, kld_mean=0.02 and kld_p999=0.5 nats, upper bounds for KL)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvprobe", description="Measure long-context degradation from KV cache quantization."
    )
    parser.add_argument("--version", action="version", version=f"kvprobe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a scenario across KV cache types and context lengths")
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
    run.add_argument("--ctx", type=_ctx, default=8192, help="longest context in tokens (default 8192)")
    _margin_option(run)
    run.add_argument(
        "--baseline", default="f16", help="reference cache type, run first, or 'none' (default f16)"
    )
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
        type=_duration,
        metavar="TIME",
        help="end cleanly after the last whole unit that fits, e.g. 15m, 2h, 90s (resumable)",
    )

    sub.add_parser("scenarios", help="list the bundled scenarios")

    report = sub.add_parser(
        "report", help="show saved results: one as at the end of its run, several side by side"
    )
    report.add_argument("results", nargs="+", metavar="RESULT", help="result files (JSON from kvprobe run)")
    report.add_argument(
        "--html", metavar="PAGE", help="also write one self-contained HTML page with the figures"
    )
    report.add_argument("--png", metavar="DIR", help="also write every figure as a PNG file into DIR")
    report.add_argument("--force", action="store_true", help="overwrite an existing page or PNG files")
    _margin_option(report)

    compare = sub.add_parser("compare", help="compare two result files (paired where the items are the same)")
    compare.add_argument("old", help="the earlier result (e.g. a saved baseline)")
    compare.add_argument("new", help="the result to judge")
    compare.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:THRESHOLD",
        help="exit 1 on a significant change beyond THRESHOLD, e.g. accuracy:-0.05 or kld_mean:+0.01; or, "
        "with ±MARGIN (also +-MARGIN), unless the change is shown equivalent within it (TOST), e.g. "
        "answer_logprob:±0.25",
    )
    compare.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="compare configuration OLD of the old file with NEW of the new one, e.g. --map q8_0=q4_0",
    )
    compare.add_argument("--paired", action="store_true", help="refuse unless the items can be paired")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.add_argument(
        "--html", metavar="PAGE", help="also write an HTML page with old and new on the same axes"
    )
    compare.add_argument("--force", action="store_true", help="overwrite an existing --html page")

    doctor = sub.add_parser("doctor", help="diagnose a GGUF file's weights and its KV cache memory")
    doctor.add_argument("model", help="GGUF model file")
    doctor.add_argument(
        "--vram", type=float, metavar="GB", help="GPU memory: which cache type and context fit"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    quantize = sub.add_parser("quantize", help="make weight variants with llama.cpp's quantizer")
    quantize.add_argument("source", help="GGUF model file to quantize (ideally f16/bf16)")
    quantize.add_argument(
        "--type", action="append", required=True, metavar="T", dest="types",
        help="target type, repeatable: F16 BF16 F32 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K ...",
    )  # fmt: skip
    quantize.add_argument("--out-dir", help="folder for the variants (default: the source's folder)")
    quantize.add_argument("--imatrix", help="importance matrix (GGUF, from llama-imatrix)")
    quantize.add_argument(
        "--allow-requantize", action="store_true", help="quantize an already quantized source anyway"
    )
    quantize.add_argument(
        "--pure", action="store_true", help="every tensor to the same type (no protected embedding/output)"
    )
    quantize.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    quantize.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser


def cmd_scenarios(console: Console) -> int:
    from rich.table import Table

    from kvprobe.plan.scenario import bundled_scenarios, load_scenario
    from kvprobe.probes.needle.plan import NeedleSpec

    table = Table(title="Bundled scenarios (kvprobe run --scenario NAME)")
    for col in ("name", "probes", "haystack", "documents", "needles/segment", "description"):
        table.add_column(col)
    for name in bundled_scenarios():
        s = load_scenario(name)
        table.add_row(
            name,
            ", ".join(s.probes),
            s.haystack.kind,
            str(s.plan.documents),
            str(s.spec(NeedleSpec).per_segment),
            s.description,
        )
    console.print(table)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """One file: its tables and verdict, as at the end of `kvprobe run` (the same function);
    several: the matrix across runs. Only the files are read, never the model."""
    from kvprobe.result.store import Result
    from kvprobe.run import parse_margins
    from kvprobe.views.terminal import print_matrix, print_run_report

    margins = parse_margins(args.margin)
    check_pictures(args.html, args.png, [Path(p) for p in args.results], force=args.force)
    loaded = [Result.load(Path(p)) for p in args.results]
    for r in loaded:  # other margins than the file's: the verdict again, from the file's own data
        if args.margin and r.doc.get("verdict") is not None and r.doc["verdict"].get("margins") != margins:
            from kvprobe.stats.verdict import build_verdict

            r.doc["verdict"] = build_verdict(r.doc, r.doc["run"]["seed"], margins)
    named = [(r.path.name, r.doc) for r in loaded]
    if len(loaded) == 1:
        console.print(f"{loaded[0].path}: {loaded[0].doc.get('command', '')}", markup=False, highlight=False)
        print_run_report(loaded[0].doc, console)
    else:
        print_matrix(named, console)
    write_pictures(named, args.html, args.png, console, force=args.force)
    return 0


def check_pictures(html_path: str | None, png_dir: str | None, inputs: list[Path], *, force: bool) -> None:
    """--html PAGE and --png DIR, before any work: never onto an input, never over an existing
    page without --force, each into a folder that takes it."""
    from kvprobe.paths import Output, check_outputs

    outputs = [Output(Path(html_path), "--html")] if html_path else []
    if png_dir:
        outputs.append(Output(Path(png_dir), "--png", folder=True))
    check_outputs(outputs, inputs, force=force)


def save_page(target: Path, text: str, console: Console) -> None:
    from kvprobe.paths import write_atomically

    write_atomically(target, text.encode("utf-8"), "--html")
    console.print(f"page: {target}", markup=False, highlight=False)


def write_pictures(
    named: list[tuple[str, dict[str, Any]]],
    html_path: str | None,
    png_dir: str | None,
    console: Console,
    *,
    force: bool,
) -> None:
    """--html PAGE and --png DIR for `report` (and `run`): matplotlib from the plot extra."""
    if not html_path and not png_dir:
        return
    from kvprobe.views.figures import Figure, write_png
    from kvprobe.views.html import page

    if html_path:
        save_page(Path(html_path), page(named), console)
    if png_dir:
        from dataclasses import replace

        from kvprobe.api import all_probes
        from kvprobe.views.decision import frontier_figure

        def every_figure(result: dict[str, Any]) -> list[Figure]:
            found = [frontier_figure(result), *(f for probe in all_probes() for f in probe.figures(result))]
            return [f for f in found if f is not None]

        figures = [
            # several results: each file's figures under its own name, none overwriting another's
            replace(f, key=f"{i + 1}-{Path(name).stem}-{f.key}") if len(named) > 1 else f
            for i, (name, result) in enumerate(named)
            for f in every_figure(result)
        ]
        paths = write_png(figures, png_dir, force=force)
        console.print(f"figures: {len(paths)} PNG files in {png_dir}", markup=False, highlight=False)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    import json

    from kvprobe.compare import FailRule, compare
    from kvprobe.result.store import finite_json, load_result

    rules = [FailRule.parse(text) for text in args.fail_on]
    check_pictures(args.html, None, [Path(args.old), Path(args.new)], force=args.force)
    old, new = load_result(Path(args.old)), load_result(Path(args.new))
    report = compare(old, new, require_paired=args.paired, maps=args.map)
    tested = {tuple(p) for p in report["test_configs_compared"]}
    for rule in rules:
        # A gate passes only on evidence: some row of its metric for a configuration under test.
        if not any(
            r["metric"] == rule.metric and (r["config_old"], r["config_new"]) in tested
            for r in report["rows"]
        ):
            left = report["unmatched"]
            raise UserError(
                f"--fail-on {rule} has nothing to judge: no test configuration "
                f"was compared on {rule.metric} (unmatched: old {', '.join(left['old']) or 'none'}; "
                f"new {', '.join(left['new']) or 'none'}); pair them with --map OLD=NEW"
            )
    failures = [(rule, row) for rule in rules for row in report["rows"] if rule.violated_by(row)]
    report["failures"] = [{"rule": str(r), **row} for r, row in failures]
    if args.html:
        from kvprobe.views.html import comparison_page, comparison_rows

        text = comparison_page(
            (Path(args.old).name, old), (Path(args.new).name, new), comparison_rows(report)
        )
        save_page(Path(args.html), text, console)
    if args.json:
        print(json.dumps(finite_json(report)[0], indent=1))  # strict JSON: a NaN row shows as null
    else:
        from kvprobe.views.terminal import print_comparison

        print_comparison(report, console)
    return 1 if failures else 0


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    import json

    from kvprobe.weights.doctor import diagnose

    if args.vram is not None and not 0 < args.vram <= MAX_VRAM_GB:  # also refuses nan and inf
        raise UserError(f"--vram must be a number of GB above 0 and at most {MAX_VRAM_GB:,}, e.g. --vram 24")
    report = diagnose(Path(args.model).expanduser(), args.vram)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        from kvprobe.views.doctor import print_doctor

        print_doctor(report, console)
    return 0


def cmd_quantize(args: argparse.Namespace, console: Console) -> int:
    from kvprobe import engine
    from kvprobe.paths import Output, check_outputs
    from kvprobe.run import MAX_THREADS
    from kvprobe.weights.doctor import KNOWN_FILE_TYPES
    from kvprobe.weights.quantize import load_imatrix, plan_jobs, provenance_metadata

    src = Path(args.source).expanduser()
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be from 1 to {MAX_THREADS} (GGML_MAX_N_THREADS), got {args.threads}")
    out_dir = Path(args.out_dir).expanduser() if args.out_dir else src.parent

    inputs = [src, *([Path(args.imatrix).expanduser()] if args.imatrix else [])]
    check_outputs([Output(out_dir, "--out-dir", folder=True)], inputs, force=args.force)
    ftype_of = {name: i for name in KNOWN_FILE_TYPES if (i := engine.ftype_id(name)) is not None}
    jobs, origin = plan_jobs(
        src,
        args.types,
        out_dir,
        allow_requantize=args.allow_requantize,
        force=args.force,
        ftype_of=ftype_of,
        pure=args.pure,
    )
    imatrix, metadata = load_imatrix(Path(args.imatrix).expanduser()) if args.imatrix else (None, {})
    threads = args.threads or max(1, os.cpu_count() or 1)
    out_dir.mkdir(parents=True, exist_ok=True)  # checked writable above; created only now
    for job in jobs:
        console.print(f"{src.name} -> {job.dst} ({job.type_name}: {job.note})", markup=False, highlight=False)
        tmp = job.dst.with_name(f".{job.dst.name}.partial")
        try:
            engine.quantize(
                src,
                tmp,
                job.ftype,
                allow_requantize=True,  # plan_jobs has already refused what the user did not allow
                pure=args.pure,
                n_threads=threads,
                imatrix=imatrix,
                metadata={**metadata, **provenance_metadata(origin)},
            )
        except BaseException:
            tmp.unlink(missing_ok=True)  # variants already written stay; no half file is left
            raise
        tmp.replace(job.dst)  # a finished file or none: an interrupted run leaves no half model
        console.print(
            f"  wrote {job.dst} ({job.dst.stat().st_size / 2**20:.1f} MiB)", markup=False, highlight=False
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    # Redirected to a file, rich would wrap tables at 80 columns; a log reads better wide.
    console = SafeConsole(stderr=False, width=None if sys.stdout.isatty() else 160)
    err = SafeConsole(stderr=True)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "scenarios":
            return cmd_scenarios(console)
        if args.command == "compare":
            return cmd_compare(args, console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "doctor":
            return cmd_doctor(args, console)
        if args.command == "quantize":
            return cmd_quantize(args, console)
        from kvprobe.run import cmd_run

        words = list(argv if argv is not None else sys.argv[1:])
        return cmd_run(args, console, words[words.index("run") + 1 :])
    except Interrupted as exc:
        err.print(f"kvprobe: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except UserError as exc:
        err.print(f"kvprobe: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except EngineError as exc:
        err.print(f"kvprobe: llama.cpp error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("kvprobe: interrupted; no result file was written", markup=False)
        return 130


def entry() -> None:
    sys.exit(main())
