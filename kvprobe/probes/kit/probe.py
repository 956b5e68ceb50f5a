"""The part every question probe shares: its two metrics (accuracy and the answer's
log-probability, both paired per item), summary rows, tables, figures and result-schema part.
A concrete probe says what it plants (`plant`) and what it asks (`ask`), and nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table

from kvprobe.api import (
    Insert,
    LineFigure,
    Metric,
    Needs,
    PlantedSpan,
    Probe,
    ResultDoc,
    Row,
    RunSetup,
    SchemaPart,
    Series,
    Tokenizer,
    by_config_and_ctx,
    fmt_ci,
    summary_series,
)
from kvprobe.infra.display import plain
from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import default_checkpoints
from kvprobe.plan.scenario import bad
from kvprobe.probes.kit import schema as kit_schema
from kvprobe.probes.kit.questions import GENERATE_CAP, MAX_FORKS, Question, QuestionRun, complete_groups
from kvprobe.probes.rows import mean_row, rate_row

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document, Figure, Scenario
    from kvprobe.result.blocks import Schema


# Every name a question probe's templates fill in (each probe checks which it needs).
PLACEHOLDERS = ("key", "value", "keys", "count", "tally", "word", "book", "ordinal")


def item_key(it: Row) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["key"])


class QuestionProbe(Probe):
    """A probe whose items are questions about groups of planted spans, each with one answer."""

    spec_type: ClassVar[type]  # its scenario section's dataclass (named after it; has `generate`)
    title: ClassVar[str]  # "Multi-key needles"
    about: ClassVar[str]  # what it plants and asks, in a sentence (the page, the schema doc)
    logprob_margin: ClassVar[float] = 0.25  # equivalence margin of the answer log-prob (nats)
    row_fields: ClassVar[Mapping[str, Schema]] = {}  # its rows' own fields, for the schema
    breakdown: ClassVar[str | None] = None  # a row field its tables break accuracy down by

    # what a concrete probe says ------------------------------------------------------------------
    def groups(self, spec: Any) -> int:
        """Groups it plants per checkpoint segment."""
        raise NotImplementedError

    def capacity(self, spec: Any) -> int:
        """How many groups one document can have before keys or values would repeat."""
        raise NotImplementedError

    def plant(self, tok: Tokenizer, spec: Any, checkpoints: list[int], rng: random.Random) -> list[Insert]:
        """The spans of one document (Insert.key from kit.questions.group_key)."""
        raise NotImplementedError

    def ask(self, spec: Any, groups: list[list[PlantedSpan]], length: int) -> list[Question]:
        """The questions at checkpoint `length` about the groups planted before it."""
        raise NotImplementedError

    def check_spec(self, spec: Any, source: str) -> None:
        """Check the values of its section."""

    # the contract -------------------------------------------------------------------------------
    @property
    def accuracy(self) -> str:
        return f"{self.name}_accuracy"

    @property
    def logprob(self) -> str:
        return f"{self.name}_logprob"

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (
            Metric(self.name, self.accuracy, binary=True, lower_is_worse=True, field="correct", key=item_key,
                   compared=True, min_change=0.05, margin=0.05, label=f"{self.name} accuracy"),
            Metric(self.name, self.logprob, lower_is_worse=True, field="logprob", key=item_key,
                   compared=True, margin=self.logprob_margin, unit=" nats",
                   label=f"{self.name} answer log-prob"),
        )  # fmt: skip

    def validate(self, scenario: Scenario, source: str) -> None:
        spec: Any = scenario.spec(self.spec_type)
        for name, value in vars(spec).items():  # a template with a stray brace fails here, not mid-run
            if isinstance(value, str):
                try:
                    value.format(**dict.fromkeys(PLACEHOLDERS, "x"))
                except (KeyError, IndexError, ValueError) as exc:
                    raise bad(
                        source, f"{self.name}.{name}", f"has an unknown placeholder or a stray brace ({exc})"
                    ) from None
        self.check_spec(spec, source)

    def check_run(
        self, scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool
    ) -> None:
        spec: Any = scenario.spec(self.spec_type)
        n = self.groups(spec) * len(default_checkpoints(ctx, scenario.plan.checkpoints))
        if n > self.capacity(spec):
            raise UserError(
                f"the {self.name} plan needs {n:,} groups per document, but only {self.capacity(spec):,} "
                f"differ: lower {self.name}.groups or use fewer checkpoints"
            )

    def inserts(
        self, tok: Tokenizer, scenario: Scenario, checkpoints: list[int], doc_index: int, seed: int
    ) -> list[Insert]:
        rng = random.Random(f"{seed}:{self.name}:{doc_index}")
        return self.plant(tok, scenario.spec(self.spec_type), checkpoints, rng)

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        # A pack of questions fills at most a chunk; each fork may then generate a failed answer.
        return Needs(fork_cells=scenario.plan.chunk + MAX_FORKS * (GENERATE_CAP + 1))

    def questions(self, scenario: Scenario, document: Document, length: int) -> list[Question]:
        groups = complete_groups(document.spans_of(self.name), length)
        return self.ask(scenario.spec(self.spec_type), groups, length)

    def start(self, setup: RunSetup) -> QuestionRun:
        spec: Any = setup.scenario.spec(self.spec_type)
        return QuestionRun(
            self.name, setup, lambda d, L: self.questions(setup.scenario, d, L), generate=spec.generate
        )

    def scenario_note(self, scenario: Scenario) -> str | None:
        return f"{self.groups(scenario.spec(self.spec_type))} {self.name} groups/segment"

    def schema_part(self) -> SchemaPart:
        return kit_schema.part(self.name, self.about, self.row_fields)

    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[Row]:
        """Accuracy (Wilson 95%) and mean answer log-prob (bootstrap 95%) per configuration
        and checkpoint."""
        rows: list[Row] = []
        for (config, ctx), group in by_config_and_ctx(result["items"], self.name):
            hits = sum(1 for it in group if it["correct"])
            rows.append(rate_row(self.name, self.accuracy, config, ctx, hits=hits, n=len(group)))
            values = [it["logprob"] for it in group if it["logprob"] is not None]
            if values:
                rows.append(mean_row(self.name, self.logprob, config, ctx, values=values, seed=seed))
        return rows

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        if not any(r["probe"] == self.name for r in result["summary"]):
            return []
        out: list[RenderableType] = [self.table(result)]
        if self.breakdown:
            out.append(self.breakdown_table(result, self.breakdown))
        return out

    def table(self, result: ResultDoc) -> Table:
        """Per checkpoint and configuration: accuracy (95% Wilson) and mean answer log-prob."""
        configs = [c["id"] for c in result["configs"]]
        rows = {(r["config"], r["ctx"], r["metric"]): r for r in result["summary"] if r["probe"] == self.name}
        table = Table(title=f"{self.title}: accuracy (95% Wilson) and mean answer log-prob (nats)")
        table.add_column("context", justify="right", no_wrap=True)
        table.add_column("n", justify="right", no_wrap=True)
        for cid in configs:
            table.add_column(plain(cid), justify="right")
        for ctx in result["run"]["checkpoints"]:
            cells = [rows.get((c, ctx, self.accuracy)) for c in configs]
            if not any(cells):
                continue
            ns = sorted({r["n"] for r in cells if r})
            out = [f"{ctx:,}", "/".join(map(str, ns))]
            for c, acc in zip(configs, cells, strict=True):
                lp = rows.get((c, ctx, self.logprob))
                out.append(
                    (fmt_ci(acc["value"], acc["ci"]) if acc else "-")
                    + (f"  {lp['value']:+.2f}" if lp else "")
                )
            table.add_row(*out)
        return table

    def breakdown_table(self, result: ResultDoc, by: str) -> Table:
        """Accuracy by `by` (hops, ordinal, ...) at each checkpoint, per configuration."""
        configs = [c["id"] for c in result["configs"]]
        cells: dict[tuple[str, int, Any], list[bool]] = {}
        for it in result["items"]:
            if it["probe"] == self.name and by in it:
                cells.setdefault((it["config"], it["ctx"], it[by]), []).append(bool(it["correct"]))
        values = sorted({k[2] for k in cells})
        table = Table(title=f"{self.title}: accuracy by {by.replace('_', ' ')} (correct/asked)")
        table.add_column("context", justify="right")
        table.add_column("configuration")
        for v in values:
            table.add_column(f"{by.replace('_', ' ')} {v}", justify="right")
        for ctx in result["run"]["checkpoints"]:
            for c in configs:
                found = [cells.get((c, ctx, v)) for v in values]
                if any(found):
                    table.add_row(f"{ctx:,}", plain(c), *(f"{sum(f)}/{len(f)}" if f else "-" for f in found))
        return table

    def figures(self, result: ResultDoc) -> list[Figure]:
        """Accuracy by context length, and the answer log-prob's paired difference to the
        reference, with 95% intervals."""
        summary, baseline = result["summary"], result.get("baseline")
        configs = [c["id"] for c in result["configs"]]
        accuracy = [
            s for c in configs if (s := summary_series(summary, self.accuracy, c, reference=c == baseline))
        ]
        if not accuracy:
            return []
        log2 = "context length (tokens, log2 axis)"
        figures: list[Figure] = [
            LineFigure(
                f"{self.name}-accuracy",
                f"{self.title}: accuracy by context length (95% Wilson bands)",
                log2,
                "accuracy (share answered)",
                accuracy,
                log2_x=True,
            )
        ]
        diffs = []
        for c, v in (((result.get("verdict") or {}).get("configs")) or {}).items():
            rows = sorted(
                (r for r in v.get("paired", []) if r["metric"] == self.logprob), key=lambda r: r["ctx"]
            )
            if rows:
                diffs.append(
                    Series(c, [float(r["ctx"]) for r in rows], [r["diff"] for r in rows],
                           [r["ci"][0] for r in rows], [r["ci"][1] for r in rows])
                )  # fmt: skip
        if diffs:
            figures.append(
                LineFigure(f"{self.name}-logprob-diff",
                           f"{self.title}: answer log-prob minus {baseline}'s, paired (95% intervals)",
                           log2, "difference (nats)", diffs, log2_x=True, zero_line=True)
            )  # fmt: skip
        return figures

    def notes(self, result: ResultDoc) -> list[str]:
        if not any(it["probe"] == self.name for it in result["items"]):
            return []
        return [self.about]


def spans_text(spans: Sequence[PlantedSpan]) -> list[str]:
    """The values of a group's spans, in document order."""
    return [s.value for s in sorted(spans, key=lambda s: s.position)]
