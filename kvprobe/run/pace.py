"""How long a run will take, from how long its finished units took: the ETA, the estimate said
up front, and the time budget's "does the next unit still fit". Pure arithmetic on timings.

Units at the same checkpoint step do the same work in every document (same segment, same
number of queries and continuations), except that documents whose logits are scored (the
divergence probe's) compute and reduce every position's logits. So a step seen once predicts
itself in documents of its kind; the other kind is converted by the model's shape, and a step
not seen yet is extrapolated from the last one seen: feeding by its tokens weighted with depth
(attention grows with it), the probes by the depth of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class UnitTime:
    seconds: float
    feed_s: float = 0.0  # feeding the document
    reduce_s: float = 0.0  # reducing every position's logits (scored documents only)

    @property
    def probes_s(self) -> float:
        """The rest: the probes' queries and continuations at the checkpoint."""
        return max(0.0, self.seconds - self.feed_s - self.reduce_s)


def _mean(times: list[UnitTime]) -> UnitTime:
    n = len(times)
    return UnitTime(sum(t.seconds for t in times) / n, sum(t.feed_s for t in times) / n,
                    sum(t.reduce_s for t in times) / n)  # fmt: skip


class Pace:
    """Unit times seen so far, and predictions for the rest.

    A document is "scored" when a probe reads every position's logits: feeding it computes the
    output layer for every position (in its contexts and the null check's) and the probe
    reduces them. `unscored_feed` is what feeding an unscored document costs relative to a
    scored one (fewer contexts, no output layer except at the end), from the model's shape."""

    def __init__(
        self,
        steps: Sequence[StepShape],
        scored_docs: set[int],
        unscored_feed: float = 1.0,
        group_sizes: Sequence[int] = (1,),
    ):
        """`group_sizes`: the contexts of each configuration group (a run in groups); a unit's
        time is taken as proportional to them."""
        self.steps = list(steps)
        self.scored_docs = scored_docs
        self.unscored_feed = unscored_feed
        self.group_sizes = list(group_sizes)
        self.seen: dict[tuple[int, bool], list[UnitTime]] = {}  # (step, scored) -> times per context
        self.dropped: list[tuple[int, int, int]] = []  # (group, from step, to step): a context fewer

    def drop(self, group: int, step: int, before: int) -> None:
        """One context of `group` is fed no more at steps step .. before - 1 (--until-decided)."""
        self.dropped.append((group, step, before))

    def contexts(self, group: int, step: int) -> int:
        """Contexts fed at this step of a unit of `group`."""
        fewer = sum(1 for g, lo, hi in self.dropped if g == group and lo <= step < hi)
        return max(1, self.group_sizes[group] - fewer)

    def observe(
        self,
        doc: int,
        step: int,
        seconds: float,
        feed_s: float = 0.0,
        reduce_s: float = 0.0,
        *,
        group: int = 0,
    ) -> None:
        n = self.contexts(group, step)
        self.seen.setdefault((step, doc in self.scored_docs), []).append(
            UnitTime(seconds / n, feed_s / n, reduce_s / n)
        )

    def _reference(self, step: int, scored: bool) -> tuple[int, bool] | None:
        """The seen (step, kind) to scale from: this step of the other kind, else the nearest
        step below (this kind first), else any."""
        if (step, not scored) in self.seen:
            return (step, not scored)
        below = sorted((s, k) for (s, k) in self.seen if s < step)
        if below:
            best = max(s for s, _ in below)
            return (best, scored) if (best, scored) in self.seen else (best, not scored)
        return min(self.seen, key=lambda sk: (sk[0], sk[1] != scored), default=None)

    def predict(self, doc: int, step: int, group: int = 0) -> float | None:
        """Seconds for unit (doc, step, group); None before any unit has been seen."""
        per_context = self._predict(doc, step)
        return per_context * self.contexts(group, step) if per_context is not None else None

    def _predict(self, doc: int, step: int) -> float | None:
        scored = doc in self.scored_docs
        if (step, scored) in self.seen:
            return _mean(self.seen[(step, scored)]).seconds
        ref = self._reference(step, scored)
        if ref is None or step >= len(self.steps):
            return None
        t = _mean(self.seen[ref])
        here, there = self.steps[step], self.steps[ref[0]]
        feed = t.feed_s * here.work / there.work
        reduce = t.reduce_s * (here.end - here.start) / max(1, there.end - there.start)
        probes = t.probes_s * (1 + here.end / DEPTH_SCALE) / (1 + there.end / DEPTH_SCALE)
        if ref[1] and not scored:
            feed, reduce = feed * self.unscored_feed, 0.0
        elif scored and not ref[1]:
            feed = feed / self.unscored_feed
            reduce = self._reduce_per_token() * (here.end - here.start)
        return feed + reduce + probes

    def _reduce_per_token(self) -> float:
        scored = [(t.reduce_s, self.steps[s].end - self.steps[s].start) for (s, k), ts in self.seen.items()
                  if k for t in ts]  # fmt: skip
        return sum(r for r, _ in scored) / max(1, sum(n for _, n in scored))

    def remaining(self, units: Sequence[tuple[int, ...]]) -> float | None:
        """Seconds for all of `units` ((doc, step, ...)); None before anything has been seen."""
        total = 0.0
        for doc, step, *group in units:
            t = self.predict(doc, step, group[0] if group else 0)
            if t is None:
                return None
            total += t
        return total


def unscored_feed_cost(facts: dict[str, Any], contexts: int, scored_contexts: int) -> float:
    """Feeding an unscored document relative to a scored one: per token the model's body
    without the output layer (2 x (parameters - n_vocab x n_embd) FLOPs against 2 x n_vocab x
    n_embd for the logits of every position), in `contexts` instead of `scored_contexts`."""
    output = int(facts.get("n_vocab") or 0) * int(facts.get("n_embd") or 0)
    tied = facts.get("output_type") is None  # the output layer is the embedding, counted once
    body = max(
        1, int(facts.get("n_params") or 0) - output if tied else int(facts.get("n_params") or 0) - 2 * output
    )
    return contexts / max(1, scored_contexts) * body / (body + output)


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
