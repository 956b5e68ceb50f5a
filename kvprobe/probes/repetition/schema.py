"""The repetition probe's part of the result file: the schema of its item and summary rows,
their docs, the ties its table relies on, and the migration of its rows from schema 1
(kvprobe.result.schema, .ties and .migrations run them for every registered probe)."""

from __future__ import annotations

from collections.abc import Callable

from kvprobe.api import ResultDoc, SchemaPart
from kvprobe.api.record import JsonObject
from kvprobe.result.blocks import (
    INT,
    INTERVAL,
    NUM,
    SHARE,
    brief,
    flag,
    integer,
    listing,
    nullable,
    number,
    record,
    text,
    when,
)

_AS_FOR_NEEDLES = "as for needles; `ctx` is the checkpoint"
_SEQ_REP = "1 − unique n-grams / all n-grams of the token ids (Welleck et al. 2019)"
_DISTINCT = "unique n-grams / all n-grams"
_LOOP = (
    "the continuation ends in a periodic suffix of ≥ 16 tokens spanning ≥ 2 periods; its shortest "
    "period and number of whole periods"
)
_FIRST_DIFFERENCE = (
    "first token index where the continuation differs from the baseline's continuation at the same "
    "point (the common length if none); null for the baseline"
)
REPETITION_ITEM = record(
    {
        "config": text(_AS_FOR_NEEDLES),
        "doc": integer(_AS_FOR_NEEDLES),
        "ctx": integer(_AS_FOR_NEEDLES, lo=1),
        "offset": integer("the fork point: the continuation follows the document's first `offset` tokens"),
        "tokens": listing(INT, "the continuation (token ids, and decoded)"),
        "text": text("the continuation (token ids, and decoded)"),
        **{f"seq_rep_{n}": {**SHARE, "description": _SEQ_REP} for n in range(1, 5)},
        **{f"distinct_{n}": {**SHARE, "description": _DISTINCT} for n in range(1, 5)},
        "compression_ratio": number(
            "UTF-8 bytes / zlib-compressed bytes of `text` (Whisper treats > 2.4 as looping)", minimum=0
        ),
        "loop": flag(_LOOP),
        "loop_period": nullable(integer(_LOOP)),
        "loop_repeats": nullable(integer(_LOOP)),
        "first_difference": nullable(integer(_FIRST_DIFFERENCE)),
        "divergence_index": nullable(integer("schema 1's name of `first_difference`")),
    },
    ["doc", "offset", "text", "seq_rep_4", "loop"],
)

# What the tables print: a value with its interval.
SUMMARY_RULES = (
    when(
        {"probe": {"const": "repetition"}},
        record({"value": NUM, "ci": INTERVAL, "n": integer(lo=1)}, ["value", "ci", "n"]),
    ),
)
_METRICS_DOC = (
    "repetition: `seq_rep_4`, `distinct_2`, `compression_ratio`, `first_difference` (means, 95% "
    "bootstrap), `loop_rate` (share of looping continuations, 95% Wilson); config `(text)` rows "
    "describe the document's own continuation."
)
DOC = """\
## `items[]` with `probe: "repetition"`

One row per (configuration, document, checkpoint, continuation point). At every checkpoint
`L` the document is forked at `L, L - stride, …` (`offset`), and each fork continues greedily
for `repetition.tokens` tokens. The forks run in parallel sequences, with the same batch
shapes for every configuration.

<!-- table: repetition_item -->

`text_items[]` has the same rows for the document's own next tokens at every continuation
point, with `config: "(text)"`: the level of repetition of real text, for calibration.
"""

PART = SchemaPart(
    defs={"repetition_item": REPETITION_ITEM},
    item="repetition_item",
    summary_rules=SUMMARY_RULES,
    spec={"repetition": record({"tokens": integer(lo=1)}, ["tokens"])},
    notes={
        "summary_row.metric": _METRICS_DOC,
        "result.text_items": "the repetition probe's, for calibration",
    },
    tables={"repetition_item": REPETITION_ITEM},
    doc=DOC,
    migrations=(
        (
            "1",
            "2",
            'the repetition metric `divergence_index` is called `first_difference` ("divergence" '
            "names only the KL probe), in items, text items and summary rows",
        ),
    ),
)


def rename_first_difference(doc: JsonObject) -> None:
    """Schema 1 -> 2: the repetition metric "divergence_index" is "first_difference"
    ("divergence" names only the KL probe)."""
    for it in [*doc.get("items", []), *(doc.get("text_items") or [])]:
        if isinstance(it, dict) and "divergence_index" in it:
            it["first_difference"] = it.pop("divergence_index")
    for row in doc.get("summary", []):
        if isinstance(row, dict) and row.get("metric") == "divergence_index":
            row["metric"] = "first_difference"


def rows_complete(doc: ResultDoc) -> str | None:
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


TABLE_TIES: tuple[Callable[[ResultDoc], str | None], ...] = (rows_complete,)  # the report's table
