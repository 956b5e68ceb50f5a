"""`kvprobe run` in three steps: validate the request (every precondition, before any model
is hashed or loaded), execute it (load the models, run the probes), and assemble the result."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from kvprobe import __version__
from kvprobe.api import RAW_FRAME, all_probes, check_mode, run_needs, selected
from kvprobe.cache_types import CacheConfig, ConfigId, check_cache_type, check_flash_attn
from kvprobe.display import plain
from kvprobe.errors import Interrupted, UserError
from kvprobe.kernel_check import KernelDecision

if TYPE_CHECKING:  # the runner imports llama.cpp: only a run that gets past validation pays for it
    from kvprobe.plan.scenario import Scenario
    from kvprobe.result.journal import SavedRun, Unit, UnitKey
    from kvprobe.result.records import RunOutcome
    from kvprobe.runner import RunSettings


def parse_margins(texts: list[str]) -> dict[str, float]:
    """--margin METRIC=VALUE (repeatable): the equivalence margins the verdict uses, the
    metrics' defaults for the rest."""
    from kvprobe.api import by_name, margins

    out = margins()
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or name not in out:
            raise UserError(
                f"--margin {text!r}: use METRIC=VALUE with METRIC one of {', '.join(sorted(out))}, "
                "e.g. --margin answer_logprob=0.5"
            )
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not (number > 0 and number < float("inf")):
            raise UserError(
                f"--margin {text!r}: the margin must be a positive number, e.g. {name}={out[name]:g}"
            )
        # A share's difference lies in [-1, 1]: a margin of 1 or more calls anything equivalent.
        ceiling = 1.0 if by_name(name).binary else MAX_MARGIN
        if number >= ceiling:
            raise UserError(
                f"--margin {text!r}: the margin must be below {ceiling:g}"
                + (f" ({name} is a share)" if ceiling == 1.0 else "")
                + f", e.g. {name}={out[name]:g}"
            )
        out[name] = number
    return out


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
        from kvprobe.weights.doctor import type_bits

        for t in quantized:
            configs += [CacheConfig(t, "f16"), CacheConfig("f16", t)]
        for t in quantized:  # the pair to use where K is at fault: K at 8 bits, V at fewer
            if type_bits(t.upper()) < 8:
                configs.append(CacheConfig("q8_0", t))
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


MAX_MARGIN = 1000.0  # nats: far past any loss a cache could cause; more is a typo
MAX_THREADS = 512  # GGML_MAX_N_THREADS, the bound of one ggml threadpool
MAX_SEED = 2**32 - 1  # numpy's generators refuse a negative seed; llama.cpp's seeds are uint32
MAX_GPU_LAYERS = 2**31 - 1  # an int32 in llama.cpp; any value past the model's layers means all


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option against the range the code behind it accepts, before anything is
    read: a value that passes here cannot end the run in a statistics error or inside llama.cpp."""
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed must be a whole number from 0 to {MAX_SEED:,}, got {args.seed}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be from 1 to {MAX_THREADS} (GGML_MAX_N_THREADS), got {args.threads}")
    if args.gpu_layers is not None and not -1 <= args.gpu_layers <= MAX_GPU_LAYERS:
        raise UserError(
            f"--gpu-layers must be -1 (all) or a number of layers from 0 to {MAX_GPU_LAYERS:,}, "
            f"got {args.gpu_layers}"
        )
    if args.max_contexts is not None and not 1 <= args.max_contexts <= 1024:
        raise UserError(f"--max-contexts must be from 1 to 1,024, got {args.max_contexts}")


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
    memory: str  # the pre-flight estimate, in words
    max_contexts: int | None  # contexts alive at once, when the configurations go in groups
    page: Path | None  # the HTML page to write beside the result
    margins: dict[str, float]  # equivalence margins the verdict uses (--margin)


@dataclass(frozen=True)
class RunExecution:
    """What running the probes gave, and what the engine reports it used."""

    outcome: RunOutcome
    baseline: str | None  # "ref:f16" in the weights-vs-KV design
    runtime: dict[str, Any]


def estimate_memory(
    facts: list[dict[str, Any]],
    configs: list[CacheConfig],
    *,
    baseline: str | None,
    scenario: Scenario,
    args: argparse.Namespace,
    gpu_layers: int,
) -> tuple[str, int | None]:
    """The run's peak memory, from the headers, and how many contexts may exist at once: all
    of them if they fit (None), else --max-contexts, else as many as fit (configuration
    groups, kvprobe.plan.groups). Refused when not even the smallest group fits; the
    words for the run's first lines. With layers offloaded, weights, KV caches and compute
    buffers go to the GPU's memory (checked through NVML) and the host keeps the rest."""
    from kvprobe.engine import gpu_offload_supported
    from kvprobe.plan.groups import plan_groups, round_up
    from kvprobe.weights.memory import GiB, RunMemory, available_bytes, check_fits, gpu_free_bytes, run_memory

    needs = run_needs(selected(scenario.probes, args.mode), scenario, args.mode)
    reads_logits = needs.reads_logits
    scored = args.ctx * needs.logit_documents
    extra = 1 if args.null_check and baseline is not None and reads_logits else 0
    forks = needs.fork_cells
    need = run_memory(
        facts, configs, round_up(args.ctx + forks, 256), scenario.plan.chunk,
        extra_contexts=extra, all_logits=reads_logits, scored_positions=scored,
    )  # fmt: skip
    n_runs = len(configs) * len(facts)
    repeats_reference = baseline is not None and reads_logits
    smallest = 2 if repeats_reference else 1
    if args.max_contexts is not None and args.max_contexts < smallest:
        raise UserError(
            f"--max-contexts {args.max_contexts} is too few: give at least {smallest}"
            + (
                " (a group holds the reference beside the caches compared with it)"
                if repeats_reference
                else ""
            )
        )
    on_gpu = gpu_layers != 0 and gpu_offload_supported()
    limit = gpu_free_bytes() if on_gpu else available_bytes()

    def peak(max_contexts: int | None) -> RunMemory:
        groups = plan_groups(n_runs, max_contexts, reference=repeats_reference, extra_first=extra)
        grouped = need.for_groups(groups, extra)
        return replace(grouped, arrays=0, process=0) if on_gpu else grouped

    max_contexts = args.max_contexts
    if getattr(args, "one_group", False) and limit is not None and peak(None).total > limit:
        raise UserError(
            f"the run being resumed had all {n_runs + extra} contexts at once, which need about "
            f"{peak(None).total / GiB:.1f} GiB, but {limit / GiB:.1f} GiB are available now: free memory, "
            "or start it again without --resume (it then goes in groups)"
        )
    if max_contexts is None and limit is not None and peak(None).total > limit:
        fitting = [k for k in range(n_runs + extra - 1, smallest - 1, -1) if peak(k).total <= limit]
        max_contexts = fitting[0] if fitting else None
    if max_contexts is not None and max_contexts >= n_runs + extra:
        max_contexts = None  # one group holds them all
    chosen = peak(max_contexts)
    check_fits(chosen, limit, args.ctx, where="GPU memory" if on_gpu else "memory")
    n_groups = len(plan_groups(n_runs, max_contexts, reference=repeats_reference, extra_first=extra))
    groups = ""
    if max_contexts is not None:
        groups = f"; in {n_groups} groups of at most {max_contexts} contexts"
        groups += " (the reference again in each)" if repeats_reference else ""
        if args.max_contexts is None:
            groups += f", since all {n_runs + extra} need about {peak(None).total / GiB:.1f} GiB"
    if on_gpu:
        host = need.arrays + need.process + chosen.logits // 2
        shown = f" of {limit / GiB:.1f} GiB free" if limit is not None else ""
        words = (
            f"memory: needs about {chosen.total / GiB:.1f} GiB of GPU memory{shown} ({chosen.describe()}) "
            f"and {host / GiB:.1f} GiB on the host{groups}"
        )
    else:
        shown = f" of {limit / GiB:.1f} GiB available" if limit is not None else ""
        words = f"memory: needs about {chosen.total / GiB:.1f} GiB{shown} ({chosen.describe()}){groups}"
    return words, max_contexts


def html_page_path(args: argparse.Namespace, out_path: Path) -> Path | None:
    """--html PAGE (matplotlib required: refused now, not after the run), else <out>.html when
    matplotlib is there, else none."""
    import importlib.util

    from kvprobe.views.figures import INSTALL_PLOT

    has_plot = importlib.util.find_spec("matplotlib") is not None
    if args.no_html:
        return None
    if args.html:
        if not has_plot:
            raise UserError(f"--html needs matplotlib: {INSTALL_PLOT}, or drop --html")
        return Path(args.html)
    return out_path.with_suffix(".html") if has_plot else None


def check_run_outputs(
    args: argparse.Namespace, out_path: Path, page: Path | None, model_paths: list[Path], scenario: Scenario
) -> None:
    """The result, its journal and the page, before any work: not onto an input, not over an
    existing file without --force, each into a folder that takes it. Resuming, the run's own
    partial result and page are its state and may be replaced."""
    from kvprobe.paths import Output, check_outputs
    from kvprobe.plan.scenario import bundled_scenarios
    from kvprobe.result.journal import journal_path

    resuming = bool(getattr(args, "resume", None))
    own_partial = resuming and getattr(args, "out_is_partial", False)
    outputs = [Output(out_path, "--out", may_exist=own_partial)]
    if not resuming:
        outputs.append(Output(journal_path(out_path), "the journal of --out"))
    if page is not None:
        outputs.append(Output(page, "--html", may_exist=own_partial and not args.html))
    inputs = list(model_paths)
    if args.scenario not in bundled_scenarios():
        inputs.append(Path(args.scenario))
    if scenario.haystack.kind == "file":
        inputs.append(Path(scenario.haystack.path).expanduser())
    if resuming:
        inputs.append(Path(args.resume).expanduser())
    if getattr(args, "chat_template", None):
        inputs.append(Path(args.chat_template).expanduser())
    check_outputs(outputs, inputs, force=args.force)


def choose_run_prompt(args: argparse.Namespace, scenario: Any, facts: list[dict[str, Any]]) -> Any:
    """The prompt format (kvprobe.plan.prompt): the options first, then the scenario's [prompt]."""
    from kvprobe.plan.prompt import choose_prompt

    requested = getattr(args, "prompt_format", None) or scenario.prompt.format
    system = getattr(args, "system", None)
    if system is None:
        system = scenario.prompt.system or None
    choice = choose_prompt(
        requested, facts[0], template_file=getattr(args, "chat_template", None), system=system
    )
    if (
        choice.format == "chat"
        and len(facts) == 2
        and not getattr(args, "chat_template", None)
        and facts[1].get("chat_template") != facts[0].get("chat_template")
    ):
        raise UserError(
            "the two --model files have different chat templates: the weights-vs-KV design feeds both "
            "the same tokens; give one with --chat-template FILE, or use --prompt-format raw"
        )
    return choice


def validate_run(args: argparse.Namespace) -> RunRequest:
    """Step 1: every check a run can fail, in one pass over the arguments, the scenario and
    the model headers. Nothing is hashed, loaded or written."""
    from dataclasses import replace

    from kvprobe.engine import gpu_offload_supported
    from kvprobe.plan.scenario import HaystackSpec, load_scenario
    from kvprobe.provenance import default_model_path
    from kvprobe.result.document import utc_now
    from kvprobe.result.store import default_out_path
    from kvprobe.runner import RunSettings
    from kvprobe.weights.doctor import read_facts

    margins = parse_margins(getattr(args, "margin", None) or [])
    check_numbers(args)
    configs, baseline = parse_configs(args)
    scenario = load_scenario(args.scenario)
    if args.haystack:
        kind = args.haystack if args.haystack in ("prose", "noise") else "file"
        scenario = replace(scenario, haystack=HaystackSpec(kind, "" if kind != "file" else args.haystack))
    if scenario.haystack.kind == "file":
        from kvprobe.plan.haystack import read_user_text

        read_user_text(scenario.haystack.path)  # refused now, not after the models are hashed and loaded
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
    check_mode(scenario.probes, args.mode)
    if (
        args.null_check
        and not run_needs(selected(scenario.probes, args.mode), scenario, args.mode).null_check
    ):
        owners = [p.name for p in all_probes() if p.needs(scenario, mode=args.mode).null_check]
        raise UserError(
            f"--null-check needs the {' or '.join(owners)} probe: "
            "use a scenario that runs it (e.g. --scenario default)"
        )
    for probe in selected(scenario.probes, args.mode):
        probe.check_run(scenario, mode=args.mode, ctx=args.ctx, baseline=baseline, null_check=args.null_check)
    facts = [read_facts(p) for p in model_paths]  # checks the files are GGUF before llama.cpp sees them
    gpu_layers = args.gpu_layers if args.gpu_layers is not None else (-1 if gpu_offload_supported() else 0)
    memory, max_contexts = estimate_memory(
        facts, configs, baseline=baseline, scenario=scenario, args=args, gpu_layers=gpu_layers
    )
    created = utc_now()
    out_path = (
        Path(args.out)
        if args.out
        else default_out_path(
            created, "-vs-".join(p.stem for p in model_paths), [c.id for c in configs], args.ctx
        )
    )
    page = html_page_path(args, out_path)
    check_run_outputs(args, out_path, page, model_paths, scenario)
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
        prompt=choose_run_prompt(args, scenario, facts),
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
        margins=margins,
        threads=args.threads,
        no_repack=args.no_repack,
        warnings=warnings,
        memory=memory,
        max_contexts=max_contexts,
        page=page,
    )


def execute_run(
    request: RunRequest,
    kernels: KernelDecision,
    console: Console,
    *,
    done: dict[UnitKey, Unit] | None = None,
    on_unit: Callable[[Unit], None] | None = None,
    time_budget: float | None = None,
    budget_start: float | None = None,
) -> RunExecution:
    """Step 2: load the models and run every probe in lockstep, showing progress. Finished
    units go to `on_unit` (the journal); `done` ones are restored; with `time_budget` (seconds)
    no unit starts that would not end within it, counted from `budget_start` (the command's
    start: hashing, the kernel check and loading count too)."""
    from kvprobe import engine
    from kvprobe.pace import Pace, StepShape, unscored_feed_cost
    from kvprobe.runner import Runner, run_probes
    from kvprobe.views.progress import RunProgress

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
            baseline = str(replace(ConfigId.parse(baseline), weights="ref"))
        runner = Runner(loaded[0], request.scenario, request.settings, baseline, request.null_check)
        groups = runner.set_groups(len(request.configs) * len(paths), request.max_contexts)
        ends = runner.checkpoints if request.settings.mode == "onepass" else [1]
        steps = [StepShape(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        scored = {d.index for d in runner.documents if runner.readers(d)}
        sizes = [len(members) + (1 if i == 0 and runner.with_null else 0) for i, members in enumerate(groups)]
        ratio = unscored_feed_cost(request.facts[0], len(groups[0]), sizes[0])
        pace = Pace(steps, scored, ratio, sizes)
        units = runner.unit_keys()
        n_runs = len(request.configs) * len(paths)
        with RunProgress(console, runner.planned_tokens(n_runs), pace, units) as shown:
            started = budget_start if budget_start is not None else time.monotonic()

            def finished(unit: Unit) -> None:
                restored = done is not None and unit.key in done
                if not restored and on_unit is not None:
                    on_unit(unit)
                shown.unit_done(
                    unit.key,
                    unit.seconds,
                    feed_s=unit.feed_s,
                    reduce_s=unit.reduce_s,
                    restored=restored,
                )

            def may_start(key: UnitKey) -> bool:
                expected = pace.predict(*key) or 0.0
                return time_budget is None or time.monotonic() - started + expected <= time_budget

            outcome = run_probes(
                runner, request.configs, shown.advance, models=models, done=done, on_unit=finished,
                may_start=may_start if time_budget is not None else None, max_contexts=request.max_contexts,
            )  # fmt: skip
        info = engine.runtime_info()
        settings = request.settings
        runtime = {
            **info,
            "backend": "gpu" if request.gpu_layers != 0 and info["gpu_offload_supported"] else "cpu",
            "n_threads": loaded[0].n_threads,
            "n_gpu_layers": request.gpu_layers,
            **kernels.runtime(),
            "weight_buffers_mib": {p.name: m.weight_buffers for p, m in zip(paths, loaded, strict=True)},
            "n_ctx": outcome.n_ctx,
            "n_batch": outcome.chunk,
            "n_ubatch": outcome.chunk,
            "n_seq_max": outcome.n_seq_max,
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
    from kvprobe.result.document import build_result

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
            "checkpoints": outcome.checkpoints,
            "chunk": outcome.chunk,
            "null_check": request.null_check,
        },
        warnings=request.warnings,
    )


def _describe_models(request: RunRequest) -> tuple[list[dict[str, Any]], dict[Path, list[str]]]:
    """Path, sha256 and metadata per model (hashing reads the whole file: after validation),
    with the doctor's findings; and the serious findings per file, to show before the run."""
    from dataclasses import asdict

    from kvprobe.weights.doctor import findings, kv_layout
    from kvprobe.weights.model_info import read_model_info

    infos: list[dict[str, Any]] = []
    serious: dict[Path, list[str]] = {}
    for path, facts in zip(request.model_paths, request.facts, strict=True):
        info = read_model_info(path)
        found = findings(facts)
        info["findings"] = [asdict(f) for f in found]
        info["kv_layout"] = kv_layout(facts)  # what the KV memory of any cache type needs, later
        infos.append(info)
        if messages := [f.message for f in found if f.severity == "serious"]:
            serious[path] = messages
    return infos, serious


def run_identity(request: RunRequest, infos: list[dict[str, Any]], kernels: KernelDecision) -> dict[str, Any]:
    """Everything that determines the items: a journal resumes only a request with the same."""
    from kvprobe import engine
    from kvprobe.plan.prompt import framing_key, prompt_record

    info = engine.runtime_info()
    settings = request.settings
    return {
        "kvprobe": __version__,
        "models_sha256": [i["sha256"] for i in infos],
        "scenario_sha256": request.scenario.sha256,
        "seed": settings.seed,
        "ctx": settings.ctx,
        "mode": settings.mode,
        "configs": [c.id for c in request.configs],
        "baseline": request.baseline,
        "null_check": request.null_check,
        "llama_cpp_python": info.get("llama_cpp_python"),
        "llama_cpp_build": info.get("llama_cpp_build"),
        "flash_attn": settings.flash_attn,
        "attn_rotation": settings.attn_rotation,
        **(
            {"prompt": list(framing_key({"prompt": prompt_record(settings.prompt, RAW_FRAME)}))}
            if settings.prompt.format == "chat"
            else {}
        ),
        "extra_bufts": kernels.extra_bufts,
        "n_gpu_layers": request.gpu_layers,
        "n_threads": request.threads or os.cpu_count(),
        # Groups give the same numbers on CPU, but a journal's units belong to its groups.
        **({"max_contexts": request.max_contexts} if request.max_contexts is not None else {}),
    }


STOP_SWITCH_ENV = "KVPROBE_TEST_STOP_AFTER"  # "DOC,STEP[,GROUP]:kill|term|int": for tests only


def resume_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Any]:
    """For `--resume PATH`: the journal, and the options to run with. Given only --resume (and
    perhaps --time-budget), the original options come from the journal, with relative paths
    taken from the folder the run started in; given more, they are used as they are, and the
    journal must match the request they make."""
    from kvprobe.paths import same_file
    from kvprobe.result.journal import SUFFIX, journal_path, read_journal

    given = Path(args.resume).expanduser().absolute()  # before a chdir to where the run started
    if args.html:
        args.html = str(Path(args.html).expanduser().absolute())
    saved = read_journal(given if given.name.endswith(SUFFIX) else journal_path(given))
    args.resume = str(saved.path)  # the journal, whichever of the two names was given
    defaults = vars(parser.parse_args(["run"]))
    carried = {"resume", "time_budget", "force", "html", "no_html"}  # options of this invocation only
    explicit = {k for k, v in vars(args).items() if v != defaults.get(k)} - carried
    if not explicit:
        # The original options, read from the folder the run started in: relative paths (model,
        # scenario, haystack) then mean what they meant, and the scenario hashes the same.
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
        args = resumed
    if args.max_contexts is None:
        # The groups the run started with (chosen for the memory then, perhaps): its units are
        # theirs. A run that started in one group stays in one.
        args.max_contexts = saved.header["identity"].get("max_contexts")
        args.one_group = args.max_contexts is None
    out = Path(saved.header["out"])
    if args.out is None:
        args.out = str(out)
    elif Path(args.out).resolve() != out:
        raise UserError(f"--resume {saved.path} continues the run that writes {out}: drop --out or give that")
    if not same_file(saved.path, journal_path(out)):
        raise UserError(
            f"--resume {saved.path}: its run writes {out}, whose journal is {journal_path(out)}, not this "
            "file: resume from the journal beside the result, or start the run again"
        )
    # Only the run's own partial result is replaced without --force: a journal never makes
    # kvprobe overwrite a file that some other run, or the user, put there.
    args.out_is_partial = is_partial_result(out, saved.header)
    return args, saved


def is_partial_result(out: Path, header: dict[str, Any]) -> bool:
    """Whether `out` is the result file the journal's run wrote before it stopped: a kvprobe
    result with the same start time and model."""
    from kvprobe.result.store import load_result

    if not out.is_file():
        return False
    try:
        doc = load_result(out)
    except UserError:
        return False
    models = header["identity"].get("models_sha256") or [None]
    return bool(doc.get("created") == header.get("created") and doc["model"].get("sha256") == models[0])


def cmd_run(args: argparse.Namespace, console: Console, argv: list[str] | None = None) -> int:
    """`kvprobe run`: validate, lock the result path, announce, execute with a journal, write
    the result."""
    command_start = time.monotonic()  # --time-budget counts from here: hashing and loading too
    from kvprobe.cli import build_parser
    from kvprobe.paths import OutputLock, refuse_if_locked
    from kvprobe.result.journal import journal_path

    saved = None
    if args.resume:
        args, saved = resume_args(args, build_parser())
    if args.out:
        refuse_if_locked(Path(args.out))  # a run writing it now is the real problem, if there is one
    if not args.resume and args.out and journal_path(Path(args.out)).exists() and not args.force:
        raise UserError(
            f"{journal_path(Path(args.out))} holds an interrupted run: continue it with "
            f"`kvprobe run --resume {journal_path(Path(args.out))}`, or pass --force to start again"
        )
    request = validate_run(args)
    owner = {"pid": os.getpid(), "started": request.created, "command": " ".join(["kvprobe", *sys.argv[1:]])}
    with OutputLock(request.out_path, owner):
        return _run_validated(
            args, request, saved=saved, console=console, argv=argv, command_start=command_start
        )


def _run_validated(
    args: argparse.Namespace,
    request: RunRequest,
    *,
    saved: SavedRun | None,
    console: Console,
    argv: list[str] | None,
    command_start: float,
) -> int:
    """`kvprobe run` once the request is valid and its result path locked."""
    import signal

    from kvprobe.plan.prompt import describe, prompt_record
    from kvprobe.result.journal import Journal, differences, identity_hash, journal_path, key_json

    infos, serious = _describe_models(request)
    for w in request.warnings:
        console.print(f"[yellow]warning:[/] {plain(w)}")
    for path, messages in serious.items():
        console.print(
            f"[bold red]model:[/] {plain('; '.join(messages))} "
            f"(`kvprobe doctor {plain(path)}` explains; results will show it)",
            highlight=False,
        )
    from kvprobe.weights.model_info import forget_headers

    kernels = _kernel_decision(args, request.model_paths, request.gpu_layers, console)
    forget_headers()  # the parsed headers are done with: 0.7 GiB for a 262K vocabulary
    identity = run_identity(request, infos, kernels)
    jpath = saved.path if saved is not None else journal_path(request.out_path)
    if saved is not None:
        differ = differences(saved.header["identity"], identity)
        if differ:
            raise UserError(
                f"--resume {saved.path} is the journal of another request: {'; '.join(differ)}; "
                "resume with the original options and files, or start again without --resume"
            )
        journal = Journal(saved.path, saved.header, whole_bytes=saved.whole_bytes)
        done = {u.key: u for u in saved.units}
    else:
        header = {
            "argv": list(argv if argv is not None else sys.argv[2:]),
            "cwd": str(Path.cwd()),
            "out": str(request.out_path.resolve()),
            "identity": identity,
            "identity_sha256": identity_hash(identity),
            "created": request.created,
        }
        journal = Journal(jpath, header)
        done = {}
    console.print(request.memory, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"kvprobe {__version__}: {' vs '.join(p.name for p in request.model_paths)}, "
        f"caches {', '.join(c.id for c in request.configs)}, ctx {request.settings.ctx}, "
        f"scenario {request.scenario.name}, {request.settings.mode} mode, "
        f"{describe(prompt_record(request.settings.prompt, RAW_FRAME))}"
        + (f"; resuming {len(done)} finished units from {saved.path}" if saved else ""),
        markup=False,
        highlight=False,
    )

    def stop(signum: int, frame: object) -> None:  # SIGTERM (kill, systemd, a scheduler) as Ctrl-C
        raise KeyboardInterrupt

    checked: list[bool] = []

    def journaled(unit: Unit) -> None:
        journal.append(unit)
        if not checked and request.baseline is not None and unit.items:
            # The reference's own short-context items, said as soon as they exist.
            checked.append(True)
            from kvprobe.stats.verdict import reference_checks

            record = prompt_record(request.settings.prompt, RAW_FRAME)
            first = min(int(it["ctx"]) for it in unit.items)
            for line in reference_checks(unit.items, request.baseline, record, [first]):
                console.print(f"reference check: {line}", markup=False, highlight=False)
        # Tests stop a run at a known point: SIGKILL (nothing runs after it) or SIGINT (Ctrl-C).
        switch = os.environ.get(STOP_SWITCH_ENV, "")
        if switch.startswith(",".join(map(str, key_json(unit.key))) + ":"):
            how = {"kill": signal.SIGKILL, "term": signal.SIGTERM}.get(
                switch.rsplit(":", 1)[-1], signal.SIGINT
            )
            os.kill(os.getpid(), how)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        execution = execute_run(
            request, kernels, console, done=done, on_unit=journaled, time_budget=args.time_budget,
            budget_start=command_start,
        )  # fmt: skip
    except KeyboardInterrupt:  # while loading the models, or while assembling what was measured
        if not done and not journal.written:
            raise Interrupted("interrupted before any unit finished; no result file was written") from None
        raise Interrupted(
            f"interrupted; the finished units are in {jpath}: continue with `kvprobe run --resume {jpath}`"
        ) from None
    else:
        if execution.outcome.stopped is not None:
            journal.ensure()
    finally:
        signal.signal(signal.SIGTERM, previous)
        journal.close()
    return _finish_run(request, infos, execution, console, jpath)


def _finish_run(
    request: RunRequest, infos: list[dict[str, Any]], execution: RunExecution, console: Console, jpath: Path
) -> int:
    from kvprobe.result.document import add_statistics
    from kvprobe.result.store import write_result

    outcome = execution.outcome
    result = assemble_run(request, infos, execution, " ".join(["kvprobe", *sys.argv[1:]]))
    out_path = request.out_path
    write_result(result, out_path)  # the measurements are on disk before any statistic runs
    resume = f"kvprobe run --resume {jpath}"
    if outcome.stopped == "interrupted":
        raise Interrupted(
            f"interrupted after {len(outcome.items)} items; {len(outcome.missing)} units are missing "
            f"from the partial result {out_path} (complete: false); continue with `{resume}`"
        )
    try:
        add_statistics(result, outcome.measured, request.margins)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while computing statistics; the measured items are in {out_path} "
            f"(statistics.complete: false); `{resume}` computes them"
        ) from None
    write_result(result, out_path)
    if outcome.stopped is None:
        jpath.unlink(missing_ok=True)  # the result is whole: nothing left to resume
    from kvprobe.views.terminal import print_run_report

    print_run_report(result, console)
    for failed in result["statistics"]["errors"]:
        console.print(
            f"statistics: the {failed['what']} could not be computed ({failed['error']}); "
            "the measured items are in the result file",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if outcome.stopped == "time budget":
        console.print(
            f"time budget reached: {len(outcome.missing)} units not measured (complete: false; the verdict "
            f"uses the items measured); continue with `{resume}`",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if request.page is not None:
        from kvprobe.cli import write_pictures

        write_pictures([(out_path.name, result)], str(request.page), None, console, force=True)
    console.print(f"result: {out_path}", markup=False, highlight=False)  # the last line names the file
    return 0
