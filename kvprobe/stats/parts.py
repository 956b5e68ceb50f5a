"""The parts of the verdict and of a comparison as kvprobe.stats builds them, plain dicts until
kvprobe.stats.statistics.typed_verdict validates the verdict into kvprobe.api.verdict.Verdict
(and `kvprobe compare --json` prints the comparison): TypedDicts whose keys are exactly what
the code writes, so that mypy checks every key. Static only: nothing here runs."""

from __future__ import annotations

from typing import Any, NotRequired, Required, TypedDict

from kvprobe.api.record import JsonObject, Row


class DifferenceDoc(TypedDict):
    """A configuration against the reference on one metric (kvprobe.stats.analysis.compare_paired)."""

    test_value: float
    baseline_value: float
    diff: float
    ci: list[float]
    p_worse: float
    test: str
    n: int
    p_holm: NotRequired[float]  # paired_rows sets it once the metric's checkpoints are Holm-adjusted


class PairedDoc(DifferenceDoc):
    """One paired row (kvprobe.stats.analysis.paired_rows; kvprobe.api.verdict.PairedRow)."""

    probe: str
    metric: str
    config: str
    ctx: int


class CheckpointDoc(TypedDict):
    """A configuration's equivalence at one checkpoint (kvprobe.api.verdict.CheckpointEquivalence)."""

    ctx: int
    status: str
    decided_by: list[str]
    significant_loss: bool
    items_needed: int | None
    tests: list[JsonObject]  # Tost.to_json: dataclasses.asdict gives a plain dict
    look: NotRequired[int | None]  # with --until-decided
    items_level: NotRequired[float | None]  # with --until-decided


class EquivalenceDoc(TypedDict):
    """A configuration's equivalence, checkpoint by checkpoint (kvprobe.api.verdict.Equivalence)."""

    status: str
    effective_context: int | None
    first_worse: int | None
    checkpoints: list[CheckpointDoc]


class UntilDecidedDoc(TypedDict):
    """The group-sequential design (kvprobe.stats.sequential.Design.to_json)."""

    method: str
    spending: str
    alpha_per_side: float
    looks: int
    evidence_look: int
    z: list[float]


class HalfDoc(TypedDict):
    """One half of a split cache against the reference (kvprobe.api.verdict.Half)."""

    config: str
    status: str | None
    onset: int | None
    logprob_diff: float | None
    logprob_ci: list[float] | None
    logprob_p_holm: Any  # the paired row's `p_holm`, None without one (read where `logprob_diff` is set)
    ctx: int | None
    kld_mean: Any  # the pooled summary row's `value` (a probe's row), None without one
    kld_ci: Any  # the pooled summary row's `ci` (a probe's row), None without one
    short: NotRequired[str | None]  # its shape in a few words (kvprobe.stats.shape)


class HalfEvidenceDoc(TypedDict):
    """One line of evidence on which half is at fault (kvprobe.api.verdict.HalfEvidence): the
    pooled KL of each half, or a paired contrast of K-only against V-only."""

    metric: str
    points_to: NotRequired[str | None]
    k: NotRequired[Any]  # HalfDoc.kld_mean
    v: NotRequired[Any]  # HalfDoc.kld_mean
    ctx: NotRequired[int]
    diff: NotRequired[float]
    ci: NotRequired[list[float]]
    p: NotRequired[float]
    n: NotRequired[int]


class KVsVDoc(TypedDict):
    """Which half of a quantized cache is at fault (kvprobe.api.verdict.KVsV)."""

    quant: str
    fault: str
    more_sensitive: str | None
    reason: str
    evidence: list[HalfEvidenceDoc]
    k_only: HalfDoc
    v_only: HalfDoc
    sentence: str


class EffectDoc(TypedDict):
    """The interaction's mean contrast at one checkpoint (kvprobe.api.verdict.Effect)."""

    ctx: int
    diff: float
    ci: list[float]
    p: float
    n: int


class MetricEffectsDoc(TypedDict):
    """One metric's effects in the 2x2 design (kvprobe.api.verdict.WeightsVsKv.effects)."""

    kv_at_ref_weights: list[PairedDoc]
    kv_at_test_weights: list[PairedDoc]
    weights_at_f16_cache: list[PairedDoc]
    interaction: list[EffectDoc]


class WeightsVsKvDoc(TypedDict):
    """Weights against KV (kvprobe.api.verdict.WeightsVsKv)."""

    cache: str
    fault: str
    reason: str
    effects: dict[str, MetricEffectsDoc]  # metric → its effects
    sentence: str
    trends: NotRequired[dict[str, Any]]  # "kv", "weights": the answer log-prob's TrendDoc (or None)


class SavingDoc(TypedDict):
    """KV memory of one sequence (kvprobe.api.verdict.Saving)."""

    bytes: int
    reference_bytes: int
    saved_bytes: int
    saved_pct: float


class NotChosenDoc(TypedDict):
    config: str
    status: str
    why: str


class AsymmetricDoc(TypedDict):
    """K q8_0 with the V of a cache whose K is the more sensitive (kvprobe.api.verdict.Asymmetric)."""

    quant: str
    config: str
    flags: str
    measured: bool
    status: str | None
    kv_bytes: int | None
    relative_size: float


class RecommendationDoc(TypedDict):
    """Which cache to run (kvprobe.api.verdict.Recommendation)."""

    ctx: int
    config: str
    flags: str
    equivalent: bool
    memory_at_ctx: SavingDoc | None
    memory_at_training_context: SavingDoc | None
    n_ctx_train: int
    evidence: list[str]
    not_chosen: list[NotChosenDoc]
    asymmetric: NotRequired[AsymmetricDoc | None]  # set once the rest is chosen
    sentence: NotRequired[str]  # set once the rest is chosen


class FolkloreDoc(TypedDict):
    rule: str
    finding: str
    evidence: str


class DecisionDoc(TypedDict, total=False):
    """The verdict's decision fields (kvprobe.stats.decision.decide): `recommendation` and
    `folklore`. It writes none of VerdictDoc's other keys; they are declared, not required, so
    that build_verdict may `update` the verdict with it (mypy's rule for TypedDict.update)."""

    recommendation: Required[RecommendationDoc | None]
    folklore: Required[list[FolkloreDoc]]
    margins: dict[str, float]
    configs: dict[str, JsonObject]
    k_vs_v: list[KVsVDoc]
    weights_vs_kv: WeightsVsKvDoc | None
    sentences: list[str]
    reference_check: list[str]
    until_decided: dict[str, object] | None


class VerdictDoc(TypedDict):
    """The verdict as kvprobe.stats.verdict.build_verdict makes it (kvprobe.api.verdict.Verdict).
    A configuration's verdict stays a plain document: every probe adds its own fields to it
    (`Probe.verdict_part`, which takes and extends it as a JsonObject)."""

    margins: dict[str, float]  # metric → margin
    configs: dict[str, JsonObject]  # config id → its verdict, with each probe's own fields
    k_vs_v: list[KVsVDoc]
    weights_vs_kv: WeightsVsKvDoc | None
    sentences: list[str]
    reference_check: list[str]
    until_decided: dict[str, object] | None  # UntilDecidedDoc | {"stopped": the run's record}
    # decide's RecommendationDoc | None; Any because callers that know one was made index it directly
    recommendation: NotRequired[Any]
    folklore: NotRequired[list[FolkloreDoc]]  # decide's


class ComparisonDoc(TypedDict):
    """`kvprobe compare`'s report as kvprobe.stats.compare makes it (kvprobe.api.comparison.Comparison)."""

    paired: bool
    pairing: str
    notes: list[str]
    configs: list[list[str]]
    unmatched: dict[str, list[str]]  # "old" / "new" → ids
    test_configs_compared: list[list[str]]
    rows: list[Row]  # compare's own rows and each probe's (Probe.compare_rows)
    failures: NotRequired[list[Row]]  # kvprobe.cli.compare's, per --fail-on


class ChangeDoc(TypedDict):
    """Two sets of values of one metric (kvprobe.stats.compare.difference_row;
    kvprobe.api.comparison.Difference)."""

    old: float
    new: float
    diff: float
    ci: list[float]
    p: float
    test: str
    ci_equivalence: list[float]
    n_old: int
    n_new: int
