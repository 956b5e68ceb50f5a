"""The part every question probe shares: the algorithm (plant groups of facts, ask them back at
each checkpoint), its section's checks, its two metrics (accuracy and the answer's
log-probability, both paired per item), summary rows, tables, figures and result-schema part.

A concrete probe is data plus two hooks, as a kvpress press is a dataclass overriding one hook
and RULER's task variants are one generator with parameters: its section (a dataclass whose
counts and texts declare their bounds and placeholders, kit.spec), its names and words (class
attributes), what it draws for a document (`draw`) and what it asks of each group (`ask`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

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
from kvprobe.api.figures import margin_lines
from kvprobe.infra.display import plain
from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import default_checkpoints
from kvprobe.probes.kit import schema as kit_schema
from kvprobe.probes.kit.questions import (
    GENERATE_CAP,
    MAX_FORKS,
    Fact,
    Group,
    Planted,
    Question,
    QuestionRun,
    complete_groups,
    group_key,
)
from kvprobe.probes.kit.spec import QuestionSpec, check, needs
from kvprobe.probes.kit.words import group_targets
from kvprobe.probes.rows import mean_row, rate_row

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document, Figure, Scenario
    from kvprobe.result.blocks import Schema

S = TypeVar("S", bound=QuestionSpec)


def item_key(it: Row) -> tuple[Any, ...]:
    return (it["doc"], it["ctx"], it["key"])


@dataclass(frozen=True)
class Drawn:
    """A document's groups as a probe drew them, before they are placed: each group's span count,
    and its facts, made once the places are drawn. The order of draws from the document's stream
    is what makes its documents (changing it changes every planted value), and some probes draw a
    group's own words after the places (`facts` may draw from the stream it is given)."""

    sizes: Sequence[int]
    facts: Callable[[int, random.Random], list[Fact]]

    @classmethod
    def of(cls, groups: Sequence[list[Fact]]) -> Drawn:
        """Groups drawn whole before they are placed."""
        return cls([len(g) for g in groups], lambda g, _rng: groups[g])


class QuestionProbe(Probe, Generic[S]):
    """A probe whose items are questions about groups of planted spans, each with one answer.
    `QuestionProbe[Spec]` names its section's dataclass, which becomes its one section (named
    after the probe); a subclass's docstring is what the page and the schema doc say of it."""

    spec_type: ClassVar[type[Any]]  # its section's dataclass: the type parameter
    title: ClassVar[str]  # "Multi-key needles"
    about: ClassVar[str]  # what it plants and asks (the page, the schema doc): its docstring
    logprob_margin: ClassVar[float] = 0.25  # equivalence margin of the answer log-prob (nats)
    row_fields: ClassVar[Mapping[str, Schema]] = {}  # its rows' own fields, for the schema
    breakdown: ClassVar[str | None] = None  # a row field its tables break accuracy down by
    group_count: ClassVar[str] = "groups"  # the section's key: groups per checkpoint segment
    margin: ClassVar[int] = 64  # tokens before a checkpoint its spans keep free of (group_targets)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "about" not in vars(cls):
            cls.about = " ".join(cls.__doc__.split())
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is QuestionProbe:
                cls.spec_type = get_args(base)[0]
                cls.sections = {cls.name: cls.spec_type}

    # what a concrete probe says ------------------------------------------------------------------
    def capacity(self, spec: S) -> int | None:
        """How many groups one document may have, where fewer than its draws can make (None: as
        many as they can; `check_run` draws a document's to see)."""
        return None

    def draw(self, spec: S, n: int, rng: random.Random) -> Drawn:
        """The `n` groups of one document (its checkpoint segments' groups, in order)."""
        raise NotImplementedError

    def ask(self, spec: S, groups: list[Group]) -> Iterable[Question]:
        """The questions about `groups`, those planted before a checkpoint (`pose` builds one)."""
        raise NotImplementedError

    # what the kit gives it -----------------------------------------------------------------------
    def fact(self, spec: Any, subject: str, value: str) -> Fact:
        """A fact in the words of the section's `template`, whose placeholders (as `text` declares
        them) name its subject and its value, in that order ("The {tally} tally adds {word}.")."""
        says = needs(spec, "template")
        return Fact(subject, value, spec.template.format(**{says[0]: subject, says[1]: value}))

    def pose(
        self,
        spec: S,
        group: Group,
        *,
        fill: Mapping[str, object],
        answer: str | Sequence[str],
        key: str | None = None,
        spans: Sequence[PlantedSpan] | None = None,
        candidates: Sequence[str] = (),
        **fields: object,
    ) -> Question:
        """A question about `group` (or about `spans` of it; `key`: by default its subject), from
        the section's texts filled with `fill`: raw text, chat form, and the reply's start (the
        section's `answer_prefix`, or where it has none the raw query). `answer` is the answer or
        the values it lists (joined by commas); `fields` are the probe's own row fields."""
        prefix: str = getattr(spec, "answer_prefix", spec.query)
        return Question(
            key=group.subject if key is None else key,
            raw=spec.query.format(**fill),
            chat=spec.chat_query.format(**fill),
            prefix=prefix.format(**fill),
            answer=" " + (answer if isinstance(answer, str) else ", ".join(answer)),
            spans=group.spans if spans is None else spans,
            candidates=candidates,
            fields=fields,
        )

    # the contract -------------------------------------------------------------------------------
    def spec(self, scenario: Scenario) -> S:
        return cast(S, scenario.spec(self.spec_type))

    def groups(self, spec: S) -> int:
        """Groups it plants per checkpoint segment."""
        return int(getattr(spec, self.group_count))

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
        check(self.spec(scenario), self.name, source)

    def check_run(
        self, scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool
    ) -> None:
        spec = self.spec(scenario)
        n = self.groups(spec) * len(
            default_checkpoints(ctx, scenario.plan.checkpoints, scenario.plan.first_checkpoint)
        )
        most = self.capacity(spec)
        if most is not None and n > most:
            raise UserError(
                f"the {self.name} plan needs {n:,} groups per document, but only {most:,} differ: lower "
                f"{self.name}.{self.group_count} or use fewer checkpoints"
            )
        rng = random.Random(0)  # one document's draws, made now: what they cannot make is refused
        try:  # before any model loads, not when the documents are built
            drawn = self.draw(spec, n, rng)
            for g in range(n):
                drawn.facts(g, rng)
        except UserError as exc:
            raise UserError(f"the {self.name} plan ({n:,} groups per document): {exc}") from None

    def inserts(
        self, tok: Tokenizer, scenario: Scenario, checkpoints: list[int], doc_index: int, seed: int
    ) -> list[Insert]:
        """Each group's spans, spread over its checkpoint segment (kit.words.group_targets), each
        carrying its group and its fact (a `Planted` payload)."""
        spec = self.spec(scenario)
        rng = random.Random(f"{seed}:{self.name}:{doc_index}")
        drawn = self.draw(spec, self.groups(spec) * len(checkpoints), rng)
        out: list[Insert] = []
        for g, aims in enumerate(group_targets(checkpoints, drawn.sizes, margin=self.margin, rng=rng)):
            facts = drawn.facts(g, rng)
            if len(aims) != len(facts):  # its segment is too short to hold its groups
                continue
            out += [
                Insert(group_key(g, len(aims)), fact.value, tok.tokenize(" " + fact.text), aim,
                       probe=self.name, payload=Planted(g, len(aims), fact))
                for fact, aim in zip(facts, aims, strict=True)
            ]  # fmt: skip
        return out

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        # A pack of questions fills at most a chunk; each fork may then generate a failed answer.
        return Needs(fork_cells=scenario.plan.chunk + MAX_FORKS * (GENERATE_CAP + 1))

    def questions(self, scenario: Scenario, document: Document, length: int) -> list[Question]:
        """The questions at checkpoint `length` about the groups planted before it."""
        return list(self.ask(self.spec(scenario), complete_groups(document.spans_of(self.name), length)))

    def start(self, setup: RunSetup) -> QuestionRun:
        return QuestionRun(
            self.name,
            setup,
            lambda d, L: self.questions(setup.scenario, d, L),
            generate=self.spec(setup.scenario).generate,
        )

    def scenario_note(self, scenario: Scenario) -> str | None:
        return f"{self.groups(self.spec(scenario))} {self.name} groups/segment"

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
        margin = ((result.get("verdict") or {}).get("margins") or {}).get(self.logprob)
        if diffs:
            figures.append(
                LineFigure(f"{self.name}-logprob-diff",
                           f"{self.title}: answer log-prob minus {baseline}'s, paired (95% intervals)",
                           log2, "difference (nats)", diffs, log2_x=True, zero_line=True,
                           levels=margin_lines(margin))
            )  # fmt: skip
        return figures

    def notes(self, result: ResultDoc) -> list[str]:
        if not any(it["probe"] == self.name for it in result["items"]):
            return []
        return [self.about]
