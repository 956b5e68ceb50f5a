"""How long a run will take, from how long its finished units took: the ETA, the estimate said
up front, and the time budget's "does the next unit still fit". Pure arithmetic on timings.

Units at the same checkpoint step do the same work in every document (same segment, same
number of queries and continuations), except that documents whose logits are scored (the
divergence probe's) also reduce every position's logits. So a step seen once predicts itself;
a step not seen yet is extrapolated from the last one seen, by its document tokens weighted with
depth (attention grows with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEPTH_SCALE = 4096  # a token at depth p costs about (1 + p / DEPTH_SCALE) times one at depth 0


@dataclass(frozen=True)
class StepShape:
    """What one checkpoint step feeds: document tokens [start, end)."""

    start: int
    end: int

    @property
    def work(self) -> float:
        """Depth-weighted tokens: sum over p in [start, end) of 1 + p / DEPTH_SCALE."""
        n = self.end - self.start
        return n * (1 + (self.start + self.end - 1) / 2 / DEPTH_SCALE)


class Pace:
    """Unit times seen so far, and predictions for the rest."""

    def __init__(self, steps: Sequence[StepShape], scored_docs: set[int]):
        self.steps = list(steps)
        self.scored_docs = scored_docs
        self.seen: dict[tuple[int, bool], list[float]] = {}  # (step, scored) -> seconds

    def observe(self, doc: int, step: int, seconds: float) -> None:
        self.seen.setdefault((step, doc in self.scored_docs), []).append(seconds)

    def predict(self, doc: int, step: int) -> float | None:
        """Seconds for unit (doc, step); None before any unit has been seen."""
        scored = doc in self.scored_docs
        for key in ((step, scored), (step, not scored)):
            if key in self.seen:
                times = self.seen[key]
                return sum(times) / len(times)
        known = [s for (s, _) in self.seen if s < step] or [s for (s, _) in self.seen]
        if not known or step >= len(self.steps):
            return None
        base = max(known)
        ref = self.seen.get((base, scored)) or self.seen[(base, not scored)]
        return sum(ref) / len(ref) * self.steps[step].work / self.steps[base].work

    def remaining(self, units: Sequence[tuple[int, int]]) -> float | None:
        """Seconds for all of `units`; None before anything has been seen."""
        total = 0.0
        for doc, step in units:
            t = self.predict(doc, step)
            if t is None:
                return None
            total += t
        return total


def format_duration(seconds: float) -> str:
    """'45 s', '3.5 min', '12 min', '2 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
