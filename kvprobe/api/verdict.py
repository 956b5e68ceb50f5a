"""The verdict, typed: per configuration its paired rows, its equivalence to the reference at
each checkpoint and the effective context that follows; which half of the cache is at fault;
weights against KV; the recommendation and the rules of thumb (kvprobe.stats computes them).
Each field's docstring is its description in the generated JSON Schema."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kvprobe.api.bounds import Count, Interval, Length, Look, OpenInterval, Share, Status
from kvprobe.api.record import Record


class Stop(Record):
    """A configuration --until-decided stopped once decided."""

    status: Literal["worse", "equivalent"]
    """`worse`: decided worse at `ctx`, measured only below it from then on; `equivalent`: every
    checkpoint decided"""
    ctx: Count
    measured_steps: Count
    """checkpoint steps it was still measured at: 0 = none"""
    look: Look
    """documents finished when decided"""
    saved_s: float | None = None
    """the decoding it did not spend, as the pace predicted"""


class UntilDecided(Record):
    """With `--until-decided`: the group-sequential design the equivalence tests read (`method`,
    `spending` (`obrien-fleming` or `pocock`), `alpha_per_side` 0.025, `looks` (one after each
    document), `evidence_look` (the first look, 0-based, at which per-position evidence is final),
    `z` (the one-sided boundary of each look)) and `stopped` {config: {`status` (`worse`: decided
    worse at `ctx`, measured only below it from then on; `equivalent`: every checkpoint decided),
    `ctx`, `measured_steps` (checkpoint steps it was still measured at: 0 = none), `look`
    (documents finished when decided), `saved_s` (the decoding it did not spend, as the pace
    predicted)}}."""

    method: str
    spending: Literal["obrien-fleming", "pocock"]
    alpha_per_side: Annotated[float, Field(gt=0, le=0.5)]
    looks: Look
    """one after each document"""
    evidence_look: Count
    """the first look, 0-based, at which per-position evidence is final"""
    z: list[float] = []
    """the one-sided boundary of each look"""
    stopped: dict[str, Stop]


class PairedRow(Record):
    """A configuration against the reference on one metric at one checkpoint, paired on the items."""

    probe: str = ""
    metric: str
    config: str = ""
    ctx: Length
    test_value: float | None = None
    baseline_value: float | None = None
    diff: float
    """test − reference"""
    ci: Interval
    """95%: Newcombe for accuracy, bootstrap for means"""
    p_worse: float | None = None
    """one-sided: the test configuration is worse"""
    p_holm: float | None = None
    """`p_worse`, Holm-adjusted across the metric's checkpoints"""
    test: str = ""
    n: Count = 0


class EquivalenceTest(Record):
    """One metric's equivalence test at one checkpoint."""

    metric: str
    value: float
    """difference test − reference; for a bound, the value"""
    ci: OpenInterval
    """95%: bootstrap-t for continuous items (t below 10 items), Newcombe for pass/fail, block bootstrap
    for KL"""
    margin: float
    kind: Literal["two-sided", "bound"]
    status: Status
    n: Count
    p: float | None = None
    """larger one-sided p, continuous only"""
    items_needed: Count | None = None
    """undecided: about how many items would decide at 80% power"""
    scope: str | None = None
    """what `value` covers: `at 1,024 tokens` (the items asked there), `positions 1–1,023` (KL)"""


class CheckpointEquivalence(Record):
    """A configuration's equivalence to the reference at one checkpoint."""

    ctx: Count
    status: Status
    decided_by: list[str]
    """metrics"""
    significant_loss: bool
    """at or past the onset"""
    items_needed: Count | None = None
    """undecided: about how many items would decide at 80% power"""
    tests: list[EquivalenceTest]
    look: Look | None = None
    """with `--until-decided`: the document after which the checkpoint was decided, or its last"""
    items_level: Share | None = None
    """with `--until-decided`: the confidence of the item intervals at that look"""


class Equivalence(Record):
    """A configuration's equivalence to the reference, checkpoint by checkpoint."""

    status: Status
    """`equivalent`: every checkpoint equivalent and no significant loss, up to the longest; `worse`:
    some checkpoint worse beyond a margin; else `undecided`"""
    effective_context: Count | None = None
    first_worse: Count | None = None
    checkpoints: list[CheckpointEquivalence]


class AccuracyShare(Record):
    """Secondary: how long the configuration keeps a share of the reference's accuracy."""

    threshold: float
    ctx: Count
    """longest checkpoint keeping >= `threshold` of the reference's accuracy; 0 = below the first"""
    ci: Annotated[list[Count], Field(min_length=2, max_length=2)]
    """95% bootstrap over items, checkpoints"""
    first: Count


class Halving(Record):
    """Where a logistic fit of accuracy in log2 L reaches half the baseline's accuracy."""

    length: float | None = None
    """tokens; only where accuracy falls significantly"""
    ci: OpenInterval | None = None
    reference_accuracy: float | None = None
    not_estimable: str | None = None
    """why `length` is null"""


class Trend(Record):
    """Level and growth of one metric's loss against the reference (positive: worse)."""

    metric: str
    words: str
    """the loss in words: `mean KL`, `answer log-prob drop`"""
    unit: str
    level: float
    """the loss at the shortest lengths measured: the first checkpoint's KL span, or the paired
    difference at the shortest checkpoint (the value its equivalence test reads)"""
    level_ci: OpenInterval
    level_scope: str
    """what the level covers: `positions 1–255`, `at 256 tokens`"""
    growth: float | None = None
    """the loss's change per doubling of context: least-squares slope on log2 of the length (null:
    fewer than three lengths)"""
    growth_ci: Interval | None = None
    """95% bootstrap: blocks of positions for KL, whole items for items"""
    growth_scope: str
    p_flat: float | None = None
    """one-sided bootstrap p of no growth"""
    family: bool
    """counts for the configuration's `grows` (continuous, with a margin)"""
    grows: bool
    """growth shown: Holm over the family's p at one-sided 0.0125 (kvprobe.stats.shape.GROWTH_ALPHA)"""
    n: Count


class Shape(Record):
    """The shape of a configuration's loss: from the start, growing with context, or neither."""

    kind: Literal["equivalent", "from_start", "grows", "worse_beyond", "worse_from", "undecided"]
    short: str
    """a few words: `worse from the start, not growing`"""
    sentence: str
    grows: bool | None = None
    """null: growth not measured"""
    onset: Count | None = None
    """where a growing loss shows (only where growth is shown)"""
    trends: list[Trend] = []


class ConfigVerdict(Record):
    """One test configuration's verdict. A probe adds its own fields (`Probe.verdict_part`)."""

    config: str = ""
    paired: list[PairedRow] = []
    """per metric and checkpoint"""
    onset_accuracy: Count | None = None
    """the shortest checkpoint from which the configuration is significantly worse than the baseline at
    every longer one: exact McNemar / Wilcoxon signed-rank, one-sided, Holm across checkpoints"""
    onset_logprob: Count | None = None
    """as `onset_accuracy`, for the answers' log-probability"""
    equivalence: Equivalence | None = None
    effective_context: Count | None = None
    """the longest checkpoint up to which every checkpoint is equivalent, before the onset"""
    divergence_onset: Count | None = None
    """where the per-position evidence rises significantly"""
    accuracy_share: AccuracyShare | None = None
    halving: Halving | None = None
    shape: Shape | None = None
    """level and growth per metric, and the loss's shape in words"""
    sentence: str | None = None


class Half(Record):
    """One half of a split cache (K-only or V-only) against the reference."""

    config: str = ""
    status: str | None = None
    onset: Count | None = None
    logprob_diff: float | None = None
    """answer log-prob difference at the longest checkpoint"""
    logprob_ci: OpenInterval | None = None
    logprob_p_holm: float | None = None
    ctx: Count | None = None
    kld_mean: float | None = None
    """mean KL over the whole document"""
    kld_ci: OpenInterval | None = None
    short: str | None = None
    """its shape in a few words: `worse from the start, not growing`"""


class HalfEvidence(Record):
    """One line of evidence on which half is at fault."""

    metric: str = ""
    points_to: str | None = None
    """the half, when significant and material"""
    k: float | None = None
    """pooled mean KL of K-only"""
    v: float | None = None
    """pooled mean KL of V-only"""
    ctx: Count | None = None
    diff: float | None = None
    """K-only − V-only, paired at the longest checkpoint"""
    ci: OpenInterval | None = None
    p: float | None = None
    n: Count | None = None


class KVsV(Record):
    """Which half of a quantized cache is at fault (`--split-kv`)."""

    quant: str = ""
    fault: Literal["K", "V", "both", "neither", "undecided"] = "undecided"
    more_sensitive: Literal["K", "V"] | None = None
    """where the evidence points, also when both are at fault"""
    reason: str = ""
    evidence: list[HalfEvidence] = []
    k_only: Half = Field(default_factory=Half)
    v_only: Half = Field(default_factory=Half)
    sentence: str = ""


class Effect(Record):
    """An effect at one checkpoint: a paired row, or the interaction's mean contrast."""

    ctx: Count
    diff: float
    ci: OpenInterval
    p: float | None = None
    """the interaction's two-sided Wilcoxon p"""
    n: Count | None = None


class WeightsVsKv(Record):
    """The 2x2 design {reference, test weights} x {f16, quantized cache} on identical items."""

    cache: str = ""
    fault: Literal["kv", "weights", "both", "neither", "inconclusive"] = "inconclusive"
    reason: str = ""
    effects: dict[str, dict[str, list[Effect]]] = {}
    """per metric: `kv_at_ref_weights`, `kv_at_test_weights`, `weights_at_f16_cache` (paired rows),
    `interaction`"""
    trends: dict[str, Trend | None] = {}
    """`kv` (the cache at the reference weights) and `weights` (the test weights at an f16 cache): the
    answer log-prob drop's level and growth with context"""
    sentence: str = ""


class Saving(Record):
    """KV memory of one sequence, as llama-server allocates it."""

    bytes: Count = 0
    reference_bytes: Count = 0
    saved_bytes: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] = 0
    saved_pct: float = 0


class NotChosen(Record):
    """A cheaper configuration, and why it was not chosen."""

    config: str = ""
    status: str = ""
    why: str = ""


class Asymmetric(Record):
    """Where K of a cache below 8 bits is the more sensitive half: K q8_0 with that V."""

    quant: str = ""
    config: str = ""
    flags: str = ""
    measured: bool = False
    status: str | None = None
    kv_bytes: Count | None = None
    relative_size: float = 0


class Recommendation(Record):
    """Which cache to run at the run's context."""

    ctx: Count = 0
    config: str
    """the cheapest by KV memory that is equivalent up to `ctx`; the reference where none is"""
    flags: str = ""
    """llama.cpp options"""
    equivalent: bool = False
    memory_at_ctx: Saving | None = None
    memory_at_training_context: Saving | None = None
    n_ctx_train: Count | None = None
    evidence: list[str] = []
    """the tests at `ctx`, in words"""
    not_chosen: list[NotChosen] = []
    asymmetric: Asymmetric | None = None
    sentence: str


class Folklore(Record):
    """A rule of thumb of llama.cpp guides (RunLocalAI's, Leeroopedia's), checked on this model."""

    rule: str
    finding: str
    """`holds`, `does not hold`, `undecided`, `not measured` (below 4K, or growth from fewer than three
    lengths), `not tested in this run`"""
    evidence: str


class Verdict(Record):
    """The verdict of a run with a reference."""

    reference_check: list[str] = []
    """why the reference itself limits what accuracy can show, judged from its items at the shortest
    checkpoint (it retrieves less than 75% of its needles, or ends its turn at once), with the likely
    cause; `[]` or absent: it does not"""
    margins: dict[str, Annotated[float, Field(gt=0)]] = {}
    """the equivalence margins used: {`accuracy`: 0.05, `answer_logprob`: 0.25 (nats), `kld_mean`: 0.02,
    `kld_p999`: 0.5 (nats; upper bounds)} unless `--margin` set them"""
    configs: dict[str, ConfigVerdict] = {}
    """{config id: {`equivalence` {`status` (`equivalent`: every checkpoint equivalent and no significant
    loss, up to the longest; `worse`: some checkpoint worse beyond a margin; else `undecided`),
    `effective_context`, `first_worse`, `checkpoints` [{`ctx`, `status`, `decided_by` (metrics),
    `significant_loss` (at or past the onset), `items_needed` (undecided: about how many items would
    decide at 80% power), `tests` [{`metric`, `value` (difference test − reference; for a bound, the
    value), `ci` (95%: bootstrap-t for continuous items (t below 10 items), Newcombe for pass/fail,
    block bootstrap for KL), `margin`, `kind` (`two-sided` or `bound`), `status`, `n`, `p` (larger
    one-sided p, continuous only), `items_needed`}], with `--until-decided` also `look` (the document
    after which the checkpoint was decided, or its last) and `items_level` (the confidence of the item
    intervals at that look)}]}, `effective_context` (the longest checkpoint up to which every checkpoint
    is equivalent, before the onset), `onset_accuracy`, `onset_logprob` (the shortest checkpoint from
    which the configuration is significantly worse than the baseline at every longer one: exact McNemar /
    Wilcoxon signed-rank, one-sided, Holm across checkpoints), `accuracy_share` (secondary: {`threshold`
    0.85, `ctx` (longest checkpoint keeping >= 85% of the reference's accuracy; 0 = below the first),
    `ci` (95% bootstrap over items, checkpoints), `first`}), `halving` {`length` (tokens where a logistic
    fit of accuracy in log2 L reaches half the baseline's accuracy; only where accuracy falls
    significantly), `ci`, `reference_accuracy`, `not_estimable` (why `length` is null)},
    `divergence_onset`, `sentence`, `paired` (per metric and checkpoint: `test_value`, `baseline_value`,
    `diff`, `ci` (Newcombe for accuracy, bootstrap for means), `p_worse`, `p_holm`, `test`, `n`)}}"""
    until_decided: UntilDecided | None = None
    """with `--until-decided`: the group-sequential design the equivalence tests read (`method`,
    `spending` (`obrien-fleming` or `pocock`), `alpha_per_side` 0.025, `looks` (one after each
    document), `evidence_look` (the first look, 0-based, at which per-position evidence is final), `z`
    (the one-sided boundary of each look)) and `stopped` {config: {`status` (`worse`: decided worse at
    `ctx`, measured only below it from then on; `equivalent`: every checkpoint decided), `ctx`,
    `measured_steps` (checkpoint steps it was still measured at: 0 = none), `look` (documents finished
    when decided), `saved_s` (the decoding it did not spend, as the pace predicted)}} (from `run`)"""
    k_vs_v: list[KVsV] = []
    """with `--split-kv`, per quantized type: `fault` (`K`, `V`, `both`, `neither`, `undecided`),
    `more_sensitive` (`K`, `V` or null: where the evidence points, also when both are at fault),
    `reason`, `evidence` [{`metric`: `kld_mean` (K-only and V-only pooled means) or
    `answer_logprob`/`accuracy` (K-only − V-only paired at the longest checkpoint: `diff`, `ci`, `p`,
    `n`), `points_to`: the half, when significant and material (KL: non-overlapping intervals, twice
    and above half the bound; items: at least half the margin)}], `k_only`/`v_only` (status, onset,
    answer log-prob difference at the longest checkpoint with Holm p, pooled mean KL with interval),
    `sentence`"""
    weights_vs_kv: WeightsVsKv | None = None
    """with two models: `cache`, `fault` (`kv`, `weights`, `both`, `neither`, `inconclusive`), `reason`,
    `effects` per metric (`kv_at_ref_weights`, `kv_at_test_weights`, `weights_at_f16_cache`: paired rows
    as above; `interaction`: per checkpoint mean of (TEST:q − TEST:f16) − (REF:q − REF:f16) over items,
    bootstrap interval, two-sided Wilcoxon p), `sentence`"""
    recommendation: Recommendation | None = None
    """`ctx`, `config` (the cheapest by KV memory that is equivalent up to `ctx`; the reference where none
    is), `flags` (llama.cpp options), `equivalent`, `memory_at_ctx` and `memory_at_training_context`
    ({`bytes`, `reference_bytes`, `saved_bytes`, `saved_pct`}: one sequence, as llama-server allocates
    it), `n_ctx_train`, `evidence` (the tests at `ctx`, in words), `not_chosen` [{`config`, `status`,
    `why`}] (the cheaper ones), `asymmetric` (where K of a cache below 8 bits is the more sensitive half:
    `config` `k=q8_0,v=<type>`, `flags`, `measured`, `status`, `kv_bytes`), `sentence`"""
    folklore: list[Folklore] = []
    """the rules of thumb of llama.cpp guides (RunLocalAI's, Leeroopedia's): [{`rule`, `finding`
    (`holds`, `does not hold`, `undecided`, `not tested in this run`), `evidence`}]"""
    sentences: list[str]
    '''what `kvprobe run` prints under "Verdict"'''
    migrated_from_schema: Annotated[int, Field(ge=1)] | None = None
    """the schema version of a file whose verdict was rebuilt when it was read (2)"""
