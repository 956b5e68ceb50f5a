"""`kvprobe compare OLD.json NEW.json`: what changed between two saved results.

Only the result files are read, never the model. Items are paired when both files measured
the same items (same scenario hash, model, seed and context); otherwise the comparison is
unpaired, and the output says which. A change is flagged only when it is both larger than a
threshold and significant (asv's rule), so noise never fails a build.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from kvprobe.analysis import METRICS, Metric
from kvprobe.errors import UserError
from kvprobe.probes.divergence import split_blocks
from kvprobe.results import decode_array
from kvprobe.stats import (
    bootstrap_diff_interval,
    mann_whitney,
    mcnemar_exact,
    newcombe_paired_interval,
    newcombe_unpaired_interval,
    wilcoxon_paired,
)

ALPHA = 0.05
# A change smaller than this is never flagged: absolute for rates, relative for the rest.
MIN_CHANGE = {"accuracy": 0.05, "top1_agree": 0.01}
MIN_RELATIVE_CHANGE = 0.10
LOWER_IS_WORSE = {
    "accuracy": True,
    "answer_logprob": True,
    "seq_rep_4": False,
    "kld_mean": False,
    "top1_agree": True,
}


@dataclass(frozen=True)
class FailRule:
    metric: str
    threshold: float  # signed: accuracy:-0.05 fails on a drop of more than 0.05

    @classmethod
    def parse(cls, text: str) -> FailRule:
        metric, sep, value = text.partition(":")
        known = sorted(LOWER_IS_WORSE)
        if not sep or metric not in LOWER_IS_WORSE:
            raise UserError(f"--fail-on {text!r}: use METRIC:THRESHOLD with METRIC one of {', '.join(known)}")
        try:
            threshold = float(value)
        except ValueError:
            raise UserError(
                f"--fail-on {text!r}: the threshold must be a number, e.g. accuracy:-0.05"
            ) from None
        return cls(metric, threshold)

    def violated_by(self, row: dict[str, Any]) -> bool:
        if row["metric"] != self.metric or row["p"] is None or row["p"] >= ALPHA:
            return False
        diff = float(row["diff"])
        return diff < self.threshold if self.threshold < 0 else diff > self.threshold


def match_configs(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """Configurations with the same id; then, if exactly one test configuration is left on each
    side, those two (the role "the configuration under test", e.g. q8_0 -> q4_0)."""
    old_ids = [c["id"] for c in old["configs"]]
    new_ids = [c["id"] for c in new["configs"]]
    pairs = [(c, c) for c in old_ids if c in new_ids]
    rest_old = [c for c in old_ids if c not in new_ids and c != old.get("baseline")]
    rest_new = [c for c in new_ids if c not in old_ids and c != new.get("baseline")]
    if len(rest_old) == 1 and len(rest_new) == 1:
        pairs.append((rest_old[0], rest_new[0]))
    return pairs


def pairing(old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, str]:
    """Whether items can be paired, and why (not)."""
    checks = (
        ("scenario", old["scenario"]["sha256"], new["scenario"]["sha256"]),
        ("model", old["model"]["sha256"], new["model"]["sha256"]),
        ("seed", old["run"]["seed"], new["run"]["seed"]),
        ("--ctx", old["run"]["ctx"], new["run"]["ctx"]),
        ("mode", old["run"]["mode"], new["run"]["mode"]),
    )
    differ = [name for name, a, b in checks if a != b]
    if differ:
        return False, f"unpaired: the files differ in {', '.join(differ)}"
    return True, "paired: same scenario, model, seed and context, so the same items"


# Settings that change llama.cpp's numerics without changing the items: items still pair, but
# a difference then mixes the cache effect with the kernels' (the way batch shape does).
NUMERICS = (
    ("extra_bufts", "extra buffer types (repacked/AMX CPU kernels; --no-repack turns them off)"),
    ("llama_cpp_version", "llama.cpp build"),
    ("backend", "backend"),
    ("n_ubatch", "batch shape"),
)


def numerics_notes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One sentence per setting in which the two runs' numerics differ."""
    notes = []
    old_rt, new_rt = old.get("runtime") or {}, new.get("runtime") or {}
    for key, what in NUMERICS:
        # Files written before the setting was recorded ran with llama.cpp's default.
        a = old_rt.get(key, True if key == "extra_bufts" else None)
        b = new_rt.get(key, True if key == "extra_bufts" else None)
        if a != b:
            notes.append(
                f"the runs differ in {what}: {key} {a} (old) vs {b} (new); llama.cpp's numerics differ, "
                "so every difference below includes that, not only the cache"
            )
    cpu_a, cpu_b = (old.get("host") or {}).get("cpu"), (new.get("host") or {}).get("cpu")
    if cpu_a != cpu_b:
        notes.append(
            f"the runs are from different CPUs ({cpu_a} vs {cpu_b}): llama.cpp's CPU kernels differ between "
            "hosts, so results are not bit-identical"
        )
    return notes


def _item_values(doc: dict[str, Any], metric: Metric, config: str) -> dict[int, dict[tuple[Any, ...], float]]:
    out: dict[int, dict[tuple[Any, ...], float]] = defaultdict(dict)
    for it in doc["items"]:
        if it["probe"] == metric.probe and it["config"] == config and it.get(metric.field) is not None:
            out[it["ctx"]][metric.key(it)] = float(it[metric.field])
    return out


def _test(
    old: Sequence[float], new: Sequence[float], binary: bool, paired: bool, seed: int
) -> dict[str, Any]:
    o, n = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    if binary and paired:
        both = int(np.sum((o == 1) & (n == 1)))
        only_old, only_new = int(np.sum((o == 1) & (n == 0))), int(np.sum((o == 0) & (n == 1)))
        lo, hi = newcombe_paired_interval(both, only_old, only_new, len(o) - both - only_old - only_new)
        p, name = mcnemar_exact(only_old, only_new), "exact McNemar"
    elif binary:
        lo, hi = newcombe_unpaired_interval(int(n.sum()), len(n), int(o.sum()), len(o))
        table = [[int(n.sum()), len(n) - int(n.sum())], [int(o.sum()), len(o) - int(o.sum())]]
        p, name = float(sps.fisher_exact(table).pvalue), "Fisher exact"
    elif paired:
        lo, hi = bootstrap_diff_interval(list(n), list(o), seed=seed, paired=True)
        p, name = wilcoxon_paired(list(n), list(o)), "Wilcoxon signed-rank"
    else:
        lo, hi = bootstrap_diff_interval(list(n), list(o), seed=seed, paired=False)
        p, name = mann_whitney(list(n), list(o)), "Mann-Whitney U"
    return {"old": float(o.mean()), "new": float(n.mean()), "diff": float(n.mean() - o.mean()),
            "ci": [lo, hi], "p": p, "test": name, "n_old": len(o), "n_new": len(n)}  # fmt: skip


def _mark(row: dict[str, Any]) -> str:
    """asv's rule: flag only what is both larger than the threshold and significant."""
    diff, metric = row["diff"], row["metric"]
    threshold = MIN_CHANGE.get(metric, MIN_RELATIVE_CHANGE * abs(row["old"]))
    if row["p"] is None or row["p"] >= ALPHA or abs(diff) <= threshold:
        return "no significant change"
    worse = diff < 0 if LOWER_IS_WORSE[metric] else diff > 0
    return "worse" if worse else "better"


def _item_rows(
    old: dict[str, Any], new: dict[str, Any], pairs: list[tuple[str, str]], paired: bool, seed: int
) -> list[dict[str, Any]]:
    rows = []
    for metric in METRICS:
        for c_old, c_new in pairs:
            a, b = _item_values(old, metric, c_old), _item_values(new, metric, c_new)
            for ctx in sorted(set(a) & set(b)):
                if paired:
                    keys = sorted(set(a[ctx]) & set(b[ctx]), key=str)
                    vo, vn = [a[ctx][k] for k in keys], [b[ctx][k] for k in keys]
                else:
                    vo, vn = list(a[ctx].values()), list(b[ctx].values())
                if not vo or not vn:
                    continue
                where = {
                    "probe": metric.probe,
                    "metric": metric.name,
                    "config_old": c_old,
                    "config_new": c_new,
                }
                rows.append({**where, "ctx": ctx, **_test(vo, vn, metric.binary, paired, seed)})
    return rows


def _block_means(doc: dict[str, Any], config: str, name: str, lo: int, hi: int) -> list[float]:
    section = doc.get("divergence") or {}
    block = section.get("block", 32)
    means: list[float] = []
    for rec in section.get("positions", []):
        if rec["config"] == config and name in rec:
            values = decode_array(rec[name]).astype(float)
            positions = np.arange(1, len(values) + 1)
            means += [float(b.mean()) for b in split_blocks(values, positions, lo, hi, block)]
    return means


def _divergence_rows(
    old: dict[str, Any], new: dict[str, Any], pairs: list[tuple[str, str]], paired: bool, seed: int
) -> list[dict[str, Any]]:
    if not old.get("divergence") or not new.get("divergence"):
        return []
    edges = old["divergence"]["bin_edges"]
    if edges != new["divergence"]["bin_edges"]:
        edges = [edges[0], min(edges[-1], new["divergence"]["bin_edges"][-1])]
    spans = [(lo, hi, "bin") for lo, hi in itertools.pairwise(edges)] + [(1, 1 << 30, "pooled")]
    rows = []
    for c_old, c_new in pairs:
        for name, metric in (("kld", "kld_mean"), ("top1_agree", "top1_agree")):
            for lo, hi, scope in spans:
                vo = _block_means(old, c_old, name, lo, hi)
                vn = _block_means(new, c_new, name, lo, hi)
                if not vo or not vn or (paired and len(vo) != len(vn)):
                    continue
                row = _test(vo, vn, binary=False, paired=paired, seed=seed)
                ctx = hi if scope == "bin" else new["run"]["ctx"]
                where = {"probe": "divergence", "metric": metric, "config_old": c_old, "config_new": c_new}
                rows.append({**where, "ctx": ctx, "scope": scope, **row})
    return rows


def compare(
    old: dict[str, Any], new: dict[str, Any], seed: int = 0, require_paired: bool = False
) -> dict[str, Any]:
    """Every metric both files have, per matched configuration and checkpoint."""
    paired, reason = pairing(old, new)
    if require_paired and not paired:
        raise UserError(f"--paired was asked for, but the results are {reason.removeprefix('unpaired: ')}")
    pairs = match_configs(old, new)
    if not pairs:
        raise UserError("the two results share no configuration to compare")
    rows = _item_rows(old, new, pairs, paired, seed) + _divergence_rows(old, new, pairs, paired, seed)
    for row in rows:
        row["mark"] = _mark(row)
    return {
        "paired": paired,
        "pairing": reason,
        "notes": numerics_notes(old, new),
        "configs": [list(p) for p in pairs],
        "rows": rows,
    }
