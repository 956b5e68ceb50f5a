"""The decision the moment it is known: a default run (onepass, a reference, test configurations,
not --until-decided) watches with --until-decided's group-sequential rule (the same design,
margins and error rates: kvprobe.run.until_decided, `watch`), which stops nothing. The first
time every test configuration is decided, the run writes a partial result whose verdict is the
group-sequential one (`run.until_decided`: the design; kvprobe.stats.verdict.sequential_tests
keeps each checkpoint's decision at its first deciding look), prints its Recommendation and one
line, and goes on measuring the rest of the curve; the progress display says so from then on.
Ctrl-C after that point keeps the decision (kvprobe.run.execute.finish_run); the complete
result is the fixed-sample one, with `run.decided` saying when and how it was decided."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvprobe.api import margins
from kvprobe.api.cache_types import ConfigId
from kvprobe.api.engine import Model
from kvprobe.api.result import Decided, ResultDoc
from kvprobe.infra.errors import guarded
from kvprobe.result.records import RunOutcome
from kvprobe.run.progress import RunProgress
from kvprobe.run.request import RunRequest
from kvprobe.run.runner import Runner
from kvprobe.run.until_decided import Stopped, UntilDecided
from kvprobe.stats.sequential import Design
from kvprobe.views.decision import print_decision_lines

DECIDED_EARLY = "decided early"  # the partial result's `stopped`: written while the run measures on


def config_ids(request: RunRequest, models: dict[str, Model] | None) -> list[str]:
    """Every configuration's id in run order (the reference first), with its weights' label in
    the weights-vs-KV design."""
    if models:
        return [str(ConfigId.of(c, label)) for label in models for c in request.configs]
    return [str(ConfigId.of(c)) for c in request.configs]


def decision_rule(
    runner: Runner,
    request: RunRequest,
    baseline: str,
    models: dict[str, Model] | None,
    *,
    watch: bool = False,
) -> UntilDecided:
    """--until-decided's rule for this run: looks after each of the plan's documents, position
    evidence from the look where every scored document has passed, the probes' margins (and
    --margin's); `watch`: the same decisions, nothing stopped."""
    scored = max((n.logit_documents for n in runner.needs.values()), default=0)
    looks = max(1, len(runner.documents))
    design = Design(looks=looks, evidence_look=min(max(scored, 1), looks) - 1)
    used = dict(margins(request.scenario.probes)) | dict(request.margins)
    tested = [c for c in config_ids(request, models) if c != baseline]
    seed = request.settings.seed
    return UntilDecided(design, baseline, tested, runner.checkpoints, used, seed, watch=watch)


@dataclass
class EarlyDecision:
    """When and how every test configuration was decided, and what was printed then."""

    after_s: float  # from the command's start
    look: int  # documents reached (the look of the last decision, 1-based)
    units: int  # units finished then
    configs: dict[str, Stopped]
    until_decided: dict[str, Any]  # the design: a partial result's verdict reads it
    recommendation: str | None = None  # the configuration the printed Recommendation named
    words: str = ""  # "q4_0 worse from the start", from the partial result's verdict
    printed: list[str] = field(default_factory=list)  # the decision's entries printed then (not again)

    def to_json(self) -> dict[str, Any]:
        """The result's `run.decided`."""
        out: dict[str, Any] = {
            "after_s": round(self.after_s, 1),
            "look": self.look,
            "units": self.units,
            "configs": {c: {"status": s.status, "ctx": s.ctx} for c, s in self.configs.items()},
        }
        if self.recommendation is not None:
            out["recommendation"] = self.recommendation
        return out

    def learn(self, result: ResultDoc) -> None:
        """Take the recommendation and the words from a result with its verdict, and record them
        in its `run.decided`."""
        if self.recommendation is None:  # the one printed at the decision stays on record
            self.recommendation = recommended(result)
        if not self.words:  # so do its words: a later result's would say what was never printed
            self.words = decision_words(result, self.configs)
        result.run.decided = Decided.model_validate(self.to_json())

    @property
    def line(self) -> str:
        """`decided after 27 s: q4_0 worse from the start` (seconds since the command started)."""
        words = self.words or ", ".join(f"{c} {s.status}" for c, s in self.configs.items())
        return f"decided after {self.after_s:.0f} s: {words}"


def recommended(result: ResultDoc) -> str | None:
    """The configuration the result's Recommendation names (None: it has none)."""
    rec = (result.get("verdict") or {}).get("recommendation")
    return str(rec["config"]) if rec else None


def decision_words(result: ResultDoc, stops: Mapping[str, Stopped]) -> str:
    """Per configuration, what its verdict says in a short phrase ("q4_0 worse from the start"):
    the shape of its loss where the verdict has one, else its equivalence status, else (no
    verdict) the decision's."""
    found = (result.get("verdict") or {}).get("configs") or {}
    parts = []
    for config, stop in stops.items():
        verdict = found.get(config) or {}
        short = (verdict.get("shape") or {}).get("short") or (verdict.get("equivalence") or {}).get("status")
        parts.append(f"{config} {short or stop.status}")
    return ", ".join(parts)


# A partial result assembled and written, with its statistics (kvprobe.run.execute.write_partial).
Write = Callable[[RunOutcome, EarlyDecision], ResultDoc]


@dataclass
class Watch:
    """The watching rule's `on_decided`: the first time every test configuration is decided,
    record when; where units are left, write the partial result, print its Recommendation and
    the decision's line, and have the progress display say it from then on."""

    runner: Runner
    rule: UntilDecided
    shown: RunProgress
    command_start: float  # time.monotonic() when the command started
    write: Write
    out_path: Path
    decision: EarlyDecision | None = field(default=None, init=False)

    def __call__(self) -> None:
        stops = dict(self.rule.stopped)
        look = max(s.look for s in stops.values())
        after = time.monotonic() - self.command_start
        units = len(self.runner.units)
        self.decision = decision = EarlyDecision(after, look, units, stops, self.rule.to_json())
        if not self.shown.left:
            return  # decided at the last unit: the complete result follows at once
        problems: list[dict[str, str]] = []
        # Saying the decision early must not end a run that would finish: a failure is one line.
        guarded(problems, "early decision", lambda: self.announce(decision))
        if problems:
            self.shown.console.print(
                f"{decision.line}: the partial result could not be written or shown "
                f"({problems[0]['error']}); the run goes on",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def announce(self, decision: EarlyDecision) -> None:
        """The partial result written, its Recommendation printed, the decision said."""
        outcome = replace(self.runner.snapshot(), stopped=DECIDED_EARLY, until_decided=decision.until_decided)
        result = self.write(outcome, decision)
        console = self.shown.console
        decision.printed = print_decision_lines(result, console)  # the table comes with the report
        self.shown.decided(decision.line)
        going_on = self.shown.completing().removeprefix(f"{decision.line}; ")
        # Two lines, each broken between words only: a terminal of 80 columns reads them whole.
        for said in (decision.line, f"{going_on} (partial result: {self.out_path})"):
            wrapped = textwrap.wrap(
                said, console.width - 1, subsequent_indent="  ",
                break_long_words=False, break_on_hyphens=False,
            )  # fmt: skip
            for line in wrapped:
                console.print(line, markup=False, highlight=False, soft_wrap=True)


def watching(
    runner: Runner,
    request: RunRequest,
    baseline: str | None,
    models: dict[str, Model] | None,
    *,
    shown: RunProgress,
    command_start: float,
    write: Write,
) -> Watch | None:
    """A default run's watch, where one applies: onepass, a reference, a test configuration,
    not --until-decided (which stops at the decision instead)."""
    if request.until_decided or baseline is None or request.settings.mode != "onepass":
        return None
    rule = decision_rule(runner, request, baseline, models, watch=True)
    if not rule.configs:
        return None
    watch = Watch(runner, rule, shown, command_start, write, request.out_path)
    rule.on_decided = watch
    return watch


def differs_line(
    decision: EarlyDecision | None, result: ResultDoc, *, scope: str = "with the whole curve"
) -> str | None:
    """One line where the result's Recommendation (the complete run's, or `scope` another's)
    names another configuration than the one printed at the early decision (None: the same,
    or none was printed)."""
    if decision is None or decision.recommendation is None:
        return None
    final = recommended(result)
    if final == decision.recommendation:
        return None
    return (
        f"note: {scope} the Recommendation is {final or 'none'}, not the "
        f"{decision.recommendation} printed when the run decided early ({decision.line})"
    )


def kept_line(decision: EarlyDecision, result: ResultDoc, out_path: Path, journal: Path) -> str:
    """Ctrl-C after the decision: the line that ends the run."""
    missing: Sequence[Any] = result.get("missing") or []
    units = f"{len(missing)} unit{'' if len(missing) == 1 else 's'}"
    return (
        f"interrupted after the decision; {out_path} keeps it ({decision.line}) with the curve measured "
        f"so far (complete: false, {units} missing); complete the curve with `kvprobe run --resume {journal}`"
    )
