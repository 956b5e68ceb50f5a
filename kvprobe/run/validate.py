"""`kvprobe run`, step 1: validate the request. Every precondition is checked here, in one
pass over the options, the scenario and the model headers, before any model is hashed or
loaded; the options end here, in a typed RunRequest (kvprobe.run.request). Executing it and
assembling the result are kvprobe.run.execute's."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvprobe.api import Scenario, all_probes, by_name, check_mode, margins, run_needs, selected
from kvprobe.api.cache_types import CacheConfig, check_cache_type, check_flash_attn
from kvprobe.api.scenario import HaystackKind
from kvprobe.engine import get_engine
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import Output, check_outputs
from kvprobe.infra.provenance import default_model_path, gpus
from kvprobe.plan.groups import plan_groups, round_up
from kvprobe.plan.haystack import read_user_text
from kvprobe.plan.prompt import PromptChoice, choose_prompt
from kvprobe.plan.scenario import HaystackSpec, bundled_scenarios, load_scenario
from kvprobe.result.document import utc_now
from kvprobe.result.journal import journal_path
from kvprobe.result.store import default_out_path
from kvprobe.run.engine_choice import attach_configs, engine_choice, wants_server
from kvprobe.run.request import RunRequest, RunSettings
from kvprobe.views.figures import INSTALL_PLOT
from kvprobe.weights import memory
from kvprobe.weights.doctor import read_facts, type_bits
from kvprobe.weights.memory import GiB, RunMemory, check_fits, run_memory

MAX_MARGIN = 1000.0  # nats: far past any loss a cache could cause; more is a typo
MAX_THREADS = 512  # GGML_MAX_N_THREADS, the bound of one ggml threadpool
MAX_SEED = 2**32 - 1  # numpy's generators refuse a negative seed; llama.cpp's seeds are uint32
MAX_GPU_LAYERS = 2**31 - 1  # an int32 in llama.cpp; any value past the model's layers means all


def parse_margins(texts: list[str]) -> dict[str, float]:
    """--margin METRIC=VALUE (repeatable): the equivalence margins the verdict uses, the
    metrics' defaults for the rest."""
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


LADDER = ("q8_0", "q4_0")  # what a run without --cache measures: the two caches people use


def uses_ladder(args: argparse.Namespace) -> bool:
    """No cache type named (no --cache, --cache-k/-v or --split-kv) and a reference to compare
    with: the run measures the usual ladder. Not against a running --server, whose cache is
    stated (--server-cache), not chosen."""
    named = args.cache or args.cache_k is not None or args.cache_v is not None
    return not (
        named
        or getattr(args, "split_kv", False)
        or getattr(args, "server", None)
        or args.baseline.strip().lower() == "none"
    )


def parse_configs(args: argparse.Namespace) -> tuple[list[CacheConfig], str | None]:
    """Baseline first, then the requested configurations (the usual ladder where none is
    named), without duplicates."""
    configs: list[CacheConfig] = []
    for name in args.cache or (LADDER if uses_ladder(args) else ()):
        t = check_cache_type(name)
        configs.append(CacheConfig(t, t))
    if (args.cache_k is None) != (args.cache_v is None):
        raise UserError("--cache-k and --cache-v go together: give both for an asymmetric pair")
    if args.cache_k is not None:
        configs.append(CacheConfig(check_cache_type(args.cache_k), check_cache_type(args.cache_v)))
    if getattr(args, "split_kv", False):
        configs += split_kv_configs(configs)
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


def split_kv_configs(configs: list[CacheConfig]) -> list[CacheConfig]:
    """--split-kv: K-only and V-only for each quantized --cache, and K at 8 bits with V at fewer."""
    quantized = [c.type_k for c in configs if c.type_k == c.type_v and c.k_quantized]
    if not quantized:
        raise UserError("--split-kv splits a quantized cache: give --cache q4_0 (or another quantized type)")
    added: list[CacheConfig] = []
    for t in quantized:
        added += [CacheConfig(t, "f16"), CacheConfig("f16", t)]
    for t in quantized:  # the pair to use where K is at fault: K at 8 bits, V at fewer
        if type_bits(t.upper()) < 8:
            added.append(CacheConfig("q8_0", t))
    return added


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


def can_offload() -> bool:
    """Whether the engine's build can offload layers to a GPU (the engine, slow to import,
    loads here only when a run may offload, past the other checks)."""
    return get_engine().gpu_offload_supported()


def memory_need(
    facts: list[dict[str, Any]],
    configs: list[CacheConfig],
    *,
    baseline: str | None,
    scenario: Scenario,
    ctx: int,
    mode: str,
    null_check: bool,
) -> tuple[RunMemory, bool, int]:
    """What a run needs with every context at once, from the headers alone; whether a probe
    reads every position's logits; and the extra contexts (the null check's)."""
    needs = run_needs(selected(scenario.probes, mode), scenario, mode)
    reads_logits = needs.reads_logits
    extra = 1 if null_check and baseline is not None and reads_logits else 0
    need = run_memory(
        facts, configs, round_up(ctx + needs.fork_cells, 256), scenario.plan.chunk,
        extra_contexts=extra, all_logits=reads_logits, scored_positions=ctx * needs.logit_documents,
    )  # fmt: skip
    return need, reads_logits, extra


def estimate_memory(
    facts: list[dict[str, Any]],
    configs: list[CacheConfig],
    *,
    baseline: str | None,
    scenario: Scenario,
    ctx: int,
    mode: str,
    null_check: bool,
    max_contexts: int | None,
    one_group: bool = False,
    gpu_layers: int,
) -> tuple[str, int | None]:
    """The run's peak memory, from the headers, and how many contexts may exist at once: all
    of them if they fit (None), else `max_contexts` (--max-contexts), else as many as fit
    (configuration groups, kvprobe.plan.groups); with `one_group` (a resumed run that had all
    at once) all or none. Refused when not even the smallest group fits; the words for the
    run's first lines. With layers offloaded, weights, KV caches and compute buffers go to
    the GPU's memory (checked through NVML) and the host keeps the rest."""
    need, reads_logits, extra = memory_need(
        facts, configs, baseline=baseline, scenario=scenario, ctx=ctx, mode=mode, null_check=null_check
    )
    n_runs = len(configs) * len(facts)
    repeats_reference = baseline is not None and reads_logits
    smallest = 2 if repeats_reference else 1
    if max_contexts is not None and max_contexts < smallest:
        raise UserError(
            f"--max-contexts {max_contexts} is too few: give at least {smallest}"
            + (
                " (a group holds the reference beside the caches compared with it)"
                if repeats_reference
                else ""
            )
        )
    on_gpu = gpu_layers != 0 and can_offload()
    limit = memory.gpu_free_bytes() if on_gpu else memory.available_bytes()  # as the module has them (tests)

    def peak(at_once: int | None) -> RunMemory:
        groups = plan_groups(n_runs, at_once, reference=repeats_reference, extra_first=extra)
        grouped = need.for_groups(groups, extra)
        return replace(grouped, arrays=0, process=0) if on_gpu else grouped

    if one_group and limit is not None and peak(None).total > limit:
        raise UserError(
            f"the run being resumed had all {n_runs + extra} contexts at once, which need about "
            f"{peak(None).total / GiB:.1f} GiB, but {limit / GiB:.1f} GiB are available now: free memory, "
            "or start it again without --resume (it then goes in groups)"
        )
    chosen_contexts = max_contexts
    if chosen_contexts is None and limit is not None and peak(None).total > limit:
        fitting = [k for k in range(n_runs + extra - 1, smallest - 1, -1) if peak(k).total <= limit]
        chosen_contexts = fitting[0] if fitting else None
    if chosen_contexts is not None and chosen_contexts >= n_runs + extra:
        chosen_contexts = None  # one group holds them all
    chosen = peak(chosen_contexts)
    check_fits(chosen, limit, ctx, where="GPU memory" if on_gpu else "memory")
    groups = ""
    if chosen_contexts is not None:
        n_groups = len(plan_groups(n_runs, chosen_contexts, reference=repeats_reference, extra_first=extra))
        groups = f"; in {n_groups} groups of at most {chosen_contexts} contexts"
        groups += " (the reference again in each)" if repeats_reference else ""
        if max_contexts is None:
            groups += f", since all {n_runs + extra} need about {peak(None).total / GiB:.1f} GiB"
    return memory_words(chosen, need, limit, on_gpu=on_gpu, groups=groups), chosen_contexts


def memory_words(chosen: RunMemory, need: RunMemory, limit: int | None, *, on_gpu: bool, groups: str) -> str:
    """The run's memory line: what it needs, of what is free, and its groups."""
    if on_gpu:
        host = need.arrays + need.process + chosen.logits // 2
        shown = f" of {limit / GiB:.1f} GiB free" if limit is not None else ""
        return (
            f"memory: needs about {chosen.total / GiB:.1f} GiB of GPU memory{shown} ({chosen.describe()}) "
            f"and {host / GiB:.1f} GiB on the host{groups}"
        )
    shown = f" of {limit / GiB:.1f} GiB available" if limit is not None else ""
    return f"memory: needs about {chosen.total / GiB:.1f} GiB{shown} ({chosen.describe()}){groups}"


def html_page_path(args: argparse.Namespace, out_path: Path) -> Path | None:
    """--html PAGE (matplotlib required: refused now, not after the run), else <out>.html when
    matplotlib is there, else none."""
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


def choose_run_prompt(args: argparse.Namespace, scenario: Any, facts: list[dict[str, Any]]) -> PromptChoice:
    """The prompt format (kvprobe.plan.prompt): the options first, then the scenario's [prompt]."""
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


def run_scenario(args: argparse.Namespace) -> Scenario:
    """--scenario, with --haystack in place of its haystack; a haystack file is read now, not
    after the models are hashed and loaded."""
    scenario = load_scenario(args.scenario)
    if args.haystack:
        kind: HaystackKind = args.haystack if args.haystack in ("prose", "noise") else "file"
        scenario = replace(scenario, haystack=HaystackSpec(kind, "" if kind != "file" else args.haystack))
    if scenario.haystack.kind == "file":
        read_user_text(scenario.haystack.path)  # refused now, not after the models are hashed and loaded
    return scenario


def run_models(args: argparse.Namespace, configs: list[CacheConfig], baseline: str | None) -> list[Path]:
    """--model: the default model, one file, or two (REF then TEST) for the weights-vs-KV design."""
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
    return model_paths


def check_probes(scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool) -> None:
    """The scenario's probes can measure this request: the mode, --null-check, and each
    probe's own check_run."""
    check_mode(scenario.probes, mode)
    probes = selected(scenario.probes, mode)
    if null_check and not run_needs(probes, scenario, mode).null_check:
        owners = [p.name for p in all_probes() if p.needs(scenario, mode=mode).null_check]
        raise UserError(
            f"--null-check needs the {' or '.join(owners)} probe: "
            "use a scenario that runs it (e.g. --scenario default)"
        )
    for probe in probes:
        probe.check_run(scenario, mode=mode, ctx=ctx, baseline=baseline, null_check=null_check)


def check_until_decided(
    args: argparse.Namespace, scenario: Scenario, configs: list[CacheConfig], baseline: str | None
) -> bool:
    """Whether the run stops each configuration once decided (--until-decided, else the
    scenario's plan.until_decided), and that it can: a reference to decide against, a
    configuration to test, one pass."""
    given = getattr(args, "until_decided", None)
    wanted = bool(scenario.plan.until_decided if given is None else given)
    if not wanted:
        return False
    where = "--until-decided" if given else f"the scenario's plan.until_decided ({scenario.name})"
    if args.mode != "onepass":
        raise UserError(f"{where} needs --mode onepass (classic mode has no documents to look after)")
    if baseline is None or len(configs) < 2:
        raise UserError(
            f"{where} needs a reference and a cache type to test against it, e.g. --cache q4_0 "
            "(f16 is the reference); or run with --no-until-decided"
        )
    return True


def run_warnings(
    ctx: int,
    facts: list[dict[str, Any]],
    configs: list[CacheConfig],
    gpu_layers: int,
    *,
    server: bool = False,
    all_fa_pairs: bool = False,
) -> list[str]:
    """What the run should say before it starts, in words. `server`: a llama-server runs it,
    whose build kvprobe cannot see; `all_fa_pairs`: this host's build has them all."""
    warnings: list[str] = []
    n_ctx_train = facts[0]["n_ctx_train"]
    if ctx > n_ctx_train > 0:
        warnings.append(
            f"--ctx {ctx} exceeds the model's training context ({n_ctx_train} tokens): "
            "results past it measure the model outside its design, not the cache"
        )
    if gpu_layers != 0 and any(c.type_k != c.type_v for c in configs) and not all_fa_pairs:
        warnings.append(
            "on CUDA, llama.cpp compiles flash-attention kernels only for matching K/V types unless built "
            "with -DGGML_CUDA_FA_ALL_QUANTS=ON: an asymmetric pair runs on a much slower path"
            + ("" if server else f"; rebuild: {GPU_BUILD.format(version=llama_cpp_python())}")
        )
    return warnings


def llama_cpp_python() -> str:
    return importlib.metadata.version("llama-cpp-python")


def has_all_fa_pairs() -> bool:
    """Whether this host's llama.cpp build has flash attention for every K/V pair (CUDA's
    FA_ALL_QUANTS, which llama.cpp's system info names)."""
    return "FA_ALL_QUANTS = 1" in str(get_engine().runtime_info().get("llama_cpp_build", ""))


GPU_BUILD = (
    'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_CUDA_FA_ALL_QUANTS=ON" '
    "pip install --force-reinstall --no-cache-dir llama-cpp-python=={version}"
)


def gpu_build_warning(args: argparse.Namespace) -> list[str]:
    """An NVIDIA GPU that this llama.cpp build cannot use (a CPU-only build, pip's default):
    said in one line with the rebuild, never a silent CPU run on a GPU host (`--gpu-layers N`
    included: this build cannot honour it). Not with `--gpu-layers 0` (the CPU chosen), nor for
    a llama-server, which has its own build."""
    if wants_server(args) or args.gpu_layers == 0 or can_offload() or not (found := gpus()):
        return []
    version = llama_cpp_python()
    return [
        f"this llama.cpp build has no GPU offload, so the {found[0]['name']} stays idle and the run goes "
        f"on the CPU (--gpu-layers 0); for the GPU, rebuild: {GPU_BUILD.format(version=version)}"
    ]


def validate_run(args: argparse.Namespace) -> RunRequest:
    """Step 1: every check a run can fail, in one pass over the arguments, the scenario and
    the model headers. Nothing is hashed, loaded or written."""
    margins = parse_margins(getattr(args, "margin", None) or [])
    check_numbers(args)
    attach_configs(args)
    configs, baseline = parse_configs(args)
    scenario = run_scenario(args)
    check_flash_attn(configs, not args.no_flash_attn)
    model_paths = run_models(args, configs, baseline)
    check_probes(scenario, mode=args.mode, ctx=args.ctx, baseline=baseline, null_check=args.null_check)
    until_decided = check_until_decided(args, scenario, configs, baseline)
    facts = [read_facts(p) for p in model_paths]  # checks the files are GGUF before llama.cpp sees them
    if wants_server(args) and len(model_paths) > 1:
        raise UserError(
            "weights vs KV (two --model files) runs on the in-process engine: drop --llama-server/--server"
        )
    if wants_server(args):  # --gpu-layers becomes every server's -ngl (default: all, -ngl 999)
        gpu_layers = args.gpu_layers if args.gpu_layers is not None else -1
    else:
        gpu_layers = args.gpu_layers if args.gpu_layers is not None else (-1 if can_offload() else 0)
    memory, max_contexts = estimate_memory(
        facts, configs, baseline=baseline, scenario=scenario, ctx=args.ctx, mode=args.mode,
        null_check=args.null_check, max_contexts=args.max_contexts,
        one_group=getattr(args, "one_group", False), gpu_layers=gpu_layers,
    )  # fmt: skip
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
    engine, engine_options = engine_choice(args, out_path)
    if getattr(args, "reference", None) and len(model_paths) != 1:
        raise UserError("--reference in-process checks one model's server against kvprobe: give one --model")
    mixed_on_gpu = gpu_layers != 0 and any(c.type_k != c.type_v for c in configs)
    all_fa_pairs = mixed_on_gpu and not wants_server(args) and has_all_fa_pairs()
    warnings = gpu_build_warning(args) + run_warnings(
        args.ctx, facts, configs, gpu_layers, server=wants_server(args), all_fa_pairs=all_fa_pairs
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
        configs=configs, baseline=baseline, scenario=scenario, model_paths=model_paths, facts=facts,
        gpu_layers=gpu_layers, out_path=out_path, created=created, settings=settings,
        null_check=args.null_check, margins=margins, threads=args.threads, no_repack=args.no_repack,
        warnings=warnings, memory=memory, max_contexts=max_contexts, page=page,
        time_budget=getattr(args, "time_budget", None), until_decided=until_decided,
        engine=engine, engine_options=engine_options, reference=getattr(args, "reference", None),
        ladder=uses_ladder(args), verbose=bool(getattr(args, "verbose", False)),
    )  # fmt: skip
