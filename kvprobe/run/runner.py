"""Run the probes: plan -> engine -> item rows, every configuration on identical tokens and
batch shapes. Knows nothing about terminals or files, nor about any probe or engine in
particular: it asks them through kvprobe.api (the model it is given feeds its contexts)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvprobe.api import ProbeRun, Row, RunSetup, check_mode, selected
from kvprobe.api.cache_types import NULL_ROWS, CacheConfig, ConfigId
from kvprobe.api.engine import (
    ChunkCallback,
    Context,
    ContextSettings,
    Model,
    TopCallback,
    TopLogprobs,
    TopRequest,
)
from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import Document, build_plan
from kvprobe.plan.groups import plan_groups, round_up
from kvprobe.plan.prompt import frame_tokens, prompt_record
from kvprobe.plan.scenario import Scenario
from kvprobe.result.journal import Unit, UnitKey, key_json
from kvprobe.result.records import RunOutcome
from kvprobe.run.request import RunSettings
from kvprobe.run.until_decided import UntilDecided

Progress = Callable[[int, str], None]  # (tokens just evaluated, what is running)


@dataclass(frozen=True)
class _GroupWork:
    """What Runner.run_all was asked to do for one configuration group (see there)."""

    contexts: dict[str, Context]
    progress: Progress
    done: Mapping[UnitKey, Unit]
    on_unit: Callable[[Unit], None] | None
    may_start: Callable[[UnitKey], bool] | None
    group: int
    repeats: frozenset[str]
    decider: UntilDecided | None = None


class Runner:
    """Evaluates every probe for every configuration on identical tokens and batch shapes."""

    def __init__(
        self,
        model: Model,
        scenario: Scenario,
        settings: RunSettings,
        baseline: str | None = None,
        null_check: bool = False,
    ):
        self.model = model
        self.scenario = scenario
        self.settings = settings
        self.baseline = baseline  # the reference configuration's id (None: no reference)
        self.null_check = null_check
        check_mode(scenario.probes, settings.mode)
        self.probes = selected(scenario.probes, settings.mode)
        self.prompt = frame_tokens(settings.prompt, model)
        if settings.mode == "onepass":
            self.checkpoints, self.documents = build_plan(
                model, scenario, settings.ctx, settings.seed, self.probes, lead=self.prompt.lead
            )
        else:
            self.checkpoints, self.documents = [], []
        setup = RunSetup(
            model=model,
            scenario=scenario,
            ctx=settings.ctx,
            seed=settings.seed,
            mode=settings.mode,
            checkpoints=self.checkpoints,
            documents=self.documents,
            baseline=baseline,
            null_check=null_check,
            prompt=self.prompt,
        )
        self.runs: dict[str, ProbeRun] = {p.name: p.start(setup) for p in self.probes}
        self.needs = {p.name: p.needs(scenario, mode=settings.mode) for p in self.probes}
        self.units: list[Unit] = []  # finished units, in run order (run_all fills it)
        self.skipped: set[UnitKey] = set()  # units --until-decided left out: nothing to measure
        self.n_groups = 1  # configuration groups the run goes in (run_probes sets it)
        self.stopped: str | None = None
        self.refeed_tokens, self.refeed_s = 0, 0.0
        # Per probe, measured at checkpoints in this process: [seconds, tokens evaluated, rows].
        self.probe_work: dict[str, list[float]] = {}
        self.measuring: _Measuring | None = None  # run_probes' call in progress (snapshot reads it)
        if settings.mode != "onepass":
            self.checkpoints = sorted({n for r in self.runs.values() for n in r.prompt_lengths})
        budgets = [r.budget for r in self.runs.values()]
        # Cells for the document plus the largest set of forks alive at once.
        self.n_ctx = round_up(settings.ctx + max(b.fork_cells for b in budgets), 256)
        self.n_seq_max = 1 + max(1, *(b.sequences for b in budgets))
        self.doc_tokens = len(self.documents) * settings.ctx
        self.probe_tokens = sum(b.tokens for b in budgets)
        self.naive_tokens = sum(b.naive_tokens for b in budgets)

    def planned_tokens(self, n_configs: int) -> int:
        """Tokens the run will evaluate, without failure generations (for the progress bar);
        after set_groups, with the reference's scored documents fed again in every later group."""
        scored = sum(1 for d in self.documents if self.readers(d))
        null = self.settings.ctx * scored if self.null_check else 0
        repeated = self.settings.ctx * scored * (self.n_groups - 1) if self.baseline is not None else 0
        return (self.doc_tokens + self.probe_tokens) * n_configs + null + repeated

    def snapshot(self) -> RunOutcome:
        """While run_probes runs: the outcome of the units finished so far, as an interrupt
        here would leave it (a default run's early decision writes it as a partial result)."""
        if self.measuring is None:
            raise RuntimeError("Runner.snapshot needs run_probes running")
        return self.measuring.outcome()

    def context_settings(self, n_threads: int) -> ContextSettings:
        return ContextSettings(
            n_ctx=self.n_ctx,
            chunk=self.scenario.plan.chunk,
            n_threads=n_threads,
            flash_attn=self.settings.flash_attn,
            attn_rotation=self.settings.attn_rotation,
            n_seq_max=self.n_seq_max,
        )

    @property
    def reads_logits(self) -> bool:
        """Whether a probe reads every position's logits of some document (compares them with
        the reference's)."""
        return any(self.readers(d) for d in self.documents)

    def readers(self, document: Document) -> list[ProbeRun]:
        """The probe runs that read every position's logits of `document` (their Needs)."""
        return [
            self.runs[name] for name, needs in self.needs.items() if document.index < needs.logit_documents
        ]

    @property
    def with_null(self) -> bool:
        """Whether the null check's second reference context runs: it is read only with logits."""
        return self.null_check and self.baseline is not None and self.reads_logits

    def set_groups(self, n_runs: int, max_contexts: int | None) -> list[list[int]]:
        """Plan the configuration groups of a run of `n_runs` configurations (plan_groups):
        the reference goes again in every group only where a probe compares logits with it."""
        reads_logits = self.reads_logits
        groups = plan_groups(
            n_runs, max_contexts, reference=self.baseline is not None and reads_logits,
            extra_first=1 if self.with_null else 0,
        )  # fmt: skip
        self.n_groups = len(groups)
        return groups

    def unit_keys(self) -> list[UnitKey]:
        """Every unit of work in run order: (document, checkpoint step, group), or (prompt, 0,
        group); group by group."""
        if self.settings.mode != "onepass":
            keys = [(i, 0) for run in self.runs.values() for i in range(run.n_prompts)]
        else:
            keys = [(d.index, step) for d in self.documents for step in range(len(self.checkpoints))]
        return [(a, b, g) for g in range(self.n_groups) for a, b in keys]

    def run_all(
        self,
        contexts: dict[str, Context],
        progress: Progress,
        null_context: Context | None = None,
        *,
        done: Mapping[UnitKey, Unit] | None = None,
        on_unit: Callable[[Unit], None] | None = None,
        may_start: Callable[[UnitKey], bool] | None = None,
        group: int = 0,
        repeats: frozenset[str] = frozenset(),
        decider: UntilDecided | None = None,
    ) -> list[Row]:
        """Evaluate every configuration in `contexts` (configuration group `group`). Documents
        advance checkpoint by checkpoint in all contexts at once, so a probe that reads logits
        sees each chunk from every configuration together; each probe then measures at the
        checkpoint, per context.

        Work goes in units (one document x checkpoint step, every configuration). Each finished
        unit goes to `on_unit` (the journal), restored ones too; units in `done` (from a journal)
        are restored instead of measured, re-feeding the document prefix with the same chunk grid where a
        later unit needs it. `may_start(unit)` false stops the run before that unit (a time
        budget); `self.stopped` then says why. An interrupt leaves `self.units` complete.

        `repeats` are configurations measured in an earlier group (the reference, fed again so
        the others have its logits): they are fed, but give no rows. Group 0 starts afresh;
        a later group adds its units to the earlier groups'.

        With a `decider` (--until-decided), a configuration it has decided is fed and measured
        no more at the steps it says; a unit with no test configuration left is skipped."""
        if group == 0:
            self.units, self.stopped, self.skipped = [], None, set()
            self.refeed_tokens, self.refeed_s = 0, 0.0
            self.probe_work = {}
        work = _GroupWork(contexts, progress, done or {}, on_unit, may_start, group, repeats, decider)
        if self.settings.mode != "onepass":
            self._run_prompts(work)
        else:
            for document in self.documents:
                if not self._run_document(document, work, null_context):
                    break
        return [row for u in self.units for row in u.items]

    def _run_document(self, document: Document, work: _GroupWork, null_context: Context | None) -> bool:
        """Feed `document` checkpoint by checkpoint in every context of the group, measuring (or
        restoring) each unit; False when the time budget stopped the run."""
        readers = self.readers(document)
        # A repeated reference only gives its logits: it is fed where a probe reads them.
        fed = {c: context for c, context in work.contexts.items() if readers or c not in work.repeats}
        if readers and null_context:
            fed[NULL_ROWS] = null_context
        for context in fed.values():
            context.reset()
        steps = range(len(self.checkpoints))
        for step, length in enumerate(self.checkpoints):
            key = (document.index, step, work.group)
            live = self._live(work, fed, step)
            if not live:  # --until-decided: every test configuration decided up to here
                self.skipped.update((document.index, later, work.group) for later in steps if later >= step)
                return True
            feeding, names = list(live.values()), list(live)
            if key in work.done:
                self._restore(work.done[key], work.progress, work.on_unit)
                self._decide(work, document.index)
                # Rebuild the lockstep state of the contexts a later, missing unit still feeds.
                later = [s for s in steps if s > step and (document.index, s, work.group) not in work.done]
                going_on = self._live(work, fed, later[0]) if later else {}
                if going_on:  # in lockstep with one another (each was rebuilt at every step so far)
                    refed = list(going_on.values())
                    self._refeed(refed, document.tokens[refed[0].n_past : length])
                continue
            if work.may_start is not None and not work.may_start(key):
                self.stopped = "time budget"
                return False
            measured = {c: x for c, x in work.contexts.items() if c in live}
            segment = document.tokens[feeding[0].n_past : length]
            self._measure_unit(
                key, work, document=document, length=length, segment=segment, feeding=feeding, names=names,
                readers=readers, contexts=measured,
            )  # fmt: skip
            self._decide(work, document.index)
        return True

    def _live(self, work: _GroupWork, fed: dict[str, Context], step: int) -> dict[str, Context]:
        """The contexts fed at `step`: all of `fed`, or with a decider those of the test
        configurations it still measures there, with the reference (and the null check)
        while any is; empty when none is."""
        decider = work.decider
        if decider is None:
            return fed
        # The group that measures the reference's rows (the first) keeps it for every group's
        # test configurations: later groups pair with its rows.
        measures_reference = self.baseline in fed and self.baseline not in work.repeats
        tested = list(decider.limits) if measures_reference else [c for c in fed if c in decider.limits]
        if tested and not decider.live(tested, step):
            return {}
        return {c: x for c, x in fed.items() if c not in decider.limits or decider.active(c, step)}

    def _decide(self, work: _GroupWork, doc: int) -> None:
        """--until-decided (or a default run's watch): test again on everything measured so far
        (restored units too), while a test configuration is undecided."""
        if work.decider is None or work.decider.all_decided:
            return
        evidence: dict[str, list[Row]] = {}
        for run in self.runs.values():
            for config, spans in run.evidence().items():
                evidence.setdefault(config, []).extend(spans)
        work.decider.after_unit(doc, [row for u in self.units for row in u.items], evidence)

    def _refeed(self, feeding: list[Context], segment: Sequence[int]) -> None:
        """Rebuild the lockstep state past a restored unit: the same segments, so the same batches."""
        started, before = time.perf_counter(), sum(c.tokens_evaluated for c in feeding)
        self.model.feed_lockstep(feeding, segment)
        self.refeed_s += time.perf_counter() - started
        self.refeed_tokens += sum(c.tokens_evaluated for c in feeding) - before

    def _measure_unit(
        self,
        key: UnitKey,
        work: _GroupWork,
        *,
        document: Document,
        length: int,
        segment: Sequence[int],
        feeding: list[Context],
        names: list[str],
        readers: list[ProbeRun],
        contexts: dict[str, Context],
    ) -> None:
        """One unit: feed the segment up to checkpoint `length` in lockstep (the readers get
        each chunk's logits), then every probe measures in every context of `contexts` (the
        group's, less those --until-decided dropped)."""
        started, evaluated = time.perf_counter(), sum(c.tokens_evaluated for c in feeding)
        what = f"doc {document.index} L={length}"
        reduce_s = [0.0]
        busy = {config: context.busy_s for config, context in contexts.items()}
        on_fed = _reporting(work.progress, what + " (document)")
        if readers and not self.model.full_logits:  # the sampled positions' top n instead
            top = self._top_request(document, readers)
            on_top = _handing_top(readers, document, names, reduce_s)
            self.model.feed_lockstep(feeding, segment, on_fed=on_fed, top=top, on_top=on_top)
        else:
            on_chunk = _handing_logits(readers, document, names, reduce_s) if readers else None
            self.model.feed_lockstep(feeding, segment, on_chunk, on_fed=on_fed)
        feed_s = time.perf_counter() - started - reduce_s[0]
        prefill = {  # a repeated reference's speed is known from its first group
            config: context.busy_s - busy[config]
            for config, context in contexts.items()
            if config not in work.repeats
        }
        measured = [(config, context) for config, context in contexts.items() if config not in work.repeats]
        rows = self._checkpoint_rows(measured, document, length, what=what, progress=work.progress)
        self._finish_unit(
            key, rows=rows, started=started, evaluated=evaluated, contexts=feeding, on_unit=work.on_unit,
            feed_s=feed_s, reduce_s=reduce_s[0], prefill=(prefill, len(segment), bool(readers)),
        )  # fmt: skip

    def _top_request(self, document: Document, readers: list[ProbeRun]) -> TopRequest:
        """What an engine without full logits reads for the readers: the first reader's stride
        and top n (one probe, divergence, reads logits today)."""
        needs = next(self.needs[name] for name, run in self.runs.items() if run in readers)
        return TopRequest(document.tokens[: self.settings.ctx], needs.top_stride, needs.top_n)

    def _checkpoint_rows(
        self, measured: list[tuple[str, Context]], document: Document, length: int, *, what: str,
        progress: Progress,
    ) -> list[Row]:  # fmt: skip
        """Every probe's rows for every measured configuration at the checkpoint, in the order
        given. Contexts that are separate servers (`Model.concurrent_contexts`) work side by
        side, one thread each: each keeps its own request sequence, so no number changes."""
        if not self.model.concurrent_contexts or len(measured) < 2:
            return [
                row
                for config, c in measured
                for row in self._at_checkpoint(c, config, document, length, what=what, progress=progress)
            ]
        lock = threading.Lock()

        def locked(n: int, words: str) -> None:
            with lock:
                progress(n, words)

        with ThreadPoolExecutor(max_workers=len(measured), thread_name_prefix="kvprobe-checkpoint") as pool:
            futures = [
                pool.submit(
                    self._at_checkpoint, c, config, document, length, what=what, progress=locked, lock=lock
                )
                for config, c in measured
            ]
            return [row for future in futures for row in future.result()]

    def _at_checkpoint(
        self, context: Context, config: str, document: Document, length: int, *, what: str,
        progress: Progress, lock: threading.Lock | None = None,
    ) -> list[Row]:  # fmt: skip
        """Every probe's rows for `config` at the checkpoint, its work counted per probe."""
        rows: list[Row] = []
        for name, run in self.runs.items():
            before, clock = context.tokens_evaluated, time.perf_counter()
            found = run.at_checkpoint(context, config, document, length)
            with lock or contextlib.nullcontext():
                spent = self.probe_work.setdefault(name, [0.0, 0, 0])
                spent[0] += time.perf_counter() - clock
                spent[1] += context.tokens_evaluated - before
                spent[2] += len(found)
            if found or context.tokens_evaluated != before:
                rows.extend(found)
                progress(context.tokens_evaluated - before, f"{config} {what} {run.label or name}")
        return rows

    def _run_prompts(self, work: _GroupWork) -> None:
        """Modes other than onepass: one unit per prompt, every configuration of the group."""
        contexts = work.contexts
        measured = {config: context for config, context in contexts.items() if config not in work.repeats}
        for run in self.runs.values():
            for i in range(run.n_prompts):
                key = (i, 0, work.group)
                if key in work.done:
                    self._restore(work.done[key], work.progress, work.on_unit)
                    continue
                if work.may_start is not None and not work.may_start(key):
                    self.stopped = "time budget"
                    return
                started, evaluated = time.perf_counter(), sum(c.tokens_evaluated for c in contexts.values())
                rows = run.run_prompt(i, measured, work.progress)
                self._finish_unit(
                    key,
                    rows=rows,
                    started=started,
                    evaluated=evaluated,
                    contexts=list(contexts.values()),
                    on_unit=work.on_unit,
                )

    def _finish_unit(
        self,
        key: UnitKey,
        *,
        rows: list[Row],
        started: float,
        evaluated: int,
        contexts: list[Context],
        on_unit: Callable[[Unit], None] | None,
        feed_s: float = 0.0,
        reduce_s: float = 0.0,
        prefill: tuple[dict[str, float], int, bool] = ({}, 0, False),
    ) -> None:
        data = {name: d for name, run in self.runs.items() if (d := run.end_unit()) is not None}
        tokens = sum(c.tokens_evaluated for c in contexts) - evaluated
        unit = Unit(
            key[0],
            key[1],
            rows,
            data,
            tokens,
            time.perf_counter() - started,
            feed_s,
            reduce_s,
            *prefill,
            group=key[2],
        )
        self.units.append(unit)
        if on_unit is not None:
            on_unit(unit)

    def _restore(self, unit: Unit, progress: Progress, on_unit: Callable[[Unit], None] | None) -> None:
        strangers = sorted(set(unit.probe_data) - set(self.runs))
        if strangers:  # a journal of another scenario slipped through: its numbers are not this run's
            raise UserError(
                f"the journaled unit {key_json(unit.key)} holds data of the {strangers[0]} probe, which this "
                "run does not have; start the run again without --resume"
            )
        for name, run in self.runs.items():
            run.replay_unit(unit.probe_data.get(name))
        self.units.append(unit)
        group = f" group {unit.group}" if unit.group else ""
        progress(unit.tokens, f"restored doc {unit.doc} step {unit.step}{group}")
        if on_unit is not None:
            on_unit(unit)


def _reporting(progress: Progress, what: str) -> Callable[[int], None]:
    return lambda n: progress(n, what)


def _handing_logits(
    readers: list[ProbeRun], document: Document, names: list[str], seconds: list[float]
) -> ChunkCallback:
    """Hands each chunk's logits to the probes that read them; adds the time they take to
    `seconds[0]` (the reduction, apart from decoding)."""

    def on_chunk(pos0: int, logits: list[np.ndarray]) -> None:
        started = time.perf_counter()
        by_config: Mapping[str, np.ndarray] = dict(zip(names, logits, strict=True))
        for run in readers:
            run.on_chunk(document, pos0, by_config)
        seconds[0] += time.perf_counter() - started

    return on_chunk


def _handing_top(
    readers: list[ProbeRun], document: Document, names: list[str], seconds: list[float]
) -> TopCallback:
    """_handing_logits for an engine without full logits: each segment's sampled top-n rows."""

    def on_top(rows: list[TopLogprobs]) -> None:
        started = time.perf_counter()
        by_config: Mapping[str, TopLogprobs] = dict(zip(names, rows, strict=True))
        for run in readers:
            run.on_top(document, by_config)
        seconds[0] += time.perf_counter() - started

    return on_top


ConfigRun = tuple[ConfigId, Model, CacheConfig]  # one context to open: its id, weights and cache


@dataclass
class _Totals:
    """What the contexts of every group reported, added up over the groups."""

    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # per configuration, its first
    decode_s: dict[str, float] = field(default_factory=dict)
    tokens_evaluated: int = 0
    null_tokens: int = 0
    # The running group's contexts, added when it ends: a snapshot mid-run counts them too.
    open: dict[str, Context] = field(default_factory=dict)
    open_null: Context | None = None

    def opened(self, contexts: dict[str, Context], null_context: Context | None) -> None:
        for cid, context in contexts.items():
            self.applied.setdefault(cid, _applied(cid, context))
        self.open, self.open_null = contexts, null_context

    def closed(self) -> None:
        """The running group's contexts added up (its decoding, its tokens), as it ends."""
        for cid, context in self.open.items():
            self.decode_s[cid] = self.decode_s.get(cid, 0.0) + context.busy_s
        self.tokens_evaluated += sum(c.tokens_evaluated for c in self.open.values())
        self.null_tokens += self.open_null.tokens_evaluated if self.open_null else 0
        self.open, self.open_null = {}, None

    def so_far(self) -> _Totals:
        """What the groups reported so far, the running one's contexts included."""
        now = _Totals(
            dict(self.applied), dict(self.decode_s), self.tokens_evaluated, self.null_tokens, dict(self.open),
            self.open_null,
        )  # fmt: skip
        now.closed()
        return now


@dataclass
class _Measuring:
    """A run_probes call in progress: what its outcome is made of, at the end or, from the
    units finished so far, mid-run (Runner.snapshot)."""

    runner: Runner
    runs: list[ConfigRun]
    groups: list[list[int]]
    models: dict[str, Model] | None
    done: Mapping[UnitKey, Unit] | None
    decider: UntilDecided | None
    totals: _Totals = field(default_factory=_Totals)
    started: float = field(default_factory=time.perf_counter)

    def outcome(self) -> RunOutcome:
        """The outcome of the units finished so far, in the order one group would have finished
        them (the same rows in the same order). The probes' `finish` fills copies of the rows,
        so a snapshot leaves the running units as they are; their sections and arrays hold
        finished units only (ProbeRun.section)."""
        runner = self.runner
        order = {k[:2]: i for i, k in enumerate(runner.unit_keys()) if k[2] == 0}
        units = sorted(runner.units, key=lambda u: (order.get(u.key[:2], 0), u.group))
        items = [dict(row) for unit in units for row in unit.items]
        for run in runner.runs.values():
            run.finish(items)
        errors: list[dict[str, str]] = []
        sections = {name: run.section(errors) for name, run in runner.runs.items()}
        finished = {u.key for u in units}
        totals = self.totals.so_far()
        timing = _timing(runner, units, self.runs, self.groups, totals, started=self.started, done=self.done)
        decider, settings = self.decider, runner.settings  # a watching decider stopped nothing: not on file
        return RunOutcome(
            checkpoints=runner.checkpoints,
            items=items,
            text_items=[row for run in runner.runs.values() for row in run.text_items()],
            sections={name: s for name, s in sections.items() if s is not None},
            measured={name: m for name, run in runner.runs.items() if (m := run.measured()) is not None},
            applied=[
                {
                    **(totals.applied.get(str(cid)) or _not_started(str(cid), cache, settings.flash_attn)),
                    **({"model": cid.weights} if self.models else {}),
                }
                for cid, _, cache in self.runs
            ],
            n_ctx=runner.n_ctx,
            n_seq_max=runner.n_seq_max,
            chunk=runner.scenario.plan.chunk,
            prompt=prompt_record(settings.prompt, runner.prompt),
            timing=timing,
            errors=errors,
            stopped=runner.stopped,
            missing=[key_json(k) for k in runner.unit_keys() if k not in finished | runner.skipped],
            until_decided=decider.to_json() if decider is not None and not decider.watch else None,
        )


def run_probes(
    runner: Runner,
    configs: list[CacheConfig],
    progress: Progress,
    *,
    models: dict[str, Model] | None = None,
    done: Mapping[UnitKey, Unit] | None = None,
    on_unit: Callable[[Unit], None] | None = None,
    may_start: Callable[[UnitKey], bool] | None = None,
    max_contexts: int | None = None,
    decider: UntilDecided | None = None,
) -> RunOutcome:
    """Evaluate every configuration (the runner's baseline first) on identical tokens.

    With `models` ({label: model}, the first the reference), every cache configuration runs on
    every model's weights, as "<label>:<cache id>": the weights-vs-KV design. The models must
    share the runner's tokenizer, so the items are identical. `done`, `on_unit` and `may_start`
    are Runner.run_all's. Ctrl-C (KeyboardInterrupt) does not lose the finished units: the
    outcome then holds them, with `stopped = "interrupted"` and the units still `missing`.

    With `max_contexts`, no more than that many contexts exist at once: the configurations go
    in groups (plan_groups), each fed the same documents with the same batches, the reference
    again in every group where a probe compares logits with it. Its rows come from the first
    group only; on CPU every group's numbers equal a single group's.

    With `decider` (--until-decided) configurations it has decided are measured no more, and
    units with nothing left to measure are skipped: not missing, the run is complete. A
    watching decider (`UntilDecided.watch`, a default run) decides after every unit the same
    way but stops nothing; Runner.snapshot gives the outcome so far when it has decided."""
    model = runner.model
    runs: list[ConfigRun] = (
        [(ConfigId.of(c, label), m, c) for label, m in models.items() for c in configs]
        if models
        else [(ConfigId.of(c), model, c) for c in configs]
    )
    groups = runner.set_groups(len(runs), max_contexts)
    runner.measuring = measuring = _Measuring(runner, runs, groups, models, done, decider)
    for group, members in enumerate(groups):
        _run_group(
            runner, [runs[i] for i in members], group, measuring.totals, progress=progress, done=done,
            on_unit=on_unit, may_start=may_start, decider=decider,
        )  # fmt: skip
        if runner.stopped is not None:
            break
    return measuring.outcome()


def _run_group(
    runner: Runner,
    members: list[ConfigRun],
    group: int,
    totals: _Totals,
    *,
    progress: Progress,
    done: Mapping[UnitKey, Unit] | None,
    on_unit: Callable[[Unit], None] | None,
    may_start: Callable[[UnitKey], bool] | None,
    decider: UntilDecided | None = None,
) -> None:
    """One configuration group: its contexts opened (the null check's with the first group's),
    run, closed, and what they report added to `totals`. Ctrl-C stops the run, not the group's
    bookkeeping."""
    ctx_settings = runner.context_settings(runner.model.n_threads)
    with contextlib.ExitStack() as stack:
        contexts = {str(cid): stack.enter_context(m.context(c, ctx_settings)) for cid, m, c in members}
        null_context = None
        if runner.with_null and group == 0:
            _, ref_model, ref_cache = members[0]
            null_context = stack.enter_context(ref_model.context(ref_cache, ctx_settings))
        repeats = frozenset(c for c in contexts if c in totals.applied)
        totals.opened(contexts, null_context)
        try:
            runner.run_all(
                contexts, progress, null_context, done=done, on_unit=on_unit, may_start=may_start,
                group=group, repeats=repeats, decider=decider,
            )  # fmt: skip
        except KeyboardInterrupt:
            runner.stopped = "interrupted"
        totals.closed()


def _timing(
    runner: Runner,
    units: list[Unit],
    runs: list[ConfigRun],
    groups: list[list[int]],
    totals: _Totals,
    *,
    started: float,
    done: Mapping[UnitKey, Unit] | None,
) -> dict[str, Any]:
    """The result's timing section: wall time, every unit's, decoding per configuration, each
    probe's work, prefill speed at depth, tokens; the groups, and what resuming restored."""
    grouped = len(groups) > 1
    timing: dict[str, Any] = {
        "wall_s": round(time.perf_counter() - started, 2),
        # [doc, step, seconds, tokens, of which feeding the document, of which reducing its logits(, group)]
        "units": [
            [u.doc, u.step, round(u.seconds, 3), u.tokens, round(u.feed_s, 3), round(u.reduce_s, 3)]
            + ([u.group] if grouped else [])
            for u in units
        ],
        "decode_s": {cid: round(s, 2) for cid, s in totals.decode_s.items()},
        # Per probe, its work at the checkpoints (queries, continuations) in this process.
        "probes": {
            name: {"s": round(w[0], 2), "tokens": int(w[1]), "items": int(w[2])}
            for name, w in runner.probe_work.items()
        },
        "prefill": prefill_by_depth(units, runner.checkpoints),
        "tokens_evaluated": totals.tokens_evaluated,
        "null_check_tokens": totals.null_tokens,
        "naive_tokens": runner.naive_tokens * len(runs),
    }
    if grouped:
        timing["groups"] = [[str(runs[i][0]) for i in members] for members in groups]
    if done:
        restored = [u for u in units if u.key in done]
        timing["resume"] = {
            "units_restored": len(restored),
            "restored_tokens": sum(u.tokens for u in restored),
            "restored_s": round(sum(u.seconds for u in restored), 2),
            # What resuming cost: the document prefixes fed again to rebuild the lockstep state.
            "refeed_tokens": runner.refeed_tokens,
            "refeed_s": round(runner.refeed_s, 2),
        }
    return timing


def prefill_by_depth(units: list[Unit], checkpoints: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Per configuration and checkpoint, the document tokens fed since the previous checkpoint
    and the seconds llama_decode took for them: prefill speed at depth. Documents whose every
    position's logits were computed (for the divergence probe) count only where no other
    document reached that depth: computing all logits is slower, the same for every
    configuration, and not what llama.cpp does in prefill (`all_logits` says which)."""
    # per configuration: --until-decided may have stopped one before any unscored document
    plain = {(c, u.step) for u in units if not u.prefill_logits for c in u.prefill_s}
    out: dict[str, dict[int, list[float]]] = {}
    for u in units:
        for config, seconds in u.prefill_s.items():
            if u.prefill_logits and (config, u.step) in plain:
                continue
            acc = out.setdefault(config, {}).setdefault(u.step, [0.0, 0.0])
            acc[0] += u.prefill_tokens
            acc[1] += seconds
    return {
        config: [
            {
                "ctx": checkpoints[step],
                "depth": [checkpoints[step - 1] if step else 0, checkpoints[step]],
                "tokens": int(t),
                "s": round(s, 3),
                "tokens_per_s": round(t / s, 1) if s > 0 else None,
                "all_logits": (config, step) not in plain,
            }
            for step, (t, s) in sorted(steps.items())
        ]
        for config, steps in out.items()
    }


def _not_started(config_id: str, cache: CacheConfig, flash_attn: bool) -> dict[str, Any]:
    """A configuration whose group never started (the run stopped before it): listed as asked,
    with nothing llama.cpp reported, so a partial result still names every configuration."""
    return {"id": config_id, "type_k": cache.type_k, "type_v": cache.type_v, "flash_attn": flash_attn,
            "attn_rot_k": None, "attn_rot_v": None, "n_ctx": None, "started": False}  # fmt: skip


def _applied(config_id: str, context: Context) -> dict[str, Any]:
    a = context.applied
    return {
        "id": config_id,
        "type_k": a.type_k,
        "type_v": a.type_v,
        "flash_attn": a.flash_attn,
        "attn_rot_k": a.attn_rot_k,
        "attn_rot_v": a.attn_rot_v,
        "n_ctx": a.n_ctx,
    }
