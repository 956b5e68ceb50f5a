"""`kvprobe run`, steps 2 and 3, once kvprobe.run.validate has validated the request: lock the result
path, journal every finished unit, execute (load the models, run the probes), and assemble
and write the result. The engine comes from the registry (kvprobe.engine), which imports
llama.cpp when first asked (the kernel check): only a run that got past validation pays for it."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from kvprobe import __version__
from kvprobe.api import RAW_FRAME
from kvprobe.api.cache_types import ConfigId
from kvprobe.api.engine import Engine, KernelDecision, Model
from kvprobe.api.result import ResultDoc
from kvprobe.engine import DEFAULT_ENGINE, get_engine
from kvprobe.infra import test_hooks
from kvprobe.infra.display import plain
from kvprobe.infra.errors import EngineFailure, Interrupted, UserError
from kvprobe.infra.paths import Fingerprint, OutputLock, fingerprint_input
from kvprobe.infra.provenance import MODEL_FIX, host_info
from kvprobe.infra.signals import sigterm_as_interrupt
from kvprobe.plan.haystack import MAX_HAYSTACK_BYTES
from kvprobe.plan.prompt import describe, engine_framing, framing_key, framing_note, prompt_record
from kvprobe.result.document import build_result
from kvprobe.result.journal import (
    Journal,
    SavedRun,
    Unit,
    UnitKey,
    differences,
    identity_hash,
    journal_path,
    key_json,
)
from kvprobe.result.records import RunOutcome
from kvprobe.result.store import write_result
from kvprobe.run.build_check import run_build_check
from kvprobe.run.decided import (
    EarlyDecision,
    config_ids,
    decision_rule,
    differs_line,
    kept_line,
    watching,
)
from kvprobe.run.pace import Pace, StepShape, format_duration, unscored_feed_cost
from kvprobe.run.progress import RunProgress
from kvprobe.run.request import RunRequest
from kvprobe.run.runner import Runner, run_probes
from kvprobe.run.until_decided import Stopped, UntilDecided
from kvprobe.stats.equivalence import WORSE
from kvprobe.stats.statistics import add_statistics
from kvprobe.stats.verdict import reference_checks
from kvprobe.views.decision import print_decision_lines, print_frontier_table
from kvprobe.views.pictures import write_pictures
from kvprobe.views.terminal import print_run_report
from kvprobe.weights.doctor import findings, kv_layout
from kvprobe.weights.model_info import forget_headers, read_model_info


@dataclass(frozen=True)
class RunExecution:
    """What running the probes gave, and what the engine reports it used."""

    outcome: RunOutcome
    baseline: str | None  # "ref:f16" in the weights-vs-KV design
    runtime: dict[str, Any]
    decision: EarlyDecision | None = None  # a default run decided before its end (kvprobe.run.decided)


def run_request(
    request: RunRequest,
    *,
    saved: SavedRun | None,
    console: Console,
    argv: list[str] | None,
    command_start: float,
) -> int:
    """`kvprobe run` once the request is valid: lock its result path, run, write the result.
    `saved`: the journal a --resume continues; `argv`: the options to journal (for --resume)."""
    owner = {"pid": os.getpid(), "started": request.created, "command": " ".join(["kvprobe", *sys.argv[1:]])}
    with OutputLock(request.out_path, owner):
        return _run_locked(request, saved=saved, console=console, argv=argv, command_start=command_start)


def _run_locked(
    request: RunRequest,
    *,
    saved: SavedRun | None,
    console: Console,
    argv: list[str] | None,
    command_start: float,
) -> int:
    """Describe the models, decide the kernels, open the journal, announce, execute, finish."""
    infos, serious, pins = describe_models(request)
    inputs = RunInputs([*pins, *pin_haystack(request)])
    show_warnings(request, serious, console)
    kernels = kernel_decision(request, console)
    forget_headers()  # the parsed headers are done with: 0.7 GiB for a 262K vocabulary
    identity = run_identity(request, infos, kernels, inputs)
    journal, done = open_journal(request, saved, identity, argv)
    inputs.journal, inputs.kept = journal, bool(done)
    console.print(
        request.memory if request.verbose else memory_notice(request.memory), markup=False, highlight=False
    )
    console.print(
        f"kvprobe {__version__}: {' vs '.join(p.name for p in request.model_paths)}, "
        f"caches {', '.join(c.id for c in request.configs)}"
        + (" (no --cache: the usual ladder; --cache f16 for f16 alone)" if request.ladder else "")
        + f", ctx {request.settings.ctx}, "
        f"scenario {request.scenario.name}, {request.settings.mode} mode, "
        f"{describe(prompt_record(request.settings.prompt, RAW_FRAME))}"
        + (
            f"; through llama-server {info}"
            if (info := run_engine(request).runtime_info().get("server_version"))
            else ""
        )
        + (f"; resuming {len(done)} finished units from {saved.path}" if saved else ""),
        markup=False,
        highlight=False,
    )
    execution = execute_journaled(
        request, kernels, console, journal=journal, done=done, command_start=command_start, inputs=inputs,
        keep=lambda partial: write_partial(request, infos, partial),
    )  # fmt: skip
    # Hashed again (not after Ctrl-C, which wants the run to end now): the result names the files
    # by their sha256.
    inputs.check(whole=execution.outcome.stopped != "interrupted")
    return finish_run(request, infos, execution, console, journal.path)


class RunInputs:
    """The files a run reads while it runs (the models, a haystack file), fingerprinted by
    content when it starts. Checked by their stat after loading and at every unit, and by
    their content at the end: a file changed under the run ends it in one line, its finished
    units in the journal, before a number from other bytes is kept."""

    def __init__(self, pins: list[Fingerprint]) -> None:
        self.pins = pins
        self.journal: Journal | None = None
        self.kept = False  # whether the journal holds units (this run's, or those it resumes)

    def sha256(self, what: str) -> str | None:
        return next((p.sha256 for p in self.pins if p.what == what), None)

    def check(self, *, whole: bool = False) -> None:
        """Every file as it was: by its stat (cheap), hashed again where that moved (the same
        bytes written again pass) or where `whole` asks."""
        for i, pin in enumerate(self.pins):
            if whole or pin.changed() is not None:
                problem, self.pins[i] = pin.verify(INPUT_FIX)
                if problem is not None:
                    raise UserError(f"{problem} during the run: {self._left()}")

    def _left(self) -> str:
        journal = self.journal
        if journal is None or not self.kept:
            return "no result file was written; run again once the file stays as it is"
        return (
            f"the units measured before are in {journal.path}; restore the file and continue with "
            f"`kvprobe run --resume {journal.path}`, or run again"
        )


INPUT_FIX = "give a file that stays as it is while kvprobe runs"


def pin_haystack(request: RunRequest) -> list[Fingerprint]:
    """A haystack file, hashed: the documents are built from it after the models load."""
    haystack = request.scenario.haystack
    if haystack.kind != "file":
        return []
    path = Path(haystack.path).expanduser()
    return [fingerprint_input(path, "haystack file", INPUT_FIX, max_bytes=MAX_HAYSTACK_BYTES)]


def describe_models(
    request: RunRequest,
) -> tuple[list[dict[str, Any]], dict[Path, list[str]], list[Fingerprint]]:
    """Path, sha256 and metadata per model (hashing reads the whole file: after validation),
    with the doctor's findings; the serious findings per file, to show before the run; and
    each file's fingerprint, which the run checks it against."""
    infos: list[dict[str, Any]] = []
    serious: dict[Path, list[str]] = {}
    pins: list[Fingerprint] = []
    for path, facts in zip(request.model_paths, request.facts, strict=True):
        pins.append(fingerprint_input(path, "model file", MODEL_FIX))
        info = read_model_info(path, sha256=pins[-1].sha256)
        found = findings(facts)
        info["findings"] = [asdict(f) for f in found]
        info["kv_layout"] = kv_layout(facts)  # what the KV memory of any cache type needs, later
        infos.append(info)
        if messages := [f.message for f in found if f.severity == "serious"]:
            serious[path] = messages
    return infos, serious, pins


def show_warnings(request: RunRequest, serious: dict[Path, list[str]], console: Console) -> None:
    """The request's warnings, then each model's serious findings."""
    for w in request.warnings:
        console.print(f"[yellow]warning:[/] {plain(w)}")
    for path, messages in serious.items():
        console.print(
            f"[bold red]model:[/] {plain('; '.join(messages))} "
            f"(`kvprobe doctor {plain(path)}` explains; results will show it)",
            highlight=False,
        )


def run_engine(request: RunRequest) -> Engine:
    """The engine the request names, with its options (a server's binary or URLs)."""
    return get_engine(request.engine).configured(request.engine_options)


def kernel_decision(request: RunRequest, console: Console) -> KernelDecision:
    """Extra buffer types on or off for the whole run (the engine's check_kernels)."""

    def announce(path: Path) -> None:
        said = f"checking llama.cpp's CPU kernels with {path.name}"
        why = " in a child process (once per llama.cpp build, CPU and weight types)"
        console.print(said + (why if request.verbose else ""), markup=False, highlight=False)

    decision, line = run_engine(request).check_kernels(
        request.model_paths,
        n_gpu_layers=request.gpu_layers,
        n_threads=request.threads,
        no_repack=request.no_repack,
        on_check=announce,
    )
    if line is not None:
        shown = f"kernels: {line}" if request.verbose else kernel_notice(decision)
        console.print(shown, markup=False, highlight=False)
    return decision


def kernel_notice(decision: KernelDecision) -> str:
    """The kernel check's outcome in one short line; the whole reason (and a rebuild recipe) with
    --verbose, the reason in the result's runtime (extra_bufts_reason)."""
    if decision.check == "crashed":
        found = re.search(r"(died with \S+|gave non-finite logits)", decision.reason)
        what = found.group(1).rstrip(",") if found else "crashed"
        return f"kernels: repacked CPU kernels {what}: --no-repack, slower (--verbose)"  # 80 columns
    return "kernels: their check failed; extra CPU kernels stay on (--verbose: why)"


def memory_notice(line: str) -> str:
    """The memory pre-flight without its breakdown (the first parenthesis) and without why it
    goes in groups: what the run needs of what is free, and in how many groups."""
    opened = line.find(" (")
    depth, close = 0, -1
    for i in range(opened + 1, len(line)) if opened >= 0 else ():
        depth += (line[i] == "(") - (line[i] == ")")
        if depth == 0:
            close = i
            break
    short = line[:opened] + line[close + 1 :] if close > 0 else line
    return short.split(", since ")[0]


def run_identity(
    request: RunRequest, infos: list[dict[str, Any]], kernels: KernelDecision, inputs: RunInputs
) -> dict[str, Any]:
    """Everything that determines the items: a journal resumes only a request with the same.
    Files count by their content (the scenario's and the chat template's are hashed as read)."""
    info = run_engine(request).runtime_info()
    settings = request.settings
    haystack = inputs.sha256("haystack file")
    return {
        "kvprobe": __version__,
        "models_sha256": [i["sha256"] for i in infos],
        "scenario_sha256": request.scenario.sha256,
        # The scenario names a haystack file by its path: its content is what the documents are.
        **({"haystack_sha256": haystack} if haystack is not None else {}),
        "seed": settings.seed,
        "ctx": settings.ctx,
        "mode": settings.mode,
        "configs": [c.id for c in request.configs],
        "baseline": request.baseline,
        "null_check": request.null_check,
        "llama_cpp_python": info.get("llama_cpp_python"),
        "llama_cpp_build": info.get("llama_cpp_build"),
        **(
            {"engine": request.engine, "server_version": info.get("server_version")}
            if request.engine != DEFAULT_ENGINE
            else {}
        ),
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
        # A run that stops configurations once decided journals fewer rows per unit.
        **({"until_decided": True} if request.until_decided else {}),
    }


def open_journal(
    request: RunRequest, saved: SavedRun | None, identity: dict[str, Any], argv: list[str] | None
) -> tuple[Journal, dict[UnitKey, Unit]]:
    """The journal a --resume continues (refused if its request differs), with its finished
    units; or a new one beside the result, written when its first unit finishes."""
    if saved is not None:
        differ = differences(saved.header["identity"], identity)
        if differ:
            raise UserError(
                f"--resume {saved.path} is the journal of another request: {'; '.join(differ)}; "
                "resume with the original options and files, or start again without --resume"
            )
        return Journal(saved.path, saved.header, whole_bytes=saved.whole_bytes), {
            u.key: u for u in saved.units
        }
    header = {
        "argv": list(argv if argv is not None else sys.argv[2:]),
        "cwd": str(Path.cwd()),
        "out": str(request.out_path.resolve()),
        "identity": identity,
        "identity_sha256": identity_hash(identity),
        "created": request.created,
    }
    return Journal(journal_path(request.out_path), header), {}


def journaling(
    request: RunRequest, journal: Journal, console: Console, inputs: RunInputs
) -> Callable[[Unit], None]:
    """What happens to each unit as it finishes: its inputs checked, then into the journal; the
    first of the reference's checked (said as soon as its items exist); then the test hook's
    `unit_done` point (kvprobe.infra.test_hooks)."""
    checked: list[bool] = []

    def journaled(unit: Unit) -> None:
        inputs.check()  # a unit measured while a file changed is not kept
        journal.append(unit)
        inputs.kept = True
        if not checked and request.baseline is not None and unit.items:
            # The reference's own short-context items, said as soon as they exist.
            checked.append(True)
            record = prompt_record(request.settings.prompt, RAW_FRAME)
            first = min(int(it["ctx"]) for it in unit.items)
            for line in reference_checks(unit.items, request.baseline, record, [first]):
                console.print(f"reference check: {line}", markup=False, highlight=False)
        test_hooks.at("unit_done", key=key_json(unit.key))

    return journaled


def execute_journaled(
    request: RunRequest,
    kernels: KernelDecision,
    console: Console,
    *,
    journal: Journal,
    done: dict[UnitKey, Unit],
    command_start: float,
    inputs: RunInputs,
    keep: Callable[[RunExecution], ResultDoc] | None = None,
) -> RunExecution:
    """execute_run with every finished unit journaled (its inputs checked first), SIGTERM taken
    as Ctrl-C, and an interrupt before the result said as what it left to resume."""
    try:
        with sigterm_as_interrupt():
            execution = execute_run(
                request, kernels, console, done=done, on_unit=journaling(request, journal, console, inputs),
                budget_start=command_start, loaded=inputs.check, keep=keep,
            )  # fmt: skip
    except EngineFailure as exc:  # a server died or lied: say what was kept
        if not done and not journal.written:
            raise
        raise EngineFailure(
            f"{exc}; the finished units are in {journal.path}: continue with "
            f"`kvprobe run --resume {journal.path}`"
        ) from None
    except KeyboardInterrupt:  # while loading the models, or while assembling what was measured
        if not done and not journal.written:
            raise Interrupted("interrupted before any unit finished; no result file was written") from None
        raise Interrupted(
            f"interrupted; the finished units are in {journal.path}: continue with "
            f"`kvprobe run --resume {journal.path}`"
        ) from None
    else:
        if execution.outcome.stopped is not None:
            journal.ensure()
    finally:
        journal.close()
    return execution


def execute_run(
    request: RunRequest,
    kernels: KernelDecision,
    console: Console,
    *,
    done: dict[UnitKey, Unit] | None = None,
    on_unit: Callable[[Unit], None] | None = None,
    budget_start: float | None = None,
    loaded: Callable[[], None] | None = None,
    keep: Callable[[RunExecution], ResultDoc] | None = None,
) -> RunExecution:
    """Step 2: load the models and run every probe in lockstep, showing progress. Finished
    units go to `on_unit` (the journal); `done` ones are restored; with the request's time
    budget no unit starts that would not end within it, counted from `budget_start` (the
    command's start: hashing, the kernel check and loading count too). `loaded` hears when the
    models are loaded and the documents built (the run's files are checked then). `keep` writes
    a partial result (write_partial): a default run's early decision."""
    engine = run_engine(request)
    with contextlib.ExitStack() as stack:
        models_loaded = [
            stack.enter_context(
                engine.load(
                    p,
                    n_gpu_layers=request.gpu_layers,
                    n_threads=request.threads,
                    use_extra_bufts=kernels.extra_bufts,
                )
            )
            for p in request.model_paths
        ]
        models = weights_vs_kv_models(request.model_paths, models_loaded)
        baseline = request.baseline
        if models and baseline is not None:
            baseline = str(replace(ConfigId.parse(baseline), weights="ref"))
        # A server's own chat framing where it renders one (what its users get), said where it differs.
        prompt = engine_framing(request.settings.prompt, models_loaded[0])
        if (note := framing_note(prompt)) is not None:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        settings = replace(request.settings, prompt=prompt)
        runner = Runner(models_loaded[0], request.scenario, settings, baseline, request.null_check)
        if loaded is not None:
            loaded()

        def partial(outcome: RunOutcome, decision: EarlyDecision) -> ResultDoc:
            runtime = runtime_record(request, kernels, models_loaded, outcome)
            if keep is None:
                raise RuntimeError("an early decision needs execute_run's `keep`")
            return keep(RunExecution(outcome, baseline, runtime, decision))

        outcome, decision = run_with_progress(
            runner, request, console, models=models, done=done, on_unit=on_unit, budget_start=budget_start,
            baseline=baseline, partial=partial if keep is not None else None,
        )  # fmt: skip
        # The server's f16 against kvprobe's own (--reference in-process), once the probes are done.
        check = run_build_check(request, models_loaded[0], console, stopped=outcome.stopped)
        runtime = runtime_record(request, kernels, models_loaded, outcome)
    return RunExecution(outcome, baseline, runtime | ({"build_check": check} if check else {}), decision)


def weights_vs_kv_models(paths: list[Path], loaded: list[Model]) -> dict[str, Model] | None:
    """Two models: {"ref": REF, "test": TEST} for the weights-vs-KV design, refused unless they
    tokenize alike; one: None."""
    if len(paths) != 2:
        return None
    if loaded[0].vocabulary_digest() != loaded[1].vocabulary_digest():
        raise UserError(
            f"{paths[0].name} and {paths[1].name} have different tokenizers: the 2x2 design "
            "needs identical items; run them separately and use `kvprobe compare` (unpaired)"
        )
    return dict(zip(["ref", "test"], loaded, strict=True))


def run_pace(runner: Runner, request: RunRequest, groups: list[list[int]]) -> Pace:
    """The unit-time model behind the ETA and the time budget, from the plan's shape."""
    ends = runner.checkpoints if request.settings.mode == "onepass" else [1]
    steps = [StepShape(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    scored = {d.index for d in runner.documents if runner.readers(d)}
    sizes = [len(members) + (1 if i == 0 and runner.with_null else 0) for i, members in enumerate(groups)]
    ratio = unscored_feed_cost(request.facts[0], len(groups[0]), sizes[0])
    return Pace(steps, scored, ratio, sizes)


def run_with_progress(
    runner: Runner,
    request: RunRequest,
    console: Console,
    *,
    models: dict[str, Model] | None,
    done: dict[UnitKey, Unit] | None,
    on_unit: Callable[[Unit], None] | None,
    budget_start: float | None,
    baseline: str | None = None,
    partial: Callable[[RunOutcome, EarlyDecision], ResultDoc] | None = None,
) -> tuple[RunOutcome, EarlyDecision | None]:
    """run_probes under the progress display, each unit passed on as it finishes, none started
    past the time budget; with --until-decided, each configuration measured until decided;
    otherwise, given `partial`, watched by the same rule: the decision printed (and a partial
    result written) once known, and returned."""
    n_runs = len(request.configs) * len(request.model_paths)
    groups = runner.set_groups(n_runs, request.max_contexts)
    pace = run_pace(runner, request, groups)
    time_budget = request.time_budget
    started = budget_start if budget_start is not None else time.monotonic()
    with RunProgress(console, runner.planned_tokens(n_runs), pace, runner.unit_keys()) as shown:
        watch = (
            watching(runner, request, baseline, models, shown=shown, command_start=started, write=partial)
            if partial is not None
            else None
        )
        decider = (
            deciding(runner, request, baseline, models, shown=shown, groups=groups)
            if request.until_decided and baseline is not None
            else (watch.rule if watch is not None else None)
        )

        def finished(unit: Unit) -> None:
            restored = done is not None and unit.key in done
            if not restored and on_unit is not None:
                on_unit(unit)
            shown.unit_done(
                unit.key, unit.seconds, feed_s=unit.feed_s, reduce_s=unit.reduce_s, restored=restored
            )

        def may_start(key: UnitKey) -> bool:
            expected = pace.predict(*key) or 0.0
            return time_budget is None or time.monotonic() - started + expected <= time_budget

        outcome = run_probes(
            runner, request.configs, shown.advance, models=models, done=done, on_unit=finished,
            may_start=may_start if time_budget is not None else None, max_contexts=request.max_contexts,
            decider=decider,
        )  # fmt: skip
    return outcome, watch.decision if watch is not None else None


def deciding(
    runner: Runner,
    request: RunRequest,
    baseline: str,
    models: dict[str, Model] | None,
    *,
    shown: RunProgress,
    groups: list[list[int]],
) -> UntilDecided:
    """--until-decided's rule for this run (decision_rule); each configuration stopped is said
    with the decode time it saves (the pace's prediction for what it would have run)."""
    ids = config_ids(request, models)
    group_of = {ids[i]: g for g, members in enumerate(groups) for i in members}
    rule = decision_rule(runner, request, baseline, models)
    looks, checkpoints = rule.design.looks, runner.checkpoints

    def said(stop: Stopped, before: int) -> None:
        group = group_of.get(stop.config, 0)
        spared = [k for k in shown.left if k[2] == group and stop.step <= k[1] < before]
        # One context's share of each unit it leaves (a unit's time is taken as proportional to them).
        shares = [(shown.pace.predict(d, s, g), shown.pace.contexts(g, s)) for d, s, g in spared]
        known = [p / n for p, n in shares if p is not None]
        # None: nothing measured yet to predict from (decisions remade from a journal on --resume)
        stop.saved_s = sum(known) if known or not spared else None
        # The first group measures the reference for every group: its units go on while any does.
        members = [c for c, g in group_of.items() if group in {g, 0} and c in rule.limits]
        shown.drop(group, stop.step, before, skip_from=max(rule.limits[c] for c in members))
        what = (
            f"decided worse at {stop.ctx:,} tokens"
            if stop.status == WORSE
            else f"decided equivalent at every checkpoint up to {stop.ctx:,}"
        )
        where = "the rest of the run" if stop.step == 0 else f"checkpoints from {checkpoints[stop.step]:,} on"
        left = shown.eta()
        after = (
            "nothing left to run"
            if not shown.left
            else (f"about {format_duration(left)} left" if left is not None else "")
        )
        shown.console.print(
            f"until decided: {stop.config} {what} on document {stop.look} of {looks}; dropped from {where}"
            + (f", saving about {format_duration(stop.saved_s)}" if stop.saved_s is not None else "")
            + (f"; {after}" if after else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    rule.on_stop = said
    return rule


def runtime_record(
    request: RunRequest, kernels: KernelDecision, loaded: list[Model], outcome: RunOutcome
) -> dict[str, Any]:
    """The result's runtime section: what the engine was and what the run set."""
    engine = run_engine(request)
    info = engine.runtime_info()
    settings = request.settings
    server = loaded[0].provenance()
    if server.get("kernel_fallback"):  # a spawned server's extra CPU kernels crashed: all ran without
        kernels = KernelDecision(False, "crashed", str(server["kernel_fallback"]))
    return {
        **info,
        "backend": "gpu" if request.gpu_layers != 0 and info["gpu_offload_supported"] else "cpu",
        "n_threads": loaded[0].n_threads,
        "n_gpu_layers": request.gpu_layers,
        **kernels.runtime(),
        "weight_buffers_mib": {
            p.name: m.weight_buffers for p, m in zip(request.model_paths, loaded, strict=True)
        },
        "n_ctx": outcome.n_ctx,
        "n_batch": outcome.chunk,
        "n_ubatch": outcome.chunk,
        "n_seq_max": outcome.n_seq_max,
        **engine.fixed_settings,
        "engine": request.engine,
        **({"server": server} if server else {}),
        "flash_attn": settings.flash_attn,
        "attn_rotation": settings.attn_rotation,
        "env_LLAMA_ATTN_ROT_DISABLE": "0" if settings.attn_rotation else "1",
    }


def assemble_run(
    request: RunRequest, infos: list[dict[str, Any]], execution: RunExecution, command: str
) -> ResultDoc:
    """Step 3: the result document as measured (statistics follow once it is on disk)."""
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
            **({"until_decided": outcome.until_decided} if outcome.until_decided is not None else {}),
            **({"decided": execution.decision.to_json()} if execution.decision is not None else {}),
        },
        warnings=request.warnings,
    )


def command_line() -> str:
    return " ".join(["kvprobe", *sys.argv[1:]])


def write_partial(request: RunRequest, infos: list[dict[str, Any]], execution: RunExecution) -> ResultDoc:
    """A result that keeps an early decision (a default run's, kvprobe.run.decided): written as
    measured, then with its statistics, whose verdict is the group-sequential one (the outcome's
    `until_decided`: the design), and the decision's words and recommendation in `run.decided`."""
    result = assemble_run(request, infos, execution, command_line())
    write_result(result, request.out_path)  # the measurements are on disk before any statistic runs
    add_statistics(result, execution.outcome.measured, request.margins)
    if execution.decision is not None:
        execution.decision.learn(result)
    write_result(result, request.out_path)
    return result


def finish_run(
    request: RunRequest, infos: list[dict[str, Any]], execution: RunExecution, console: Console, jpath: Path
) -> int:
    """Write the result as measured, then with its statistics; report it, and what is left.
    Interrupted after an early decision, the result keeps the decision (keep_decision)."""
    outcome = execution.outcome
    resume = f"kvprobe run --resume {jpath}"
    if outcome.stopped == "interrupted" and execution.decision is not None:
        keep_decision(request, infos, execution, execution.decision, console=console, jpath=jpath)
    result = assemble_run(request, infos, execution, command_line())
    out_path = request.out_path
    write_result(result, out_path)  # the measurements are on disk before any statistic runs
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
    shown = execution.decision.printed if execution.decision is not None else []
    print_run_report(result, console, details=request.verbose, from_run=True, path=str(out_path), shown=shown)
    for failed in result.statistics.errors:
        console.print(
            f"statistics: the {failed.what} could not be computed ({failed.error}); "
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
        write_pictures([(out_path.name, result)], str(request.page), None, console, force=True)
    if differs := differs_line(execution.decision, result):
        console.print(differs, markup=False, highlight=False, soft_wrap=True)
    console.print(f"result: {out_path}", markup=False, highlight=False)  # the last line names the file
    return 0


def keep_decision(
    request: RunRequest,
    infos: list[dict[str, Any]],
    execution: RunExecution,
    decision: EarlyDecision,
    *,
    console: Console,
    jpath: Path,
) -> None:
    """Ctrl-C after the early decision: the partial result keeps it (the group-sequential verdict
    on the curve measured so far), its Recommendation is shown, and one line ends the run."""
    outcome = replace(execution.outcome, until_decided=decision.until_decided)
    try:
        result = write_partial(request, infos, replace(execution, outcome=outcome))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while computing statistics; the measured items are in {request.out_path} "
            f"(statistics.complete: false); `kvprobe run --resume {jpath}` computes them"
        ) from None
    print_decision_lines(result, console, shown=decision.printed)
    print_frontier_table(result, console)
    if differs := differs_line(decision, result, scope="with the curve measured so far"):
        console.print(differs, markup=False, highlight=False, soft_wrap=True)
    raise Interrupted(kept_line(decision, result, request.out_path, jpath))
