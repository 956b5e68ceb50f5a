"""Run the probes: plan -> engine -> item rows, every configuration on identical tokens and
batch shapes. Knows nothing about terminals or files, nor about any probe in particular."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvprobe.cache_types import NULL_ROWS, CacheConfig, ConfigId
from kvprobe.engine import ChunkCallback, Context, ContextSettings, Model, feed_lockstep
from kvprobe.plan.documents import Document, build_plan
from kvprobe.plan.scenario import Scenario
from kvprobe.probes import ProbeRun, Row, RunSetup, check_mode, selected
from kvprobe.result.records import RunOutcome

Progress = Callable[[int, str], None]  # (tokens just evaluated, what is running)


@dataclass(frozen=True)
class RunSettings:
    ctx: int
    seed: int
    mode: str  # "onepass" | "classic"
    flash_attn: bool
    attn_rotation: bool


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


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
        if settings.mode == "onepass":
            self.checkpoints, self.documents = build_plan(
                model, scenario, settings.ctx, settings.seed, self.probes
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
        )
        self.runs: dict[str, ProbeRun] = {p.name: p.start(setup) for p in self.probes}
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
        """Tokens the run will evaluate, without failure generations (for the progress bar)."""
        scored = sum(1 for d in self.documents if any(r.scores_logits(d) for r in self.runs.values()))
        null = self.settings.ctx * scored if self.null_check else 0
        return (self.doc_tokens + self.probe_tokens) * n_configs + null

    def context_settings(self, n_threads: int) -> ContextSettings:
        return ContextSettings(
            n_ctx=self.n_ctx,
            chunk=self.scenario.plan.chunk,
            n_threads=n_threads,
            flash_attn=self.settings.flash_attn,
            attn_rotation=self.settings.attn_rotation,
            n_seq_max=self.n_seq_max,
        )

    def run_all(
        self, contexts: dict[str, Context], progress: Progress, null_context: Context | None = None
    ) -> list[Row]:
        """Evaluate every configuration. Documents advance checkpoint by checkpoint in all
        contexts at once, so a probe that reads logits sees each chunk from every configuration
        together; each probe then measures at the checkpoint, per context."""
        if self.settings.mode != "onepass":
            return [row for run in self.runs.values() for row in run.run_prompts(contexts, progress)]
        rows: list[Row] = []
        for document in self.documents:
            readers = [r for r in self.runs.values() if r.scores_logits(document)]
            feeding = list(contexts.values()) + ([null_context] if readers and null_context else [])
            for context in feeding:
                context.reset()
            names = [*contexts, NULL_ROWS][: len(feeding)]
            for length in self.checkpoints:
                what = f"doc {document.index} L={length}"
                evaluated = sum(c.tokens_evaluated for c in feeding)
                segment = document.tokens[feeding[0].n_past : length]
                on_chunk = _handing_logits(readers, document, names) if readers else None
                feed_lockstep(feeding, segment, on_chunk)
                progress(sum(c.tokens_evaluated for c in feeding) - evaluated, what + " (document)")
                for config, context in contexts.items():
                    for name, run in self.runs.items():
                        before = context.tokens_evaluated
                        found = run.at_checkpoint(context, config, document, length)
                        if found or context.tokens_evaluated != before:
                            rows.extend(found)
                            progress(
                                context.tokens_evaluated - before, f"{config} {what} {run.label or name}"
                            )
        return rows


def _handing_logits(readers: list[ProbeRun], document: Document, names: list[str]) -> ChunkCallback:
    def on_chunk(pos0: int, logits: list[np.ndarray]) -> None:
        by_config: Mapping[str, np.ndarray] = dict(zip(names, logits, strict=True))
        for run in readers:
            run.on_chunk(document, pos0, by_config)

    return on_chunk


def run_probes(
    runner: Runner, configs: list[CacheConfig], progress: Progress, *, models: dict[str, Model] | None = None
) -> RunOutcome:
    """Evaluate every configuration (the runner's baseline first) on identical tokens.

    With `models` ({label: model}, the first the reference), every cache configuration runs on
    every model's weights, as "<label>:<cache id>": the weights-vs-KV design. The models must
    share the runner's tokenizer, so the items are identical."""
    model, scenario = runner.model, runner.scenario
    ctx_settings = runner.context_settings(model.n_threads)
    runs: list[tuple[ConfigId, Model, CacheConfig]] = (
        [(ConfigId.of(c, label), m, c) for label, m in models.items() for c in configs]
        if models
        else [(ConfigId.of(c), model, c) for c in configs]
    )
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        contexts = {str(cid): stack.enter_context(m.context(c, ctx_settings)) for cid, m, c in runs}
        null_context = None
        if runner.null_check and runner.baseline is not None:
            _, ref_model, ref_cache = runs[0]
            null_context = stack.enter_context(ref_model.context(ref_cache, ctx_settings))
        items = runner.run_all(contexts, progress, null_context)
        applied = [
            {**_applied(str(cid), contexts[str(cid)]), **({"model": cid.weights} if models else {})}
            for cid, _, _ in runs
        ]
        tokens_evaluated = sum(c.tokens_evaluated for c in contexts.values())
        decode_s = {cid: round(context.busy_s, 2) for cid, context in contexts.items()}
        null_tokens = null_context.tokens_evaluated if null_context else 0
    for run in runner.runs.values():
        run.finish(items)
    errors: list[dict[str, str]] = []
    sections = {name: run.section(errors) for name, run in runner.runs.items()}
    return RunOutcome(
        checkpoints=runner.checkpoints,
        items=items,
        text_items=[row for run in runner.runs.values() for row in run.text_items()],
        sections={name: s for name, s in sections.items() if s is not None},
        measured={name: m for name, run in runner.runs.items() if (m := run.measured()) is not None},
        applied=applied,
        n_ctx=runner.n_ctx,
        n_seq_max=runner.n_seq_max,
        chunk=scenario.plan.chunk,
        timing={
            "wall_s": round(time.perf_counter() - started, 2),
            "decode_s": decode_s,
            "tokens_evaluated": tokens_evaluated,
            "null_check_tokens": null_tokens,
            "naive_tokens": runner.naive_tokens * len(runs),
        },
        errors=errors,
    )


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
