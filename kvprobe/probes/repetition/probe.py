"""Repetition probe: do greedy continuations from the document loop or degenerate?

At each checkpoint a few continuations fork from the document (at L, L - stride, ...) and run
greedily for G tokens; the document's own next G tokens give real text's level of the same
metrics (kvprobe.probes.repetition.metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table

from kvprobe.api import (
    Budget,
    LineFigure,
    Metric,
    Needs,
    Probe,
    ProbeRun,
    ResultDoc,
    Row,
    RunSetup,
    SchemaPart,
    by_config_and_ctx,
    fmt_ci,
    register,
    summary_series,
)
from kvprobe.api.cache_types import TEXT_ROWS
from kvprobe.api.record import JsonObject
from kvprobe.infra.display import plain
from kvprobe.plan.scenario import HASHED_IF_SET, within
from kvprobe.probes.repetition import schema as part
from kvprobe.probes.repetition.metrics import first_difference, repetition_metrics
from kvprobe.probes.rows import mean_row, rate_row

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document, Figure
    from kvprobe.api.engine import Context
    from kvprobe.plan.scenario import Scenario


@dataclass(frozen=True)
class RepetitionSpec:
    tokens: int = 128  # greedy continuation length G
    offsets: int = 4  # continuation points per checkpoint and document: L, L - stride, ...
    stride: int = 96  # tokens between continuation points
    # Continuations only at checkpoints of at least this many tokens: the greedy continuations are
    # the run's dearest work, and the shortest checkpoints are there for the level of the losses.
    from_ctx: int = field(default=0, metadata=HASHED_IF_SET)
    # Chat form: the continuation is the assistant's reply to this request, appended to the
    # document cut at each point (the document's own continuation stays real text's level).
    chat_request: str = field(default="Continue the text above from where it stops.", metadata=HASHED_IF_SET)


def continuation_points(checkpoint: int, offsets: int, stride: int) -> list[int]:
    """Fork points at one checkpoint: L, L - stride, ... (>= 2)."""
    return [p for p in (checkpoint - j * stride for j in range(offsets)) if p >= 2]


def repetition_key(it: Row) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["offset"])


class RepetitionRun(ProbeRun):
    label = "continuations"

    def __init__(self, setup: RunSetup):
        self.model = setup.model
        self.spec = setup.scenario.spec(RepetitionSpec)
        self.documents = setup.documents
        self.checkpoints = [L for L in setup.checkpoints if self.spec.from_ctx <= L]
        self.baseline = setup.baseline
        # Chat form: the request ends the user's message, then the turn's end and the reply.
        self.request = (
            [*setup.model.tokenize("\n\n" + self.spec.chat_request), *setup.prompt.turn_end]
            if setup.prompt.chat
            else []
        )
        points = [
            p
            for _ in self.documents
            for L in self.checkpoints
            for p in continuation_points(L, self.spec.offsets, self.spec.stride)
        ]
        self.budget = Budget(
            fork_cells=self.spec.offsets * (self.spec.tokens + 1 + len(self.request)),
            sequences=self.spec.offsets,
            tokens=len(points) * (self.spec.tokens + len(self.request)),
            # Each continuation from a fresh prompt of its prefix.
            naive_tokens=len(points) * (self.spec.tokens + len(self.request)) + sum(points),
        )

    def row(self, config: str, doc: int, length: int, point: int, tokens: list[int]) -> Row:
        text = self.model.detokenize(tokens)
        m = repetition_metrics(tokens, text)
        return {
            "probe": "repetition",
            "config": config,
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
            "first_difference": None,
        }

    def at_checkpoint(self, context: Context, config: str, document: Document, length: int) -> list[Row]:
        if length < self.spec.from_ctx:
            return []
        points = continuation_points(length, self.spec.offsets, self.spec.stride)
        outs = context.generate_forks([document.tokens[:p] for p in points], self.spec.tokens, self.request)
        return [
            self.row(config, document.index, length, p, toks) for p, toks in zip(points, outs, strict=True)
        ]

    def finish(self, items: list[Row]) -> None:
        """Fill `first_difference` of each continuation against the baseline's from the same point."""
        if self.baseline is None:
            return
        ref = {
            (it["doc"], it["ctx"], it["offset"]): it["tokens"]
            for it in items
            if it["probe"] == "repetition" and it["config"] == self.baseline
        }
        for it in items:
            if it["probe"] == "repetition" and it["config"] != self.baseline:
                reference = ref.get((it["doc"], it["ctx"], it["offset"]))
                if reference is not None:
                    it["first_difference"] = first_difference(it["tokens"], reference)

    def text_items(self) -> list[Row]:
        """The document's own continuation at every continuation point: real text's level."""
        spec = self.spec
        return [
            self.row(TEXT_ROWS, document.index, length, p, document.tokens[p : p + spec.tokens])
            for document in self.documents
            for length in self.checkpoints
            for p in continuation_points(length, spec.offsets, spec.stride)
        ]


class RepetitionProbe(Probe):
    name = "repetition"
    order = 1
    sections: ClassVar[dict[str, type]] = {"repetition": RepetitionSpec}
    summary_label = "repetition summary"
    hashed_always = True

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (
            Metric("repetition", "seq_rep_4", lower_is_worse=False, field="seq_rep_4", key=repetition_key,
                   compared=True, summary_mean=True),
            Metric("repetition", "distinct_2", summary_mean=True),
            Metric("repetition", "compression_ratio", summary_mean=True),
            Metric("repetition", "first_difference", summary_mean=True),
            Metric("repetition", "loop_rate", binary=True),
        )  # fmt: skip

    def validate(self, scenario: Scenario, source: str) -> None:
        spec = scenario.spec(RepetitionSpec)
        within(source, "repetition.tokens", spec.tokens, 1, 2048)
        within(source, "repetition.offsets", spec.offsets, 1, 32)
        within(source, "repetition.stride", spec.stride, 1, 65536)
        within(source, "repetition.from_ctx", spec.from_ctx, 0, 1 << 20)

    def extra_document_tokens(self, scenario: Scenario) -> int:
        return scenario.spec(RepetitionSpec).tokens

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        spec = scenario.spec(RepetitionSpec)
        return Needs(fork_cells=spec.offsets * (spec.tokens + 1))

    def start(self, setup: RunSetup) -> RepetitionRun:
        return RepetitionRun(setup)

    def schema_part(self) -> SchemaPart:
        return part.PART

    def ties(self, *, shown: bool) -> tuple[Callable[[ResultDoc], str | None], ...]:
        return part.TABLE_TIES if shown else ()

    def migrate(self, doc: JsonObject, read_version: int, errors: list[dict[str, str]]) -> None:
        if read_version < 2:
            part.rename_first_difference(doc)

    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[Row]:
        """Per configuration and checkpoint (the text's own level included): means of
        seq_rep_4, distinct_2, compression_ratio and first_difference (bootstrap 95%), and
        loop_rate (Wilson 95%)."""
        rows: list[Row] = []
        items = result["items"] + (result.get("text_items") or [])
        means = [m.name for m in self.metrics if m.summary_mean]
        for (config, ctx), group in by_config_and_ctx(items, "repetition"):
            for metric in means:
                values = [float(it[metric]) for it in group if it.get(metric) is not None]
                if values:
                    rows.append(mean_row("repetition", metric, config, ctx, values=values, seed=seed))
            loops = sum(1 for it in group if it["loop"])
            rows.append(rate_row("repetition", "loop_rate", config, ctx, hits=loops, n=len(group)))
        return rows

    def figures(self, result: ResultDoc) -> list[Figure]:
        return repetition_figures(result)

    def notes(self, result: ResultDoc) -> list[str]:
        worst = worst_continuation(result)
        return [worst] if worst else []

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        if not any(r["probe"] == "repetition" for r in result["summary"]):
            return []
        return [repetition_table(result)]


def repetition_table(result: ResultDoc) -> Table:
    """One row per checkpoint and configuration (the text's own continuation first): looping
    continuations, mean seq-rep-4 and compression ratio, and where continuations leave the
    baseline's, each with its 95% interval."""
    rows = {(r["config"], r["ctx"], r["metric"]): r for r in result["summary"] if r["probe"] == "repetition"}
    tokens = result["scenario"]["spec"]["repetition"]["tokens"]
    table = Table(
        title=f"Repetition of {tokens}-token greedy continuations (95% intervals; loops: continuations "
        "that loop; seq-rep-4: share of repeated 4-grams; zlib: compression ratio, above 2.4 looping)"
    )
    for col in ("context", "config", "loops", "seq-rep-4", "zlib", "leaves baseline at"):
        table.add_column(col, justify="left" if col == "config" else "right", no_wrap=True)
    for ctx in result["run"]["checkpoints"]:
        for cid in [TEXT_ROWS, *(c["id"] for c in result["configs"])]:
            loop = rows.get((cid, ctx, "loop_rate"))
            if loop is None:
                continue
            rep = rows[(cid, ctx, "seq_rep_4")]
            ratio = rows[(cid, ctx, "compression_ratio")]
            first = rows.get((cid, ctx, "first_difference"))
            loops = round(loop["value"] * loop["n"])
            style = "red" if loop["value"] >= 0.5 else ""
            table.add_row(
                str(ctx),
                plain(cid),
                f"[{style}]{loops}/{loop['n']}[/]" if style else f"{loops}/{loop['n']}",
                fmt_ci(rep["value"], rep["ci"]),
                f"{ratio['value']:.2f}",
                f"{first['value']:.0f} [{first['ci'][0]:.0f}, {first['ci'][1]:.0f}]" if first else "",
                end_section=cid == result["configs"][-1]["id"],
            )
    return table


register(RepetitionProbe())


def repetition_figures(result: ResultDoc) -> list[Figure]:
    """Loop rate and seq-rep-4 against context per configuration, with the document's own text
    as the reference line."""
    summary = result["summary"]
    configs = [c["id"] for c in result["configs"]]
    figures: list[Figure] = []
    for metric, title, ylabel in (
        (
            "loop_rate",
            "Continuations that end in a loop (95% Wilson bands)",
            "share of continuations looping",
        ),
        (
            "seq_rep_4",
            "seq-rep-4 of greedy continuations (95% bootstrap bands)",
            "seq-rep-4 (repeated 4-grams)",
        ),
    ):
        baseline = result.get("baseline")
        series = [s for c in configs if (s := summary_series(summary, metric, c, reference=c == baseline))]
        text = summary_series(
            summary, metric, TEXT_ROWS, reference=True, label="real text (the document's own)"
        )
        if series:
            figures.append(
                LineFigure(
                    f"repetition-{metric.replace('_', '-')}",
                    title,
                    "context length (tokens, log2 axis)",
                    ylabel,
                    [*([text] if text else []), *series],
                    log2_x=True,
                )
            )
    return figures


def worst_continuation(result: ResultDoc | JsonObject) -> str | None:
    """The most repetitive continuation of any configuration, in words."""
    rows = [
        it for it in result["items"] if it["probe"] == "repetition" and it["config"] != result.get("baseline")
    ]
    if not rows:
        return None
    worst = max(rows, key=lambda it: (it["seq_rep_4"], it["ctx"]))
    text = str(worst["text"])
    shown = text if len(text) <= 600 else text[:600] + " …"
    return (
        f"The most repetitive continuation: {worst['config']} at {worst['ctx']:,} tokens, from position "
        f"{worst['offset']:,} of document {worst['doc']} (seq-rep-4 {worst['seq_rep_4']:.2f}"
        f"{', a loop' if worst['loop'] else ''}): {shown}"
    )
