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
from kvprobe.stats.words import diff_text, fmt_p


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
    """The needle probe's detail for one configuration: the onset of a significant loss, the
    85% share as a secondary figure with its interval, and the decay fit where accuracy fell."""
    acc = [r for r in v["paired"] if r["metric"] == "accuracy"]
    lp = [r for r in v["paired"] if r["metric"] == "answer_logprob"]
    if not acc:
        return None
    if v["onset_accuracy"] is not None:
        r = next(r for r in acc if r["ctx"] == v["onset_accuracy"])
        earlier = ""
        if v["onset_logprob"] is not None and v["onset_logprob"] < r["ctx"]:
            earlier = f" (the answers' log-probability already from {v['onset_logprob']:,})"
        head = (
            f"Its needle accuracy falls significantly below {baseline} from {r['ctx']:,} tokens on "
            f"({diff_text(r)}, Holm p = {fmt_p(r['p_holm'])}){earlier}"
        )
    elif v["onset_logprob"] is not None:
        r = next(r for r in lp if r["ctx"] == v["onset_logprob"])
        head = (
            f"Its needle accuracy does not fall significantly, but the answers' log-probability does "
            f"from {r['ctx']:,} tokens on ({diff_text(r, ' nats')}, Holm p = {fmt_p(r['p_holm'])})"
        )
    else:
        last = lp[-1] if lp else acc[-1]
        head = (
            f"No significant needle loss at any checkpoint (at {last['ctx']:,}: {last['metric']} "
            f"{diff_text(last)})"
        )
    share = v.get("accuracy_share")
    if share:
        pct = f"{share['threshold']:.0%} of {baseline}'s accuracy"

        def at(c: int) -> str:
            return f"{c:,}" if c else f"below {share['first']:,}"

        lo, hi = share["ci"]
        interval = f"bootstrap 95% interval {at(lo)} to {at(hi)}"
        head += (
            f"; secondary: it keeps >= {pct} up to {share['ctx']:,} tokens ({interval})"
            if share["ctx"]
            else f"; secondary: below {pct} already at {share['first']:,} tokens ({interval})"
        )
    halving = v.get("halving")
    if v["onset_accuracy"] is not None and halving and halving["length"] is not None and halving["ci"]:
        lo, hi = halving["ci"]
        upper = f"{hi:,.0f}" if hi is not None else "beyond 16x the longest context"
        bounds = f"[{lo:,.0f}, {upper}]" if lo is not None else "(interval not within reach)"
        head += f"; by a logistic fit, accuracy halves at about {halving['length']:,.0f} tokens {bounds}"
    return head + "."
