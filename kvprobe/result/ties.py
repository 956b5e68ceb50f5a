"""What the schema cannot say of a result file: how its fields refer to each other, as far as
the readers rely on it (the verdict pairs every item with the baseline's, the figures look the
baseline up among the configurations, the report's tables look rows up by configuration and
position bin). Each check returns the first problem in words, naming the JSON path, or None.

TIES, the file's own, hold for every reader; then each registered probe checks its own parts
(`Probe.ties`), with those its tables rely on only where the report's tables show the file
(`kvprobe report`: Result.load), since `compare` reads items and arrays, never those rows. They
read the typed document (kvprobe.result.check types it first)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from kvprobe.api import all_probes, paired_item_metrics
from kvprobe.api.cache_types import TEXT_ROWS
from kvprobe.api.record import ItemRow
from kvprobe.api.result import ModelInfo, ResultDoc
from kvprobe.result.blocks import brief, where


def configs_once(doc: ResultDoc) -> str | None:
    seen: set[str] = set()
    for i, cid in enumerate(doc.config_ids()):
        if cid in seen:
            return f"configs[{i}].id repeats {brief(cid)}"
        seen.add(cid)
    return None


def baseline_among_configs(doc: ResultDoc) -> str | None:
    if doc.baseline is not None and doc.baseline not in doc.config_ids():
        return f"baseline {brief(doc.baseline)} is not one of its configs"
    return None


def rows_among_configs(doc: ResultDoc) -> str | None:
    """Items are measured by a configuration of the file; text items by none: "(text)"."""
    ids = set(doc.config_ids())
    for field, rows, allowed in (
        ("items", doc.items, ids),
        ("text_items", doc.text_items, ids | {TEXT_ROWS}),
    ):
        for i, row in enumerate(rows):
            if row["config"] not in allowed:
                return f"{field}[{i}].config {brief(row['config'])} is not one of its configs"
    return None


def ascending(doc: ResultDoc) -> str | None:
    values = doc.run.checkpoints
    if any(b <= a for a, b in itertools.pairwise(values)):
        return f"{where(['run', 'checkpoints'])} must ascend, not {brief(values)}"
    return None


def layout_per_layer(doc: ResultDoc) -> str | None:
    """kv_cache_bytes reads every layer's entry."""
    for path, model in _models(doc):
        layout = model.kv_layout
        if not layout:
            continue
        for key, entries in (("n_head_kv", layout.n_head_kv), ("swa_layers", layout.swa_layers)):
            if len(entries) < layout.n_layer:
                return (
                    f"{where([*path, 'kv_layout', key])} must have an entry per layer ({layout.n_layer}), "
                    f"not {len(entries)}"
                )
    return None


def _models(doc: ResultDoc) -> Iterator[tuple[list[Any], ModelInfo]]:
    yield ["model"], doc.model
    if doc.models is not None:
        yield ["models", "ref"], doc.models.ref
        yield ["models", "test"], doc.models.test


def baseline_items_measured(doc: ResultDoc) -> str | None:
    """The verdict pairs each item with the baseline's (and, in the weights-vs-KV design, with
    every cell's): those must have a value for every paired metric."""
    if doc.baseline is None:
        return None
    every = doc.models is not None
    fields = [(m.probe, m.item_field) for m in paired_item_metrics()]
    for i, it in enumerate(doc.items):
        if not every and it["config"] != doc.baseline:
            continue
        for probe, field in fields:
            if it["probe"] == probe and it.get(field) is None:
                whose = "every configuration's" if every else "the baseline's"
                return f"items[{i}].{field} must be a number ({whose} items are paired), not null"
    return None


def item_identity() -> Callable[[ItemRow], str | None]:
    """What identifies an item row: its probe and configuration and the key its probe pairs
    items with (Metric.key), as canonical JSON; None for a row of a probe without such a key
    (it states no identity for its rows) or without the key's fields."""
    keyed = {m.probe: m for p in all_probes() for m in reversed(p.metrics) if m.key is not None}

    def identity(row: ItemRow) -> str | None:
        metric = keyed.get(row["probe"])
        if metric is None:
            return None
        try:
            return json.dumps([row["probe"], row["config"], *metric.pair_key(row)], sort_keys=True)
        except (KeyError, TypeError, ValueError):
            return None

    return identity


def items_once(doc: ResultDoc) -> str | None:
    """Each item once: the statistics and the verdict count every row as one observation, so a
    row copied would be counted as often as it appears."""
    identity = item_identity()
    for field, rows in (("items", doc.items), ("text_items", doc.text_items)):
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            key = identity(row)
            if key is None:
                continue
            if key in seen:
                return (
                    f"{field}[{i}] repeats {field}[{seen[key]}] ({repeated(key)}); each item is measured once"
                )
            seen[key] = i
    return None


def repeated(key: str) -> str:
    """An item's identity (item_identity) in words."""
    probe, config, *rest = json.loads(key)
    return f"the same {brief(probe)} item of {brief(config)}: {brief(rest)}"


Tie = Callable[[ResultDoc], str | None]
TIES: tuple[Tie, ...] = (
    configs_once,
    items_once,
    baseline_among_configs,
    rows_among_configs,
    ascending,
    layout_per_layer,
    baseline_items_measured,
)


def first_tie_problem(doc: ResultDoc, *, shown: bool = True) -> str | None:
    """The first tie a schema-valid document breaks, in words; None if it keeps them all.
    `shown`: the report's tables will show it (the probes' ties of their tables too)."""
    for check in (*TIES, *(tie for probe in all_probes() for tie in probe.ties(shown=shown))):
        if (problem := check(doc)) is not None:
            return problem
    return None
