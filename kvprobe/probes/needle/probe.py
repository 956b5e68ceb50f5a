"""Needle probe: is a fact planted at a known depth still retrieved at each checkpoint?

Each (needle, checkpoint) item is scored by teacher forcing on a fork of the document: the
answer's log-probability, and whether greedy decoding would produce it. Only failed answers
pay for generation, to show what the model said instead (design §3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table

from kvprobe.api import (
    RETRIEVAL,
    RETRIEVAL_LOGPROB,
    Budget,
    Heatmap,
    LineFigure,
    Marker,
    MatrixColumn,
    Metric,
    Needs,
    Probe,
    ProbeRun,
    ResultDoc,
    Row,
    RunSetup,
    SchemaPart,
    Series,
    by_config_and_ctx,
    fmt_ci,
    register,
    summary_series,
)
from kvprobe.api.figures import margin_lines
from kvprobe.api.record import JsonObject
from kvprobe.api.result import PromptRecord
from kvprobe.infra.display import plain
from kvprobe.plan.scenario import bad, within
from kvprobe.probes.needle import schema as part
from kvprobe.probes.needle import verdict as needle_verdict
from kvprobe.probes.needle.plan import (
    ClassicSpec,
    NeedleItem,
    NeedleSpec,
    build_classic_cells,
    check_plan_capacity,
    items_at,
    needle_inserts,
)
from kvprobe.probes.repetition.metrics import find_loop
from kvprobe.probes.rows import mean_row, rate_row

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document, Figure, Insert, Tokenizer
    from kvprobe.api.engine import Context, TeacherForced
    from kvprobe.plan.scenario import Scenario

NEEDLE_LOOP_TOKENS = 6  # a failed answer such as "899999999" ends in >= 6 periodic tokens
REFERENCE_FLOOR = 0.75  # below this share at the shortest checkpoint the reference is the limit
MAX_QUERY_FORKS = 32  # queries scored at once, each in its own sequence
Progress = Callable[[int, str], None]


def first_number(text: str) -> str | None:
    found = re.search(r"\d+", text)
    return found.group(0) if found else None


def needle_key(it: Row) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["key"])


class NeedleRun(ProbeRun):
    label = "needles"

    def __init__(self, setup: RunSetup):
        self.model = setup.model
        self.spec = setup.scenario.spec(NeedleSpec)
        self.classic = setup.mode == "classic"
        self.cells = (
            build_classic_cells(setup.model, setup.scenario, setup.ctx, setup.seed, setup.prompt.lead)
            if self.classic
            else []
        )
        self.n_prompts = len(self.cells)
        self.prompt_lengths = sorted({c.item.ctx for c in self.cells})
        items = (
            [c.item for c in self.cells]
            if self.classic
            else [it for d in setup.documents for L in setup.checkpoints for it in items_at(d, L)]
        )
        self.query: dict[str, list[int]] = {}
        self.answer: dict[str, list[int]] = {}
        self.chat = setup.prompt.chat
        for it in items:
            self.query.setdefault(it.key, self.query_tokens(setup, it.key))
            self.answer.setdefault(it.key, setup.model.tokenize(self.spec.answer.format(value=it.expected)))
        longest = max((len(self.query[k]) + len(self.answer[k]) for k in self.query), default=0)
        scored = sum(len(self.query[i.key]) + len(self.answer[i.key]) - 1 for i in items)
        per_checkpoint = max(
            (len(items_at(d, L)) for d in setup.documents for L in setup.checkpoints), default=1
        )
        self.forks = (
            min(MAX_QUERY_FORKS, per_checkpoint) if self.spec.batch_queries and not self.classic else 1
        )
        generated = max((len(a) + 4 for a in self.answer.values()), default=0)
        generated = max(generated, self.spec.generate_tokens)
        self.budget = Budget(
            # A pack of forks holds at most a chunk of query tokens, and each fork may then
            # generate a failed answer's continuation.
            fork_cells=(
                setup.scenario.plan.chunk + self.forks * (generated + 1)
                if self.forks > 1
                else longest + self.spec.generate_tokens + 1
            ),
            sequences=self.forks,
            tokens=scored + (sum(c.item.ctx for c in self.cells) if self.classic else 0),
            # One prompt per (needle, checkpoint), as RULER evaluates it.
            naive_tokens=sum(i.ctx + len(self.query[i.key]) + len(self.answer[i.key]) - 1 for i in items),
        )

    def query_tokens(self, setup: RunSetup, key: str) -> list[int]:
        """Raw: the needle's words up to the value. Chat: the question ends the user's message,
        then the end of the turn, the assistant header and the reply's answer prefix."""
        tok = setup.model
        if not self.chat:
            return tok.tokenize("\n\n" + self.spec.query.format(key=key))
        question = tok.tokenize("\n\n" + self.spec.chat_query.format(key=key))
        return [*question, *setup.prompt.turn_end, *tok.tokenize(self.spec.answer_prefix.format(key=key))]

    def ask(self, context: Context, item: NeedleItem, config: str) -> Row:
        """One query alone: scored, then (only a failure pays for it) generated."""
        query, answer = self.query[item.key], self.answer[item.key]
        scored = context.score(query, answer)
        generated = None
        if not scored.argmax_match:
            generated = context.generate(query, max(len(answer) + 4, self.spec.generate_tokens))
        return self.row(item, config, scored, generated)

    def row(self, item: NeedleItem, config: str, scored: TeacherForced, generated: list[int] | None) -> Row:
        """The item's row; `generated` is what greedy decoding said instead of a failed answer."""
        loop = None
        if generated is None:
            output = self.model.detokenize(self.answer[item.key])
        else:
            output = self.model.detokenize(generated)
            loop = find_loop(generated, min_tokens=NEEDLE_LOOP_TOKENS)
        return {
            "probe": "needle",
            "config": config,
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
            # Chat form: the reply ended its turn at once (a template or model problem).
            **({"output_ended_turn": generated == []} if self.chat else {}),
        }

    def at_checkpoint(self, context: Context, config: str, document: Document, length: int) -> list[Row]:
        items = items_at(document, length)
        if self.forks == 1:
            return [self.ask(context, item, config) for item in items]
        scored = context.score_many([(self.query[it.key], self.answer[it.key]) for it in items])
        failed = [j for j, s in enumerate(scored) if not s.argmax_match]
        # Only failures pay for generation: show what the model said instead.
        limits = [max(len(self.answer[items[j].key]) + 4, self.spec.generate_tokens) for j in failed]
        outputs = context.generate_many([self.query[items[j].key] for j in failed], limits)
        generated = dict(zip(failed, outputs, strict=True))
        return [
            self.row(it, config, sc, generated.get(j))
            for j, (it, sc) in enumerate(zip(items, scored, strict=True))
        ]

    def run_prompt(self, index: int, contexts: Mapping[str, Context], progress: Progress) -> list[Row]:
        """Classic mode: one prompt per cell, each from an empty context (RULER's grid)."""
        cell = self.cells[index]
        rows = []
        for config, context in contexts.items():
            before = context.tokens_evaluated
            context.reset()
            context.feed(cell.document.tokens[: cell.item.ctx])
            rows.append(self.ask(context, cell.item, config))
            progress(context.tokens_evaluated - before, f"{config} classic L={cell.item.ctx}")
        return rows


class NeedleProbe(Probe):
    name = "needle"
    order = 0
    by_default = True
    sections: ClassVar[dict[str, type]] = {"needle": NeedleSpec, "classic": ClassicSpec}
    modes = ("onepass", "classic")
    summary_label = "needle summary"
    hashed_always = True

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (
            Metric("needle", "accuracy", binary=True, lower_is_worse=True, field="correct", key=needle_key,
                   compared=True, min_change=0.05, margin=0.05, role=RETRIEVAL, label="accuracy"),
            Metric("needle", "answer_logprob", lower_is_worse=True, field="logprob", key=needle_key,
                   compared=True, margin=0.25, role=RETRIEVAL_LOGPROB, unit=" nats", label="answer log-prob"),
        )  # fmt: skip

    def reference_check(
        self, items: list[Row], baseline: str, prompt: PromptRecord | Mapping[str, Any], checkpoint: int
    ) -> str | None:
        rows = [
            it
            for it in items
            if it["probe"] == "needle" and it["config"] == baseline and it["ctx"] == checkpoint
        ]
        if len(rows) < 2:
            return None
        share = sum(bool(it["correct"]) for it in rows) / len(rows)
        ended = sum(bool(it.get("output_ended_turn")) for it in rows) / len(rows)
        chat = prompt.get("format") == "chat"
        if ended >= 0.5:
            cause = (
                "it ends its turn at once: the chat template is likely wrong for this model "
                "(give the right one with --chat-template FILE)"
            )
        elif share >= REFERENCE_FLOOR:
            return None
        elif chat and prompt.get("template_source") != "gguf":
            cause = "a template from a file: if this is a base model, use --prompt-format raw"
        elif not chat and "--prompt-format raw" in str(prompt.get("why")):
            cause = (
                "raw text to a model with a chat template: an instruct model is asked in chat form by default"
            )
        elif chat:
            cause = (
                "in its own chat form; a small model may confuse needles: plant fewer (needle.per_segment)"
            )
        else:
            cause = "raw text, and the model has no chat template: a small or base model, or a wrong haystack"
        return (
            f"the {baseline} reference retrieves {share:.0%} of its needles at {checkpoint:,} tokens "
            f"({cause}): the reference, not the cache, limits what accuracy can show"
        )

    def validate(self, scenario: Scenario, source: str) -> None:
        s, classic = scenario.spec(NeedleSpec), scenario.spec(ClassicSpec)
        for key in ("template", "query"):
            if "{key}" not in getattr(s, key):
                raise bad(source, f"needle.{key}", "must contain {key}")
        if "{value}" not in s.template or "{value}" not in s.answer:
            raise bad(source, "needle.template", "and needle.answer must contain {value}")
        for key, fields in (
            ("template", {"key", "value"}), ("query", {"key"}), ("answer", {"value"}),
            ("chat_query", {"key"}), ("answer_prefix", {"key"}),
        ):  # fmt: skip
            try:
                getattr(s, key).format(**dict.fromkeys(fields, "x"))
            except (KeyError, IndexError, ValueError) as exc:
                allowed = " and ".join("{" + f + "}" for f in sorted(fields))
                raise bad(
                    source,
                    f"needle.{key}",
                    f"may hold only {allowed} in braces (write {{{{ for a brace): {exc}",
                ) from None
        if not 4 <= s.value_digits <= 12:
            raise bad(source, "needle.value_digits", "must be between 4 and 12")
        within(source, "needle.per_segment", s.per_segment, 1, 256)
        within(source, "needle.generate_tokens", s.generate_tokens, 1, 512)
        if not s.attributes or len(s.attributes) > 1000:
            raise bad(source, "needle.attributes", "must list between 1 and 1,000 attributes")
        if any(not isinstance(a, str) or not a.strip() for a in s.attributes):
            raise bad(source, "needle.attributes", "must be a list of non-empty strings")
        if len(set(s.attributes)) != len(s.attributes):
            raise bad(source, "needle.attributes", "must not repeat an attribute")
        if not classic.depths or len(classic.depths) > 64:
            raise bad(source, "classic.depths", "must list between 1 and 64 depths")
        if any(
            isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0
            for d in classic.depths
        ):
            raise bad(source, "classic.depths", "must be numbers in [0, 1)")
        within(source, "classic.repeats", classic.repeats, 1, 256)

    def check_run(
        self, scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool
    ) -> None:
        check_plan_capacity(scenario, ctx, mode)

    def inserts(
        self, tok: Tokenizer, scenario: Scenario, checkpoints: list[int], doc_index: int, seed: int
    ) -> list[Insert]:
        return needle_inserts(tok, scenario, checkpoints, doc_index, seed)

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        # A pack of queries fills at most a chunk; each fork may then generate a failed answer
        # (its value's digits and a few tokens more, or generate_tokens).
        spec = scenario.spec(NeedleSpec)
        generated = max(spec.value_digits + 8, spec.generate_tokens) + 1
        return Needs(fork_cells=scenario.plan.chunk + MAX_QUERY_FORKS * generated)

    def scenario_note(self, scenario: Scenario) -> str | None:
        return f"{scenario.spec(NeedleSpec).per_segment} needles/segment"

    def start(self, setup: RunSetup) -> NeedleRun:
        return NeedleRun(setup)

    def schema_part(self) -> SchemaPart:
        return part.PART

    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[Row]:
        """Accuracy (Wilson 95%) and mean answer log-prob (bootstrap 95%) per configuration
        and checkpoint."""
        rows: list[Row] = []
        for (config, ctx), group in by_config_and_ctx(result["items"], "needle"):
            hits = sum(1 for it in group if it["correct"])
            rows.append(rate_row("needle", "accuracy", config, ctx, hits=hits, n=len(group)))
            logprobs = [it["logprob"] for it in group]
            rows.append(mean_row("needle", "answer_logprob", config, ctx, values=logprobs, seed=seed))
        return rows

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        if not any(r["probe"] == "needle" for r in result["summary"]):
            return []
        return [needle_table(result)]

    def figures(self, result: ResultDoc) -> list[Figure]:
        return needle_figures(result)

    def sentence(
        self, result: ResultDoc | JsonObject, config: str, baseline: str, verdict: JsonObject
    ) -> str | None:
        return needle_verdict.needle_sentence(verdict, baseline, config)

    def verdict_part(self, items: Sequence[Row], baseline: str, config: str, verdict: Row, seed: int) -> Row:
        return needle_verdict.verdict_part(items, baseline, config, verdict, seed)

    def matrix_columns(self) -> list[MatrixColumn]:
        return [
            MatrixColumn(
                "accuracy", "accuracy", lambda r: fmt_ci(r["value"], r["ci"]), "accuracy (95% Wilson)"
            ),
            MatrixColumn(
                "answer log-prob", "answer_logprob", lambda r: f"{r['value']:+.2f}", "answer log-prob"
            ),
        ]


def needle_table(result: ResultDoc) -> Table:
    """One row per checkpoint; per configuration accuracy with its Wilson 95% interval
    and the difference to the baseline."""
    baseline = result.get("baseline")
    configs = [c["id"] for c in result["configs"]]
    acc = {
        (r["config"], r["ctx"]): r
        for r in result["summary"]
        if r["probe"] == "needle" and r["metric"] == "accuracy"
    }
    table = Table(
        title=f"Needle accuracy (95% Wilson interval), {plain(result['scenario']['name'])} scenario, "
        f"{plain(result['run']['mode'])} mode"
    )
    table.add_column("context", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for cid in configs:
        table.add_column(plain(cid) + (" (baseline)" if cid == baseline else ""), justify="right")
        if baseline and cid != baseline:
            table.add_column(f"Δ {plain(cid)}", justify="right")
    for ctx in result["run"]["checkpoints"]:
        row = [str(ctx)]
        ns = {acc[(c, ctx)]["n"] for c in configs if (c, ctx) in acc}
        row.append("/".join(str(n) for n in sorted(ns)) or "0")
        base = acc.get((baseline, ctx)) if baseline else None
        for cid in configs:
            r = acc.get((cid, ctx))
            row.append(fmt_ci(r["value"], r["ci"]) if r else "-")
            if baseline and cid != baseline:
                if r and base:
                    delta = r["value"] - base["value"]
                    style = "red" if delta < 0 else ("green" if delta > 0 else "")
                    row.append(f"[{style}]{delta:+.2f}[/]" if style else f"{delta:+.2f}")
                else:
                    row.append("-")
        table.add_row(*row)
    return table


register(NeedleProbe())


DEPTH_BINS = 5  # heatmap rows: depth 0-0.2, ..., 0.8-1.0


def needle_figures(result: ResultDoc) -> list[Figure]:
    """Accuracy and the answer log-prob's difference against context, with intervals and
    onsets; the length x depth accuracy heatmap per configuration and its difference to the
    reference."""
    summary, baseline = result["summary"], result.get("baseline")
    configs = [c["id"] for c in result["configs"]]
    verdicts = ((result.get("verdict") or {}).get("configs")) or {}
    accuracy = [s for c in configs if (s := summary_series(summary, "accuracy", c, reference=c == baseline))]
    if not accuracy:
        return []
    markers = []
    for c, v in verdicts.items():
        series = next((s for s in accuracy if s.label == c), None)
        onset = v.get("onset_accuracy")
        if series and onset in series.x:
            markers.append(Marker(c, float(onset), series.y[series.x.index(onset)], f"onset {c}"))
    log2_ctx = "context length (tokens, log2 axis)"
    title = "Needle accuracy by context length (95% Wilson bands; ▲ onset)"
    figures: list[Figure] = [
        LineFigure(
            "needle-accuracy", title, log2_ctx, "accuracy (share retrieved)", accuracy, markers, log2_x=True
        )
    ]
    diffs, lp_markers = [], []
    for c, v in verdicts.items():
        rows = [r for r in v.get("paired", []) if r["metric"] == "answer_logprob"]
        if rows:
            x, y = [float(r["ctx"]) for r in rows], [r["diff"] for r in rows]
            diffs.append(Series(c, x, y, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows]))
            onset = v.get("onset_logprob")
            at = next((r for r in rows if r["ctx"] == onset), None)
            if at:
                lp_markers.append(Marker(c, float(onset), at["diff"], f"onset {c}"))
    if diffs:
        figures.append(
            LineFigure(
                "needle-logprob-diff",
                f"Answer log-probability minus {baseline}'s, paired (95% intervals)",
                "context length (tokens, log2 axis)",
                "difference (nats)",
                diffs,
                lp_markers,
                log2_x=True,
                zero_line=True,
                levels=margin_lines(
                    ((result.get("verdict") or {}).get("margins") or {}).get("answer_logprob")
                ),
            )
        )
    grids = {c: depth_grid(result["items"], c, result["run"]["checkpoints"]) for c in configs}
    rows = [f"{i / DEPTH_BINS:.1f}–{(i + 1) / DEPTH_BINS:.1f}" for i in range(DEPTH_BINS)]
    columns = [f"{c:,}" for c in result["run"]["checkpoints"]]
    axes = ("context length (tokens)", "needle depth (share of the context)", columns, rows)
    for c in configs:
        title = f"Needle accuracy, {c}: context length × depth"
        unsaid = unmeasured(result, grids[c])
        figures.append(Heatmap(f"needle-heatmap-{_safe(c)}", title, *axes, grids[c], "accuracy", text=unsaid))
        if baseline and c != baseline:
            delta = [
                [None if a is None or b is None else a - b for a, b in zip(ra, rb, strict=True)]
                for ra, rb in zip(grids[c], grids[baseline], strict=True)
            ]
            key = f"needle-heatmap-{_safe(c)}-minus-{_safe(baseline)}"
            title = f"Accuracy of {c} minus {baseline}: context length × depth"
            figures.append(
                Heatmap(key, title, *axes, delta, "accuracy difference", diverging=True, vmin=-1.0, vmax=1.0,
                        text=unmeasured(result, delta))
            )  # fmt: skip
    return figures


def unmeasured(result: ResultDoc, grid: list[list[float | None]]) -> list[list[str]] | None:
    """What each empty cell of a grid is: a checkpoint not measured at all (the run stopped once
    decided, --until-decided, or ended early), or a depth no needle fell in. None: none empty."""
    if not any(v is None for row in grid for v in row):
        return None
    empty = [all(row[j] is None for row in grid) for j in range(len(grid[0]))]
    early = bool(((result.get("verdict") or {}).get("until_decided") or {}).get("stopped"))
    why = "not measured: decided earlier" if early else "not measured"
    return [
        ["" if v is not None else why if empty[j] else "no needle" for j, v in enumerate(row)] for row in grid
    ]


def depth_grid(items: list[Row], config: str, checkpoints: list[int]) -> list[list[float | None]]:
    """Accuracy per (depth bin, checkpoint) of one configuration; None where no needle sits."""
    cells: dict[tuple[int, int], list[bool]] = {}
    for it in items:
        if it["probe"] == "needle" and it["config"] == config and it["ctx"] in checkpoints:
            row = min(DEPTH_BINS - 1, int(float(it["depth"]) * DEPTH_BINS))
            cells.setdefault((row, checkpoints.index(it["ctx"])), []).append(bool(it["correct"]))
    return [
        [(sum(v) / len(v)) if (v := cells.get((r, c))) else None for c in range(len(checkpoints))]
        for r in range(DEPTH_BINS)
    ]


def _safe(config: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in config)
