"""`kvprobe compare OLD.json NEW.json`: what changed between two saved results.

Only the result files are read, never the model. Items are paired when both files measured
the same items (same scenario hash, model, seed and context); otherwise the comparison is
unpaired, and the output says which. A change is flagged only when it is both larger than a
threshold and significant (asv's rule), so noise never fails a build.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvprobe.api import (
    ALPHA,
    MIN_RELATIVE_CHANGE,
    Metric,
    all_probes,
    by_name,
    compared_metrics,
    lower_is_worse,
)
from kvprobe.api.record import JsonObject, Row
from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.plan.prompt import framing_label
from kvprobe.stats.equivalence import equivalence_interval
from kvprobe.stats.inference import difference_test
from kvprobe.stats.parts import ChangeDoc, ComparisonDoc


@dataclass(frozen=True)
class FailRule:
    metric: str
    threshold: float  # signed: accuracy:-0.05 fails on a drop of more than 0.05
    equivalence: bool = False  # METRIC:±MARGIN fails unless the change is shown within ±MARGIN

    @classmethod
    def parse(cls, text: str) -> FailRule:
        metric, sep, value = text.partition(":")
        known = sorted(compared_metrics())
        if not sep or metric not in known:
            raise UserError(
                f"--fail-on {text!r}: use METRIC:THRESHOLD or METRIC:±MARGIN with METRIC one of "
                f"{', '.join(known)}"
            )
        value = value.strip()
        equivalence = value.startswith(("±", "+-"))
        try:
            threshold = float(value.removeprefix("±").removeprefix("+-"))
            if not math.isfinite(threshold) or (equivalence and threshold <= 0):
                raise ValueError(value)
        except ValueError:
            raise UserError(
                f"--fail-on {text!r}: the threshold must be a number, e.g. accuracy:-0.05, or a positive "
                "margin, e.g. answer_logprob:±0.25"
            ) from None
        return cls(metric, threshold, equivalence)

    def __str__(self) -> str:
        return (
            f"{self.metric}:±{self.threshold:g}" if self.equivalence else f"{self.metric}:{self.threshold:+g}"
        )

    def violated_by(self, row: Row) -> bool:
        """A threshold rule: significant and beyond the threshold. A margin rule: the 95%
        interval of the change is not inside ±margin (TOST, 0.025 per side: not shown equivalent). A
        row the test could not judge (a NaN difference or p) fails too: a gate must never pass
        on what it could not measure."""
        if row["metric"] != self.metric:
            return False
        if not _testable(row):
            return True
        if self.equivalence:
            lo, hi = row["ci_equivalence"]
            return not (-self.threshold < lo and hi < self.threshold)
        if row["p"] >= ALPHA:
            return False
        diff = float(row["diff"])
        return diff < self.threshold if self.threshold < 0 else diff > self.threshold


def _testable(row: Row) -> bool:
    p, diff = row.get("p"), row.get("diff")
    return (
        isinstance(p, (int, float))
        and isinstance(diff, (int, float))
        and math.isfinite(p)
        and math.isfinite(diff)
    )


def _split_map(text: str, old_ids: Sequence[str], new_ids: Sequence[str]) -> tuple[str, str] | None:
    """OLD=NEW, where an id may itself hold "=" (k=q4_0,v=f16): the "=" that leaves two ids."""
    for i, ch in enumerate(text):
        if ch == "=" and text[:i] in old_ids and text[i + 1 :] in new_ids:
            return text[:i], text[i + 1 :]
    return None


def match_configs(
    old: ResultDoc | JsonObject, new: ResultDoc | JsonObject, maps: Sequence[str] = ()
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pairs of configurations to compare, and those left unmatched in old and in new.

    `maps` (--map OLD=NEW) come first; then configurations with the same id; then, if exactly
    one test configuration is left on each side, those two (the role "the configuration under
    test", e.g. q8_0 -> q4_0)."""
    old_ids = [c["id"] for c in old["configs"]]
    new_ids = [c["id"] for c in new["configs"]]
    pairs: list[tuple[str, str]] = []
    for text in maps:
        found = _split_map(text, old_ids, new_ids)
        if found is None:
            raise UserError(
                f"--map {text!r}: use OLD=NEW with OLD one of {', '.join(old_ids)} "
                f"and NEW one of {', '.join(new_ids)}"
            )
        if found in pairs:
            raise UserError(f"--map {text!r} is given twice: give each OLD=NEW pair once")
        pairs.append(found)
    used_old = {a for a, _ in pairs}
    used_new = {b for _, b in pairs}
    pairs += [(c, c) for c in old_ids if c in new_ids and c not in used_old and c not in used_new]
    rest_old = [c for c in old_ids if c not in {a for a, _ in pairs} and c != old.get("baseline")]
    rest_new = [c for c in new_ids if c not in {b for _, b in pairs} and c != new.get("baseline")]
    if not maps and len(rest_old) == 1 and len(rest_new) == 1:
        pairs.append((rest_old[0], rest_new[0]))
    unmatched_old = [c for c in old_ids if c not in {a for a, _ in pairs}]
    unmatched_new = [c for c in new_ids if c not in {b for _, b in pairs}]
    return pairs, unmatched_old, unmatched_new


def pairing(old: ResultDoc | JsonObject, new: ResultDoc | JsonObject) -> tuple[bool, str]:
    """Whether items can be paired, and why (not)."""
    old_rt, new_rt = old.get("runtime") or {}, new.get("runtime") or {}
    checks = [
        ("scenario", old["scenario"]["sha256"], new["scenario"]["sha256"]),
        ("model", old["model"]["sha256"], new["model"]["sha256"]),
        ("seed", old["run"]["seed"], new["run"]["seed"]),
        ("--ctx", old["run"]["ctx"], new["run"]["ctx"]),
        ("mode", old["run"]["mode"], new["run"]["mode"]),
        # Raw text and chat form, or two templates, are different prompts: different items.
        ("prompt format", framing_label(old), framing_label(new)),
    ]
    # Same items but other numerics: a paired test would credit the cache with what the
    # engine changed.
    for key, name in NUMERICS:
        # files from before it was recorded
        default = {"extra_bufts": True, "engine": "llamacpp"}.get(key)
        checks.append((name, old_rt.get(key, default), new_rt.get(key, default)))
    differ = [
        f"{name} ({a} vs {b})" if a is not None and b is not None else name for name, a, b in checks if a != b
    ]
    if differ:
        return False, f"unpaired: the files differ in {'; '.join(differ)}"
    return True, "paired: same scenario, model, seed, context and llama.cpp settings, so the same items"


# Runtime settings that change llama.cpp's numerics without changing the items: files that
# differ in one are compared unpaired, since a paired test would mix the engine's change into
# the cache's (the way batch shape does).
NUMERICS = (
    ("engine", "engine (llama.cpp in kvprobe's process or a llama-server)"),
    ("server_version", "llama-server build"),
    ("extra_bufts", "extra buffer types (repacked/AMX CPU kernels; --no-repack turns them off)"),
    ("llama_cpp_python", "llama-cpp-python version"),
    ("llama_cpp_build", "llama.cpp build features"),
    ("backend", "backend"),
    ("n_ubatch", "batch shape"),
    ("flash_attn", "flash attention"),
    ("attn_rotation", "Hadamard rotation"),
)


def numerics_notes(old: ResultDoc | JsonObject, new: ResultDoc | JsonObject) -> list[str]:
    """What else differs between the two runs' engines, beyond what pairing checks."""
    cpu_a, cpu_b = (old.get("host") or {}).get("cpu"), (new.get("host") or {}).get("cpu")
    if cpu_a != cpu_b:
        return [
            f"the runs are from different CPUs ({cpu_a} vs {cpu_b}): llama.cpp's CPU kernels differ between "
            "hosts, so results are not bit-identical"
        ]
    return []


def early_stop_notes(old: ResultDoc | JsonObject, new: ResultDoc | JsonObject) -> list[str]:
    """Configurations --until-decided stopped in either file: compared on less than the run."""
    notes = []
    for label, doc in (("old", old), ("new", new)):
        stops = ((doc.get("run") or {}).get("until_decided") or {}).get("stopped") or {}
        for config, stop in stops.items():
            what = f"worse at {stop['ctx']:,} tokens" if stop["status"] == "worse" else "equivalent"
            looks = (doc["run"]["until_decided"] or {}).get("looks", "?")
            notes.append(
                f"{label}: {config} was stopped once decided {what} (--until-decided, on "
                f"document {stop['look']} of {looks}): it is compared only on the checkpoints and items "
                "both files measured"
            )
    return notes


def _item_values(
    doc: ResultDoc | JsonObject, metric: Metric, config: str
) -> dict[int, dict[tuple[Any, ...], float]]:
    out: dict[int, dict[tuple[Any, ...], float]] = defaultdict(dict)
    for it in doc["items"]:
        if it["probe"] == metric.probe and it["config"] == config and metric.item_field in it:
            # null is a NaN the writer stored as JSON null: kept as NaN, so the row is "not
            # testable" and a gate on it fails, instead of the item silently dropping out
            value = it[metric.item_field]
            out[it["ctx"]][metric.pair_key(it)] = math.nan if value is None else float(value)
    return out


def difference_row(
    old: Sequence[float], new: Sequence[float], binary: bool, paired: bool, seed: int
) -> ChangeDoc:
    """Means, the difference new - old with its 95% interval and the two-sided p, and the 95%
    interval an equivalence gate (--fail-on METRIC:±MARGIN) reads."""
    d = difference_test(new, old, binary=binary, paired=paired, seed=seed)
    o, n = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    ci_eq = list(equivalence_interval(new, old, binary=binary, paired=paired, seed=seed))
    return {"old": float(o.mean()), "new": float(n.mean()), "diff": d.diff, "ci": list(d.ci), "p": d.p,
            "test": d.test, "ci_equivalence": ci_eq, "n_old": len(o), "n_new": len(n)}  # fmt: skip


def _mark(row: Row) -> str:
    """asv's rule: flag only what is both larger than the threshold and significant."""
    if not _testable(row):
        return "not testable"
    diff, metric = row["diff"], row["metric"]
    own = by_name(metric).min_change
    threshold = own if own is not None else MIN_RELATIVE_CHANGE * abs(row["old"])
    if row["p"] >= ALPHA or abs(diff) <= threshold:
        return "no significant change"
    worse = diff < 0 if lower_is_worse(metric) else diff > 0
    return "worse" if worse else "better"


def item_rows(
    old: ResultDoc | JsonObject,
    new: ResultDoc | JsonObject,
    metrics: Sequence[Metric],
    pairs: list[tuple[str, str]],
    *,
    paired: bool,
    seed: int,
) -> list[Row]:  # compare's own rows, listed with the probes' own (Probe.compare_rows)
    """One row per per-item metric, configuration pair and checkpoint (items paired by key)."""
    rows: list[Row] = []
    for metric in (m for m in metrics if m.field is not None):
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
                rows.append({**where, "ctx": ctx, **difference_row(vo, vn, metric.binary, paired, seed)})
    return rows


def compare(
    old: ResultDoc | JsonObject,
    new: ResultDoc | JsonObject,
    seed: int = 0,
    require_paired: bool = False,
    maps: Sequence[str] = (),
) -> ComparisonDoc:
    """Every metric both files have, per matched configuration and checkpoint. A file that
    is valid JSON of the right version but not of the right shape is a UserError."""
    try:
        return _compare(old, new, seed, require_paired, maps)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UserError(
            f"a result file is corrupt or incomplete ({type(exc).__name__}: {str(exc)[:80]}): "
            "use an intact file or run it again"
        ) from None


def _compare(
    old: ResultDoc | JsonObject,
    new: ResultDoc | JsonObject,
    seed: int,
    require_paired: bool,
    maps: Sequence[str],
) -> ComparisonDoc:
    paired, reason = pairing(old, new)
    if require_paired and not paired:
        raise UserError(f"--paired was asked for, but the results are {reason.removeprefix('unpaired: ')}")
    pairs, unmatched_old, unmatched_new = match_configs(old, new, maps)
    if not pairs:
        raise UserError(
            f"the two results share no configuration to compare (old: {', '.join(unmatched_old)}; "
            f"new: {', '.join(unmatched_new)}): pair them with --map OLD=NEW"
        )
    rows = []
    for probe in all_probes():
        own = probe.compare_rows(old, new, pairs, paired, seed)
        rows += (
            own if own is not None else item_rows(old, new, probe.metrics, pairs, paired=paired, seed=seed)
        )
    for row in rows:
        row["mark"] = _mark(row)
    return {
        "paired": paired,
        "pairing": reason,
        "notes": numerics_notes(old, new) + early_stop_notes(old, new),
        "configs": [list(p) for p in pairs],
        "unmatched": {"old": unmatched_old, "new": unmatched_new},
        "test_configs_compared": [
            list(p) for p in pairs if p[0] != old.get("baseline") or p[1] != new.get("baseline")
        ],
        "rows": rows,
    }
