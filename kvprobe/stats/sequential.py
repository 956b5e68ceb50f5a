"""Group-sequential looks for `--until-decided`: Lan–DeMets alpha spending over the documents
of a run, so that testing after every document keeps each one-sided error at its α.

A checkpoint's paired items arrive document by document: after document j (0-based) of K the
information fraction is (j + 1) / K. A one-sided test that looks at every fraction and stops at
the first crossing rejects a true null far more often than its α (four looks at a fixed 2.5%
reject in about 6% of runs). Alpha spending (Lan and DeMets 1983) allots α(t) in all up to
fraction t; the boundary of each look is the z that spends exactly the increment, given the
earlier looks (the recursion of Armitage, McPherson and Rowe on the score process, whose
increments are independent normals). The TOST at look j then reads the interval at the
boundary's nominal level instead of the fixed 95%: under O'Brien–Fleming spending early
looks are strict (z 4.33 at the first of four), the last nearly the fixed test's (2.01).

Pure functions of plain numbers; SciPy underneath. benchmarks/sequential_calibration.py shows
the error rates by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from kvprobe.api import ALPHA
from kvprobe.api.verdict import UntilDecided
from kvprobe.stats.parts import UntilDecidedDoc

OBRIEN_FLEMING, POCOCK = "obrien-fleming", "pocock"
SPENDING = (OBRIEN_FLEMING, POCOCK)
METHOD = "Lan–DeMets alpha spending"
SIDE_ALPHA = ALPHA / 2  # each one-sided test of the TOST (the 95% interval's 2.5% per side)
_GRID = 1201  # points of the score density between looks: boundaries exact to about 1e-4


def spent(t: float, alpha: float = SIDE_ALPHA, kind: str = OBRIEN_FLEMING) -> float:
    """α spent up to information fraction t (0..1): O'Brien–Fleming-type 2 − 2Φ(z_{α/2} / √t),
    or Pocock-type α·ln(1 + (e − 1)t)."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if kind == OBRIEN_FLEMING:
        return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))
    if kind == POCOCK:
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {kind!r}; choose one of {', '.join(SPENDING)}")


def _crossing(bound: float, sd: float, grid: np.ndarray | None, density: np.ndarray | None) -> float:
    """Probability of a first crossing of `bound` (on the score scale) at the next look: from
    the paths not yet stopped (`density` on `grid`; None at the first look: from 0), one
    independent normal step of standard deviation `sd`."""
    if grid is None or density is None:
        return float(stats.norm.sf(bound / sd))
    return float(np.trapezoid(density * stats.norm.sf((bound - grid) / sd), grid))


@lru_cache(maxsize=64)
def boundaries(
    fractions: tuple[float, ...], alpha: float = SIDE_ALPHA, kind: str = OBRIEN_FLEMING
) -> list[float]:
    """One-sided z boundaries at increasing information fractions: the probability of a first
    crossing at look k under the null is spent(t_k) − spent(t_(k−1)). A look that spends
    nothing (a repeated fraction) gets an infinite boundary."""
    out: list[float] = []
    grid: np.ndarray | None = None  # score values S = Z·√t of the paths not yet stopped
    density: np.ndarray | None = None  # their (sub-)density
    t_prev, spent_prev = 0.0, 0.0
    for t in fractions:
        target = spent(t, alpha, kind) - spent_prev
        dt = t - t_prev
        if target <= 1e-12 or dt <= 0:
            out.append(math.inf)
            continue
        sd = math.sqrt(dt)
        bound = optimize.brentq(
            lambda b, sd=sd, g=grid, f=density, want=target: _crossing(b, sd, g, f) - want, -20.0, 40.0,
            xtol=1e-10,
        )  # fmt: skip
        new_grid = np.linspace(-10.0 * math.sqrt(t), bound, _GRID)
        if grid is None or density is None:
            new_density = stats.norm.pdf(new_grid, scale=sd)
        else:
            kernel = stats.norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd
            new_density = np.trapezoid(kernel * density[None, :], grid, axis=1)
        grid, density = new_grid, new_density
        out.append(bound / math.sqrt(t))
        t_prev, spent_prev = t, spent_prev + target
    return out


@dataclass(frozen=True)
class Design:
    """The looks of a run with --until-decided: one after every document, K in all; position
    evidence (per-position KL) counts from the look where every document it reads has passed
    the checkpoint (`evidence_look`), as one test at the fixed level, since it never grows
    after that."""

    looks: int
    spending: str = OBRIEN_FLEMING
    alpha: float = SIDE_ALPHA
    evidence_look: int = 0

    def z(self, look: int) -> float:
        """The boundary at look `look` (0-based)."""
        fractions = tuple((j + 1) / self.looks for j in range(self.looks))
        return boundaries(fractions, self.alpha, self.spending)[min(look, self.looks - 1)]

    def level(self, look: int) -> float:
        """The two-sided confidence of the interval the TOST reads at this look (0.95 at a
        fixed design's only look)."""
        return 1.0 - 2.0 * float(stats.norm.sf(self.z(look)))

    def to_json(self) -> UntilDecidedDoc:
        return {
            "method": METHOD,
            "spending": self.spending,
            "alpha_per_side": self.alpha,
            "looks": self.looks,
            "evidence_look": self.evidence_look,
            "z": [round(self.z(j), 4) for j in range(self.looks)],
        }

    @classmethod
    def from_json(cls, data: UntilDecided | UntilDecidedDoc) -> Design:
        return cls(
            looks=int(data["looks"]),
            spending=str(data.get("spending", OBRIEN_FLEMING)),
            alpha=float(data.get("alpha_per_side", SIDE_ALPHA)),
            evidence_look=int(data.get("evidence_look", 0)),
        )


def first_crossing(statuses: Sequence[str], undecided: str) -> int | None:
    """The index of the first status that is not `undecided` (the look that decided)."""
    return next((j for j, s in enumerate(statuses) if s != undecided), None)
