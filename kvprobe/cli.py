"""Command line: `kvprobe run`, `compare`, `doctor`, `quantize` and `scenarios`.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kvprobe import __version__
from kvprobe.cache_types import CacheConfig, check_cache_type, check_flash_attn
from kvprobe.display import SafeConsole, plain
from kvprobe.errors import EngineError, Interrupted, UserError
from kvprobe.kernel_check import KernelDecision

if TYPE_CHECKING:  # runner imports llama.cpp: only `run` should pay for that
    from kvprobe.runner import RunSettings
    from kvprobe.scenario import Scenario

MIN_CTX = 256
MAX_CTX = 1 << 20  # the longest contexts GGUF models ship with; beyond it is a typo, not a plan


class _Parser(argparse.ArgumentParser):
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
    run.add_argument("--out", help="result file (default results/<utc>-<model>-<caches>-<ctx>.json)")
    run.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    sub.add_parser("scenarios", help="list the bundled scenarios")

    compare = sub.add_parser("compare", help="compare two result files (paired where the items are the same)")
    compare.add_argument("old", help="the earlier result (e.g. a saved baseline)")
    compare.add_argument("new", help="the result to judge")
    compare.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:THRESHOLD",
        help="exit 1 on a significant change beyond THRESHOLD, e.g. accuracy:-0.05 or kld_mean:+0.01",
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


def parse_configs(args: argparse.Namespace) -> tuple[list[CacheConfig], str | None]:
    """Baseline first, then the requested configurations, without duplicates."""
    configs: list[CacheConfig] = []
    for name in args.cache:
        t = check_cache_type(name)
        configs.append(CacheConfig(t, t))
    if (args.cache_k is None) != (args.cache_v is None):
        raise UserError("--cache-k and --cache-v go together: give both for an asymmetric pair")
    if args.cache_k is not None:
        configs.append(CacheConfig(check_cache_type(args.cache_k), check_cache_type(args.cache_v)))
    if getattr(args, "split_kv", False):
        quantized = [c.type_k for c in configs if c.type_k == c.type_v and c.k_quantized]
        if not quantized:
            raise UserError(
                "--split-kv splits a quantized cache: give --cache q4_0 (or another quantized type)"
            )
        for t in quantized:
            configs += [CacheConfig(t, "f16"), CacheConfig("f16", t)]
    baseline: CacheConfig | None = None
    if args.baseline.strip().lower() != "none":
        b = check_cache_type(args.baseline)
        baseline = CacheConfig(b, b)
    ordered: list[CacheConfig] = [baseline] if baseline else []
    for c in configs:
        if c not in ordered:
            ordered.append(c)
    if not ordered:
        raise UserError("nothing to run: give --cache TYPE, or a --baseline other than none")
    return ordered, baseline.id if baseline else None


def check_out_path(path: Path, force: bool) -> None:
    """Fail before a long run, not after it; never overwrite an earlier result silently."""
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give a file name ending in .json")
    if path.exists() and not force:
        raise UserError(f"--out {path} already exists: choose another name or pass --force")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder for --out {path} ({exc.strerror}): choose another path"
        ) from None
    try:  # a real write, not os.access: root passes access() on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".kvprobe-write-check-", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"folder {path.parent} is not writable ({exc.strerror}): choose another --out"
        ) from None


def cmd_scenarios(console: Console) -> int:
    from rich.table import Table

    from kvprobe.scenario import bundled_scenarios, load_scenario

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
            str(s.needle.per_segment),
            s.description,
        )
    console.print(table)
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    import json

    from kvprobe.compare import FailRule, compare
    from kvprobe.results import finite_json, load_result

    rules = [FailRule.parse(text) for text in args.fail_on]
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
                f"--fail-on {rule.metric}:{rule.threshold:+g} has nothing to judge: no test configuration "
                f"was compared on {rule.metric} (unmatched: old {', '.join(left['old']) or 'none'}; "
                f"new {', '.join(left['new']) or 'none'}); pair them with --map OLD=NEW"
            )
    failures = [(rule, row) for rule in rules for row in report["rows"] if rule.violated_by(row)]
    report["failures"] = [{"rule": f"{r.metric}:{r.threshold:+g}", **row} for r, row in failures]
    if args.json:
        print(json.dumps(finite_json(report)[0], indent=1))  # strict JSON: a NaN row shows as null
    else:
        from kvprobe.report import print_comparison

        print_comparison(report, console)
    return 1 if failures else 0


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    import json

    from kvprobe.doctor import diagnose

    if args.vram is not None and args.vram <= 0:
        raise UserError("--vram must be a positive number of GB, e.g. --vram 24")
    report = diagnose(Path(args.model).expanduser(), args.vram)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        from kvprobe.doctor_view import print_doctor

        print_doctor(report, console)
    return 0


def cmd_quantize(args: argparse.Namespace, console: Console) -> int:
    from kvprobe import engine
    from kvprobe.doctor import KNOWN_FILE_TYPES
    from kvprobe.quantize import load_imatrix, plan_jobs, provenance_metadata

    src = Path(args.source).expanduser()
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    out_dir = Path(args.out_dir).expanduser() if args.out_dir else src.parent
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
    check_out_path(out_dir / ".kvprobe-write-check", force=True)
    threads = args.threads or max(1, os.cpu_count() or 1)
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


def _kernel_decision(
    args: argparse.Namespace, model_paths: list[Path], gpu_layers: int, console: Console
) -> KernelDecision:
    """Extra buffer types on or off for the whole run (see kvprobe.kernel_check)."""
    from kvprobe.kernel_check import check_models, fallback_message

    def announce(path: Path) -> None:
        console.print(
            f"checking llama.cpp's CPU kernels with {path.name} in a child process "
            "(once per llama.cpp build, CPU and weight types)",
            markup=False,
            highlight=False,
        )

    decision, system_info = check_models(
        model_paths,
        n_gpu_layers=gpu_layers,
        n_threads=args.threads,
        no_repack=args.no_repack,
        on_check=announce,
    )
    if decision.check == "crashed":
        line = f"kernels: {fallback_message(decision, system_info)}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    elif decision.check == "inconclusive":
        console.print(f"kernels: {decision.reason}", markup=False, highlight=False, soft_wrap=True)
    return decision


@dataclass(frozen=True)
class RunRequest:
    """A `kvprobe run` whose every precondition has been checked, before any model file is
    hashed or loaded."""

    configs: list[CacheConfig]
    baseline: str | None
    scenario: Scenario
    model_paths: list[Path]
    facts: list[dict[str, Any]]  # doctor facts per model (headers only)
    gpu_layers: int
    out_path: Path
    created: str
    settings: RunSettings
    null_check: bool
    threads: int | None
    no_repack: bool
    warnings: list[str]


@dataclass(frozen=True)
class RunExecution:
    """What running the probes gave, and what the engine reports it used."""

    outcome: dict[str, Any]
    baseline: str | None  # "ref:f16" in the weights-vs-KV design
    runtime: dict[str, Any]


def validate_run(args: argparse.Namespace) -> RunRequest:
    """Step 1: every check a run can fail, in one pass over the arguments, the scenario and
    the model headers. Nothing is hashed, loaded or written."""
    from dataclasses import replace

    from kvprobe.doctor import read_facts
    from kvprobe.engine import gpu_offload_supported
    from kvprobe.memory import check_fits, run_memory
    from kvprobe.plan import check_plan_capacity
    from kvprobe.provenance import default_model_path, memory_gb
    from kvprobe.results import default_out_path, utc_now
    from kvprobe.runner import RunSettings
    from kvprobe.scenario import HaystackSpec, load_scenario

    configs, baseline = parse_configs(args)
    scenario = load_scenario(args.scenario)
    if args.haystack:
        kind = args.haystack if args.haystack in ("prose", "noise") else "file"
        if kind == "file" and not Path(args.haystack).is_file():
            raise UserError(f"--haystack {args.haystack!r}: not prose, noise, or an existing text file")
        scenario = replace(scenario, haystack=HaystackSpec(kind, "" if kind != "file" else args.haystack))
    if scenario.haystack.kind == "file":
        from kvprobe.haystack import read_user_text

        read_user_text(scenario.haystack.path)  # refused now, not after the models are hashed and loaded
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.gpu_layers is not None and args.gpu_layers < -1:
        raise UserError(f"--gpu-layers must be -1 (all) or a number of layers >= 0, got {args.gpu_layers}")
    check_flash_attn(configs, not args.no_flash_attn)
    model_paths = [Path(p).expanduser() for p in args.model] or [default_model_path()]
    if len(model_paths) > 2:
        raise UserError("--model takes one file, or two (REF then TEST) for the weights-vs-KV design")
    if len(model_paths) == 2 and (
        baseline is None or not any(c.k_quantized or c.v_quantized for c in configs)
    ):
        raise UserError(
            "two --model files run the 2x2 weights-vs-KV design: give a quantized --cache (e.g. q4_0) "
            "and keep the f16 baseline"
        )
    if baseline is None and "divergence" in scenario.probes:
        raise UserError("the divergence probe compares against a reference: drop --baseline none")
    if args.null_check and "divergence" not in scenario.probes:
        raise UserError("--null-check needs the divergence probe: use --scenario divergence or default")
    if args.mode == "classic" and "needle" not in scenario.probes:
        raise UserError("--mode classic applies to the needle probe: this scenario has none")
    check_plan_capacity(scenario, args.ctx, args.mode)
    facts = [read_facts(p) for p in model_paths]  # checks the files are GGUF before llama.cpp sees them
    gpu_layers = args.gpu_layers if args.gpu_layers is not None else (-1 if gpu_offload_supported() else 0)
    if gpu_layers == 0 or not gpu_offload_supported():
        need = run_memory(facts, configs, args.ctx + 256, scenario.plan.chunk, 1 if args.null_check else 0)
        check_fits(need, memory_gb(), args.ctx)
    created = utc_now()
    out_path = (
        Path(args.out)
        if args.out
        else default_out_path(
            created, "-vs-".join(p.stem for p in model_paths), [c.id for c in configs], args.ctx
        )
    )
    check_out_path(out_path, force=args.force)
    warnings: list[str] = []
    n_ctx_train = facts[0]["n_ctx_train"]
    if args.ctx > n_ctx_train > 0:
        warnings.append(
            f"--ctx {args.ctx} exceeds the model's training context ({n_ctx_train} tokens): "
            "results past it measure the model outside its design, not the cache"
        )
    if gpu_layers != 0 and any(c.type_k != c.type_v for c in configs):
        warnings.append(
            "on CUDA, llama.cpp compiles flash-attention kernels only for matching K/V types unless built "
            "with -DGGML_CUDA_FA_QUANTS=all: an asymmetric pair runs on a much slower path"
        )
    settings = RunSettings(
        ctx=args.ctx,
        seed=args.seed,
        mode=args.mode,
        flash_attn=not args.no_flash_attn,
        attn_rotation=not args.no_rotation,
    )
    return RunRequest(
        configs=configs,
        baseline=baseline,
        scenario=scenario,
        model_paths=model_paths,
        facts=facts,
        gpu_layers=gpu_layers,
        out_path=out_path,
        created=created,
        settings=settings,
        null_check=args.null_check,
        threads=args.threads,
        no_repack=args.no_repack,
        warnings=warnings,
    )


def execute_run(request: RunRequest, kernels: KernelDecision, console: Console) -> RunExecution:
    """Step 2: load the models and run every probe in lockstep, with a progress bar."""
    from kvprobe import engine
    from kvprobe.runner import Runner, run_probes

    paths = request.model_paths
    labels = ["ref", "test"] if len(paths) == 2 else []
    baseline = request.baseline
    with contextlib.ExitStack() as stack:
        loaded = [
            stack.enter_context(
                engine.Model(
                    p,
                    n_gpu_layers=request.gpu_layers,
                    n_threads=request.threads,
                    use_extra_bufts=kernels.extra_bufts,
                )
            )
            for p in paths
        ]
        models = dict(zip(labels, loaded, strict=True)) if labels else None
        if models and loaded[0].vocabulary_digest() != loaded[1].vocabulary_digest():
            raise UserError(
                f"{paths[0].name} and {paths[1].name} have different tokenizers: the 2x2 design "
                "needs identical items; run them separately and use `kvprobe compare` (unpaired)"
            )
        if models and baseline is not None:
            baseline = f"ref:{baseline}"
        runner = Runner(loaded[0], request.scenario, request.settings)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            n_runs = len(request.configs) * len(paths)
            task = bar.add_task("starting", total=runner.planned_tokens(n_runs, request.null_check))

            def progress(n_tokens: int, what: str) -> None:
                bar.update(task, advance=n_tokens, description=plain(what))

            outcome = run_probes(
                runner, request.configs, baseline, progress, null_check=request.null_check, models=models
            )
        info = engine.runtime_info()
        settings = request.settings
        runtime = {
            **info,
            "backend": "gpu" if request.gpu_layers != 0 and info["gpu_offload_supported"] else "cpu",
            "n_threads": loaded[0].n_threads,
            "n_gpu_layers": request.gpu_layers,
            **kernels.runtime(),
            "weight_buffers_mib": {p.name: m.weight_buffers for p, m in zip(paths, loaded, strict=True)},
            "n_ctx": outcome["n_ctx"],
            "n_batch": outcome["chunk"],
            "n_ubatch": outcome["chunk"],
            "n_seq_max": outcome["n_seq_max"],
            **engine.FIXED_SETTINGS,
            "flash_attn": settings.flash_attn,
            "attn_rotation": settings.attn_rotation,
            "env_LLAMA_ATTN_ROT_DISABLE": "0" if settings.attn_rotation else "1",
        }
    return RunExecution(outcome, baseline, runtime)


def assemble_run(
    request: RunRequest, infos: list[dict[str, Any]], execution: RunExecution, command: str
) -> dict[str, Any]:
    """Step 3: the result document as measured (statistics follow once it is on disk)."""
    from kvprobe.provenance import host_info
    from kvprobe.results import build_result

    labels = ["ref", "test"] if len(infos) == 2 else []
    outcome = execution.outcome
    return build_result(
        created=request.created,
        command=command,
        model=infos[0],
        models=dict(zip(labels, infos, strict=True)) if labels else None,
        runtime=execution.runtime,
        host=host_info(),
        outcome=outcome,
        baseline=execution.baseline,
        scenario=request.scenario,
        run={
            "ctx": request.settings.ctx,
            "seed": request.settings.seed,
            "mode": request.settings.mode,
            "checkpoints": outcome["checkpoints"],
            "chunk": outcome["chunk"],
            "null_check": request.null_check,
        },
        warnings=request.warnings,
    )


def _describe_models(request: RunRequest) -> tuple[list[dict[str, Any]], dict[Path, list[str]]]:
    """Path, sha256 and metadata per model (hashing reads the whole file: after validation),
    with the doctor's findings; and the serious findings per file, to show before the run."""
    from dataclasses import asdict

    from kvprobe.doctor import findings
    from kvprobe.model_info import read_model_info

    infos: list[dict[str, Any]] = []
    serious: dict[Path, list[str]] = {}
    for path, facts in zip(request.model_paths, request.facts, strict=True):
        info = read_model_info(path)
        found = findings(facts)
        info["findings"] = [asdict(f) for f in found]
        infos.append(info)
        if messages := [f.message for f in found if f.severity == "serious"]:
            serious[path] = messages
    return infos, serious


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from kvprobe.results import add_statistics, write_result

    request = validate_run(args)
    infos, serious = _describe_models(request)
    for w in request.warnings:
        console.print(f"[yellow]warning:[/] {plain(w)}")
    for path, messages in serious.items():
        console.print(
            f"[bold red]model:[/] {plain('; '.join(messages))} "
            f"(`kvprobe doctor {plain(path)}` explains; results will show it)",
            highlight=False,
        )
    kernels = _kernel_decision(args, request.model_paths, request.gpu_layers, console)
    console.print(
        f"kvprobe {__version__}: {' vs '.join(p.name for p in request.model_paths)}, "
        f"caches {', '.join(c.id for c in request.configs)}, ctx {request.settings.ctx}, "
        f"scenario {request.scenario.name}, {request.settings.mode} mode",
        markup=False,
        highlight=False,
    )
    execution = execute_run(request, kernels, console)
    doc = assemble_run(request, infos, execution, " ".join(["kvprobe", *sys.argv[1:]]))
    out_path = request.out_path
    write_result(doc, out_path)  # the measurements are on disk before any statistic runs
    try:
        add_statistics(doc, execution.outcome["divergence_arrays"])
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while computing statistics; the measured items are in {out_path} "
            "(statistics.complete: false)"
        ) from None
    write_result(doc, out_path)
    from kvprobe.report import print_run_report

    print_run_report(doc, console)
    for failed in doc["statistics"]["errors"]:
        console.print(
            f"statistics: the {failed['what']} could not be computed ({failed['error']}); "
            "the measured items are in the result file",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"result: {out_path}", markup=False, highlight=False)
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
        if args.command == "doctor":
            return cmd_doctor(args, console)
        if args.command == "quantize":
            return cmd_quantize(args, console)
        return cmd_run(args, console)
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
