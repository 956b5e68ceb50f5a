"""Run a scenario: plan -> engine -> item rows. Knows nothing about terminals or files."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvprobe.cache_types import CacheConfig
from kvprobe.engine import Context, ContextSettings, Model
from kvprobe.plan import (
    Document,
    NeedleItem,
    build_classic_cells,
    build_plan,
    items_at,
)
from kvprobe.scenario import Scenario

Progress = Callable[[int, str], None]  # (tokens just evaluated, what is running)


@dataclass(frozen=True)
class RunSettings:
    ctx: int
    seed: int
    mode: str  # "onepass" | "classic"
    flash_attn: bool
    attn_rotation: bool


def first_number(text: str) -> str | None:
    found = re.search(r"\d+", text)
    return found.group(0) if found else None


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class NeedleRunner:
    """Evaluates needle items for every configuration on identical tokens and batch shapes."""

    def __init__(self, model: Model, scenario: Scenario, settings: RunSettings):
        self.model = model
        self.scenario = scenario
        self.settings = settings
        needle = scenario.needle
        if settings.mode == "classic":
            cells = build_classic_cells(model, scenario, settings.ctx, settings.seed)
            self.docs: list[Document] = []
            self.cells = cells
            self.checkpoints = sorted({c.item.ctx for c in cells})
            items = [c.item for c in cells]
        else:
            self.checkpoints, self.docs = build_plan(model, scenario, settings.ctx, settings.seed)
            self.cells = []
            items = [it for d in self.docs for L in self.checkpoints for it in items_at(d, L)]
        self._query: dict[str, list[int]] = {}
        self._answer: dict[str, list[int]] = {}
        for it in items:
            self._query.setdefault(it.key, model.tokenize("\n\n" + needle.query.format(key=it.key)))
            self._answer.setdefault(it.key, model.tokenize(needle.answer.format(value=it.expected)))
        longest = max((len(self._query[k]) + len(self._answer[k]) for k in self._query), default=0)
        self.n_ctx = round_up(settings.ctx + longest + needle.generate_tokens + 1, 256)
        self.n_items = len(items)
        self.doc_tokens = (
            sum(c.item.ctx for c in cells) if settings.mode == "classic" else len(self.docs) * settings.ctx
        )
        self.query_tokens = sum(len(self._query[i.key]) + len(self._answer[i.key]) - 1 for i in items)
        # What a one-prompt-per-cell grid (RULER) would evaluate for the same items.
        self.naive_tokens = sum(i.ctx + len(self._query[i.key]) + len(self._answer[i.key]) - 1 for i in items)

    def planned_tokens(self, n_configs: int) -> int:
        """Tokens the run will evaluate, without failure generations (for the progress bar)."""
        return (self.doc_tokens + self.query_tokens) * n_configs

    def context_settings(self, n_threads: int) -> ContextSettings:
        return ContextSettings(
            n_ctx=self.n_ctx,
            chunk=self.scenario.plan.chunk,
            n_threads=n_threads,
            flash_attn=self.settings.flash_attn,
            attn_rotation=self.settings.attn_rotation,
        )

    def _ask(self, ctx: Context, item: NeedleItem, config_id: str) -> dict[str, Any]:
        query, answer = self._query[item.key], self._answer[item.key]
        scored = ctx.score(query, answer)
        if scored.argmax_match:
            output = self.model.detokenize(answer)
        else:
            # Only failures pay for generation: show what the model said instead.
            n = max(len(answer) + 4, self.scenario.needle.generate_tokens)
            output = self.model.detokenize(ctx.generate(query, n))
        return {
            "probe": "needle",
            "config": config_id,
            "doc": item.doc,
            "ctx": item.ctx,
            "position": item.position,
            "depth": item.depth,
            "distance": item.distance,
            "key": item.key,
            "expected": item.expected,
            "correct": scored.argmax_match,
            "logprob": round(scored.logprob, 6),
            "first_wrong_token": scored.first_mismatch,
            "output": output,
            # Greedy decoding runs token by token, teacher forcing in one batch; on a near-tie
            # the argmax can differ (batch shape changes numerics), so both are recorded.
            "output_correct": first_number(output) == item.expected,
        }

    def run_config(self, ctx: Context, config_id: str, progress: Progress) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.settings.mode == "classic":
            for cell in self.cells:
                ctx.reset()
                ctx.feed(cell.document.tokens[: cell.item.ctx])
                progress(cell.item.ctx, f"{config_id} classic L={cell.item.ctx}")
                before = ctx.tokens_evaluated
                rows.append(self._ask(ctx, cell.item, config_id))
                progress(ctx.tokens_evaluated - before, f"{config_id} classic L={cell.item.ctx}")
            return rows
        for doc in self.docs:
            ctx.reset()
            for length in self.checkpoints:
                before = ctx.tokens_evaluated
                ctx.feed(doc.tokens[ctx.n_past : length])
                progress(ctx.tokens_evaluated - before, f"{config_id} doc {doc.index} L={length}")
                for item in items_at(doc, length):
                    before = ctx.tokens_evaluated
                    rows.append(self._ask(ctx, item, config_id))
                    progress(ctx.tokens_evaluated - before, f"{config_id} doc {doc.index} L={length}")
        return rows


def run_needles(runner: NeedleRunner, configs: list[CacheConfig], progress: Progress) -> dict[str, Any]:
    """Evaluate every configuration in order (baseline first); returns plain data."""
    model, scenario = runner.model, runner.scenario
    ctx_settings = runner.context_settings(model.n_threads)
    items: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    per_config_s: dict[str, float] = {}
    tokens_evaluated = 0
    started = time.perf_counter()
    for cache in configs:
        t0 = time.perf_counter()
        with model.context(cache, ctx_settings) as ctx:
            applied.append(
                {
                    "id": cache.id,
                    "type_k": ctx.applied.type_k,
                    "type_v": ctx.applied.type_v,
                    "flash_attn": ctx.applied.flash_attn,
                    "attn_rot_k": ctx.applied.attn_rot_k,
                    "attn_rot_v": ctx.applied.attn_rot_v,
                    "n_ctx": ctx.applied.n_ctx,
                }
            )
            items.extend(runner.run_config(ctx, cache.id, progress))
            tokens_evaluated += ctx.tokens_evaluated
        per_config_s[cache.id] = round(time.perf_counter() - t0, 2)
    return {
        "checkpoints": runner.checkpoints,
        "items": items,
        "applied": applied,
        "n_ctx": runner.n_ctx,
        "chunk": scenario.plan.chunk,
        "timing": {
            "wall_s": round(time.perf_counter() - started, 2),
            "per_config_s": per_config_s,
            "tokens_evaluated": tokens_evaluated,
            "naive_tokens": runner.naive_tokens * len(configs),
        },
    }
