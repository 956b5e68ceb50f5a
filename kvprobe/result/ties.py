"""What the schema cannot say of a result file: how its fields refer to each other, as far as
the readers rely on it (the verdict pairs every item with the baseline's, the figures look the
baseline up among the configurations, the report's tables look rows up by configuration and
position bin). Each check returns the first problem in words, naming the JSON path, or None.

TIES hold for every reader; TABLE_TIES only where the report's tables show the file (`kvprobe
report`: Result.load), since `compare` reads items and arrays, never those rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from kvprobe.cache_types import TEXT_ROWS
from kvprobe.errors import UserError
from kvprobe.result.arrays import ARRAY_DTYPES, decode_array
from kvprobe.result.schema import brief, where

Doc = dict[str, Any]
POOLED = ("kld_mean", "kld_p99", "top1_agree", "ppl")  # the divergence lines print each


def _ids(doc: Doc) -> list[str]:
    return [c["id"] for c in doc["configs"]]


def configs_once(doc: Doc) -> str | None:
    seen: set[str] = set()
    for i, cid in enumerate(_ids(doc)):
        if cid in seen:
            return f"configs[{i}].id repeats {brief(cid)}"
        seen.add(cid)
    return None


def baseline_among_configs(doc: Doc) -> str | None:
    if doc["baseline"] is not None and doc["baseline"] not in _ids(doc):
        return f"baseline {brief(doc['baseline'])} is not one of its configs"
    return None


def rows_among_configs(doc: Doc) -> str | None:
    """Items are measured by a configuration of the file; text items by none: "(text)"."""
    ids = set(_ids(doc))
    for field, allowed in (("items", ids), ("text_items", ids | {TEXT_ROWS})):
        for i, row in enumerate(doc.get(field) or []):
            if row["config"] not in allowed:
                return f"{field}[{i}].config {brief(row['config'])} is not one of its configs"
    return None


def ascending(doc: Doc) -> str | None:
    for path, values in (
        (["run", "checkpoints"], doc["run"]["checkpoints"]),
        (["divergence", "bin_edges"], (doc.get("divergence") or {}).get("bin_edges", [])),
    ):
        if any(b <= a for a, b in itertools.pairwise(values)):
            return f"{where(path)} must ascend, not {brief(values)}"
    return None


def layout_per_layer(doc: Doc) -> str | None:
    """kv_cache_bytes reads every layer's entry."""
    for path, model in _models(doc):
        layout = model.get("kv_layout")
        if not layout:
            continue
        for key in ("n_head_kv", "swa_layers"):
            if len(layout[key]) < layout["n_layer"]:
                return (
                    f"{where([*path, 'kv_layout', key])} must have an entry per layer ({layout['n_layer']}), "
                    f"not {len(layout[key])}"
                )
    return None


def _models(doc: Doc) -> Iterator[tuple[list[Any], Doc]]:
    yield ["model"], doc["model"]
    for label, model in (doc.get("models") or {}).items():
        yield ["models", label], model


def baseline_items_measured(doc: Doc) -> str | None:
    """The verdict pairs each item with the baseline's (and, in the weights-vs-KV design, with
    every cell's): those must have a value for every paired metric."""
    from kvprobe.api import paired_item_metrics

    if doc["baseline"] is None:
        return None
    every = bool(doc.get("models"))
    fields = [(m.probe, m.item_field) for m in paired_item_metrics()]
    for i, it in enumerate(doc["items"]):
        if not every and it["config"] != doc["baseline"]:
            continue
        for probe, field in fields:
            if it["probe"] == probe and it.get(field) is None:
                whose = "every configuration's" if every else "the baseline's"
                return f"items[{i}].{field} must be a number ({whose} items are paired), not null"
    return None


def arrays_intact(doc: Doc) -> str | None:
    """Every per-position array decodes to the values it declares, in its dtype; the reference
    has NLL, every other configuration KL and top-1 agreement too, position for position."""
    section = doc.get("divergence")
    if not section:
        return None
    reference = section["reference"]
    if reference != doc["baseline"]:
        return f"divergence.reference {brief(reference)} must be the baseline, {brief(doc['baseline'])}"
    for i, rec in enumerate(section["positions"]):
        at = ["divergence", "positions", i]
        names = ["nll"] if rec["config"] == reference else ["nll", "kld", "top1_agree"]
        for name in names:
            if name not in rec:
                return f"missing {where([*at, name])}"
            if rec[name]["dtype"] != ARRAY_DTYPES[name]:
                return f"{where([*at, name, 'dtype'])} must be {brief(ARRAY_DTYPES[name])}"
            if rec[name]["n"] != rec["nll"]["n"] or rec[name]["n"] > doc["run"]["ctx"]:
                return f"{where([*at, name, 'n'])} must be nll's and at most run.ctx, not {rec[name]['n']}"
            try:
                decode_array(rec[name])
            except UserError:
                return f"{where([*at, name])} is damaged: it does not decode to its {rec[name]['n']} values"
    return None


def _divergence_rows(doc: Doc) -> dict[tuple[str, str, str, int], Doc]:
    return {
        (r["config"], r["metric"], r["scope"], r["bin"][0]): r
        for r in doc["summary"]
        if r["probe"] == "divergence"
    }


def divergence_rows_complete(doc: Doc) -> str | None:
    """The divergence table has, per position bin the reference's perplexity has, a KL and a
    top-1 row of every other configuration; the lines below it pool every metric of every
    configuration with an onset."""
    section = doc.get("divergence")
    rows = _divergence_rows(doc)
    if not section or not rows:
        return None
    reference = section["reference"]
    needed = [(reference, "ppl", "pooled", 1)]
    needed += [(cid, m, "pooled", 1) for cid in section["onset"] for m in POOLED]
    for config, metric, scope, lo in list(rows):
        if config == reference and metric == "ppl":
            needed += [
                (c, m, scope, lo) for c in _ids(doc) if c != reference for m in ("kld_mean", "top1_agree")
            ]
    for config, metric, scope, lo in needed:
        if (config, metric, scope, lo) not in rows:
            return (
                f"summary has no {metric} row of {brief(config)} for the {scope} positions from {lo} "
                "(the divergence table shows one)"
            )
    return None


def onsets_of_test_configs(doc: Doc) -> str | None:
    section = doc.get("divergence")
    if not section:
        return None
    for cid in section["onset"]:
        if cid not in _ids(doc) or cid == section["reference"]:
            return f"divergence.onset[{brief(cid)}] must be a configuration other than the reference"
    return None


def repetition_rows_complete(doc: Doc) -> str | None:
    """The repetition table shows, where a configuration has a loop rate, its seq-rep-4 and
    compression ratio, under a title with the continuations' length."""
    rows = {(r["config"], r["ctx"], r["metric"]) for r in doc["summary"] if r["probe"] == "repetition"}
    if not rows:
        return None
    if "repetition" not in doc["scenario"].get("spec", {}):
        return "missing scenario.spec.repetition (the file has repetition rows)"
    for config, ctx, metric in sorted(rows, key=str):
        if metric != "loop_rate":
            continue
        for other in ("seq_rep_4", "compression_ratio"):
            if (config, ctx, other) not in rows:
                return f"summary has no {other} row of {brief(config)} at {ctx} (it has its loop_rate)"
    return None


Tie = Callable[[Doc], str | None]
TIES: tuple[Tie, ...] = (
    configs_once,
    baseline_among_configs,
    rows_among_configs,
    ascending,
    layout_per_layer,
    baseline_items_measured,
    arrays_intact,
)
TABLE_TIES: tuple[Tie, ...] = (onsets_of_test_configs, divergence_rows_complete, repetition_rows_complete)


def first_tie_problem(doc: Doc, *, shown: bool = True) -> str | None:
    """The first tie a schema-valid document breaks, in words; None if it keeps them all.
    `shown`: the report's tables will show it (TABLE_TIES)."""
    for check in (*TIES, *(TABLE_TIES if shown else ())):
        if (problem := check(doc)) is not None:
            return problem
    return None
