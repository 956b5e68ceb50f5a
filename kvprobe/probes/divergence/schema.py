"""The divergence probe's part of the result file: the schema of its section and summary rows,
their docs, and the ties between them that the schema cannot state (kvprobe.result.schema and
kvprobe.result.ties run them for every registered probe: `Probe.schema_part`, `Probe.ties`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from kvprobe.api import ResultDoc, SchemaPart
from kvprobe.infra.errors import UserError
from kvprobe.result.arrays import ARRAY_DTYPES, decode_array
from kvprobe.result.blocks import (
    INT,
    INTERVAL,
    NUM,
    OPEN_INTERVAL,
    STR,
    brief,
    flag,
    integer,
    listing,
    mapping,
    nullable,
    number,
    pair,
    record,
    ref,
    text,
    when,
    where,
)

Doc = ResultDoc
POOLED = ("kld_mean", "kld_p99", "top1_agree", "ppl")  # the divergence lines print each

ARRAY = record(
    {"dtype": text(enum=["<f4", "|u1"]), "n": INT, "zlib_base64": STR},
    ["dtype", "n", "zlib_base64"],
)
BOUND_STAT = record(
    {"value": NUM, "ci": OPEN_INTERVAL, "n": INT, "positions": pair(INT), "upto": INT},
    ["value", "ci"],
)
SPAN = record(
    {"ctx": integer(lo=1), "span": pair(INT), "n": INT, "kld_mean": BOUND_STAT, "kld_p999": BOUND_STAT},
    ["ctx", "n"],
    additionalProperties=BOUND_STAT,  # every metric with a bound has the same shape
)
DIVERGENCE = record(
    {
        "reference": text("the configuration the others are compared with (the baseline)"),
        "documents": integer("how many of the plan's documents were scored at every position"),
        "bin_edges": listing(
            integer(lo=1),
            "edges of the position bins [e_i, e_i+1): 1, powers of two from 64 below the first checkpoint, "
            "then every checkpoint",
            minItems=2,
        ),
        "block": integer(
            "consecutive positions per bootstrap and test unit (neighbouring tokens are correlated)",
            lo=1,
            hi=1024,
        ),
        "onset_reference": integer(
            'positions below this are "the shortest bins" the later bins are tested against', lo=2
        ),
        "stride": integer(
            "positions between a document's values: position *p* = 1 + `stride` · *j* for index *j* "
            "(1, every position, where absent); a block of `block` positions holds `block` / `stride` values",
            lo=1,
        ),
        "kl": text(
            "what `kld` is: `full` (over the whole vocabulary, from every position's logits; where absent) "
            "or `top_n_tail` (an engine without full logits, a llama-server: over the tokens both the "
            "reference's and the configuration's top `n_probs` list, each its own bucket, plus one "
            "bucket for the rest of the vocabulary; a lower bound of the full KL, by the data-processing "
            "inequality)",
            enum=["full", "top_n_tail"],
        ),
        "n_probs": nullable(
            integer("`top_n_tail`: the top n the KL is over (the fewest a position had); `null`: full", lo=1)
        ),
        "nll_bounded": mapping(
            record({"n": INT, "share": number(minimum=0, maximum=1)}, ["n", "share"]),
            "`top_n_tail` only: {config: {`n`, `share`}}: positions where the engine gave only an upper "
            "bound of the true token's log-prob; `nll` holds the lower bound of the NLL it gives there (so "
            "`ppl` is a lower bound where `n` > 0)",
        ),
        "onset": mapping(
            nullable(
                record({"bin": pair(integer(lo=1)), "ctx": INT, "p_holm": NUM}, ["bin", "ctx", "p_holm"])
            ),
            "{config: `null`, or {`bin` [lo, hi), `ctx` (hi), `p_holm`}}: the first bin from which every "
            "longer bin's KL is significantly above the shortest bins' (one-sided Mann-Whitney U on block "
            "means, Holm-corrected, α = 0.05)",
        ),
        "spans": mapping(
            listing(ref("span")),
            "{test config: [{`ctx`, `span` [lo, hi) (positions since the previous checkpoint), `n`, "
            "`kld_mean` {`value`, `ci` (95% block bootstrap over those positions; `[null, null]` below 10 "
            "blocks), `n`}, `kld_p999` {`value`, `ci` (95% from order statistics over every position up to "
            "`upto`; `null` upper end below 3,687 positions), `n`, `upto`}}]}: what the equivalence test "
            "compares with the bounds",
        ),
        "reference_repeat_max_nll_gap": number(
            "a grouped run only: the largest NLL difference between the reference fed again in a later "
            "group and the first time (0 on CPU; anything else means the groups' KL used different "
            "references)"
        ),
        "null_check": nullable(
            record(
                {
                    "positions": INT,
                    "max_kld": NUM,
                    "mean_kld": NUM,
                    "nonzero_kld": INT,
                    "top1_agree": NUM,
                    "max_nll_gap": NUM,
                    "passed": flag(),
                },
                ["positions", "max_kld", "nonzero_kld", "max_nll_gap", "passed"],
                doc="`null` without `--null-check`; else the reference against a second context "
                "with the same settings: `positions`, `max_kld`, `mean_kld`, `nonzero_kld` (positions with "
                "KL ≠ 0), `top1_agree`, `max_nll_gap` (largest NLL difference), `passed` (KL exactly 0 and "
                "identical NLL everywhere, as it must be on CPU)",
            )
        ),
        "positions": listing(
            record(
                {
                    "config": STR,
                    "doc": INT,
                    "nll": ref("array"),
                    "kld": ref("array"),
                    "top1_agree": ref("array"),
                },
                ["config", "doc", "nll"],
            ),
            "one entry per (config, document): `config`, `doc`, and per-position arrays `nll` (every "
            "configuration), `kld`, `top1_agree` (test configurations); each array is `{dtype, n, "
            "zlib_base64}`: little-endian binary (`<f4` float32, `|u1` 0/1), zlib-compressed, base64 text; "
            "index *j* is position 1 + `stride` · *j* (*j* + 1 with full logits)",
        ),
    },
    ["reference", "bin_edges", "block", "documents", "onset_reference", "onset", "positions"],
)

_BINS = (
    "divergence only: `bin` [lo, hi) are the predicted-token positions aggregated; `scope` is "
    "`bin` (one position bin) or `pooled` (the whole document, positions 1 .. ctx − 1)"
)
SUMMARY_FIELDS = {
    "bin": pair(integer(), _BINS),
    "scope": text(_BINS, enum=["bin", "pooled"]),
    "p_vs_shortest": nullable(
        number(
            "divergence `kld_mean` bin rows at or past `onset_reference` only: Holm-adjusted one-sided "
            "Mann-Whitney p-value that the bin's block means exceed those of positions below "
            "`onset_reference`"
        )
    ),
}
# What the tables print: a value with its interval; a percentile has no interval.
SUMMARY_RULES = (
    when(
        {"probe": {"const": "divergence"}},
        record({"value": NUM, "n": integer(lo=1)}, ["value", "n", "bin", "scope"]),
    ),
    when(
        {"probe": {"const": "divergence"}, "metric": {"enum": ["kld_mean", "top1_agree", "ppl"]}},
        record({"ci": INTERVAL}, ["ci"]),
    ),
)
_METRICS_DOC = (
    "divergence: `kld_mean` (mean KL(reference ‖ config) in nats), `kld_p99`, "
    "`kld_p999` (99th and 99.9th percentiles, linear interpolation as llama-perplexity; `ci` is "
    "`null`), `top1_agree` (share of positions where both argmaxes agree), `ppl` (exp of the mean "
    "NLL of the true next token); intervals are 95% percentile bootstraps over blocks of "
    "`divergence.block` consecutive positions; the reference configuration has only `ppl`"
)
_BIN_CTX = "for divergence rows `ctx` is the bin's upper edge (pooled rows: `run.ctx`)"
DOC = """\
## `divergence`

The reference and every test configuration evaluate the first `documents` documents of the
plan in lockstep: each chunk is decoded by every context, and every position's logits are
reduced at once to per-position numbers (memory never holds more than chunk × n_vocab floats
per context). Position *p* is the prediction of token *p* (1 ≤ *p* < ctx) from tokens 0 … *p* − 1.
An engine without full logits (a llama-server) reads every `stride`-th position's top `n_probs`
log-probs and the true token's: `kl` is then `top_n_tail`, a lower bound of the full KL.

<!-- table: divergence -->
"""

PART = SchemaPart(
    defs={"divergence": nullable(DIVERGENCE), "span": SPAN, "array": ARRAY},
    summary_rules=SUMMARY_RULES,
    summary_fields=SUMMARY_FIELDS,
    section=ref(
        "divergence",
        "the divergence probe's settings, onsets, null check and per-position arrays, see below (`null` "
        "when the scenario has no divergence probe)",
    ),
    notes={
        "summary_row.metric": _METRICS_DOC,
        **dict.fromkeys(("summary_row.config", "summary_row.ctx"), _BIN_CTX),
        **dict.fromkeys(("summary_row.value", "summary_row.ci", "summary_row.n"), "divergence: positions"),
    },
    statistics=("null check",),
    tables={"divergence": DIVERGENCE},
    doc=DOC,
    migrations=(
        ("2", "3", "the divergence `kld_p999` rows and `divergence.spans` from the file's float32 arrays"),
    ),
)


# --- ties ------------------------------------------------------------------------------------------


def _ids(doc: Doc) -> list[str]:
    return [c["id"] for c in doc["configs"]]


def bins_ascend(doc: Doc) -> str | None:
    values = (doc.get("divergence") or {}).get("bin_edges", [])
    if any(b <= a for a, b in itertools.pairwise(values)):
        return f"{where(['divergence', 'bin_edges'])} must ascend, not {brief(values)}"
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
    if (section.get("kl") == "top_n_tail") != (section.get("n_probs") is not None):
        return "divergence.n_probs must be set exactly where divergence.kl is top_n_tail"
    stride = int(section.get("stride") or 1)
    for i, rec in enumerate(section["positions"]):
        at = ["divergence", "positions", i]
        names = ["nll"] if rec["config"] == reference else ["nll", "kld", "top1_agree"]
        for name in names:
            if name not in rec:
                return f"missing {where([*at, name])}"
            if rec[name]["dtype"] != ARRAY_DTYPES[name]:
                return f"{where([*at, name, 'dtype'])} must be {brief(ARRAY_DTYPES[name])}"
            n = rec[name]["n"]
            if n != rec["nll"]["n"] or 1 + stride * (n - 1) > doc["run"]["ctx"]:
                return f"{where([*at, name, 'n'])} must be nll's, its last position at most run.ctx, not {n}"
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


def _reach(section: Doc) -> dict[str, int]:
    """Per configuration, the positions every one of its documents covers: every sampled
    position up to this one."""
    out: dict[str, int] = {}
    stride = int(section.get("stride") or 1)
    for rec in section.get("positions") or []:
        n = rec.get("kld", {}).get("n") if isinstance(rec.get("kld"), dict) else None
        if isinstance(n, int):
            out[rec["config"]] = min(stride * n, out.get(rec["config"], stride * n))
    return out


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
    reach = _reach(section)
    for (config, metric, scope, lo), row in list(rows.items()):
        if config == reference and metric == "ppl":
            needed += [
                (c, m, scope, lo)
                for c in _ids(doc)
                if c != reference and (scope != "bin" or row["bin"][1] - 1 <= reach.get(c, 1 << 62))
                for m in ("kld_mean", "top1_agree")
            ]  # a bin past a configuration's data (--until-decided stopped it) has no row
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


Tie = Callable[[Doc], str | None]
TIES: tuple[Tie, ...] = (bins_ascend, arrays_intact)  # every reader relies on these
TABLE_TIES: tuple[Tie, ...] = (onsets_of_test_configs, divergence_rows_complete)  # the report's tables
