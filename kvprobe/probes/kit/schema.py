"""A question probe's part of the result file: its item rows (the fields every question probe's
rows have, and its own), its accuracy summary rows, and their docs."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from kvprobe.api import SchemaPart
from kvprobe.result.blocks import (
    INTERVAL,
    SHARE,
    Schema,
    flag,
    integer,
    nullable,
    number,
    record,
    text,
    when,
)

COMMON = {
    "config": text("configuration id"),
    "doc": integer("document index"),
    "ctx": integer("checkpoint: the question follows the first `ctx` document tokens", lo=1),
    "key": text("what the question asks about; with `doc` and `ctx` it pairs the item across configurations"),
    "expected": text("the answer, teacher forced after the question (its leading space removed)"),
    "correct": flag(
        "every answer token is the argmax under teacher forcing: greedy decoding would produce it"
    ),
    "logprob": nullable(number("sum of the answer tokens' log-probabilities (natural log); null where NaN")),
    "first_wrong_token": nullable(integer("index of the first answer token that is not the argmax, or null")),
    "answer_tokens": integer("tokens in the answer", lo=1),
    "output": nullable(
        text(
            "the answer when correct; otherwise what greedy decoding produced, or null where the probe's "
            "`generate` is off"
        )
    ),
    "output_correct": nullable(
        flag(
            "`output` starts with `expected` (letters and digits compared, case and punctuation ignored); "
            "the statistics use `correct`"
        )
    ),
    "position": integer("token index of the first span the question is about"),
    "depth": number("`position / ctx`", minimum=0, maximum=1),
    "distance": integer("tokens between the last span the question is about and the question"),
    "output_ended_turn": flag("chat form: the reply ended its turn at once"),
    "output_candidate": nullable(
        integer(
            "which of the group's planted answers `output` gives (1: the first in the document; null: none); "
            "another than the item's own is a confusion",
            lo=1,
        )
    ),
}
REQUIRED = ["doc", "key", "expected", "correct", "logprob", "answer_tokens", "depth"]


def row(**fields: Schema) -> Mapping[str, Schema]:
    """A question probe's own row fields (`QuestionProbe.row_fields`), in order, read-only."""
    return MappingProxyType(fields)


def part(name: str, about: str, fields: Mapping[str, Schema]) -> SchemaPart:
    item = record({**COMMON, **fields}, [*REQUIRED, *fields])
    defs = f"{name}_item"
    accuracy = when(
        {"probe": {"const": name}, "metric": {"const": f"{name}_accuracy"}},
        record({"value": SHARE, "ci": INTERVAL, "n": integer(lo=1)}, ["value", "ci", "n"]),
    )
    doc = (
        f'## `items[]` with `probe: "{name}"`\n\n{about} One row per (configuration, question, '
        "checkpoint); rows with the same `doc`, `ctx` and `key` are the same question to every "
        f"configuration.\n\n<!-- table: {defs} -->\n"
    )
    return SchemaPart(
        defs={defs: item},
        item=defs,
        summary_rules=(accuracy,),
        notes={
            "summary_row.metric": (
                f"{name}: `{name}_accuracy` (share answered; 95% Wilson), `{name}_logprob` (mean answer "
                "log-prob; 95% percentile bootstrap)."
            )
        },
        tables={defs: item},
        doc=doc,
    )
