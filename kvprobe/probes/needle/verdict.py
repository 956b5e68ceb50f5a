"""The needle probe's part of the verdict: the share of the reference's accuracy a
configuration keeps (secondary to equivalence), the length at which its accuracy halves, and its
sentence. Pure functions of items and the verdict's paired rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvprobe.api import by_name
from kvprobe.stats.analysis import EFFECTIVE_THRESHOLD, effective_context, halving_interval, paired_values
from kvprobe.stats.shape import trend_text

NEEDLE_METRICS = ("answer_logprob", "accuracy")  # the finer first


def accuracy_share_context(
    items: Sequence[dict[str, Any]],
    baseline: str,
    config: str,
    *,
    seed: int,
    threshold: float = EFFECTIVE_THRESHOLD,
    n_boot: int = 400,
) -> dict[str, Any] | None:
    """The longest checkpoint up to which the configuration keeps >= threshold of the
    reference's needle accuracy (point estimate), with a percentile-bootstrap 95% interval
    resampling the paired items within each checkpoint. 0 stands for "below the first"."""
    values = paired_values(items, by_name("accuracy"), baseline, config)
    if not values:
        return None
    arrays = {ctx: (np.asarray(t), np.asarray(b)) for ctx, (t, b) in values.items()}

    def point(chosen: dict[int, np.ndarray] | None) -> int:
        test, base = {}, {}
        for ctx, (t, b) in arrays.items():
            idx = chosen[ctx] if chosen is not None else np.arange(len(t))
            test[ctx], base[ctx] = float(t[idx].mean()), float(b[idx].mean())
        return effective_context(test, base, threshold) or 0

    rng = np.random.default_rng(seed)
    boots = sorted(
        point({ctx: rng.integers(0, len(t), len(t)) for ctx, (t, _) in arrays.items()}) for _ in range(n_boot)
    )
    lo, hi = boots[math.floor(0.025 * (n_boot - 1))], boots[math.ceil(0.975 * (n_boot - 1))]
    return {"threshold": threshold, "ctx": point(None), "ci": [lo, hi], "first": min(arrays)}


def verdict_part(
    items: Sequence[dict[str, Any]], baseline: str, config: str, verdict: dict[str, Any], seed: int
) -> dict[str, Any]:
    """`accuracy_share` and `halving` of `config` (both None without needle items)."""
    acc = [r for r in verdict["paired"] if r["metric"] == "accuracy"]
    if not acc:
        return {"accuracy_share": None, "halving": None}
    share = accuracy_share_context(items, baseline, config, seed=seed)
    reference = acc[0]["baseline_value"]
    if verdict["onset_accuracy"] is None:  # no measured loss: a fitted collapse would be extrapolation
        halving: dict[str, Any] = {
            "length": None,
            "ci": None,
            "reference_accuracy": reference,
            "not_estimable": "accuracy does not fall significantly: nothing to fit a decay to",
        }
        return {"accuracy_share": share, "halving": halving}
    mine = [it for it in items if it["probe"] == "needle" and it["config"] == config]
    fit = halving_interval([it["ctx"] for it in mine], [float(it["correct"]) for it in mine], reference, seed)
    halving = {
        "length": fit.length,
        "ci": fit.ci,
        "reference_accuracy": reference,
        "not_estimable": fit.reason,
    }
    return {"accuracy_share": share, "halving": halving}


def needle_sentence(v: dict[str, Any], baseline: str, config: str) -> str | None:
    """The needle probe's detail for one configuration, in the shape's words (kvprobe.stats.shape):
    accuracy at the longest checkpoint, then each needle metric's level at the shortest and its
    change per doubling of context."""
    acc = [r for r in v["paired"] if r["metric"] == "accuracy"]
    if not acc:
        return None
    last = acc[-1]
    head = (
        f"Needles: accuracy {last['test_value']:.2f} against {baseline}'s {last['baseline_value']:.2f} at "
        f"{last['ctx']:,} tokens"
    )
    trends = [t for t in (v.get("shape") or {}).get("trends", []) if t["metric"] in NEEDLE_METRICS]
    parts = [trend_text(t) for t in sorted(trends, key=lambda t: NEEDLE_METRICS.index(t["metric"]))]
    return f"{head}; {'; '.join(parts)}." if parts else f"{head}."
