"""A run's progress on screen: rich's bar on a terminal; in a log (stdout not a terminal, as in
CI) a plain line about once a minute, since a bar is never drawn there. Both say what runs,
tokens done of the total, the time elapsed and the time left (kvprobe.run.pace); once a default
run has decided early (kvprobe.run.decided), they say so first, and that Ctrl-C keeps it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kvprobe.infra.display import plain
from kvprobe.run.pace import Pace, format_duration

PLAIN_EVERY_S = 60.0


class RunProgress:
    def __init__(
        self,
        console: Console,
        total_tokens: int,
        pace: Pace,
        units: Sequence[tuple[int, int, int]],
        *,
        interval: float = PLAIN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.console, self.total, self.pace = console, total_tokens, pace
        self.left = list(units)  # units not finished yet, in run order
        self.interval, self.clock = interval, clock
        self.started = self.last_line = clock()
        self.done_tokens, self.what = 0, "starting"
        self.decision: str | None = None  # "decided after 27 s: q4_0 worse from the start"
        self.estimated = False
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console, transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task("starting", total=max(1, total_tokens), eta="")

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)

    def eta(self) -> float | None:
        return self.pace.remaining(self.left)

    def advance(self, n_tokens: int, what: str) -> None:
        """The runner's progress callback: tokens just evaluated, and what is running."""
        self.done_tokens += max(0, n_tokens)
        self.what = what
        if self.bar is not None:
            self._draw(n_tokens)
        elif self.clock() - self.last_line >= self.interval:
            self.console.print(self.line(), markup=False, highlight=False)
            self.last_line = self.clock()

    def _draw(self, n_tokens: int = 0) -> None:
        """The bar: what runs (or the decision, once known) and the time left."""
        if self.bar is None:
            return
        left = self.eta()
        eta = f"about {format_duration(left)} left" if left is not None else ""
        if self.decision is None:
            self.bar.update(self.task, advance=n_tokens, description=plain(self.what), eta=eta)
            return
        tail = ", ".join(p for p in (eta, "Ctrl-C keeps the decision") if p)
        description = plain(f"{self.decision}; completing the curve")
        self.bar.update(self.task, advance=n_tokens, description=description, eta=tail)

    def decided(self, decision: str) -> None:
        """A default run decided early (`decision`: "decided after 27 s: q4_0 worse from the
        start"): said from now on, with the time left to complete the curve."""
        self.decision = decision
        self._draw()

    def completing(self) -> str:
        """The decision and what the run does now: "decided after 27 s: q4_0 worse from the
        start; completing the curve, about 9 min left, Ctrl-C keeps the decision"."""
        left = self.eta()
        eta = f", about {format_duration(left)} left" if left is not None else ""
        return f"{self.decision}; completing the curve{eta}, Ctrl-C keeps the decision"

    def line(self) -> str:
        left = self.eta()
        eta = f", about {format_duration(left)} left" if left is not None else ""
        elapsed = format_duration(self.clock() - self.started)
        if self.decision is not None:  # said once above, when it was made: not again in each line
            return (
                f"progress: completing the curve after the decision{eta}, Ctrl-C keeps the decision "
                f"({self.what}: {self.done_tokens:,} of about {self.total:,} tokens, {elapsed} elapsed)"
            )
        done = f"{self.done_tokens:,} of about {self.total:,} tokens"
        return f"progress: {self.what}: {done}, {elapsed} elapsed{eta}"

    def drop(self, group: int, step: int, before: int, *, skip_from: int) -> None:
        """--until-decided stopped one configuration of `group` at steps step .. before - 1:
        the ETA counts one context fewer there, and no unit from `skip_from` on (nothing left
        to measure in them)."""
        self.pace.drop(group, step, before)
        self.left = [k for k in self.left if k[2] != group or k[1] < skip_from]

    def unit_done(
        self, key: tuple[int, int, int], seconds: float, *, feed_s: float = 0.0, reduce_s: float = 0.0,
        restored: bool = False,
    ) -> None:  # fmt: skip
        """A unit (doc, step, group) finished (or was restored from a journal): learn its time;
        after the first measured one, say how long the whole run will take."""
        if key in self.left:
            self.left.remove(key)
        if restored:
            return
        self.pace.observe(key[0], key[1], seconds, feed_s, reduce_s, group=key[2])
        if not self.estimated:
            self.estimated = True
            left = self.eta()
            if left is not None:
                total = self.clock() - self.started + left
                self.console.print(
                    f"estimated run time: about {format_duration(total)} ({len(self.left)} more "
                    f"unit{'' if len(self.left) == 1 else 's'} at the speed of the first)",
                    markup=False,
                    highlight=False,
                )
