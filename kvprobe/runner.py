"""Run a scenario: plan -> engine -> item rows. Knows nothing about terminals or files."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvprobe.cache_types import CacheConfig
from kvprobe.engine import ChunkCallback, Context, ContextSettings, Model, feed_lockstep, generate_forks
from kvprobe.errors import UserError
from kvprobe.plan import Document, NeedleItem, build_classic_cells, build_plan, items_at
from kvprobe.probes.divergence import NULL_CONFIG, DivergenceRecorder
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
        self.divergence = "divergence" in scenario.probes and settings.mode == "onepass"
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
        if self.divergence:
            # A curve at each checkpoint from separate runs (llama-perplexity -c L per length).
            self.naive_tokens += sum(self.checkpoints) * scenario.divergence.documents

    def planned_tokens(self, n_configs: int, null_check: bool = False) -> int:
        """Tokens the run will evaluate, without failure generations (for the progress bar)."""
        null = self.settings.ctx * self.scenario.divergence.documents if null_check else 0
        return (self.doc_tokens + self.query_tokens + self.generated_tokens) * n_configs + null

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

    # every configuration, in lockstep -----------------------------------------------------
    def run_all(
        self,
        contexts: dict[str, Context],
        progress: Progress,
        recorder: DivergenceRecorder | None = None,
        null_ctx: Context | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate every configuration. Documents advance checkpoint by checkpoint in all
        contexts at once, so the divergence probe sees each chunk's logits from every
        configuration together; needle queries and continuations then run per context."""
        rows: list[dict[str, Any]] = []

        def step(what: str, ctx: Context, before: int) -> None:
            progress(ctx.tokens_evaluated - before, what)

        if self.settings.mode == "classic":
            for cell in self.cells:
                for config_id, ctx in contexts.items():
                    before = ctx.tokens_evaluated
                    ctx.reset()
                    ctx.feed(cell.document.tokens[: cell.item.ctx])
                    rows.append(self._ask(ctx, cell.item, config_id))
                    step(f"{config_id} classic L={cell.item.ctx}", ctx, before)
            return rows
        for doc in self.docs:
            scored = recorder is not None and doc.index < self.scenario.divergence.documents
            feeding = list(contexts.values()) + ([null_ctx] if scored and null_ctx else [])
            for ctx in feeding:
                ctx.reset()
            names = [*contexts, NULL_CONFIG][: len(feeding)]
            for length in self.checkpoints:
                what = f"doc {doc.index} L={length}"
                evaluated = sum(c.tokens_evaluated for c in feeding)
                segment = doc.tokens[feeding[0].n_past : length]
                on_chunk = (
                    _recording(recorder, doc, self.settings.ctx, names) if scored and recorder else None
                )
                feed_lockstep(feeding, segment, on_chunk)
                progress(sum(c.tokens_evaluated for c in feeding) - evaluated, what + " (document)")
                for config_id, ctx in contexts.items():
                    if self.needles:
                        for item in items_at(doc, length):
                            b = ctx.tokens_evaluated
                            rows.append(self._ask(ctx, item, config_id))
                            step(f"{config_id} {what} needles", ctx, b)
                    if self.repetition:
                        b = ctx.tokens_evaluated
                        rows.extend(self._continue(ctx, doc, length, config_id))
                        step(f"{config_id} {what} continuations", ctx, b)
        return rows


def _recording(recorder: DivergenceRecorder, doc: Document, ctx: int, names: list[str]) -> ChunkCallback:
    # Score predictions of tokens 1 .. ctx - 1 only: the same positions whatever extra tokens
    # the document carries for the repetition probe.
    tokens = doc.tokens[:ctx]

    def on_chunk(pos0: int, logits: list[np.ndarray]) -> None:
        recorder.add_chunk(doc.index, tokens, pos0, dict(zip(names, logits, strict=True)))

    return on_chunk


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
    runner: Runner,
    configs: list[CacheConfig],
    baseline: str | None,
    progress: Progress,
    *,
    null_check: bool = False,
    models: dict[str, Model] | None = None,
) -> dict[str, Any]:
    """Evaluate every configuration (baseline first) on identical tokens; returns plain data.

    With `models` ({label: model}, the first the reference), every cache configuration runs on
    every model's weights, as "<label>:<cache id>": the weights-vs-KV design. The models must
    share the runner's tokenizer, so the items are identical."""
    model, scenario = runner.model, runner.scenario
    ctx_settings = runner.context_settings(model.n_threads)
    runs: list[tuple[str, Model, CacheConfig]] = (
        [(f"{label}:{c.id}", m, c) for label, m in models.items() for c in configs]
        if models
        else [(c.id, model, c) for c in configs]
    )
    if runner.divergence and baseline is None:
        raise UserError("the divergence probe compares against a reference: drop --baseline none")
    if null_check and not runner.divergence:
        raise UserError("--null-check needs the divergence probe: use --scenario divergence or default")
    recorder = DivergenceRecorder(baseline) if runner.divergence and baseline else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        contexts = {cid: stack.enter_context(m.context(c, ctx_settings)) for cid, m, c in runs}
        null_ctx = None
        if null_check and baseline is not None:
            _, ref_model, ref_cache = runs[0]
            null_ctx = stack.enter_context(ref_model.context(ref_cache, ctx_settings))
        items = runner.run_all(contexts, progress, recorder, null_ctx)
        labels = {cid: cid.split(":")[0] for cid, _, _ in runs} if models else {}
        applied = [
            {**_applied(cid, ctx), **({"model": labels[cid]} if models else {})}
            for cid, ctx in contexts.items()
        ]
        tokens_evaluated = sum(c.tokens_evaluated for c in contexts.values())
        decode_s = {cid: round(ctx.busy_s, 2) for cid, ctx in contexts.items()}
        null_tokens = null_ctx.tokens_evaluated if null_ctx else 0
    add_divergence(items, baseline)
    # Per configuration, one dict of per-position arrays per document (NULL_CONFIG included).
    arrays: dict[str, list[dict[str, np.ndarray]]] = {}
    if recorder is not None:
        for (config, _doc), rec in sorted(recorder.records.items(), key=lambda kv: kv[0][1]):
            arrays.setdefault(config, []).append(rec.arrays())
    return {
        "checkpoints": runner.checkpoints,
        "items": items,
        "text_items": runner.text_rows() if runner.repetition else [],
        "divergence_arrays": arrays,
        "applied": applied,
        "n_ctx": runner.n_ctx,
        "n_seq_max": runner.n_seq_max,
        "chunk": scenario.plan.chunk,
        "timing": {
            "wall_s": round(time.perf_counter() - started, 2),
            "decode_s": decode_s,
            "tokens_evaluated": tokens_evaluated,
            "null_check_tokens": null_tokens,
            "naive_tokens": runner.naive_tokens * len(runs),
        },
    }


def _applied(config_id: str, ctx: Context) -> dict[str, Any]:
    a = ctx.applied
    return {
        "id": config_id,
        "type_k": a.type_k,
        "type_v": a.type_v,
        "flash_attn": a.flash_attn,
        "attn_rot_k": a.attn_rot_k,
        "attn_rot_v": a.attn_rot_v,
        "n_ctx": a.n_ctx,
    }
