"""`--until-decided` while a run goes: after every unit, each test configuration's checkpoints
tested look by look (kvprobe.stats.verdict.sequential_tests: alpha spending over the
documents), on the items and position evidence measured so far. A configuration decided worse
at checkpoint L has no effective context from L on: it is measured no more at L or longer.
One whose every checkpoint below that is decided (equivalent) is measured no more at all. The
runner asks `active(config, step)` before each unit; the reference runs while any test
configuration does. The decisions are pure functions of the items, so a resumed run makes
them again at the same units, and `kvprobe report` finds them in the file.

A default run watches with the same rule (`watch`): the same looks, margins and error rates
after every unit, each configuration's first full decision recorded, but nothing stopped; once
every configuration is decided, `on_decided` hears it (kvprobe.run.decided prints the decision
then, and the run completes the curve)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvprobe.api import Row
from kvprobe.stats.analysis import paired_rows
from kvprobe.stats.equivalence import EQUIVALENT, UNDECIDED, WORSE
from kvprobe.stats.sequential import Design
from kvprobe.stats.verdict import combine, loss_onsets, sequential_tests


@dataclass
class Stopped:
    """What was decided for one configuration, when: measured no more from step `step` on."""

    config: str
    status: str  # "worse" (at `ctx`) | "equivalent" (every checkpoint)
    ctx: int  # the checkpoint decided worse; for equivalent, the longest
    step: int  # checkpoints step the configuration is measured below (0: not at all)
    look: int  # documents finished when it was decided (1-based)
    doc: int
    saved_s: float | None = None  # the remaining decode it saves, as the pace predicts

    def to_json(self) -> dict[str, Any]:
        out = {"status": self.status, "ctx": self.ctx, "measured_steps": self.step, "look": self.look}
        if self.saved_s is not None:
            out["saved_s"] = round(self.saved_s, 1)
        return out


@dataclass
class UntilDecided:
    """The run-time side of --until-decided for the test configurations `configs`."""

    design: Design
    baseline: str
    configs: Sequence[str]
    checkpoints: Sequence[int]
    margin: Mapping[str, float]
    seed: int
    on_stop: Callable[[Stopped, int], None] | None = None  # (what, the step it was measured below before)
    # Watching (a default run): `limits` are what --until-decided would measure, yet every
    # configuration is measured at every step; `on_decided` hears when every one is decided.
    watch: bool = False
    on_decided: Callable[[], None] | None = None
    limits: dict[str, int] = field(default_factory=dict)  # config -> steps still measured
    stopped: dict[str, Stopped] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limits = {c: len(self.checkpoints) for c in self.configs}

    def active(self, config: str, step: int) -> bool:
        """Whether `config` is measured at checkpoint step `step` (configurations this rule
        does not know, the reference and the null check, always are; watching, all are)."""
        return self.watch or step < self.limits.get(config, len(self.checkpoints))

    def live(self, configs: Sequence[str], step: int) -> list[str]:
        """The test configurations among `configs` still measured at `step`."""
        return [c for c in configs if c in self.limits and self.active(c, step)]

    def statuses(self, items: Sequence[Row], evidence: Mapping[str, list[Row]], config: str) -> list[str]:
        """Per checkpoint, its group-sequential status so far."""
        tests, _ = sequential_tests(
            items, self.baseline, config, evidence.get(config, []), self.margin, design=self.design,
            seed=self.seed,
        )  # fmt: skip
        return [combine(tests[c])[0] if c in tests else UNDECIDED for c in self.checkpoints]

    def after_unit(self, doc: int, items: Sequence[Row], evidence: Mapping[str, list[Row]]) -> list[Stopped]:
        """Test every configuration still measured; lower the limits of those decided."""
        newly: list[Stopped] = []
        for config, limit in self.limits.items():
            if limit == 0:
                continue
            statuses = self.statuses(items, evidence, config)
            worse = next((i for i, s in enumerate(statuses) if s == WORSE), None)
            bound = len(statuses) if worse is None else worse
            settled = all(s == EQUIVALENT for s in statuses[:bound])
            if settled and worse is None and self.significant_loss(items, config):
                settled = False  # equivalent within the margins, yet a loss: the verdict waits, so do we
            new = 0 if settled else bound
            if new >= limit:
                continue
            self.limits[config] = new
            stop = Stopped(
                config,
                WORSE if worse is not None else EQUIVALENT,
                self.checkpoints[worse if worse is not None else -1],
                new,
                doc + 1,
                doc,
            )
            self.stopped[config] = stop
            newly.append(stop)
            if self.on_stop is not None:
                self.on_stop(stop, limit)
        if newly and self.all_decided and self.on_decided is not None:
            self.on_decided()  # the first time: once all are decided no limit moves again
        return newly

    def significant_loss(self, items: Sequence[Row], config: str) -> bool:
        """Whether the verdict would see a significant loss (its onsets), which keeps an
        otherwise equivalent configuration from an effective context."""
        onsets = loss_onsets(paired_rows(items, self.baseline, config, self.seed))
        return any(o is not None for o in onsets.values())

    @property
    def all_decided(self) -> bool:
        return all(limit == 0 for limit in self.limits.values())

    def to_json(self) -> dict[str, Any]:
        """The result's `run.until_decided`: the design and what was stopped (watching: nothing
        was; the decisions are the run's `decided`)."""
        stopped = {} if self.watch else {c: s.to_json() for c, s in self.stopped.items()}
        return self.design.to_json() | {"stopped": stopped}
