"""The result document, typed: what `kvprobe run` writes (one JSON object per run) and every
reader reads. Each field's docstring is its description in the JSON Schema
(kvprobe.result.schema generates it, with each probe's part spliced in) and in
docs/result-schema.md. The verdict is kvprobe.api.verdict; what each probe defines for itself
(its item and summary rows, its own section, its scenario section) stays a plain JSON object
(kvprobe.api.record), checked against the probe's own part of the schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, SkipValidation, model_serializer

from kvprobe.api.bounds import (
    MAX_CTX,
    MAX_LAYERS,
    MAX_TOKENS,
    Big,
    Count,
    Length,
    Look,
    Seconds,
)
from kvprobe.api.record import ItemRow, JsonObject, ProbeSection, Record, ScenarioSpec, SummaryRow
from kvprobe.api.verdict import UntilDecided, Verdict

SCHEMA_VERSION = 4

# Free-form data (a probe's, the GGUF's) is not walked by the models: kvprobe.result.check
# checks it against its part of the generated schema.
FreeRows = Annotated[list[ItemRow], SkipValidation]
# What a schema-2 file's KV layout is rebuilt from: bounded, so the layout is too.
GGUF_METADATA: JsonObject = {
    "type": "object",
    "patternProperties": {
        r"\.block_count$": {"type": "integer", "minimum": 0, "maximum": MAX_LAYERS},
        r"\.attention\.head_count(_kv)?$": {
            "type": ["integer", "array"],
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS},
            "maxItems": MAX_LAYERS,
        },
        r"\.(embedding_length|attention\.key_length|attention\.value_length|attention\.sliding_window)$": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_TOKENS,
        },
    },
}


class KvLayout(Record):
    """What the KV memory of any cache type needs (`kv_cache_bytes`, the doctor's formula)."""

    n_layer: Annotated[int, Field(ge=0, le=MAX_LAYERS)]
    n_head_kv: Annotated[list[Count], Field(max_length=MAX_LAYERS)]
    """per layer"""
    head_dim_k: Count
    head_dim_v: Count
    n_swa: Count
    swa_layers: Annotated[list[bool], Field(max_length=MAX_LAYERS)]
    """per layer"""


class Finding(Record):
    """One of `kvprobe doctor`'s findings for the model file."""

    rule: str | None = None
    severity: str | None = None
    """`serious`, `warning` or `info`"""
    message: str | None = None
    evidence: str | None = None
    """the metadata key or tensor"""
    fix: str | None = None


class ModelInfo(Record):
    """The weights: the GGUF file and what its header says."""

    path: str | None = None
    """the GGUF file"""
    name: str | None = None
    """the GGUF file"""
    size_bytes: Big | None = None
    """the GGUF file"""
    sha256: str
    """SHA-256 of the whole file"""
    architecture: str | None = None
    """`general.architecture`"""
    n_ctx_train: Count | None = None
    """`<arch>.context_length`"""
    file_type: str | None = None
    """`general.file_type` as a name (`MOSTLY_Q4_K_M`)"""
    n_params: Big | None = None
    """sum of tensor element counts"""
    metadata: Annotated[JsonObject, SkipValidation, Field(json_schema_extra=GGUF_METADATA)] = {}
    """selected GGUF keys: name, layers, heads, KV heads, head dims, sliding window"""
    kv_layout: KvLayout | None = None
    """what the KV memory of any cache type needs (`kv_cache_bytes`, the doctor's formula): `n_layer`,
    `n_head_kv` (per layer), `head_dim_k`, `head_dim_v`, `n_swa`, `swa_layers` (per layer)"""
    findings: list[Finding] = []
    """`kvprobe doctor`'s findings for the file: list of {`rule`, `severity` (`serious`, `warning`,
    `info`), `message`, `evidence` (the metadata key or tensor), `fix`}"""


class NamedModel(ModelInfo):
    """One of two weight files (weights-vs-KV): as `model`, with its name always written."""

    name: str | None
    """the GGUF file"""


class Models(Record):
    """The two weight files of a weights-vs-KV run."""

    ref: NamedModel
    test: NamedModel


class BuildCheck(Record):
    """A llama-server's f16 cache against kvprobe's own llama.cpp f16 cache on one document, fed
    in the server's request sequence (the same batches): what the build alone changes."""

    status: Literal["matches", "differs", "differs_near_margin", "differs_beyond_margin", "failed"]
    """`matches`: the mean KL's upper 95% bound under `noise_floor`; `differs`: above it, under
    `margin`; `differs_beyond_margin`: the lower bound at or above the KL equivalence margin (a
    build fault); `differs_near_margin`: the interval holds the margin; `failed`: not made
    (`reason`), the run's measurements kept"""
    reason: str | None = None
    """why a failed check could not be made"""
    tokens: Count | None = None
    """tokens of the document fed (the scenario's haystack, document 0, at most 2,048)"""
    stride: Count | None = None
    """every stride-th position read"""
    n_probs: Count | None = None
    """the top n of each engine the KL is computed over (plus one tail bucket: a lower bound)"""
    positions: Count | None = None
    """positions compared"""
    kl_mean: float | None = None
    """mean KL(in-process f16 || server f16) over the positions, nats"""
    kl_ci: list[float | None] | None = None
    """its 95% block-bootstrap interval (blocks of 16 positions)"""
    kl_max: float | None = None
    """the largest KL at one position"""
    top1_agreement: float | None = None
    """share of positions where both engines' most likely token is the same"""
    logprob_mean_abs_diff: float | None = None
    """mean |difference| of the document tokens' log-probs, nats"""
    noise_floor: float | None = None
    """the KL under which two builds count as computing the same (identical builds: below 1e-5)"""
    margin: float | None = None
    """the KL equivalence margin of the cache verdict"""
    in_process: dict[str, Any] | None = None
    """kvprobe's llama.cpp: kvprobe and llama-cpp-python versions, build, extra buffer types"""
    seconds: Seconds | None = None
    """wall time of the check"""


class Runtime(Record):
    """llama.cpp build and the settings every context used."""

    engine: str | None = None
    """`llamacpp` (llama.cpp in kvprobe's process, through llama-cpp-python) or `llama-server` (a
    llama-server over HTTP); absent in files from before the server engine: `llamacpp`"""
    server_version: str | None = None
    """llama-server's `--version` (spawned) or `/props` `build_info` (attached)"""
    server: dict[str, Any] | None = None
    """the llama-server engine's record: `mode` (`spawn` or `attach`), the binary and the user's
    `server_args`, `score_n_probs` (the top n read when scoring answers), `kernel_fallback`, and per
    configuration (`configs`) the server's URL form (never credentials), version or build, its log
    file, the arguments it was started with, what its log says took effect (`applied`: cache types
    and MiB per KV cache (`kv_mib` in all), flash attention, rotation, n_ctx, slots, threads, weight
    buffers, layers offloaded) or, attached, `stated_cache`; `props`, what the server's /props says (build,
    model path and alias, n_ctx per slot, slots, the chat template's sha256, BOS/EOS text); and
    `prefill_tps`/`generation_tps` from the server's own timings (over the whole run), and, spawned,
    `vram_mib` (the most GPU memory NVML saw the server's process hold, once ready and after the run;
    null without NVML, a local GPU, or the process on one)"""

    build_check: BuildCheck | None = None
    """`--reference in-process`: the server's f16 against kvprobe's own llama.cpp f16 on the same
    document and batches (absent otherwise)"""

    llama_cpp_python: str | None = None
    """llama-cpp-python version (pins the vendored llama.cpp)"""
    llama_cpp_version: str | None = None
    """`llama_version()` of the compiled library"""
    llama_cpp_build: str | None = None
    """`llama_print_system_info()`: the compiled backend and CPU features"""
    gpu_offload_supported: bool | None = None
    """`llama_supports_gpu_offload()`"""
    backend: str | None = None
    """`cpu` or `gpu` (layers offloaded)"""
    n_threads: Count | None = None
    """as used"""
    n_gpu_layers: Annotated[int, Field(ge=-1, le=MAX_TOKENS)] | None = None
    """as used"""
    extra_bufts: bool | None = None
    """whether the models were loaded with llama.cpp's extra CPU buffer types (repacked and AMX weight
    kernels); false is llama.cpp's `--no-repack`. One setting for every configuration of a run"""
    extra_bufts_check: str | None = None
    """`passed` (a child process decoded with them), `crashed` (the child died of a crash signal or
    gave non-finite logits, and the same decode without them ran: the run fell back), `skipped` (they
    cannot matter: no AMX/REPACK in the build, no quantized weight type they handle, or all layers on
    the GPU), `forced_off` (`--no-repack`), `inconclusive` (the check hung, was killed from outside, or
    failed without extra buffer types too; they stay on, nothing is cached)"""
    extra_bufts_reason: str | None = None
    """the sentence behind it, e.g. the signal the child died with"""
    extra_bufts_check_cached: bool | None = None
    """the answer came from the cache (`~/.cache/kvprobe/kernel-checks.json`, keyed by llama.cpp build
    (llama-cpp-python and llama.cpp versions, compiled features), CPU model and flags, and weight
    types)"""
    weight_buffers_mib: dict[str, dict[str, float]] = {}
    """per model file, the buffers llama.cpp put the weights in, MiB by buffer type (`CPU`: read into
    memory, as kvprobe loads them; `CPU_Mapped` in older files, mapped from the file; `CPU_REPACK`,
    `AMX`, `CUDA0`, …), read from its load log: which kernels actually ran"""
    n_ctx: Count | None = None
    """context size of every context (`--ctx` + the cells the probes' forks take at once: a chunk of
    batched needle queries and their failed answers' continuations, or the parallel continuations;
    rounded up to 256)"""
    n_batch: Count | None = None
    """both equal the chunk: the fixed batch shape shared by all configurations"""
    n_ubatch: Count | None = None
    """both equal the chunk: the fixed batch shape shared by all configurations"""
    n_seq_max: Count | None = None
    """1 + the most forks alive at once, true, true: queries and continuations run in forked sequences
    that share the document's cells; full-size SWA cache so a fork never evicts the prefix"""
    kv_unified: bool | None = None
    """1 + the most forks alive at once, true, true: queries and continuations run in forked sequences
    that share the document's cells; full-size SWA cache so a fork never evicts the prefix"""
    swa_full: bool | None = None
    """1 + the most forks alive at once, true, true: queries and continuations run in forked sequences
    that share the document's cells; full-size SWA cache so a fork never evicts the prefix"""
    flash_attn: bool | None = None
    """flash attention requested for every configuration"""
    attn_rotation: bool | None = None
    """whether llama.cpp's Hadamard rotation of quantized caches was allowed"""
    env_LLAMA_ATTN_ROT_DISABLE: str | None = None
    """whether llama.cpp's Hadamard rotation of quantized caches was allowed"""


class Gpu(Record):
    """A GPU NVML reports."""

    index: Count | None = None
    name: str | None = None
    memory_gb: float | None = None
    driver: str | None = None


class Host(Record):
    """The machine."""

    hostname: str | None = None
    os: str | None = None
    python: str | None = None
    cpu: str | None = None
    """model name"""
    cpu_count: Count | None = None
    memory_gb: float | None = None
    gpus: list[Gpu] = []
    """from NVML, empty when there is no NVIDIA driver"""


class ConfigEntry(Record):
    """A cache configuration as llama.cpp reported it when it created the context (read from its
    log, not assumed from the request; a mismatch aborts the run)."""

    id: str
    """`f16`, `q4_0`, ... when K and V agree; `k=q4_0,v=f16` for an asymmetric pair (`--split-kv` adds
    `k=T,v=f16` and `k=f16,v=T`); with two models `ref:<cache>` / `test:<cache>`"""
    model: str = ""
    """with two models only: `ref` or `test`"""
    type_k: str
    """cache types that took effect"""
    type_v: str
    """cache types that took effect"""
    flash_attn: bool | None = None
    """flash attention as applied"""
    attn_rot_k: bool | None = None
    """Hadamard rotation applied to K / V"""
    attn_rot_v: bool | None = None
    """Hadamard rotation applied to K / V"""
    n_ctx: Count | None = None
    """context size applied"""
    model_sha256: str = ""
    """weights used by this configuration"""
    started: bool = True
    """`false` for a configuration whose configuration group never started (a run stopped early: the
    fields llama.cpp reports are then `null`); absent otherwise"""


class ScenarioRecord(Record):
    """`name`, `sha256` (of the canonical JSON of `spec`) and `spec` (the parsed scenario, every key
    with its value)."""

    name: str
    sha256: str
    spec: Annotated[ScenarioSpec, SkipValidation] = {}
    """the parsed scenario: `probes`, `plan` and each probe's section (their parts of the schema)"""


class DecidedConfig(Record):
    """One configuration's decision, as --until-decided would have made it."""

    status: Literal["worse", "equivalent"]
    """`worse`: decided worse at `ctx`; `equivalent`: every checkpoint decided equivalent"""
    ctx: Count
    """the checkpoint decided worse; for equivalent, the longest"""


class Decided(Record):
    """A default run (not `--until-decided`) decided early: the group-sequential looks of
    `--until-decided` (the same design, margins and error rates), tested after every unit while
    every configuration kept being measured, decided every test configuration here. The
    Recommendation was printed then, with a partial result; the run then measured the rest of
    the curve. The verdict of a complete file is the fixed-sample one, from all the data."""

    after_s: Seconds
    """seconds from the command's start to the decision"""
    look: Look
    """documents reached when decided (1-based: the look of the last decision)"""
    units: Count
    """units finished when decided"""
    configs: dict[str, DecidedConfig]
    """per test configuration, its decision"""
    recommendation: str | None = None
    """the configuration the Recommendation printed at the decision named"""


class RunRecord(Record):
    """`ctx` (the `--ctx` asked for), `seed`, `mode` (`onepass` or `classic`), `checkpoints` (context
    lengths at which queries were asked), `chunk` (tokens per `llama_decode`), `null_check` (whether
    `--null-check` was given), `until_decided` (see below), `decided` (a default run that the
    group-sequential looks of `--until-decided` decided before its end, measuring on: `after_s` (from
    the command's start), `look`, `units` (finished then), `configs` {config: {`status`, `ctx`}},
    `recommendation` (the configuration the Recommendation printed then named))"""

    ctx: Annotated[int, Field(ge=1, le=MAX_CTX)]
    """the `--ctx` asked for"""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's generators refuse a negative seed
    mode: Literal["onepass", "classic"]
    checkpoints: Annotated[list[Length], Field(min_length=1)]
    """context lengths at which queries were asked"""
    chunk: Length | None = None
    """tokens per `llama_decode`"""
    null_check: bool = False
    """whether `--null-check` was given"""
    until_decided: UntilDecided | None = None
    """with `--until-decided`, or in a default run's partial result written at its early decision
    (its `stopped` then empty: nothing was stopped), the group-sequential design the verdict's
    tests read"""
    decided: Decided | None = None
    """a default run that the group-sequential looks decided before its end: when and how"""


class PromptRecord(Record):
    """The prompt format that took effect; files without it are raw."""

    format: Literal["raw", "chat"]
    """`raw` (completion text) or `chat` (the model's chat template)"""
    why: str = ""
    """what decided the format (`--prompt-format chat`, the model has no chat template, ...)"""
    bos: Literal["template", "tokenizer", "none"] | None = None
    """where the one BOS token came from"""
    template_sha256: str | None = None
    """chat form: sha256 of the template text"""
    template_source: str | None = None
    """`gguf` (tokenizer.chat_template) or `file NAME` (--chat-template)"""
    template_family: str | None = None
    """ChatML, Llama 3, Gemma, Mistral, ... or `unrecognised`"""
    system: str | None = None
    """the system message kvprobe added (`--system`); null: none"""
    default_system: str = ""
    """the system message the template adds by itself ("": none)"""
    thinking: Literal["none", "disabled", "closed"] = "none"
    """a reasoning template's thinking block: `disabled` by its own switch, `closed` by kvprobe after the
    generation prompt, `none`"""
    prefix_tokens: Count = 0
    """tokens before the document (the documents' offset)"""
    turn_end_tokens: Count = 0
    """tokens after each question up to the reply"""
    prefix_text: str = ""
    """the template's text before the user's message"""
    turn_end_text: str = ""
    """its text after the message, up to the assistant header"""
    rendered_by: str | None = None
    """who rendered the framing the run used: `llama-server /apply-template` (the server's own template
    engine, what its chat users get), else `kvprobe (the GGUF's template)` or `kvprobe (file NAME)`"""
    renderings_agree: bool | None = None
    """a server run: whether the server's framing gives the same tokens as kvprobe's rendering of the
    template (null: only kvprobe rendered it)"""
    kvprobe_prefix_text: str | None = None
    """where the two renderings differ: kvprobe's text before the user's message (the server's is
    `prefix_text`)"""
    kvprobe_turn_end_text: str | None = None
    """where they differ: kvprobe's text after the message (the server's is `turn_end_text`)"""


class Resume(Record):
    """A resumed run's restored units and the prefixes it fed again."""

    units_restored: float = 0
    restored_tokens: float = 0
    restored_s: float = 0
    refeed_tokens: float = 0
    refeed_s: float = 0


class ProbeWork(Record):
    """One probe's work at the checkpoints in this process."""

    s: float = 0
    tokens: Count = 0
    items: Count = 0


class PrefillSpan(Record):
    """Document tokens fed between two checkpoints and the seconds `llama_decode` took for them."""

    ctx: Count = 0
    depth: Annotated[list[Count], Field(min_length=2, max_length=2)]
    """[from, to]"""
    tokens: Count = 0
    s: float = 0
    tokens_per_s: float | None = None
    all_logits: bool = False
    """every position's logits were computed (a divergence document)"""


class Timing(Record):
    """Where the time went (see `timing` above)."""

    wall_s: Seconds
    units: list[Annotated[list[float], Field(min_length=6, max_length=7)]] = []
    groups: list[list[str]] = []
    resume: Resume | None = None
    decode_s: dict[str, float] = {}
    per_config_s: dict[str, float] = {}
    probes: dict[str, ProbeWork] = {}
    prefill: dict[str, list[PrefillSpan]] = {}
    tokens_evaluated: Big
    null_check_tokens: Big = 0
    naive_tokens: Big


class StatError(Record):
    """A statistic that failed."""

    what: str = ""
    error: str = ""


class Statistics(Record):
    """`complete` (every statistic was computed) and `errors`: [{`what`, `error`}] for each that
    failed; the measured items are in the file either way, and the statistics can be recomputed
    from it."""

    complete: bool = False
    errors: list[StatError] = []


class ItemFields(Record):
    """What every item row holds, whichever probe measured it; the rest of the row is its probe's
    (the probe's part of the schema). Rows stay plain objects (kvprobe.api.record.ItemRow): this
    record states their common fields for the schema."""

    probe: str
    """the probe that measured it"""
    config: str
    doc: Count = 0
    ctx: Length


class SummaryFields(Record):
    """What every summary row holds (long format, one row per probe, metric, config and ctx);
    each probe adds its own fields and rules (its part of the schema)."""

    probe: str
    metric: str
    config: str
    ctx: Length
    value: float | None = None
    ci: Annotated[list[float | None], Field(min_length=2, max_length=2)] | None = None
    n: Count = 0


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


class ResultDoc(Record):
    """A kvprobe result file: what one `kvprobe run` measured, its provenance, and the statistics
    (summary rows and the verdict) computed from it. Each probe with a section of its own
    (`Probe.has_section`) adds it as a top-level field named after the probe, written after
    `summary`."""

    schema_version: Annotated[int, Field(ge=1, le=SCHEMA_VERSION)]
    """`3`. Bumped on any incompatible change, with a migration from the version before."""
    kvprobe_version: str = ""
    """version of kvprobe that wrote the file"""
    created: str = ""
    """UTC time the run started, ISO 8601 (`2026-11-22T05:10:03Z`)"""
    command: str = ""
    """the command line as typed"""
    model: ModelInfo
    """the weights, see below"""
    runtime: Runtime | None = None
    """llama.cpp build and the settings every context used"""
    host: Host | None = None
    """the machine"""
    models: Models | None = None
    """with two `--model` files (weights-vs-KV): {`ref`: model, `test`: model}, each as `model` below;
    `model` is then the REF one"""
    configs: Annotated[list[ConfigEntry], Field(min_length=1)]
    """one entry per cache configuration, in run order (baseline first); one whose configuration group
    never started (a run stopped early) has `started: false` and `null` for what llama.cpp reports"""
    baseline: str | None
    """`id` of the reference configuration (`null` with `--baseline none`)"""
    scenario: ScenarioRecord
    """`name`, `sha256` (of the canonical JSON of `spec`) and `spec` (the parsed scenario, every key with
    its value)"""
    run: RunRecord
    """`ctx` (the `--ctx` asked for), `seed`, `mode` (`onepass` or `classic`), `checkpoints` (context
    lengths at which queries were asked), `chunk` (tokens per `llama_decode`), `null_check` (whether
    `--null-check` was given), `until_decided` (see below), `decided` (a default run that the
    group-sequential looks of `--until-decided` decided before its end, measuring on: `after_s` (from
    the command's start), `look`, `units` (finished then), `configs` {config: {`status`, `ctx`}},
    `recommendation` (the configuration the Recommendation printed then named))"""
    prompt: PromptRecord | None = None
    """the prompt format that took effect; files without it are raw"""
    items: FreeRows
    """one row per probe item, see below"""
    text_items: FreeRows = []
    """rows of the documents' own text, measured by no configuration (`config: "(text)"`)"""
    summary: Annotated[list[SummaryRow], SkipValidation]
    """long-format aggregate rows, see below"""
    timing: Timing = Field(description=_TIMING_DOC)
    complete: bool = True
    """false when the run ended early: interrupted (Ctrl-C, SIGTERM) or at its `--time-budget`. Files
    without it are complete"""
    stopped: str | None = None
    """`"interrupted"` or `"time budget"`, or `"decided early"` (a default run's partial result,
    written at its early decision while it measured on: `run.decided`); null for a complete run"""
    missing: list[Annotated[list[Count], Field(min_length=2, max_length=3)]] = []
    """the units not measured, as `[doc, step]` (step: index into `run.checkpoints`; in classic mode
    `[prompt, 0]`), or `[doc, step, group]` for a unit of configuration group 1 or later
    (`timing.groups`)"""
    warnings: list[str] = []
    """plain-language warnings shown during the run (e.g. `--ctx` beyond the training context)"""
    verdict: Verdict | None = None
    """equivalence, effective context, onset and decay per configuration, K-vs-V, weights-vs-KV, the
    recommendation, the rules of thumb, and the sentences shown to the user; see below"""
    statistics: Statistics = Field(default_factory=Statistics)
    non_finite: list[str] = []
    """JSON paths (`$.summary[3].ci[1]`) of values that were NaN or infinite and are stored as `null`
    (JSON has neither)"""

    def section(self, probe: str) -> ProbeSection | None:
        """The probe's own top-level section (`Probe.has_section`), None where it has none."""
        found = self.extra(probe)
        return found if isinstance(found, dict) else None

    def set_section(self, probe: str, section: ProbeSection | None) -> None:
        setattr(self, probe, section)

    def config_ids(self) -> list[str]:
        return [c.id for c in self.configs]

    @model_serializer(mode="wrap")
    def _sections_after_summary(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The probes' sections where the file has always had them: after `summary`."""
        out: dict[str, Any] = handler(self)
        extra = [k for k in out if k not in type(self).model_fields]
        if not extra or "summary" not in out:
            return out
        keys = list(out)
        cut = keys.index("summary") + 1
        order = [k for k in keys[:cut] if k not in extra] + extra + [k for k in keys[cut:] if k not in extra]
        return {k: out[k] for k in order}
