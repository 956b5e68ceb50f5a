"""The needle probe's part of the result file: the schema of its item and summary rows and
their docs (kvprobe.result.schema assembles the whole from every registered probe's part)."""

from __future__ import annotations

from kvprobe.api import SchemaPart
from kvprobe.result.blocks import INTERVAL, SHARE, flag, integer, nullable, number, record, text, when

NEEDLE_ITEM = record(
    {
        "config": text("configuration id"),
        "doc": integer("document index (one-pass) or repeat index (classic)"),
        "ctx": integer("checkpoint: the query follows the first `ctx` document tokens", lo=1),
        "position": integer("token index of the needle's first token in the document"),
        "depth": number("`position / ctx`", minimum=0, maximum=1),
        "distance": integer("tokens between the needle's last token and the query"),
        "key": text("the needle's key (\"Vera Holm's locker number\") and value"),
        "expected": text("the needle's key (\"Vera Holm's locker number\") and value"),
        "correct": flag(
            "every answer token is the argmax under teacher forcing, i.e. greedy decoding would produce "
            "the answer exactly"
        ),
        "logprob": nullable(
            number("sum of the answer tokens' log-probabilities (natural log); null where it was NaN")
        ),
        "first_wrong_token": nullable(
            integer("index of the first answer token that is not the argmax, or null")
        ),
        "output": text(
            "the answer when correct; otherwise what greedy decoding produced (up to `generate_tokens`)"
        ),
        "output_correct": flag(
            "the first number in `output` equals `expected`. Greedy decoding feeds one token at a time "
            "while teacher forcing feeds the answer in one batch; batch shape changes numerics, so on a "
            "near-tie the two can disagree. `correct` (teacher forced, identical batch shapes for every "
            "configuration) is what the statistics use."
        ),
        "output_loop": flag(
            "the greedy output of a failed answer ends in a periodic run of ≥ 6 tokens (e.g. `899999999`)"
        ),
    },
    ["doc", "key", "depth", "correct", "logprob"],
)

# What the tables print: the share with its interval.
SUMMARY_RULES = (
    when(
        {"probe": {"const": "needle"}, "metric": {"const": "accuracy"}},
        record({"value": SHARE, "ci": INTERVAL, "n": integer(lo=1)}, ["value", "ci", "n"]),
    ),
)
_METRICS_DOC = (
    "needle: `accuracy` (share of correct items; `ci` is the 95% Wilson interval), "
    "`answer_logprob` (mean answer log-prob; 95% percentile bootstrap)."
)
DOC = """\
## `items[]` with `probe: "needle"`

One row per (configuration, needle, checkpoint). Rows with the same `doc`, `ctx` and `key`
are the same question to every configuration: the basis of paired comparisons.

<!-- table: needle_item -->

Needle items also carry `output_loop`: the greedy output of a failed answer ends in a
periodic run of ≥ 6 tokens (e.g. `899999999`).
"""

PART = SchemaPart(
    defs={"needle_item": NEEDLE_ITEM},
    item="needle_item",
    summary_rules=SUMMARY_RULES,
    notes={"summary_row.metric": _METRICS_DOC},
    tables={"needle_item": NEEDLE_ITEM},
    doc=DOC,
)
