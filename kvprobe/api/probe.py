"""What a probe is: the Probe protocol every probe implements, and what a run hands it.

A probe is registered once (kvprobe.probes.register) and from then on takes part in every
stage without any other module naming it: the scenario parses its section, the runner asks it
for its budget and calls it on each chunk and at each checkpoint, the result file stores its
items and section, the statistics ask it for summary rows and verdict sentences, `compare`
for its rows, and the terminal report for its tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kvprobe.api.documents import Document, Insert, Tokenizer
from kvprobe.api.engine import Context, TopLogprobs
from kvprobe.api.figures import Figure
from kvprobe.api.metric import Metric
from kvprobe.api.prompt import RAW_FRAME, PromptFrame
from kvprobe.api.record import ItemRow, JsonObject, ProbeSection, Row, SummaryRow
from kvprobe.api.result import PromptRecord, ResultDoc
from kvprobe.api.scenario import Scenario
from kvprobe.api.schema_part import SchemaPart

if TYPE_CHECKING:
    import numpy as np
    from rich.console import RenderableType


class TextModel(Protocol):
    """What a probe may ask of the model: its tokenizer, both ways."""

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def piece(self, token: int) -> str: ...

    def tokenize_special(self, text: str) -> list[int]: ...

    @property
    def bos(self) -> int | None: ...


@dataclass(frozen=True)
class Budget:
    """What one probe adds to a run. The runner sizes every context from the budgets of the
    probes that run, and shows progress against the tokens they declare."""

    fork_cells: int = 0  # KV cells its forks need beyond the document at a checkpoint
    sequences: int = 0  # fork sequences it keeps alive at once
    tokens: int = 0  # tokens it evaluates per configuration (queries, generations)
    naive_tokens: int = 0  # what one prompt per cell would evaluate for the same numbers


@dataclass(frozen=True)
class Needs:
    """What a probe needs of a run, from the scenario alone, before any model is loaded: the
    pre-flight memory estimate and the runner both read it, so they cannot disagree."""

    fork_cells: int = 0  # at most the KV cells its forks take beyond the document
    logit_documents: int = 0  # the plan's first N documents have every position's logits read
    null_check: bool = False  # it measures --null-check (the reference against a second copy)
    # An engine without full logits (a llama-server) reads those documents' every top_stride-th
    # position's top top_n log-probs instead (kvprobe.api.engine.TopRequest).
    top_stride: int = 4
    top_n: int = 1000

    @property
    def reads_logits(self) -> bool:
        return self.logit_documents > 0


@dataclass(frozen=True)
class PositionEvidence:
    """Per configuration, a probe's per-position evidence for the verdict: the onset of a
    significant rise (a row with `ctx`), and the checkpoint spans whose metrics carry a value,
    a 95% interval and a count, each tested against its metric's margin as a bound."""

    onsets: Mapping[str, Row | None]
    spans: Mapping[str, list[Row]]
    # Per configuration, the per-position loss of `loss_metric` (KL) in blocks of consecutive
    # positions, as (first position, values), every document's: what the level and the growth
    # with context are measured from (kvprobe.stats.growth.position_trend).
    blocks: Mapping[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    loss_metric: str | None = None
    stride: int = 1  # a block's values are at positions start, start + stride, ... (sampled positions)


@dataclass(frozen=True)
class MatrixColumn:
    """A column of the many-runs table: the summary row of `metric` at each (run, config, ctx)."""

    header: str  # "accuracy"
    metric: str
    text: Callable[[SummaryRow], str]  # the cell from its summary row
    title: str  # what the table's title says of it: "accuracy (95% Wilson)"


@dataclass(frozen=True)
class RunSetup:
    """Everything a probe may read when a run starts."""

    model: TextModel
    scenario: Scenario
    ctx: int
    seed: int
    mode: str  # "onepass" | "classic"
    checkpoints: list[int]
    documents: list[Document]
    baseline: str | None
    null_check: bool
    prompt: PromptFrame = RAW_FRAME  # raw text, or the model's chat framing (kvprobe.plan.prompt)


class ProbeRun:
    """A probe's part of one run. The runner calls, for every document: `on_chunk` with each
    chunk's logits from every configuration (where the probe's `needs` says so; `on_top` with
    sampled positions' top n where the engine has no full logits), then at every
    checkpoint `at_checkpoint` once per configuration; after the last document, `finish`."""

    budget: Budget = Budget()
    label: str = ""  # what the progress line calls its work at a checkpoint ("needles")
    # Modes other than onepass: the number of prompts, each evaluated from an empty context,
    # and their lengths (the run's checkpoints).
    n_prompts: int = 0
    prompt_lengths: list[int] = []  # noqa: RUF012

    def on_chunk(self, document: Document, pos0: int, logits: Mapping[str, np.ndarray]) -> None:
        """Rows of logits for positions pos0, pos0 + 1, ... from every configuration (called for
        the documents its Needs.logit_documents names)."""

    def on_top(self, document: Document, by_config: Mapping[str, TopLogprobs]) -> None:
        """An engine without full logits: the sampled positions' top n of one fed segment from
        every configuration (called for the documents its Needs.logit_documents names)."""

    def at_checkpoint(self, context: Context, config: str, document: Document, length: int) -> list[ItemRow]:
        """Item rows for `config`, whose context holds `document` up to `length` tokens."""
        return []

    def run_prompt(
        self, index: int, contexts: Mapping[str, Context], progress: Callable[[int, str], None]
    ) -> list[ItemRow]:
        """Modes other than onepass: prompt `index` from an empty context, in every configuration."""
        raise NotImplementedError(f"{type(self).__name__} measures only in onepass mode")

    def end_unit(self) -> Any:
        """A unit of work (one document x checkpoint step) is finished: keep what was gathered
        during it, and return it as JSON-able data for the journal (None: nothing to keep)."""
        return None

    def replay_unit(self, data: Any) -> None:
        """Take back what `end_unit` returned for a unit a resumed run does not measure again
        (None where the journal holds nothing of this probe's for it)."""

    def finish(self, items: list[ItemRow]) -> None:
        """Once every configuration has run: fill what compares configurations with each other."""

    def text_items(self) -> list[ItemRow]:
        """Rows measured on the documents' own text (not on any configuration)."""
        return []

    def measured(self) -> Any:
        """In-memory data the statistics read more precisely than the file (None: none)."""
        return None

    def evidence(self) -> Mapping[str, list[Row]]:
        """Per test configuration, the position spans measured so far (as
        PositionEvidence.spans, one per checkpoint its data covers): what --until-decided tests
        after every unit, the same the summary computes at the end. Default: none."""
        return {}

    def section(self, errors: list[dict[str, str]]) -> ProbeSection | None:
        """The probe's own section of the result file, as measured (None: it has none). A
        statistic it computes while measuring is guarded into `errors` (kvprobe.infra.errors.guarded)."""
        return None


class Probe:
    """One probe. Subclasses set the class attributes and override what they take part in;
    every method has a default that takes part in nothing."""

    name: ClassVar[str]
    order: ClassVar[int] = 100  # where a built-in probe's rows and tables stand among the others
    by_default: ClassVar[bool] = False  # a scenario that names no probes runs those with this set
    sections: ClassVar[Mapping[str, type]] = {}  # scenario sections it owns: name -> dataclass
    modes: ClassVar[tuple[str, ...]] = ("onepass",)  # run modes it measures in
    has_section: ClassVar[bool] = False  # the result file has a top-level section named after it
    summary_label: ClassVar[str] = ""  # what a failed summary is called in statistics.errors
    # Its sections are hashed into every scenario's sha256 and its margins listed in every
    # verdict, run or not: only the probes that were so before others existed (every other
    # probe's only where it runs).
    hashed_always: ClassVar[bool] = False

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """Every metric this probe reports (kvprobe.api)."""
        return ()

    # scenario and request ------------------------------------------------------------------
    def validate(self, scenario: Scenario, source: str) -> None:
        """Check the values of its scenario sections (types are checked already)."""

    def check_run(
        self, scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool
    ) -> None:
        """Refuse a request it cannot measure, before any model is loaded."""

    def extra_document_tokens(self, scenario: Scenario) -> int:
        """Tokens every document carries past --ctx, never fed (e.g. the text's own continuation)."""
        return 0

    def inserts(
        self, tok: Tokenizer, scenario: Scenario, checkpoints: list[int], doc_index: int, seed: int
    ) -> list[Insert]:
        """Token spans to plant into document `doc_index` (e.g. needles)."""
        return []

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        """What it needs of the run's memory and feeding (Needs), from the scenario alone; its
        fork cells bound its Budget.fork_cells."""
        return Needs()

    def scenario_note(self, scenario: Scenario) -> str | None:
        """A few words on what this probe does in `scenario`, for `kvprobe scenarios`."""
        return None

    # running ---------------------------------------------------------------------------------
    def start(self, setup: RunSetup) -> ProbeRun:
        return ProbeRun()

    def check_unit_data(self, data: Any) -> str | None:
        """What is wrong with `data`, a journal's copy of what this probe's run returned from
        `end_unit`, in words; None if `replay_unit` can take it. A probe that keeps data per unit
        declares its shape here, next to the code that writes it."""
        return f"probe_data.{self.name}: this probe keeps nothing per unit"

    # statistics and output ---------------------------------------------------------------------
    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[SummaryRow]:
        """Summary rows from the result's items (and `measured`, the run's own data, if given)."""
        return []

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        """What the terminal report shows for this probe."""
        return []

    def figures(self, result: ResultDoc) -> list[Figure]:
        """What the HTML report and --png draw for this probe (kvprobe.views.figures data)."""
        return []

    def notes(self, result: ResultDoc) -> list[str]:
        """Plain-text paragraphs the HTML report shows under its figures."""
        return []

    def reference_check(
        self, items: list[ItemRow], baseline: str, prompt: PromptRecord | Mapping[str, Any], checkpoint: int
    ) -> str | None:
        """Why the reference itself cannot show what a cache costs, judged from its items at the
        shortest `checkpoint` (None: it can). `prompt`: the result's prompt section (empty: raw)."""
        return None

    def position_evidence(self, result: ResultDoc | JsonObject) -> PositionEvidence | None:
        """What it measured per position that the verdict tests (None: nothing)."""
        return None

    def verdict_part(
        self, items: Sequence[ItemRow], baseline: str, config: str, verdict: JsonObject, seed: int
    ) -> dict[str, object]:
        """Fields it adds to `config`'s verdict (ConfigVerdict's, or its own), from the items and the
        verdict so far, a plain document while it is built (its paired rows, onsets, equivalence). A
        probe adds the same keys whether or not it ran."""
        return {}

    def matrix_columns(self) -> list[MatrixColumn]:
        """Its columns in the table of many runs (`kvprobe report A.json B.json`)."""
        return []

    def sentence(
        self, result: ResultDoc | JsonObject, config: str, baseline: str, verdict: JsonObject
    ) -> str | None:
        """The verdict's sentence for `config` from this probe, if it has one (`verdict`: the
        configuration's, as built)."""
        return None

    def compare_rows(
        self,
        old: ResultDoc | JsonObject,
        new: ResultDoc | JsonObject,
        pairs: list[tuple[str, str]],
        paired: bool,
        seed: int,
    ) -> list[Row] | None:
        """Rows for `kvprobe compare`; None (the default): compare's own, one per per-item metric,
        configuration pair and checkpoint (kvprobe.stats.compare.item_rows)."""
        return None

    # the result file ------------------------------------------------------------------------
    def schema_part(self) -> SchemaPart | None:
        """Its part of the result file's schema: its item rows, summary rules, section, and
        their docs (kvprobe.result.schema assembles the whole). None: it adds none."""
        return None

    def ties(self, *, shown: bool) -> tuple[Callable[[ResultDoc], str | None], ...]:
        """Checks of how its parts of a schema-valid (typed) result refer to each other, which every
        reader relies on; with `shown` (the report's tables will show the file) also those its
        `tables` rely on. Each returns the first problem in words naming the JSON path, or None."""
        return ()

    def migrate(self, doc: JsonObject, read_version: int, errors: list[dict[str, str]]) -> None:
        """Bring its parts of a result written in schema `read_version` up to date, in place, on
        the document as read (before it is typed: kvprobe.result.migrations); a statistic it
        recomputes is guarded into `errors`."""


def run_needs(probes: Sequence[Probe], scenario: Scenario, mode: str) -> Needs:
    """What a run of `probes` needs, all together."""
    each = [p.needs(scenario, mode=mode) for p in probes]
    return Needs(
        fork_cells=max((n.fork_cells for n in each), default=0),
        logit_documents=max((n.logit_documents for n in each), default=0),
        null_check=any(n.null_check for n in each),
    )
