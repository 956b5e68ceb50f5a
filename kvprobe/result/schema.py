"""The result file's schema, stated once: a JSON Schema (draft 2020-12) that every result file
(kvprobe.result.store) and every journal line (kvprobe.result.journal) is validated with, and
whose descriptions are the tables of docs/result-schema.md:

    python -m kvprobe.result.schema docs/result-schema.md           # regenerate the tables
    python -m kvprobe.result.schema docs/result-schema.md --check   # exit 1 if they are stale
    python -m kvprobe.result.schema --json                          # the schema itself

A field is typed wherever it appears; it is required where a reader indexes it. Semantic ties
between fields (the baseline among the configs, ...) are kvprobe.result.ties.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped]

Schema = dict[str, Any]

# Bounds that keep every reader's arithmetic finite and its loops short.
MAX_TOKENS = 2**31 - 1  # positions, token counts: llama.cpp's int32
MAX_CTX = 2**24  # --ctx (kvprobe takes up to 2**20): bounds what a per-position array may decompress to
MAX_LAYERS = 100_000  # kv_cache_bytes loops over the layers
MAX_DEPTH = 64  # nesting: the deepest real file is about 10 levels deep


# --- building blocks ------------------------------------------------------------------------------


def of(kind: str | list[str], doc: str = "", **more: Any) -> Schema:
    out: Schema = {"type": kind, **more}
    if doc:
        out["description"] = doc
    return out


def integer(doc: str = "", lo: int = 0, hi: int = MAX_TOKENS, **more: Any) -> Schema:
    return of("integer", doc, minimum=lo, maximum=hi, **more)


def number(doc: str = "", **more: Any) -> Schema:
    return of("number", doc, **more)


def text(doc: str = "", **more: Any) -> Schema:
    return of("string", doc, **more)


def flag(doc: str = "") -> Schema:
    return of("boolean", doc)


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    out = {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


def listing(items: Schema, doc: str = "", **more: Any) -> Schema:
    return of("array", doc, items=items, **more)


def pair(items: Schema, doc: str = "") -> Schema:
    return listing(items, doc, minItems=2, maxItems=2)


def record(properties: dict[str, Schema], required: Sequence[str] = (), doc: str = "", **more: Any) -> Schema:
    """An object. jsonschema reports in the order of the keywords: what is missing first, then
    what a kind of row must hold (`allOf`), then the fields' own types."""
    out: Schema = {"type": "object"}
    if required:
        out["required"] = list(required)
    if "allOf" in more:
        out["allOf"] = more.pop("allOf")
    out |= {"properties": properties, **more}
    if doc:
        out["description"] = doc
    return out


def mapping(values: Schema, doc: str = "") -> Schema:
    """An object whose keys are names (config ids, probes, ...), each with a value of `values`."""
    return of("object", doc, additionalProperties=values)


def ref(name: str, doc: str = "") -> Schema:
    out: Schema = {"$ref": f"#/$defs/{name}"}
    if doc:
        out["description"] = doc
    return out


def when(condition: Schema, then: Schema) -> Schema:
    return {"if": {"properties": condition, "required": list(condition)}, "then": then}


NUM = number()
ANY_NUM = nullable(number())  # a value that may have been NaN (stored as null)
INT = integer()
STR = text()
INTERVAL = pair(NUM)  # [lo, hi]
OPEN_INTERVAL = pair(ANY_NUM)  # an end may be missing (too little data)
STATUS = text(enum=["equivalent", "undecided", "worse"])


# --- items ------------------------------------------------------------------------------------------

ITEM_COMMON = {
    "probe": text("the probe that measured it"),
    "config": STR,
    "doc": INT,
    "ctx": integer(lo=1),
}

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
SHARE = number(minimum=0, maximum=1)
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

ITEM = record(
    ITEM_COMMON,
    ["probe", "config", "ctx"],
    allOf=[
        when({"probe": {"const": "needle"}}, ref("needle_item")),
        when({"probe": {"const": "repetition"}}, ref("repetition_item")),
    ],
)


# --- summary rows ---------------------------------------------------------------------------------

SUMMARY_ROW = record(
    {
        "probe": text("`needle`, `repetition` or `divergence`"),
        "metric": text(
            "needle: `accuracy` (share of correct items; `ci` is the 95% Wilson interval), "
            "`answer_logprob` (mean answer log-prob; 95% percentile bootstrap). repetition: `seq_rep_4`, "
            "`distinct_2`, `compression_ratio`, `first_difference` (means, 95% bootstrap), `loop_rate` "
            "(share of looping continuations, 95% Wilson); config `(text)` rows describe the document's "
            "own continuation. divergence: `kld_mean` (mean KL(reference ‖ config) in nats), `kld_p99`, "
            "`kld_p999` (99th and 99.9th percentiles, linear interpolation as llama-perplexity; `ci` is "
            "`null`), `top1_agree` (share of positions where both argmaxes agree), `ppl` (exp of the mean "
            "NLL of the true next token); intervals are 95% percentile bootstraps over blocks of "
            "`divergence.block` consecutive positions; the reference configuration has only `ppl`"
        ),
        "config": text(
            "as in items; for divergence rows `ctx` is the bin's upper edge (pooled rows: `run.ctx`)"
        ),
        "ctx": integer(
            "as in items; for divergence rows `ctx` is the bin's upper edge (pooled rows: `run.ctx`)", lo=1
        ),
        "value": nullable(number("estimate, interval [lo, hi], number of items (divergence: positions)")),
        "ci": nullable(pair(ANY_NUM, "estimate, interval [lo, hi], number of items (divergence: positions)")),
        "n": integer("estimate, interval [lo, hi], number of items (divergence: positions)"),
        "bin": pair(
            integer(),
            "divergence only: `bin` [lo, hi) are the predicted-token positions aggregated; `scope` is "
            "`bin` (one position bin) or `pooled` (the whole document, positions 1 .. ctx − 1)",
        ),
        "scope": text(
            "divergence only: `bin` [lo, hi) are the predicted-token positions aggregated; `scope` is "
            "`bin` (one position bin) or `pooled` (the whole document, positions 1 .. ctx − 1)",
            enum=["bin", "pooled"],
        ),
        "p_vs_shortest": nullable(
            number(
                "divergence `kld_mean` bin rows at or past `onset_reference` only: Holm-adjusted one-sided "
                "Mann-Whitney p-value that the bin's block means exceed those of positions below "
                "`onset_reference`"
            )
        ),
    },
    ["probe", "metric", "config", "ctx"],
    # What the tables print: a value with its interval. NaN (null) is possible only where a mean
    # of items may be NaN (answer_logprob); a percentile has no interval.
    allOf=[
        when(
            {"probe": {"const": "needle"}, "metric": {"const": "accuracy"}},
            record({"value": SHARE, "ci": INTERVAL, "n": integer(lo=1)}, ["value", "ci", "n"]),
        ),
        when(
            {"probe": {"const": "repetition"}},
            record({"value": NUM, "ci": INTERVAL, "n": integer(lo=1)}, ["value", "ci", "n"]),
        ),
        when(
            {"probe": {"const": "divergence"}},
            record({"value": NUM, "n": integer(lo=1)}, ["value", "n", "bin", "scope"]),
        ),
        when(
            {"probe": {"const": "divergence"}, "metric": {"enum": ["kld_mean", "top1_agree", "ppl"]}},
            record({"ci": INTERVAL}, ["ci"]),
        ),
    ],
)


# --- the file's sections ----------------------------------------------------------------------------

_GGUF = "the GGUF file"
KV_LAYOUT = record(
    {
        "n_layer": integer(hi=MAX_LAYERS),
        "n_head_kv": listing(INT, maxItems=MAX_LAYERS),
        "head_dim_k": INT,
        "head_dim_v": INT,
        "n_swa": INT,
        "swa_layers": listing(flag(), maxItems=MAX_LAYERS),
    },
    ["n_layer", "n_head_kv", "head_dim_k", "head_dim_v", "n_swa", "swa_layers"],
)
# What a schema-2 file's KV layout is rebuilt from (kv_layout_from_metadata): bounded, so the
# layout it makes is too.
METADATA = of(
    "object",
    "selected GGUF keys: name, layers, heads, KV heads, head dims, sliding window",
    patternProperties={
        r"\.block_count$": integer(hi=MAX_LAYERS),
        r"\.attention\.head_count(_kv)?$": of(["integer", "array"], items=INT, maxItems=MAX_LAYERS),
        r"\.(embedding_length|attention\.key_length|attention\.value_length|attention\.sliding_window)$": INT,
    },
)
MODEL = record(
    {
        "path": nullable(text(_GGUF)),
        "name": nullable(text(_GGUF)),
        "size_bytes": nullable(integer(_GGUF, hi=2**63 - 1)),
        "sha256": text("SHA-256 of the whole file"),
        "architecture": nullable(text("`general.architecture`")),
        "n_ctx_train": nullable(integer("`<arch>.context_length`")),
        "file_type": nullable(text("`general.file_type` as a name (`MOSTLY_Q4_K_M`)")),
        "n_params": nullable(integer("sum of tensor element counts", hi=2**63 - 1)),
        "metadata": METADATA,
        "kv_layout": ref(
            "kv_layout",
            "what the KV memory of any cache type needs (`kv_cache_bytes`, the doctor's formula): `n_layer`, "
            "`n_head_kv` (per layer), `head_dim_k`, `head_dim_v`, `n_swa`, `swa_layers` (per layer)",
        ),
        "findings": listing(
            record({k: nullable(STR) for k in ("rule", "severity", "message", "evidence", "fix")}),
            "`kvprobe doctor`'s findings for the file: list of {`rule`, `severity` (`serious`, `warning`, "
            "`info`), `message`, `evidence` (the metadata key or tensor), `fix`}",
        ),
    },
    ["sha256"],
)

_FORKS = (
    "1 + the most forks alive at once, true, true: queries and continuations run in forked sequences "
    "that share the document's cells; full-size SWA cache so a fork never evicts the prefix"
)
_ROTATION = "whether llama.cpp's Hadamard rotation of quantized caches was allowed"
RUNTIME = nullable(
    record(
        {
            "llama_cpp_python": nullable(text("llama-cpp-python version (pins the vendored llama.cpp)")),
            "llama_cpp_version": nullable(text("`llama_version()` of the compiled library")),
            "llama_cpp_build": nullable(
                text("`llama_print_system_info()`: the compiled backend and CPU features")
            ),
            "gpu_offload_supported": nullable(flag("`llama_supports_gpu_offload()`")),
            "backend": nullable(text("`cpu` or `gpu` (layers offloaded)")),
            "n_threads": nullable(integer("as used")),
            "n_gpu_layers": nullable(integer("as used", lo=-1)),
            "extra_bufts": nullable(
                flag(
                    "whether the models were loaded with llama.cpp's extra CPU buffer types (repacked and "
                    "AMX weight kernels); false is llama.cpp's `--no-repack`. One setting for every "
                    "configuration of a run"
                )
            ),
            "extra_bufts_check": nullable(
                text(
                    "`passed` (a child process decoded with them), `crashed` (the child died of a crash "
                    "signal or gave non-finite logits, and the same decode without them ran: the run fell "
                    "back), `skipped` (they cannot matter: no AMX/REPACK in the build, no quantized weight "
                    "type they handle, or all layers on the GPU), `forced_off` (`--no-repack`), "
                    "`inconclusive` (the check hung, was killed from outside, or failed without extra "
                    "buffer types too; they stay on, nothing is cached)"
                )
            ),
            "extra_bufts_reason": nullable(
                text("the sentence behind it, e.g. the signal the child died with")
            ),
            "extra_bufts_check_cached": nullable(
                flag(
                    "the answer came from the cache (`~/.cache/kvprobe/kernel-checks.json`, keyed by "
                    "llama.cpp build (llama-cpp-python and llama.cpp versions, compiled features), CPU model "
                    "and flags, and weight types)"
                )
            ),
            "weight_buffers_mib": mapping(
                mapping(NUM),
                "per model file, the buffers llama.cpp put the weights in, MiB by buffer type "
                "(`CPU_Mapped`, `CPU_REPACK`, `AMX`, `CUDA0`, …), read from its load log: which kernels "
                "actually ran",
            ),
            "n_ctx": nullable(
                integer(
                    "context size of every context (`--ctx` + the cells the probes' forks take at once: a "
                    "chunk of batched needle queries and their failed answers' continuations, or the "
                    "parallel continuations; rounded up to 256)"
                )
            ),
            **{
                k: nullable(
                    integer("both equal the chunk: the fixed batch shape shared by all configurations")
                )
                for k in ("n_batch", "n_ubatch")
            },
            **{
                k: nullable(of(kind, _FORKS))
                for k, kind in (("n_seq_max", "integer"), ("kv_unified", "boolean"), ("swa_full", "boolean"))
            },
            "flash_attn": nullable(flag("flash attention requested for every configuration")),
            "attn_rotation": nullable(flag(_ROTATION)),
            "env_LLAMA_ATTN_ROT_DISABLE": nullable(text(_ROTATION)),
        }
    )
)

HOST = nullable(
    record(
        {
            "hostname": nullable(STR),
            "os": nullable(STR),
            "python": nullable(STR),
            "cpu": nullable(STR),
            "cpu_count": nullable(INT),
            "memory_gb": nullable(NUM),
            "gpus": listing(
                record(
                    {
                        "index": nullable(INT),
                        "name": nullable(STR),
                        "memory_gb": nullable(NUM),
                        "driver": nullable(STR),
                    }
                )
            ),
        }
    )
)

CONFIG = record(
    {
        "id": text(
            "`f16`, `q4_0`, ... when K and V agree; `k=q4_0,v=f16` for an asymmetric pair (`--split-kv` "
            "adds `k=T,v=f16` and `k=f16,v=T`); with two models `ref:<cache>` / `test:<cache>`"
        ),
        "model": text("with two models only: `ref` or `test`"),
        "type_k": text("cache types that took effect"),
        "type_v": text("cache types that took effect"),
        "flash_attn": nullable(flag("flash attention as applied")),
        "attn_rot_k": nullable(flag("Hadamard rotation applied to K / V")),
        "attn_rot_v": nullable(flag("Hadamard rotation applied to K / V")),
        "n_ctx": nullable(integer("context size applied")),
        "model_sha256": text("weights used by this configuration"),
        "started": flag(
            "`false` for a configuration whose configuration group never started (a run stopped early: "
            "the fields llama.cpp reports are then `null`); absent otherwise"
        ),
    },
    ["id", "type_k", "type_v"],
)

SCENARIO = record(
    {
        "name": STR,
        "sha256": STR,
        "spec": record({"repetition": record({"tokens": integer(lo=1)}, ["tokens"])}),
    },
    ["name", "sha256"],
)

RUN = record(
    {
        "ctx": integer(lo=1, hi=MAX_CTX),
        "seed": integer(hi=2**32 - 1),  # numpy's generators refuse a negative seed
        "mode": text(enum=["onepass", "classic"]),
        "checkpoints": listing(integer(lo=1), minItems=1),
        "chunk": integer(lo=1),
        "null_check": flag(),
    },
    ["ctx", "seed", "mode", "checkpoints"],
)

PREFILL_SPAN = record(
    {"ctx": INT, "depth": pair(INT), "tokens": INT, "s": NUM, "tokens_per_s": ANY_NUM, "all_logits": flag()},
    ["depth"],
)
TIMING = record(
    {
        "wall_s": number(minimum=0),
        "units": listing(listing(NUM, minItems=6, maxItems=7)),
        "groups": listing(listing(STR)),
        "resume": record(
            dict.fromkeys(
                ("units_restored", "restored_tokens", "restored_s", "refeed_tokens", "refeed_s"), NUM
            )
        ),
        "decode_s": mapping(NUM),
        "per_config_s": mapping(NUM),
        "probes": mapping(record({"s": NUM, "tokens": INT, "items": INT})),
        "prefill": mapping(listing(PREFILL_SPAN)),
        "tokens_evaluated": integer(hi=2**63 - 1),
        "null_check_tokens": integer(hi=2**63 - 1),
        "naive_tokens": integer(hi=2**63 - 1),
    },
    ["wall_s", "tokens_evaluated", "naive_tokens"],
)

STATISTICS = record(
    {"complete": flag(), "errors": listing(record({"what": STR, "error": STR}))},
)


# --- the verdict ---------------------------------------------------------------------------------------

PAIRED_ROW = record(
    {
        "probe": STR,
        "metric": STR,
        "config": STR,
        "ctx": integer(lo=1),
        "test_value": ANY_NUM,
        "baseline_value": ANY_NUM,
        "diff": NUM,
        "ci": INTERVAL,
        "p_worse": ANY_NUM,
        "p_holm": ANY_NUM,
        "test": STR,
        "n": INT,
    },
    ["metric", "ctx", "diff", "ci"],
)
TEST = record(
    {
        "metric": STR,
        "value": NUM,
        "ci": OPEN_INTERVAL,
        "margin": NUM,
        "kind": text(enum=["two-sided", "bound"]),
        "status": STATUS,
        "n": INT,
        "p": ANY_NUM,
        "items_needed": nullable(INT),
    },
    ["metric", "value", "ci", "margin", "kind", "status", "n"],
)
EQUIVALENCE = record(
    {
        "status": STATUS,
        "effective_context": nullable(INT),
        "first_worse": nullable(INT),
        "checkpoints": listing(
            record(
                {
                    "ctx": INT,
                    "status": STATUS,
                    "decided_by": listing(STR),
                    "significant_loss": flag(),
                    "items_needed": nullable(INT),
                    "tests": listing(ref("test")),
                },
                ["ctx", "status", "decided_by", "significant_loss", "tests"],
            )
        ),
    },
    ["status", "checkpoints"],
)
CONFIG_VERDICT = record(
    {
        "config": STR,
        "paired": listing(ref("paired_row")),
        "onset_accuracy": nullable(INT),
        "onset_logprob": nullable(INT),
        "equivalence": ref("equivalence"),
        "effective_context": nullable(INT),
        "divergence_onset": nullable(INT),
        "accuracy_share": nullable(
            record(
                {"threshold": NUM, "ctx": INT, "ci": pair(INT), "first": INT},
                ["threshold", "ctx", "ci", "first"],
            )
        ),
        "halving": nullable(
            record(
                {
                    "length": ANY_NUM,
                    "ci": nullable(OPEN_INTERVAL),
                    "reference_accuracy": ANY_NUM,
                    "not_estimable": nullable(STR),
                }
            )
        ),
        "sentence": nullable(STR),
    },
)
SAVING = nullable(
    record({"bytes": INT, "reference_bytes": INT, "saved_bytes": integer(lo=-(2**63)), "saved_pct": NUM})
)
RECOMMENDATION = record(
    {
        "ctx": INT,
        "config": STR,
        "flags": STR,
        "equivalent": flag(),
        "memory_at_ctx": SAVING,
        "memory_at_training_context": SAVING,
        "n_ctx_train": nullable(INT),
        "evidence": listing(STR),
        "not_chosen": listing(record({"config": STR, "status": STR, "why": STR})),
        "asymmetric": nullable(
            record(
                {
                    "quant": STR,
                    "config": STR,
                    "flags": STR,
                    "measured": flag(),
                    "status": nullable(STR),
                    "kv_bytes": nullable(INT),
                    "relative_size": NUM,
                }
            )
        ),
        "sentence": STR,
    },
    ["config", "sentence"],
)
_HALF = record(
    {
        "config": STR,
        "status": nullable(STR),
        "onset": nullable(INT),
        "logprob_diff": ANY_NUM,
        "logprob_ci": nullable(OPEN_INTERVAL),
        "logprob_p_holm": ANY_NUM,
        "ctx": nullable(INT),
        "kld_mean": ANY_NUM,
        "kld_ci": nullable(OPEN_INTERVAL),
    }
)
K_VS_V = record(
    {
        "quant": STR,
        "fault": text(enum=["K", "V", "both", "neither", "undecided"]),
        "more_sensitive": nullable(text(enum=["K", "V"])),
        "reason": STR,
        "evidence": listing(record({"metric": STR, "points_to": nullable(STR)})),
        "k_only": _HALF,
        "v_only": _HALF,
        "sentence": STR,
    },
)
WEIGHTS_VS_KV = record(
    {
        "cache": STR,
        "fault": text(enum=["kv", "weights", "both", "neither", "inconclusive"]),
        "reason": STR,
        "effects": mapping(mapping(listing(record({"ctx": INT, "diff": NUM, "ci": OPEN_INTERVAL})))),
        "sentence": STR,
    },
)
VERDICT = record(
    {
        "reference_check": listing(
            STR,
            "why the reference itself limits what accuracy can show, judged from its items at the shortest "
            "checkpoint (it retrieves less than 75% of its needles, or ends its turn at once), with the "
            "likely cause; `[]` or absent: it does not",
        ),
        "margins": mapping(
            number(exclusiveMinimum=0),
            "the equivalence margins used: {`accuracy`: 0.05, `answer_logprob`: 0.25 (nats), `kld_mean`: "
            "0.02, `kld_p999`: 0.5 (nats; upper bounds)} unless `--margin` set them",
        ),
        "configs": mapping(
            ref("config_verdict"),
            "{config id: {`equivalence` {`status` (`equivalent`: every checkpoint equivalent and no "
            "significant loss, up to the longest; `worse`: some checkpoint worse beyond a margin; else "
            "`undecided`), `effective_context`, `first_worse`, `checkpoints` [{`ctx`, `status`, "
            "`decided_by` (metrics), `significant_loss` (at or past the onset), `items_needed` (undecided: "
            "about how many items would decide at 80% power), `tests` [{`metric`, `value` (difference test "
            "− reference; for a bound, the value), `ci` (95%: bootstrap-t for continuous items (t below 10 "
            "items), Newcombe for pass/fail, block bootstrap for KL), `margin`, `kind` (`two-sided` or "
            "`bound`), `status`, `n`, `p` (larger one-sided p, continuous only), `items_needed`}]}]}, "
            "`effective_context` (the longest checkpoint up to which every checkpoint is equivalent, before "
            "the onset), `onset_accuracy`, `onset_logprob` (the shortest checkpoint from which the "
            "configuration is significantly worse than the baseline at every longer one: exact McNemar / "
            "Wilcoxon signed-rank, one-sided, Holm across checkpoints), `accuracy_share` (secondary: "
            "{`threshold` 0.85, `ctx` (longest checkpoint keeping >= 85% of the reference's accuracy; 0 = "
            "below the first), `ci` (95% bootstrap over items, checkpoints), `first`}), `halving` {`length` "
            "(tokens where a logistic fit of accuracy in log2 L reaches half the baseline's accuracy; only "
            "where accuracy falls significantly), `ci`, `reference_accuracy`, `not_estimable` (why `length` "
            "is null)}, `divergence_onset`, `sentence`, `paired` (per metric and checkpoint: `test_value`, "
            "`baseline_value`, `diff`, `ci` (Newcombe for accuracy, bootstrap for means), `p_worse`, "
            "`p_holm`, `test`, `n`)}}",
        ),
        "k_vs_v": listing(
            K_VS_V,
            "with `--split-kv`, per quantized type: `fault` (`K`, `V`, `both`, `neither`, `undecided`), "
            "`more_sensitive` (`K`, `V` or null: where the evidence points, also when both are at fault), "
            "`reason`, `evidence` [{`metric`: `kld_mean` (K-only and V-only pooled means) or "
            "`answer_logprob`/`accuracy` (K-only − V-only paired at the longest checkpoint: `diff`, `ci`, "
            "`p`, `n`), `points_to`: the half, when significant and material (KL: non-overlapping "
            "intervals, twice and above half the bound; items: at least half the margin)}], "
            "`k_only`/`v_only` (status, onset, answer log-prob difference at the longest checkpoint with "
            "Holm p, pooled mean KL with interval), `sentence`",
        ),
        "weights_vs_kv": nullable(
            {
                **WEIGHTS_VS_KV,
                "description": "with two models: `cache`, `fault` (`kv`, `weights`, `both`, `neither`, "
                "`inconclusive`), `reason`, `effects` per metric (`kv_at_ref_weights`, "
                "`kv_at_test_weights`, `weights_at_f16_cache`: paired rows as above; `interaction`: per "
                "checkpoint mean of (TEST:q − TEST:f16) − (REF:q − REF:f16) over items, bootstrap interval, "
                "two-sided Wilcoxon p), `sentence`",
            }
        ),
        "recommendation": ref(
            "recommendation",
            "`ctx`, `config` (the cheapest by KV memory that is equivalent up to `ctx`; the reference where "
            "none is), `flags` (llama.cpp options), `equivalent`, `memory_at_ctx` and "
            "`memory_at_training_context` ({`bytes`, `reference_bytes`, `saved_bytes`, `saved_pct`}: one "
            "sequence, as llama-server allocates it), `n_ctx_train`, `evidence` (the tests at `ctx`, in "
            "words), `not_chosen` [{`config`, `status`, `why`}] (the cheaper ones), `asymmetric` (where K "
            "of a cache below 8 bits is the more sensitive half: `config` `k=q8_0,v=<type>`, `flags`, "
            "`measured`, `status`, `kv_bytes`), `sentence`",
        ),
        "folklore": listing(
            record({"rule": STR, "finding": STR, "evidence": STR}, ["rule", "finding", "evidence"]),
            "the source documents' rules of thumb: [{`rule`, `finding` (`holds`, `does not hold`, "
            "`undecided`, `not tested in this run`), `evidence`}]",
        ),
        "sentences": listing(STR, 'what `kvprobe run` prints under "Verdict"'),
        "migrated_from_schema": integer(
            "the schema version of a file whose verdict was rebuilt when it was read (2)", lo=1
        ),
    },
    ["sentences"],
)


# --- the divergence section -------------------------------------------------------------------------

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
            "index *j* is position *j* + 1",
        ),
    },
    ["reference", "bin_edges", "block", "documents", "onset_reference", "onset", "positions"],
)


# --- the whole file ----------------------------------------------------------------------------------

_TIMING_DOC = (
    "`wall_s`, `units` ([doc, step, seconds, tokens, feed_s, reduce_s] per unit, with the group as a "
    "seventh number in a grouped run; in one group's order), `groups` (a run in configuration groups only, "
    "`--max-contexts` or chosen for the memory: the config ids of each group, in run order; the reference "
    "repeats in every group where the divergence probe compares logits with it, and its rows come from the "
    "first), `resume` (a resumed run only: `units_restored`, `restored_tokens`, `restored_s`, and "
    "`refeed_tokens`, `refeed_s`: the document prefixes fed again to rebuild the lockstep state), "
    "`decode_s` {config id: seconds inside `llama_decode`}, `probes` {probe: {`s`, `tokens`, `items`}} "
    "(each probe's work at the checkpoints in this process, every configuration: needle queries, "
    "continuations; restored units not counted), `prefill` {config id: [{`ctx`, `depth` [from, to], "
    "`tokens`, `s`, `tokens_per_s`, `all_logits`}]} (document tokens fed between checkpoints and the "
    "seconds `llama_decode` took for them: prefill speed at depth; documents whose every position's logits "
    "were computed count only where no other document reached that depth, and `all_logits` says so), "
    "`tokens_evaluated` (document + query + generated tokens, all configurations), `null_check_tokens` "
    "(tokens of the null-check context), `naive_tokens` (what one fresh prompt per item, as RULER builds "
    "them, would have evaluated for the same items and configurations; for the divergence probe, one run "
    "per checkpoint length); schema 1 had `per_config_s` {config id: seconds}"
)

RESULT = record(
    {
        "schema_version": integer(
            "`3`. Bumped on any incompatible change, with a migration from the version before.", lo=1, hi=3
        ),
        "kvprobe_version": text("version of kvprobe that wrote the file"),
        "created": text("UTC time the run started, ISO 8601 (`2026-11-22T05:10:03Z`)"),
        "command": text("the command line as typed"),
        "model": ref("model", "the weights, see below"),
        "runtime": {**RUNTIME, "description": "llama.cpp build and the settings every context used"},
        "host": {**HOST, "description": "the machine"},
        "configs": listing(
            ref("config"),
            "one entry per cache configuration, in run order (baseline first); one whose configuration "
            "group never started (a run stopped early) has `started: false` and `null` for what llama.cpp "
            "reports",
            minItems=1,
        ),
        "baseline": nullable(text("`id` of the reference configuration (`null` with `--baseline none`)")),
        "scenario": {
            **SCENARIO,
            "description": "`name`, `sha256` (of the canonical JSON of `spec`) and `spec` (the parsed "
            "scenario, every key with its value)",
        },
        "run": {
            **RUN,
            "description": "`ctx` (the `--ctx` asked for), `seed`, `mode` (`onepass` or `classic`), "
            "`checkpoints` (context lengths at which queries were asked), `chunk` (tokens per "
            "`llama_decode`), `null_check` (whether `--null-check` was given)",
        },
        "prompt": record(
            {
                "format": text(
                    enum=["raw", "chat"], doc="`raw` (completion text) or `chat` (the model's chat template)"
                ),
                "why": text(
                    "what decided the format (`--prompt-format chat`, the model has no chat template, ...)"
                ),
                "bos": text(enum=["template", "tokenizer", "none"], doc="where the one BOS token came from"),
                "template_sha256": text("chat form: sha256 of the template text"),
                "template_source": text("`gguf` (tokenizer.chat_template) or `file NAME` (--chat-template)"),
                "template_family": text("ChatML, Llama 3, Gemma, Mistral, ... or `unrecognised`"),
                "system": nullable(text("the system message kvprobe added (`--system`); null: none")),
                "default_system": text('the system message the template adds by itself ("": none)'),
                "thinking": text(
                    enum=["none", "disabled", "closed"],
                    doc="a reasoning template's thinking block: `disabled` by its own switch, `closed` by "
                    "kvprobe after the generation prompt, `none`",
                ),
                "prefix_tokens": integer("tokens before the document (the documents' offset)", lo=0),
                "turn_end_tokens": integer("tokens after each question up to the reply", lo=0),
                "prefix_text": text("the template's text before the user's message"),
                "turn_end_text": text("its text after the message, up to the assistant header"),
            },
            ["format"],
            doc="the prompt format that took effect; files without it are raw",
        ),
        "items": listing(ref("item"), "one row per probe item, see below"),
        "text_items": listing(
            ref("item"), "repetition rows of the document's own text (calibration), see below"
        ),
        "summary": listing(ref("summary_row"), "long-format aggregate rows, see below"),
        "models": nullable(
            record(
                {"ref": ref("model"), "test": ref("model")},
                ["ref", "test"],
                description="with two `--model` files (weights-vs-KV): {`ref`: model, `test`: model}, each "
                "as `model` below; `model` is then the REF one",
                allOf=[{"properties": {k: {"required": ["name"]} for k in ("ref", "test")}}],
            )
        ),
        "verdict": ref(
            "verdict",
            "equivalence, effective context, onset and decay per configuration, K-vs-V, weights-vs-KV, the "
            "recommendation, the rules of thumb, and the sentences shown to the user; see below",
        ),
        "divergence": ref(
            "divergence",
            "the divergence probe's settings, onsets, null check and per-position arrays, see below (`null` "
            "when the scenario has no divergence probe)",
        ),
        "complete": flag(
            "false when the run ended early: interrupted (Ctrl-C, SIGTERM) or at its `--time-budget`. Files "
            "without it are complete"
        ),
        "stopped": nullable(text('`"interrupted"` or `"time budget"`; null for a complete run')),
        "missing": listing(
            listing(INT, minItems=2, maxItems=3),
            "the units not measured, as `[doc, step]` (step: index into `run.checkpoints`; in classic mode "
            "`[prompt, 0]`), or `[doc, step, group]` for a unit of configuration group 1 or later "
            "(`timing.groups`)",
        ),
        "timing": {**TIMING, "description": _TIMING_DOC},
        "statistics": {
            **STATISTICS,
            "description": "`complete` (every statistic was computed) and `errors`: [{`what` (needle "
            "summary, repetition summary, divergence curve, null check, verdict), `error`}] for each that "
            "failed; the measured items are in the file either way, and the statistics can be recomputed "
            "from it",
        },
        "non_finite": listing(
            STR,
            "JSON paths (`$.summary[3].ci[1]`) of values that were NaN or infinite and are stored as `null` "
            "(JSON has neither)",
        ),
        "warnings": listing(
            STR,
            "plain-language warnings shown during the run (e.g. `--ctx` beyond the training context)",
        ),
    },
    ["schema_version", "configs", "baseline", "model", "scenario", "run", "items", "summary", "timing"],
)

DEFS: dict[str, Schema] = {  # null where a null is what every use of it allows
    "item": ITEM,
    "needle_item": NEEDLE_ITEM,
    "repetition_item": REPETITION_ITEM,
    "summary_row": SUMMARY_ROW,
    "model": MODEL,
    "kv_layout": nullable(KV_LAYOUT),
    "config": CONFIG,
    "verdict": nullable(VERDICT),
    "config_verdict": CONFIG_VERDICT,
    "equivalence": nullable(EQUIVALENCE),
    "test": TEST,
    "paired_row": PAIRED_ROW,
    "recommendation": nullable(RECOMMENDATION),
    "divergence": nullable(DIVERGENCE),
    "span": SPAN,
    "array": ARRAY,
}

SCHEMA: Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kvprobe.invalid/result-schema-3.json",
    "title": "kvprobe result file, schema version 3",
    **RESULT,
    "$defs": DEFS,
}


# --- validation ------------------------------------------------------------------------------------------


def _whole_number(checker: Any, value: Any) -> bool:
    """JSON Schema counts 1.0 as an integer; the readers index and loop with these."""
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _whole_number),
)


@functools.cache
def validator(definition: str | None = None) -> Any:
    """The validator of the whole file, or of one of its definitions ("item", ...)."""
    schema = SCHEMA if definition is None else {"$defs": DEFS, "$ref": f"#/$defs/{definition}"}
    return _Validator(schema)


def check_against(schema: Schema) -> Any:
    """A validator for another document's schema (a journal line) that may use these definitions."""
    return _Validator({**schema, "$defs": DEFS})


def first_problem(validating: Any, value: Any, root: str = "") -> str | None:
    """The first field of `value` that `validating` refuses, in words: "verdict must be an
    object or null, not a string", "missing items"; None when it is valid. `root` names
    `value` itself where it is part of something else ("probe_data.divergence")."""
    error = next(iter(validating.iter_errors(value)), None)
    if error is None:
        return None
    return describe(error, root)


def where(path: Sequence[Any], root: str = "") -> str:
    """A JSON path as the user reads it: `verdict.configs["k=q4_0,v=f16"].sentence`, `items[3]`."""
    out = root
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", step):
            out += f".{step}" if out else step
        else:
            out += f"[{brief(step)}]"
    return out


def brief(value: Any) -> str:
    """A value in one short line: JSON escapes every control character."""
    try:
        shown = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        shown = type(value).__name__
    return shown if len(shown) <= 40 else shown[:37] + "..."


_KINDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def _kind(value: Any) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return brief(value)
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def describe(error: Any, root: str = "") -> str:
    """One jsonschema error in words, naming the JSON path of the field."""
    path = list(error.absolute_path)
    at = where(path, root) or "the file"
    value, limit, keyword = error.instance, error.validator_value, error.validator
    if keyword == "type":
        kinds = [limit] if isinstance(limit, str) else list(limit)
        return f"{at} must be {' or '.join(_KINDS.get(k, k) for k in kinds)}, not {_kind(value)}"
    if keyword == "required":
        missing = next((k for k in limit if isinstance(value, dict) and k not in value), limit[0])
        return f"missing {where([*path, missing], root)}"
    if keyword in ("enum", "const"):
        options = limit if keyword == "enum" else [limit]
        return f"{at} must be {' or '.join(brief(o) for o in options)}, not {brief(value)}"
    bounds = {
        "minimum": "at least",
        "maximum": "at most",
        "exclusiveMinimum": "above",
        "exclusiveMaximum": "below",
    }
    if keyword in bounds:
        return f"{at} must be {bounds[keyword]} {limit:,}, not {brief(value)}"
    if keyword == "minLength":
        return f"{at} must not be empty"
    if keyword in ("minItems", "maxItems"):
        most = "at least" if keyword == "minItems" else "at most"
        return f"{at} must hold {most} {limit:,} entries, not {len(value):,}"
    return f"{at} is not valid ({error.message[:80]})"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests deeper than `limit` lists and objects (no recursion: a hostile file
    must not exhaust the stack of whatever reads it next)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


# --- the tables of docs/result-schema.md ---------------------------------------------------------------

MARKER = re.compile(r"^<!-- table: (?P<name>[a-z_]+) -->$")
TYPE_NAMES = {
    "integer": "int",
    "number": "number",
    "string": "str",
    "boolean": "bool",
    "object": "object",
    "array": "list",
    "null": "null",
}


def _resolve(schema: Schema) -> Schema:
    return DEFS[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _types(schema: Schema) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def type_name(schema: Schema) -> str:
    """`int`, `str or null`, `list of str`, ... for the top-level table."""
    resolved = _resolve(schema)
    names = []
    for kind in _types(resolved):
        name = TYPE_NAMES[kind]
        if kind == "array" and _types(_resolve(resolved.get("items", {}))) == ["string"]:
            name = "list of str"
        names.append(name)
    return " or ".join(names)


def _rows(properties: dict[str, Schema]) -> Iterator[tuple[list[str], str, Schema]]:
    """Neighbouring fields with the same description share a row."""
    names: list[str] = []
    last = ""
    first: Schema = {}
    for name, schema in properties.items():
        doc = _resolve(schema).get("description") if "description" not in schema else schema["description"]
        if not doc:
            continue
        if names and doc == last:
            names.append(name)
            continue
        if names:
            yield names, last, first
        names, last, first = [name], doc, schema
    if names:
        yield names, last, first


TABLES: dict[str, tuple[Schema, bool]] = {  # the doc's tables: whose fields, with a type column
    "result": (RESULT, True),
    "model": (MODEL, False),
    "verdict": (VERDICT, False),
    "runtime": (RUNTIME, False),
    "config": (CONFIG, False),
    "needle_item": (NEEDLE_ITEM, False),
    "repetition_item": (REPETITION_ITEM, False),
    "summary_row": (SUMMARY_ROW, False),
    "divergence": (DIVERGENCE, False),
}


def table(name: str) -> list[str]:
    """One table of the doc, as markdown lines."""
    if name == "migrations":
        from kvprobe.result.store import MIGRATION_NOTES

        lines = ["| from | to | change |", "|---|---|---|"]
        return lines + [f"| {a} | {b} | {change} |" for a, b, change in MIGRATION_NOTES]
    schema, typed = TABLES[name]
    head = ["| field | type | meaning |", "|---|---|---|"] if typed else ["| field | meaning |", "|---|---|"]
    body = []
    for names, doc, first in _rows(schema["properties"]):
        label = ", ".join(f"`{n}`" for n in names)
        body.append(f"| {label} | {type_name(first)} | {doc} |" if typed else f"| {label} | {doc} |")
    return head + body


def render_doc(markdown: str) -> str:
    """`markdown` with every table after a `<!-- table: NAME -->` marker generated afresh."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        out.append(lines[i])
        found = MARKER.match(lines[i])
        i += 1
        if found:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1  # the table as it was
            out += table(found["name"])
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    if "--json" in argv:
        print(json.dumps(SCHEMA, indent=1, ensure_ascii=False))
        return 0
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: python -m kvprobe.result.schema DOC.md [--check] | --json", file=sys.stderr)
        return 2
    from pathlib import Path

    path = Path(paths[0])
    old = path.read_text(encoding="utf-8")
    new = render_doc(old)
    if "--check" in argv:
        if new != old:
            print(f"{path} is stale: run python -m kvprobe.result.schema {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
