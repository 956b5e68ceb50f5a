"""Run a scenario: plan -> engine -> item rows. Knows nothing about terminals or files."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvprobe.cache_types import CacheConfig
from kvprobe.engine import Context, ContextSettings, Model, generate_forks
from kvprobe.errors import UserError
from kvprobe.plan import Document, NeedleItem, build_classic_cells, build_plan, items_at
from kvprobe.probes.repetition import divergence_index, find_loop, repetition_metrics
from kvprobe.scenario import Scenario

Progress = Callable[[int, str], None]  # (tokens just evaluated, what is running)
TEXT_CONFIG = "(text)"  # the document's own continuation: the calibration level of repetition
NEEDLE_LOOP_TOKENS = 6  # a failed answer such as "899999999" ends in >= 6 periodic tokens


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


def continuation_points(checkpoint: int, offsets: int, stride: int) -> list[int]:
    """Fork points for the repetition probe at one checkpoint: L, L - stride, ... (>= 2)."""
    return [p for p in (checkpoint - j * stride for j in range(offsets)) if p >= 2]


class Runner:
    """Evaluates every probe for every configuration on identical tokens and batch shapes."""

    def __init__(self, model: Model, scenario: Scenario, settings: RunSettings):
        self.model = model
        self.scenario = scenario
        self.settings = settings
        self.needles = "needle" in scenario.probes
        self.repetition = "repetition" in scenario.probes and settings.mode == "onepass"
        if settings.mode == "classic" and not self.needles:
            raise UserError("--mode classic applies to the needle probe: this scenario has none")
        rep = scenario.repetition
        needle = scenario.needle
        if settings.mode == "classic":
            self.cells = build_classic_cells(model, scenario, settings.ctx, settings.seed)
            self.docs: list[Document] = []
            self.checkpoints = sorted({c.item.ctx for c in self.cells})
            items = [c.item for c in self.cells]
        else:
            extra = rep.tokens if self.repetition else 0
            self.checkpoints, self.docs = build_plan(model, scenario, settings.ctx, settings.seed, extra)
            self.cells = []
            items = [it for d in self.docs for L in self.checkpoints for it in items_at(d, L)]
        self._query: dict[str, list[int]] = {}
        self._answer: dict[str, list[int]] = {}
        for it in items:
            self._query.setdefault(it.key, model.tokenize("\n\n" + needle.query.format(key=it.key)))
            self._answer.setdefault(it.key, model.tokenize(needle.answer.format(value=it.expected)))
        longest = max((len(self._query[k]) + len(self._answer[k]) for k in self._query), default=0)
        fork_cells = longest + needle.generate_tokens + 1
        if self.repetition:
            fork_cells = max(fork_cells, rep.offsets * (rep.tokens + 1))
        # Cells for the document plus the largest set of forks alive at once.
        self.n_ctx = round_up(settings.ctx + fork_cells, 256)
        self.n_seq_max = 1 + (rep.offsets if self.repetition else 1)
        self.n_items = len(items)
        n_points = sum(len(continuation_points(L, rep.offsets, rep.stride)) for L in self.checkpoints) * len(
            self.docs
        )
        self.doc_tokens = (
            sum(c.item.ctx for c in self.cells)
            if settings.mode == "classic"
            else len(self.docs) * settings.ctx
        )
        self.query_tokens = sum(len(self._query[i.key]) + len(self._answer[i.key]) - 1 for i in items)
        self.generated_tokens = n_points * rep.tokens if self.repetition else 0
        # What a one-prompt-per-cell grid (RULER) would evaluate for the same items.
        self.naive_tokens = sum(i.ctx + len(self._query[i.key]) + len(self._answer[i.key]) - 1 for i in items)
        if self.repetition:
            self.naive_tokens += n_points * rep.tokens + sum(
                p
                for d in self.docs
                for L in self.checkpoints
                for p in continuation_points(L, rep.offsets, rep.stride)
            )

    def planned_tokens(self, n_configs: int) -> int:
        """Tokens the run will evaluate, without failure generations (for the progress bar)."""
        return (self.doc_tokens + self.query_tokens + self.generated_tokens) * n_configs

    def context_settings(self, n_threads: int) -> ContextSettings:
        return ContextSettings(
            n_ctx=self.n_ctx,
            chunk=self.scenario.plan.chunk,
            n_threads=n_threads,
            flash_attn=self.settings.flash_attn,
            attn_rotation=self.settings.attn_rotation,
            n_seq_max=self.n_seq_max,
        )

    # needle ---------------------------------------------------------------------------
    def _ask(self, ctx: Context, item: NeedleItem, config_id: str) -> dict[str, Any]:
        query, answer = self._query[item.key], self._answer[item.key]
        scored = ctx.score(query, answer)
        loop = None
        if scored.argmax_match:
            output = self.model.detokenize(answer)
        else:
            # Only failures pay for generation: show what the model said instead.
            n = max(len(answer) + 4, self.scenario.needle.generate_tokens)
            generated = ctx.generate(query, n)
            output = self.model.detokenize(generated)
            loop = find_loop(generated, min_tokens=NEEDLE_LOOP_TOKENS)
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
            "output_loop": loop is not None,
        }

    # repetition -----------------------------------------------------------------------
    def _continue(self, ctx: Context, doc: Document, length: int, config_id: str) -> list[dict[str, Any]]:
        rep = self.scenario.repetition
        points = continuation_points(length, rep.offsets, rep.stride)
        outs = generate_forks(ctx, [doc.tokens[:p] for p in points], rep.tokens)
        return [
            self._repetition_row(config_id, doc.index, length, p, toks)
            for p, toks in zip(points, outs, strict=True)
        ]

    def _repetition_row(
        self, config_id: str, doc: int, length: int, point: int, tokens: list[int]
    ) -> dict[str, Any]:
        text = self.model.detokenize(tokens)
        m = repetition_metrics(tokens, text)
        return {
            "probe": "repetition",
            "config": config_id,
            "doc": doc,
            "ctx": length,
            "offset": point,
            "tokens": tokens,
            "text": text,
            **{f"seq_rep_{n}": round(v, 6) for n, v in m.seq_rep.items()},
            **{f"distinct_{n}": round(v, 6) for n, v in m.distinct.items()},
            "compression_ratio": round(m.compression_ratio, 6),
            "loop": m.loop is not None,
            "loop_period": m.loop.period if m.loop else None,
            "loop_repeats": m.loop.repeats if m.loop else None,
            "divergence_index": None,
        }

    def text_rows(self) -> list[dict[str, Any]]:
        """The document's own continuation at every continuation point: real text's level."""
        rep = self.scenario.repetition
        rows = []
        for doc in self.docs:
            for length in self.checkpoints:
                for p in continuation_points(length, rep.offsets, rep.stride):
                    rows.append(
                        self._repetition_row(
                            TEXT_CONFIG, doc.index, length, p, doc.tokens[p : p + rep.tokens]
                        )
                    )
        return rows

    # one configuration ------------------------------------------------------------------
    def run_config(self, ctx: Context, config_id: str, progress: Progress) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []

        def step(what: str, before: int) -> None:
            progress(ctx.tokens_evaluated - before, what)

        if self.settings.mode == "classic":
            for cell in self.cells:
                before = ctx.tokens_evaluated
                ctx.reset()
                ctx.feed(cell.document.tokens[: cell.item.ctx])
                rows.append(self._ask(ctx, cell.item, config_id))
                step(f"{config_id} classic L={cell.item.ctx}", before)
            return rows
        for doc in self.docs:
            ctx.reset()
            for length in self.checkpoints:
                what = f"{config_id} doc {doc.index} L={length}"
                before = ctx.tokens_evaluated
                ctx.feed(doc.tokens[ctx.n_past : length])
                step(what, before)
                if self.needles:
                    for item in items_at(doc, length):
                        before = ctx.tokens_evaluated
                        rows.append(self._ask(ctx, item, config_id))
                        step(what, before)
                if self.repetition:
                    before = ctx.tokens_evaluated
                    rows.extend(self._continue(ctx, doc, length, config_id))
                    step(what + " continuations", before)
        return rows


def add_divergence(items: list[dict[str, Any]], baseline: str | None) -> None:
    """Fill `divergence_index` of each non-baseline continuation against the baseline's."""
    if baseline is None:
        return
    ref = {
        (it["doc"], it["ctx"], it["offset"]): it["tokens"]
        for it in items
        if it["probe"] == "repetition" and it["config"] == baseline
    }
    for it in items:
        if it["probe"] == "repetition" and it["config"] != baseline:
            reference = ref.get((it["doc"], it["ctx"], it["offset"]))
            if reference is not None:
                it["divergence_index"] = divergence_index(it["tokens"], reference)


def run_probes(
    runner: Runner, configs: list[CacheConfig], baseline: str | None, progress: Progress
) -> dict[str, Any]:
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
    add_divergence(items, baseline)
    return {
        "checkpoints": runner.checkpoints,
        "items": items,
        "text_items": runner.text_rows() if runner.repetition else [],
        "applied": applied,
        "n_ctx": runner.n_ctx,
        "n_seq_max": runner.n_seq_max,
        "chunk": scenario.plan.chunk,
        "timing": {
            "wall_s": round(time.perf_counter() - started, 2),
            "per_config_s": per_config_s,
            "tokens_evaluated": tokens_evaluated,
            "naive_tokens": runner.naive_tokens * len(configs),
        },
    }
