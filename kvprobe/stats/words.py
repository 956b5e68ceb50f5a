"""Statistics in words: tests, differences and item counts as the verdict and the decision
write them. Metric names and units come from the metrics' own declarations (kvprobe.api)."""

from __future__ import annotations

from kvprobe.api import metric_table
from kvprobe.api.record import JsonObject
from kvprobe.stats.equivalence import EQUIVALENT, MAX_ITEMS, WORSE
from kvprobe.stats.parts import DifferenceDoc, HalfEvidenceDoc


def metric_words(name: str) -> tuple[str, str]:
    """A metric's name and unit in sentences ("mean KL", " nats"); unknown: its own name."""
    found = next((m for m in metric_table() if m.name == name), None)
    return (found.words, found.unit) if found is not None else (name, "")


def fmt_p(p: float) -> str:
    return f"{p:.2g}"


def diff_text(r: DifferenceDoc | HalfEvidenceDoc, unit: str = "") -> str:
    """A difference with its interval: "-0.20 [-0.33, -0.07]"."""
    return f"{r['diff']:+.2f}{unit} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]"


def tost_text(t: JsonObject) -> str:  # Tost.to_json's, a plain dict (dataclasses.asdict)
    """One test in words: "answer log-prob +0.07 [95%: +0.03, +0.11] within ±0.25 nats"."""
    name, unit = metric_words(t["metric"])
    if t.get("scope"):
        name = f"{name} ({t['scope']})"
    lo, hi = t["ci"]
    if t["kind"] == "bound":
        where = {EQUIVALENT: "below", WORSE: "above"}.get(t["status"], "against")
        if hi is None:
            ends = f"[95%: at least {lo:.3g}]" if lo is not None else "[95%: too few positions to bound]"
        else:
            ends = f"[95%: {lo:.3g}, {hi:.3g}]"
        return f"{name} {t['value']:.3g} {ends} {where} the {t['margin']:g}{unit} bound"
    where = {EQUIVALENT: "within", WORSE: "beyond"}.get(t["status"], "undecided against")
    ends = (
        f"[95%: {lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else f"[too few items: {t['n']}]"
    )
    return f"{name} {t['value']:+.2f} {ends} {where} ±{t['margin']:g}{unit}"


def items_text(n: int) -> str:
    return f"more than {MAX_ITEMS:,} items" if n >= MAX_ITEMS else f"about {n:,} items"
