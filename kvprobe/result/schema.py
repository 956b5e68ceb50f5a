"""The result file's schema, stated once: a JSON Schema (draft 2020-12) that every result file
(kvprobe.result.store) and every journal line (kvprobe.result.journal) is validated with, and
whose descriptions are the tables of docs/result-schema.md:

    python -m kvprobe.result.schema docs/result-schema.md           # regenerate the tables
    python -m kvprobe.result.schema docs/result-schema.md --check   # exit 1 if they are stale
    python -m kvprobe.result.schema --json                          # the schema itself

The file's own fields are stated here; each registered probe adds its own part (its item rows,
the rules of its summary rows, its section, and their docs: `Probe.schema_part`), so the whole
is assembled from the registry when first needed (`built`). A field is typed wherever it
appears; it is required where a reader indexes it. Semantic ties between fields (the baseline
among the configs, ...) are kvprobe.result.ties.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kvprobe.api import Probe, SchemaPart, all_probes, is_built_in
from kvprobe.result.blocks import (
    ANY_NUM,
    INT,
    INTERVAL,
    MAX_CTX,
    MAX_LAYERS,
    NUM,
    OPEN_INTERVAL,
    STATUS,
    STR,
    Schema,
    checker,
    flag,
    integer,
    listing,
    mapping,
    nullable,
    number,
    of,
    pair,
    record,
    ref,
    text,
    when,
)
from kvprobe.result.compiled import compile_schema
from kvprobe.result.migrations import MIGRATION_NOTES, SCHEMA_VERSION

# --- item and summary rows: what every probe's have ------------------------------------------------

ITEM_COMMON = {
    "probe": text("the probe that measured it"),
    "config": STR,
    "doc": INT,
    "ctx": integer(lo=1),
}
ITEM_REQUIRED = ["probe", "config", "ctx"]
SUMMARY_REQUIRED = ["probe", "metric", "config", "ctx"]
_AS_IN_ITEMS = "as in items"
_ESTIMATE = "estimate, interval [lo, hi], number of items"
TEXT_ITEMS = 'rows of the documents\' own text, measured by no configuration (`config: "(text)"`)'


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
                "(`CPU`: read into memory, as kvprobe loads them; `CPU_Mapped` in older files, mapped from "
                "the file; `CPU_REPACK`, `AMX`, `CUDA0`, …), read from its load log: which kernels "
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


UNTIL_DECIDED = record(
    {
        "method": STR,
        "spending": text(enum=["obrien-fleming", "pocock"]),
        "alpha_per_side": number(exclusiveMinimum=0, maximum=0.5),
        "looks": integer(lo=1),
        "evidence_look": integer(),
        "z": listing(NUM),
        "stopped": mapping(
            record(
                {
                    "status": text(enum=["worse", "equivalent"]),
                    "ctx": INT,
                    "measured_steps": INT,
                    "look": integer(lo=1),
                    "saved_s": NUM,
                },
                ["status", "ctx", "measured_steps", "look"],
            )
        ),
    },
    ["method", "spending", "alpha_per_side", "looks", "evidence_look", "stopped"],
)
UNTIL_DECIDED_DOC = (
    "with `--until-decided`: the group-sequential design the equivalence tests read (`method`, "
    "`spending` (`obrien-fleming` or `pocock`), `alpha_per_side` 0.025, `looks` (one after each "
    "document), `evidence_look` (the first look, 0-based, at which per-position evidence is final), `z` "
    "(the one-sided boundary of each look)) and `stopped` {config: {`status` (`worse`: decided worse at "
    "`ctx`, measured only below it from then on; `equivalent`: every checkpoint decided), `ctx`, "
    "`measured_steps` (checkpoint steps it was still measured at: 0 = none), `look` (documents finished "
    "when decided), `saved_s` (the decoding it did not spend, as the pace predicted)}}"
)

RUN = record(
    {
        "ctx": integer(lo=1, hi=MAX_CTX),
        "seed": integer(hi=2**32 - 1),  # numpy's generators refuse a negative seed
        "mode": text(enum=["onepass", "classic"]),
        "checkpoints": listing(integer(lo=1), minItems=1),
        "chunk": integer(lo=1),
        "null_check": flag(),
        "until_decided": {**UNTIL_DECIDED, "description": UNTIL_DECIDED_DOC},
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
                    "look": nullable(integer(lo=1)),
                    "items_level": nullable(number(minimum=0, maximum=1)),
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
            "`bound`), `status`, `n`, `p` (larger one-sided p, continuous only), `items_needed`}], with "
            "`--until-decided` also `look` (the document after which the checkpoint was decided, or its "
            "last) and `items_level` (the confidence of the item intervals at that look)}]}, "
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
        "until_decided": nullable({**UNTIL_DECIDED, "description": UNTIL_DECIDED_DOC + " (from `run`)"}),
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

# The file's own fields; the probes' sections follow `verdict` and `_result` fills in what they add.
RESULT_FIELDS: dict[str, Schema] = {
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
    "scenario": {},  # _scenario: with the probes' `scenario.spec` sections
    "run": {
        **RUN,
        "description": "`ctx` (the `--ctx` asked for), `seed`, `mode` (`onepass` or `classic`), "
        "`checkpoints` (context lengths at which queries were asked), `chunk` (tokens per "
        "`llama_decode`), `null_check` (whether `--null-check` was given), `until_decided` (see below)",
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
    "text_items": {},  # _result: with what the probes say of them
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
    "statistics": {},  # _result: with what the probes call their statistics
    "non_finite": listing(
        STR,
        "JSON paths (`$.summary[3].ci[1]`) of values that were NaN or infinite and are stored as `null` "
        "(JSON has neither)",
    ),
    "warnings": listing(
        STR,
        "plain-language warnings shown during the run (e.g. `--ctx` beyond the training context)",
    ),
}
RESULT_REQUIRED = [
    "schema_version",
    "configs",
    "baseline",
    "model",
    "scenario",
    "run",
    "items",
    "summary",
    "timing",
]

DEFS: dict[str, Schema] = {  # the file's own definitions; null where a null is what every use of it allows
    "model": MODEL,
    "kv_layout": nullable(KV_LAYOUT),
    "config": CONFIG,
    "verdict": nullable(VERDICT),
    "config_verdict": CONFIG_VERDICT,
    "equivalence": nullable(EQUIVALENCE),
    "test": TEST,
    "paired_row": PAIRED_ROW,
    "recommendation": nullable(RECOMMENDATION),
}
TABLES: dict[str, Schema] = {"model": MODEL, "verdict": VERDICT, "runtime": RUNTIME, "config": CONFIG}


# --- the whole, from the registered probes --------------------------------------------------------------

Parts = list[tuple[Probe, SchemaPart]]


def _parts(probes: Sequence[Probe]) -> Parts:
    return [(p, part) for p in probes if (part := p.schema_part()) is not None]


def _notes(parts: Parts, key: str) -> list[str]:
    """What the probes add to the description of a shared field (SchemaPart.notes)."""
    return [part.notes[key] for _, part in parts if key in part.notes]


def _either(names: Sequence[str]) -> str:
    shown = [f"`{n}`" for n in names]
    return " or ".join(shown) if len(shown) < 3 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _rules(rules: list[Schema]) -> dict[str, Any]:
    return {"allOf": rules} if rules else {}  # JSON Schema allows no empty allOf


def _joined(target: dict[str, Schema], more: dict[str, Schema], what: str) -> None:
    """`more` added to `target`: a name two of them define is an error, not a silent overwrite."""
    clash = sorted(set(target) & set(more))
    if clash:
        raise ValueError(f"the result schema has {what} {', '.join(clash)} twice (a probe's SchemaPart)")
    target.update(more)


def _item(parts: Parts) -> Schema:
    """An item row: the fields every probe's have, and those of the probe that measured it."""
    rules = [when({"probe": {"const": p.name}}, ref(part.item)) for p, part in parts if part.item]
    return record(ITEM_COMMON, ITEM_REQUIRED, **_rules(rules))


def _summary_row(probes: Sequence[Probe], parts: Parts) -> Schema:
    def along(base: str, key: str) -> str:
        return "; ".join([base, *_notes(parts, key)])

    def estimate(key: str) -> str:
        return " ".join([_ESTIMATE, *(f"({note})" for note in _notes(parts, key))])

    fields: dict[str, Schema] = {
        "probe": text(_either([p.name for p in probes])),
        "metric": text(" ".join(_notes(parts, "summary_row.metric")) or "the metric's name"),
        "config": text(along(_AS_IN_ITEMS, "summary_row.config")),
        "ctx": integer(along(_AS_IN_ITEMS, "summary_row.ctx"), lo=1),
        "value": nullable(number(estimate("summary_row.value"))),
        "ci": nullable(pair(ANY_NUM, estimate("summary_row.ci"))),
        "n": integer(estimate("summary_row.n")),
    }
    for _, part in parts:
        _joined(fields, dict(part.summary_fields), "the summary-row field")
    return record(fields, SUMMARY_REQUIRED, **_rules([r for _, part in parts for r in part.summary_rules]))


def _scenario(parts: Parts) -> Schema:
    spec: dict[str, Schema] = {}
    for _, part in parts:
        _joined(spec, dict(part.spec), "the scenario section")
    return record(
        {"name": STR, "sha256": STR, "spec": record(spec)},
        ["name", "sha256"],
        doc="`name`, `sha256` (of the canonical JSON of `spec`) and `spec` (the parsed scenario, every key "
        "with its value)",
    )


def _statistics(probes: Sequence[Probe], parts: Parts) -> Schema:
    """`statistics`, naming what each probe's failed statistics are called (`what`)."""
    extra = {p.name: part.statistics for p, part in parts}
    labels: list[str] = []
    for p in probes:
        labels += [p.summary_label] if p.summary_label else []
        labels += extra.get(p.name, ())
    return {
        **STATISTICS,
        "description": f"`complete` (every statistic was computed) and `errors`: [{{`what` "
        f"({', '.join([*labels, 'verdict'])}), `error`}}] for each that failed; the measured items are in "
        "the file either way, and the statistics can be recomputed from it",
    }


def _result(probes: Sequence[Probe], parts: Parts) -> Schema:
    """The top level: the file's own fields, with each probe's section after the verdict."""
    sections = {p.name: part.section for p, part in parts if p.has_section and part.section is not None}
    text_notes = _notes(parts, "result.text_items")
    own = {
        "scenario": _scenario(parts),
        "text_items": listing(ref("item"), ": ".join([TEXT_ITEMS, *text_notes]) + "; see below"),
        "statistics": _statistics(probes, parts),
    }  # fmt: skip
    fields: dict[str, Schema] = {}
    for name, value in RESULT_FIELDS.items():
        fields[name] = own.get(name, value)
        if name == "verdict":
            _joined(fields, sections, "the top-level field")
    return record(fields, RESULT_REQUIRED)


def _defs(probes: Sequence[Probe], parts: Parts) -> dict[str, Schema]:
    defs: dict[str, Schema] = {"item": _item(parts), "summary_row": _summary_row(probes, parts)}
    for _, part in parts:
        _joined(defs, dict(part.defs), "the definition")
    _joined(defs, dict(DEFS), "the definition")
    return defs


class Built:
    """The result schema of a set of probes: the JSON Schema, its definitions, the doc's tables,
    and the checks made of them (each made once, when first asked for)."""

    def __init__(self, probes: Sequence[Probe]):
        self.probes = tuple(probes)
        parts = _parts(self.probes)
        self.parts = parts
        self.defs = _defs(self.probes, parts)
        self.result = _result(self.probes, parts)
        self.schema: Schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://kvprobe.invalid/result-schema-{SCHEMA_VERSION}.json",
            "title": f"kvprobe result file, schema version {SCHEMA_VERSION}",
            **self.result,
            "$defs": self.defs,
        }
        # The doc's tables: whose fields, with a type column.
        self.tables: dict[str, tuple[Schema, bool]] = {"result": (self.result, True)}
        self.tables |= {name: (s, False) for name, s in TABLES.items()}
        self.tables["summary_row"] = (self.defs["summary_row"], False)
        for _, part in parts:
            self.tables |= {name: (s, False) for name, s in part.tables.items()}
        self._validators: dict[str | None, Any] = {}
        self._compiled: list[Callable[[Any], bool]] = []

    def validator(self, definition: str | None = None) -> Any:
        """jsonschema's validator of the whole file, or of one of its definitions ("item", ...)."""
        if definition not in self._validators:
            whole = self.schema if definition is None else {"$ref": f"#/$defs/{definition}"}
            self._validators[definition] = checker(whole, self.defs)
        return self._validators[definition]

    def check_against(self, schema: Schema) -> Any:
        """A validator for another document's schema (a journal line) that may use these definitions."""
        return checker(schema, self.defs)

    def compiled(self) -> Callable[[Any], bool]:
        """The fast check of the whole file (kvprobe.result.compiled)."""
        if not self._compiled:
            self._compiled.append(compile_schema(self.schema, self.defs))
        return self._compiled[0]


_BUILT: dict[tuple[int, ...], Built] = {}  # a Built keeps its probes alive: their ids stay theirs


def built(probes: Sequence[Probe] | None = None) -> Built:
    """The result schema of `probes`, by default of every registered probe (built once)."""
    chosen = all_probes() if probes is None else list(probes)
    key = tuple(id(p) for p in chosen)
    if key not in _BUILT:
        _BUILT[key] = Built(chosen)
    return _BUILT[key]


def documented() -> Built:
    """The schema docs/result-schema.md describes: kvprobe's own probes' (not the plug-ins installed)."""
    return built([p for p in all_probes() if is_built_in(p)])


def validator(definition: str | None = None) -> Any:
    """The validator of the whole file, or of one of its definitions, with every registered probe."""
    return built().validator(definition)


def check_against(schema: Schema) -> Any:
    return built().check_against(schema)


# --- the tables of docs/result-schema.md ---------------------------------------------------------------

MARKER = re.compile(r"^<!-- table: (?P<name>[a-z_]+) -->$")
# Between these two lines the doc holds every probe's own sections (SchemaPart.doc), in order.
PROBES_BEGIN = "<!-- the probes' sections (SchemaPart.doc) -->"
PROBES_END = "<!-- end of the probes' sections -->"
TYPE_NAMES = {
    "integer": "int",
    "number": "number",
    "string": "str",
    "boolean": "bool",
    "object": "object",
    "array": "list",
    "null": "null",
}


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    return defs[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _types(schema: Schema) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def type_name(schema: Schema, defs: dict[str, Schema]) -> str:
    """`int`, `str or null`, `list of str`, ... for the top-level table."""
    resolved = _resolve(schema, defs)
    names = []
    for kind in _types(resolved):
        name = TYPE_NAMES[kind]
        if kind == "array" and _types(_resolve(resolved.get("items", {}), defs)) == ["string"]:
            name = "list of str"
        names.append(name)
    return " or ".join(names)


def _rows(properties: dict[str, Schema], defs: dict[str, Schema]) -> Iterator[tuple[list[str], str, Schema]]:
    """Neighbouring fields with the same description share a row."""
    names: list[str] = []
    last = ""
    first: Schema = {}
    for name, schema in properties.items():
        doc = schema["description"] if "description" in schema else _resolve(schema, defs).get("description")
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


def migration_rows(assembled: Built) -> list[tuple[str, str, str]]:
    """The file's own migrations and the probes', by the version they start from (a plain step
    before one with a condition)."""
    rows = [*MIGRATION_NOTES, *(row for _, part in assembled.parts for row in part.migrations)]
    return sorted(rows, key=lambda row: (row[0][:1], row[0] != row[0][:1]))  # 1, then 1 with a condition


def table(name: str, assembled: Built | None = None) -> list[str]:
    """One table of the doc, as markdown lines."""
    assembled = assembled or documented()
    if name == "migrations":
        lines = ["| from | to | change |", "|---|---|---|"]
        return lines + [f"| {a} | {b} | {change} |" for a, b, change in migration_rows(assembled)]
    schema, typed = assembled.tables[name]
    head = ["| field | type | meaning |", "|---|---|---|"] if typed else ["| field | meaning |", "|---|---|"]
    body = []
    for names, doc, first in _rows(schema["properties"], assembled.defs):
        label = ", ".join(f"`{n}`" for n in names)
        body.append(
            f"| {label} | {type_name(first, assembled.defs)} | {doc} |" if typed else f"| {label} | {doc} |"
        )
    return head + body


def _probe_sections(lines: list[str], assembled: Built) -> list[str]:
    """`lines` with what stands between PROBES_BEGIN and PROBES_END written afresh from the
    probes' docs."""
    if PROBES_BEGIN not in lines:
        return lines
    begin = lines.index(PROBES_BEGIN)
    end = lines.index(PROBES_END, begin)
    docs = [part.doc.strip("\n") for _, part in assembled.parts if part.doc.strip()]
    return [*lines[: begin + 1], "", *"\n\n".join(docs).splitlines(), "", *lines[end:]]


def render_doc(markdown: str) -> str:
    """`markdown` with the probes' sections, and every table after a `<!-- table: NAME -->`
    marker, generated afresh."""
    assembled = documented()
    out: list[str] = []
    lines = _probe_sections(markdown.splitlines(), assembled)
    i = 0
    while i < len(lines):
        out.append(lines[i])
        found = MARKER.match(lines[i])
        i += 1
        if found:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1  # the table as it was
            out += table(found["name"], assembled)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    if "--json" in argv:
        print(json.dumps(built().schema, indent=1, ensure_ascii=False))
        return 0
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: python -m kvprobe.result.schema DOC.md [--check] | --json", file=sys.stderr)
        return 2
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
