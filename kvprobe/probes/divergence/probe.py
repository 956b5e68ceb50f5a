"""Divergence probe: how far each configuration's next-token distribution moves from the
reference's, position by position along the documents (KL, top-1 agreement, perplexity).

The numerics (KL from logits, the recorder, the decay curve and its onset) are in
kvprobe.probes.divergence.metrics; this module is the probe: its scenario section, what it does during a run,
its section of the result file, its summary, tables, sentence and compare rows.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from rich.table import Table

from kvprobe.api import (
    HASHED_IF_SET,
    POOLED_DIVERGENCE,
    Budget,
    LineFigure,
    Marker,
    MatrixColumn,
    Metric,
    Needs,
    PositionEvidence,
    Probe,
    ProbeRun,
    ResultDoc,
    Row,
    RunSetup,
    SchemaPart,
    pooled_row,
    register,
    summary_series,
)
from kvprobe.api.cache_types import NULL_ROWS
from kvprobe.api.record import JsonObject
from kvprobe.infra.display import plain
from kvprobe.infra.errors import UserError, guarded
from kvprobe.plan.scenario import MAX_CHECKPOINT, bad, within
from kvprobe.probes.divergence import schema as part
from kvprobe.probes.divergence.metrics import (
    CurveSettings,
    DivergenceRecorder,
    DocumentArrays,
    bin_edges,
    blocks_from,
    checkpoint_spans,
    divergence_curve,
    sampled_positions,
    split_blocks,
)
from kvprobe.result.arrays import ARRAY_DTYPES, decode_array, encode_array
from kvprobe.result.blocks import checker, first_problem, integer, listing, number, record, text, where
from kvprobe.result.exact import decode_exact, encode_exact
from kvprobe.stats.compare import difference_row
from kvprobe.stats.shape import WHOLE, whole_or_positions
from kvprobe.stats.shape import number as figure

if TYPE_CHECKING:
    from rich.console import RenderableType

    from kvprobe.api import Document, Figure
    from kvprobe.api.engine import TopLogprobs
    from kvprobe.plan.scenario import Scenario

Arrays = dict[str, list[dict[str, np.ndarray]]]  # per configuration, per document: name -> values


@dataclass(frozen=True)
class DivergenceSpec:
    documents: int = 1  # the plan's first N documents are scored at every position
    block: int = 32  # consecutive positions per unit of the bootstrap and the onset test
    onset_reference: int = 256  # positions below this are "the shortest bins" KL is tested against
    # An engine without full logits (a llama-server): every server_stride-th position's top
    # server_n_probs log-probs, the KL over those + a tail bucket (a lower bound of the full KL).
    server_stride: int = field(default=4, metadata=HASHED_IF_SET)
    server_n_probs: int = field(default=1000, metadata=HASHED_IF_SET)


EXACT_KINDS = {"nll": "f8", "kld": "f8", "top1_agree": "bool"}  # what end_unit journals, per array
MAX_N_PROBS = 100_000


@functools.cache
def _unit_data_validator() -> Any:
    """The shape of `DivergenceRun.end_unit`'s data: per (configuration, document) the arrays of
    the chunks the unit added, bit for bit; or the largest NLL gap of a repeated reference."""
    exact = record({"kind": text(enum=["f8", "bool"]), "b64": text()}, ["kind", "b64"])
    entry = record({"config": text(), "doc": integer(), "repeat_nll_gap": number(minimum=0),
                    "top_n": integer(lo=1, hi=MAX_N_PROBS), "stride": integer(lo=1), "nll_bounded": integer(),
                    **dict.fromkeys(EXACT_KINDS, exact)})  # fmt: skip
    return checker(listing(entry))


def unit_data_problem(data: Any, reference: str | None = None) -> str | None:
    """What is wrong with a journal's copy of `end_unit`'s data (None: it replays): its shape,
    the kind of each array, arrays that do not decode or differ in length; given the
    reference, which configurations have KL. An engine without full logits adds the top n and
    stride its KL was read with, and per record how many NLLs are only bounds."""
    root = "probe_data.divergence"
    if (problem := first_problem(_unit_data_validator(), data, root)) is not None:
        return problem
    for i, entry in enumerate(data):
        at = [i]
        for alone in ({"repeat_nll_gap"}, {"top_n", "stride"}):
            if alone & set(entry) and set(entry) != alone:
                return f"{where(at, root)} must hold {' and '.join(sorted(alone))} alone"
        if {"repeat_nll_gap", "top_n"} & set(entry):
            continue
        names = [n for n in EXACT_KINDS if n in entry]
        test = reference is None or entry.get("config") != reference
        if "config" not in entry or "doc" not in entry or names not in (["nll"], list(EXACT_KINDS)):
            return f"{where(at, root)} must hold config, doc and nll, or those with kld and top1_agree"
        if reference is not None and (len(names) == 3) != test:
            return f"{where(at, root)} must hold KL exactly where it is not the reference's"
        lengths = set()
        for name in names:
            if entry[name]["kind"] != EXACT_KINDS[name]:
                return f"{where([*at, name, 'kind'], root)} must be {EXACT_KINDS[name]!r}"
            try:
                lengths.add(len(decode_exact(entry[name])))
            except ValueError:
                return f"{where([*at, name], root)} does not decode"
        if len(lengths) != 1:
            return f"{where(at, root)} has arrays of different lengths"
        if entry.get("nll_bounded", 0) > min(lengths):
            return f"{where([*at, 'nll_bounded'], root)} must be at most the positions it holds"
    return None


def _replay_top(recorder: DivergenceRecorder, entry: Any) -> None:
    """A journaled unit's top n and stride: what its KL was read with."""
    if entry["stride"] != recorder.top_stride:
        raise UserError(
            f"a journaled unit read every {entry['stride']}th position, this run every "
            f"{recorder.top_stride}th; start it again without --resume"
        )
    recorder.n_probs = min(recorder.n_probs or MAX_N_PROBS, int(entry["top_n"]))


class DivergenceRun(ProbeRun):
    def __init__(self, setup: RunSetup):
        self.spec = setup.scenario.spec(DivergenceSpec)
        self.ctx, self.checkpoints, self.seed = setup.ctx, setup.checkpoints, setup.seed
        self.reference = setup.baseline
        reference, stride = setup.baseline, self.spec.server_stride
        self.recorder = DivergenceRecorder(reference, stride) if reference is not None else None
        self.committed: dict[tuple[str, int], int] = {}  # chunks per record that belong to finished units
        # A curve at each checkpoint from separate runs (llama-perplexity -c L per length).
        self.budget = Budget(naive_tokens=sum(setup.checkpoints) * self.spec.documents)

    def on_chunk(self, document: Document, pos0: int, logits: Mapping[str, np.ndarray]) -> None:
        # Score predictions of tokens 1 .. ctx - 1 only: the same positions whatever extra tokens
        # the document carries for other probes.
        if self.recorder is not None:
            self.recorder.add_chunk(document.index, document.tokens[: self.ctx], pos0, dict(logits))

    def on_top(self, document: Document, by_config: Mapping[str, TopLogprobs]) -> None:
        # The same positions as on_chunk's, every server_stride-th of them (an engine without
        # full logits).
        if self.recorder is not None:
            self.recorder.add_top(document.index, document.tokens[: self.ctx], dict(by_config))

    def end_unit(self) -> list[Row] | None:
        """Commit the chunks recorded during the unit; the journal gets them bit for bit."""
        if self.recorder is None:
            return None
        data = []
        for key, rec in self.recorder.records.items():
            start = self.committed.get(key, 0)
            if len(rec.nll) > start:
                new = DocumentArrays(
                    rec.config, rec.doc, rec.nll[start:], rec.kld[start:], rec.top1_agree[start:]
                )
                bounded = sum(rec.bounded[start:])
                data.append({"config": rec.config, "doc": rec.doc,
                             **{name: encode_exact(v) for name, v in new.arrays().items()},
                             **({"nll_bounded": bounded} if bounded else {})})  # fmt: skip
                self.committed[key] = len(rec.nll)
        if self.recorder.repeat_nll_gap is not None:  # a grouped run: the reference fed again
            data.append({"repeat_nll_gap": self.recorder.repeat_nll_gap})
        if self.recorder.n_probs is not None:  # what the KL is, for a run resumed from here
            data.append({"top_n": self.recorder.n_probs, "stride": self.recorder.top_stride})
        return data

    def replay_unit(self, data: Any) -> None:
        if self.recorder is None:
            if data is not None:
                raise UserError("a journaled unit holds divergence data, but this run has no reference; "
                                "start the run again without --resume")  # fmt: skip
            return
        problem = "holds no divergence data" if data is None else unit_data_problem(data, self.reference)
        if problem is not None:  # arrays of the wrong shape would change the curve without a word
            raise UserError(f"a journaled unit {problem}; start the run again without --resume")
        for entry in data:
            if "repeat_nll_gap" in entry:
                gap = float(entry["repeat_nll_gap"])
                self.recorder.repeat_nll_gap = max(gap, self.recorder.repeat_nll_gap or 0.0)
                continue
            if "top_n" in entry:
                _replay_top(self.recorder, entry)
                continue
            key = (entry["config"], int(entry["doc"]))
            rec = self.recorder.records.setdefault(key, DocumentArrays(*key))
            rec.bounded.append(int(entry.get("nll_bounded", 0)))
            rec.nll.append(decode_exact(entry["nll"]))
            if "kld" in entry:
                rec.kld.append(decode_exact(entry["kld"]))
                rec.top1_agree.append(decode_exact(entry["top1_agree"]))
            self.committed[key] = len(rec.nll)

    def arrays(self) -> Arrays:
        """Per configuration (the null context's included), one dict of arrays per document,
        from finished units only (an interrupted unit is measured again on --resume)."""
        out: Arrays = {}
        if self.recorder is not None:
            for key, rec in sorted(self.recorder.records.items(), key=lambda kv: kv[0][1]):
                n = self.committed.get(key, 0)
                if n:
                    kept = DocumentArrays(rec.config, rec.doc, rec.nll[:n], rec.kld[:n], rec.top1_agree[:n])
                    out.setdefault(rec.config, []).append(kept.arrays())
        return out

    def bounded_nll(self) -> dict[str, dict[str, float]]:
        """Per configuration (finished units only): positions whose NLL is only a lower bound,
        and their share of its positions."""
        counts: dict[str, list[int]] = {}
        if self.recorder is not None:
            for key, rec in self.recorder.records.items():
                n = self.committed.get(key, 0)
                found = counts.setdefault(rec.config, [0, 0])
                found[0] += sum(rec.bounded[:n])
                found[1] += sum(len(a) for a in rec.nll[:n])
        return {c: {"n": k, "share": k / total if total else 0.0} for c, (k, total) in counts.items()}

    def measured(self) -> Arrays:
        return {c: a for c, a in self.arrays().items() if c != NULL_ROWS}

    def evidence(self) -> Mapping[str, list[Row]]:
        if self.reference is None or self.reference not in (measured := self.measured()):
            return {}
        metrics = DivergenceProbe().metrics
        stride = 1 if self.recorder is None else self.recorder.stride
        return checkpoint_spans(
            measured, self.reference, self.checkpoints, metrics, block=self.spec.block, seed=self.seed,
            stride=stride, lower_bound=self.recorder is not None and self.recorder.n_probs is not None,
        )  # fmt: skip

    def section(self, errors: list[dict[str, str]]) -> Row | None:
        """The `divergence` section as measured: the per-position arrays. The onset is a
        statistic (filled by the summary); the null check is summarised here, since the null
        context's arrays are not kept, and guarded like every statistic."""
        arrays = self.arrays()
        if not arrays or self.reference is None:
            return None
        configs = {c: a for c, a in arrays.items() if c != NULL_ROWS}
        positions = [
            {
                "config": config,
                "doc": doc,
                **{k: encode_array(v, ARRAY_DTYPES[k]) for k, v in per_doc.items()},
            }
            for config, docs in configs.items()
            for doc, per_doc in enumerate(docs)
        ]
        top_n = None if self.recorder is None else self.recorder.n_probs
        section: Row = {
            "reference": self.reference,
            "documents": self.spec.documents,
            "bin_edges": bin_edges(self.checkpoints),
            "block": self.spec.block,
            "onset_reference": self.spec.onset_reference,
            "stride": 1 if self.recorder is None else self.recorder.stride,
            "kl": "full" if top_n is None else "top_n_tail",
            "n_probs": top_n,
            "onset": {c: None for c in configs if c != self.reference},
            "null_check": None,
            "positions": positions,
        }
        if top_n is not None:
            section["nll_bounded"] = {c: v for c, v in self.bounded_nll().items() if c in configs}
        if self.recorder is not None and self.recorder.repeat_nll_gap is not None:
            section["reference_repeat_max_nll_gap"] = self.recorder.repeat_nll_gap
        null, reference = arrays.get(NULL_ROWS), arrays[self.reference]
        if null:
            section["null_check"] = guarded(errors, "null check", lambda: null_check_summary(reference, null))
        return section


def add_tail(result: JsonObject, seed: int) -> None:
    """For a result written before them (schema 2): KL's 99.9th percentile rows and the
    per-checkpoint intervals the equivalence test reads, from the file's float32 arrays."""
    section = result["divergence"]
    probe = DivergenceProbe()
    arrays = divergence_arrays(result)
    cs = curve_settings(result, seed)
    metrics = [m for m in probe.metrics if m.name in ("kld_p999", "ppl")]
    rows, _ = divergence_curve(arrays, section["reference"], cs, metrics)
    result["summary"] += [r for r in rows if r["metric"] == "kld_p999"]
    section["spans"] = checkpoint_spans(
        arrays, section["reference"], cs.checkpoints, probe.metrics, block=section["block"], seed=seed,
        stride=cs.stride, lower_bound=section.get("kl") == "top_n_tail",
    )  # fmt: skip


def stride_of(section: Mapping[str, Any]) -> int:
    """Positions between a document's values: 1 in a file written before strides (full logits)."""
    return int(section.get("stride") or 1)


def curve_settings(result: ResultDoc | JsonObject, seed: int) -> CurveSettings:
    section = result["divergence"]
    checkpoints, stride = result["run"]["checkpoints"], stride_of(section)
    return CurveSettings(checkpoints, section["block"], section["onset_reference"], seed, stride=stride)


def null_check_summary(reference: list[dict[str, np.ndarray]], null: list[dict[str, np.ndarray]]) -> Row:
    """The reference against a second context with the same settings: on CPU every
    position must give KL exactly 0 and the same NLL, or the comparison measures noise."""
    kld = np.concatenate([d["kld"] for d in null])
    nll_gap = np.concatenate([np.abs(n["nll"] - r["nll"]) for n, r in zip(null, reference, strict=True)])
    return {
        "positions": len(kld),
        "max_kld": float(kld.max()),
        "mean_kld": float(kld.mean()),
        "nonzero_kld": int(np.count_nonzero(kld)),
        "top1_agree": float(np.concatenate([d["top1_agree"] for d in null]).mean()),
        "max_nll_gap": float(nll_gap.max()),
        "passed": bool(np.count_nonzero(kld) == 0 and nll_gap.max() == 0.0),
    }


def divergence_arrays(result: ResultDoc | JsonObject) -> Arrays:
    """The per-position arrays back from a result document, per configuration and document."""
    out: Arrays = defaultdict(list)
    for rec in result["divergence"]["positions"]:  # per configuration in run order, documents in order
        out[rec["config"]].append({k: decode_array(v) for k, v in rec.items() if k in ARRAY_DTYPES})
    return dict(out)


class DivergenceProbe(Probe):
    name = "divergence"
    order = 2
    sections: ClassVar[dict[str, type]] = {"divergence": DivergenceSpec}
    has_section = True
    summary_label = "divergence curve"
    hashed_always = True

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (
            # Margins: upper bounds. A cache may add a mean KL of 0.02 nats: less than Q4_K_M
            # weights cost Llama 3 8B (0.0281, "best balance" in the source documents' table),
            # twice Q5_K_M's (0.0108). At the 99.9th percentile, 0.5 nats bounds how far the
            # rare worst positions may move.
            Metric("divergence", "kld_mean", lower_is_worse=False, source="kld", compared=True, margin=0.02,
                   role=POOLED_DIVERGENCE, unit=" nats", label="mean KL"),
            Metric("divergence", "kld_p99", source="kld"),
            Metric("divergence", "kld_p999", source="kld", margin=0.5, unit=" nats",
                   label="KL 99.9th percentile", tail="the tail of the KL distribution, not its mean"),
            Metric("divergence", "top1_agree", lower_is_worse=True, source="top1_agree", compared=True,
                   min_change=0.01),
            Metric("divergence", "ppl", source="nll"),
        )  # fmt: skip

    def validate(self, scenario: Scenario, source: str) -> None:
        spec = scenario.spec(DivergenceSpec)
        if not 1 <= spec.documents <= scenario.plan.documents:
            raise bad(
                source,
                "divergence.documents",
                f"must be between 1 and plan.documents ({scenario.plan.documents})",
            )
        if not 1 <= spec.block <= 1024:
            raise bad(source, "divergence.block", "must be between 1 and 1024")
        within(source, "divergence.onset_reference", spec.onset_reference, 2, MAX_CHECKPOINT)
        within(source, "divergence.server_stride", spec.server_stride, 1, MAX_CHECKPOINT)
        within(source, "divergence.server_n_probs", spec.server_n_probs, 1, MAX_N_PROBS)

    def check_run(
        self, scenario: Scenario, *, mode: str, ctx: int, baseline: str | None, null_check: bool
    ) -> None:
        if baseline is None:
            raise UserError("the divergence probe compares against a reference: drop --baseline none")

    def needs(self, scenario: Scenario, *, mode: str) -> Needs:
        # Every position's logits of the first documents, in one pass; the null check is its.
        spec = scenario.spec(DivergenceSpec)
        reads = spec.documents if mode == "onepass" else 0
        return Needs(
            logit_documents=reads, null_check=True, top_stride=spec.server_stride, top_n=spec.server_n_probs
        )

    def start(self, setup: RunSetup) -> DivergenceRun:
        return DivergenceRun(setup)

    def check_unit_data(self, data: Any) -> str | None:
        return unit_data_problem(data)

    def schema_part(self) -> SchemaPart:
        return part.PART

    def ties(self, *, shown: bool) -> tuple[Callable[[ResultDoc], str | None], ...]:
        return (*part.TIES, *(part.TABLE_TIES if shown else ()))

    def migrate(self, doc: JsonObject, read_version: int, errors: list[dict[str, str]]) -> None:
        """Schema 2 -> 3: KL's 99.9th percentile rows and the spans, from the file's arrays."""
        if read_version < 3 and doc.get("divergence") and doc.get("baseline") is not None:
            guarded(errors, self.summary_label, lambda: add_tail(doc, doc["run"]["seed"]))

    def summary(self, result: ResultDoc, seed: int, measured: Any) -> list[Row]:
        """The decay curve: every metric in every position bin and pooled; sets the onsets.
        `measured` are the run's own float64 arrays; without them the file's float32 copies are
        decoded, which agree to about 1e-7 relative."""
        section = result.get("divergence")
        if not section or result.get("baseline") is None:
            return []
        cs = curve_settings(result, seed)
        rows, onsets = divergence_curve(
            measured or divergence_arrays(result), section["reference"], cs, self.metrics
        )
        section["onset"] = onsets
        section["spans"] = checkpoint_spans(
            measured or divergence_arrays(result), section["reference"], cs.checkpoints, self.metrics,
            block=section["block"], seed=seed, stride=cs.stride,
            lower_bound=section.get("kl") == "top_n_tail",
        )  # fmt: skip
        return rows

    def tables(self, result: ResultDoc) -> list[RenderableType]:
        if not result.get("divergence") or not any(r["probe"] == "divergence" for r in result["summary"]):
            return []
        return [divergence_table(result), *divergence_lines(result)]

    def figures(self, result: ResultDoc) -> list[Figure]:
        return divergence_figures(result)

    def sentence(
        self, result: ResultDoc | JsonObject, config: str, baseline: str, verdict: JsonObject
    ) -> str | None:
        onsets = (result.get("divergence") or {}).get("onset", {})
        if config not in onsets:
            return None
        pooled = pooled_row(result["summary"], config)
        if pooled is None:
            return "No divergence figures."
        lo, hi = pooled["ci"]
        where = whole_or_positions(pooled.get("bin"), int(result["run"]["ctx"]))
        if kl_words(result.get("divergence") or {}):  # the table and the lines say which top n
            where += "; over the top n + tail, a lower bound"
        kl = f"Its mean KL ({where}) from {baseline} is {pooled['value']:.3g} [{lo:.3g}, {hi:.3g}]"
        found = onsets[config]
        if found is None:
            return f"{kl}, flat along the context: no position bin rises significantly."
        lo, hi = found["bin"]
        return (
            f"{kl}; KL rises significantly from positions {lo:,}–{hi - 1:,} on "
            f"(Holm p = {found['p_holm']:.2g})."
        )

    def position_evidence(self, result: ResultDoc | JsonObject) -> PositionEvidence | None:
        section = result.get("divergence") or {}
        return PositionEvidence(
            onsets=section.get("onset", {}), spans=section.get("spans") or {}, blocks=kl_blocks(result),
            loss_metric="kld_mean", stride=stride_of(section),
        )  # fmt: skip

    def matrix_columns(self) -> list[MatrixColumn]:
        return [
            MatrixColumn(
                "KL (10⁻³ nats)",
                "kld_mean",
                lambda r: f"{1e3 * r['value']:.3g}",
                "mean KL from the reference",
            )
        ]

    def compare_rows(
        self,
        old: ResultDoc | JsonObject,
        new: ResultDoc | JsonObject,
        pairs: list[tuple[str, str]],
        paired: bool,
        seed: int,
    ) -> list[Row]:
        """Block means of KL and top-1 agreement per position bin and pooled: blocks of
        consecutive positions are the units, as in the curve's intervals."""
        if not old.get("divergence") or not new.get("divergence"):
            return []
        if not _comparable(old["divergence"], new["divergence"], paired):
            return []  # a KL over the top n is not the full KL: the differences would mean nothing
        edges = old["divergence"]["bin_edges"]
        if edges != new["divergence"]["bin_edges"]:
            edges = [edges[0], min(edges[-1], new["divergence"]["bin_edges"][-1])]
        rows = []
        for c_old, c_new in pairs:
            spans = _compared_spans(edges, min(_reach(old, c_old), _reach(new, c_new)))
            for metric in (m for m in self.metrics if m.compared and m.source):
                for lo, hi, scope in spans:
                    vo = _block_means(old, c_old, metric.source, lo, hi)
                    vn = _block_means(new, c_new, metric.source, lo, hi)
                    if not vo or not vn or (paired and len(vo) != len(vn)):
                        continue
                    ctx = hi if scope == "bin" else new["run"]["ctx"]
                    where = {
                        "probe": "divergence",
                        "metric": metric.name,
                        "config_old": c_old,
                        "config_new": c_new,
                    }
                    rows.append(
                        {**where, "ctx": ctx, "scope": scope, **difference_row(vo, vn, False, paired, seed)}
                    )
        return rows


def kl_blocks(result: ResultDoc | JsonObject) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per test configuration, its KL in blocks of consecutive positions (first position,
    values), every document's, cut at the checkpoints as the spans are: the blocks below the
    first checkpoint are exactly the first span's (the level), the rest carry the growth."""
    section = result.get("divergence") or {}
    if not section or not section.get("positions") or result.get("baseline") is None:
        return {}
    edges, block = [1, *result["run"]["checkpoints"]], int(section["block"])
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for config, per_doc in divergence_arrays(result).items():
        if config == section["reference"]:
            continue
        found = out.setdefault(config, [])
        for doc in (d for d in per_doc if "kld" in d):
            values = doc["kld"].astype(float)
            positions = sampled_positions(len(values), stride_of(section))
            for lo, hi in itertools.pairwise(edges):
                found += blocks_from(values, positions, lo, hi, block)
    return out


def _comparable(old: Mapping[str, Any], new: Mapping[str, Any], paired: bool) -> bool:
    """Two sections' KL measure the same thing (full, or over the same top n); paired block by
    block, at the same positions too."""
    kind = [(s.get("kl", "full"), s.get("n_probs")) for s in (old, new)]
    return kind[0] == kind[1] and (not paired or stride_of(old) == stride_of(new))


def _reach(result: ResultDoc | JsonObject, config: str) -> int:
    """The positions every document of `config` covers: it holds every sampled position up to
    this one (a configuration --until-decided stopped holds fewer than the run's context)."""
    section = result.get("divergence") or {}
    found = [
        int(rec["kld"]["n"]) if isinstance(rec.get("kld"), dict) and "n" in rec["kld"] else 1 << 30
        for rec in section.get("positions", [])
        if rec["config"] == config
    ]
    return min(found, default=1 << 30) * stride_of(section)


def _compared_spans(edges: list[int], reach: int) -> list[tuple[int, int, str]]:
    """The bins both files measured to their end, and the pooled span over them (everything,
    where both measured every bin)."""
    bins = [(lo, hi, "bin") for lo, hi in itertools.pairwise(edges) if hi - 1 <= reach]
    whole = len(bins) == len(edges) - 1
    return [*bins, (1, 1 << 30 if whole else (bins[-1][1] if bins else 1), "pooled")]


def _block_means(
    result: ResultDoc | JsonObject, config: str, name: str | None, lo: int, hi: int
) -> list[float]:
    section = result.get("divergence") or {}
    block = section.get("block", 32)
    means: list[float] = []
    for rec in section.get("positions", []):
        if rec["config"] == config and name in rec:
            values = decode_array(rec[name]).astype(float)
            positions = sampled_positions(len(values), stride_of(section))
            means += [float(b.mean()) for b in split_blocks(values, positions, lo, hi, block)]
    return means


def _ordinal(n: int) -> str:
    tail = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{tail}"


def sampled_words(section: Mapping[str, Any]) -> str:
    """Which positions a section's numbers come from: "every position", "every 4th position"."""
    stride = stride_of(section)
    return "every position" if stride == 1 else f"every {_ordinal(stride)} position"


def kl_words(section: Mapping[str, Any]) -> str | None:
    """What a section's KL is where it is not the full KL (an engine without full logits), said
    once where its numbers are shown; None for the full KL."""
    if section.get("kl", "full") != "top_n_tail":
        return None
    return (
        f"KL over the top {section.get('n_probs') or 0:,} + tail (a lower bound of the full KL), "
        f"{sampled_words(section)}"
    )


def bounded_words(section: Mapping[str, Any]) -> list[str]:
    """Per configuration whose NLL was only bounded somewhere: how often, and what that makes of
    its perplexity."""
    return [
        f"{plain(cid)}: the NLL is only a lower bound at {found['n']:,} position{'s' * (found['n'] != 1)} "
        f"({100 * found['share']:.2g}%): its perplexity is a lower bound"
        for cid, found in (section.get("nll_bounded") or {}).items()
        if found.get("n")
    ]


def _milli(value: float, ci: list[float]) -> str:
    """A KL value and interval in units of 10^-3 nats: short enough for one table cell."""
    return f"{1e3 * value:.3g} [{1e3 * ci[0]:.3g}, {1e3 * ci[1]:.3g}]"


def divergence_table(result: ResultDoc) -> Table:
    """The decay curve, bins x configurations: mean KL from the reference with its 95%
    interval and top-1 agreement, then the pooled row; the onset bin is marked."""
    section = result["divergence"]
    reference = section["reference"]
    rows = {
        (r["config"], r["metric"], r["scope"], r["bin"][0]): r
        for r in result["summary"]
        if r["probe"] == "divergence"
    }
    configs = [c["id"] for c in result["configs"] if c["id"] != reference]
    what = kl_words(section)
    table = Table(
        title=(f"{what}. " if what else "")
        + f"Mean KL divergence from {plain(reference)} by position, in 10⁻³ nats "
        f"(block-bootstrap 95% interval), top-1 agreement; ▲ = onset, the first bin from which "
        f"KL stays significantly above positions < {section['onset_reference']}"
    )
    for col in ("positions", "n", f"ppl {plain(reference)}"):
        table.add_column(col, justify="right", no_wrap=True)
    for cid in configs:
        table.add_column(f"KL {plain(cid)}", justify="right", no_wrap=True)
        table.add_column("top-1", justify="right", no_wrap=True)
    spans = [("bin", lo, f"{lo}–{hi - 1}") for lo, hi in itertools.pairwise(section["bin_edges"])]
    for scope, lo, label in [*spans, ("pooled", 1, WHOLE)]:
        ppl = rows.get((reference, "ppl", scope, lo))
        if ppl is None:
            continue
        cells = [label, str(ppl["n"]), f"{ppl['value']:.2f}"]
        for cid in configs:
            kld = rows.get((cid, "kld_mean", scope, lo))
            if kld is None:  # --until-decided stopped it before this bin
                cells += ["not measured", ""]
                continue
            onset = section["onset"].get(cid)
            text = _milli(kld["value"], kld["ci"])
            if scope == "bin" and onset is not None and onset["bin"][0] == lo:
                text = f"[bold red]▲ {text}[/]"
            if scope == "pooled" and kld["bin"][1] < ppl["bin"][1]:
                text += f" (to {kld['bin'][1] - 1:,})"
            cells += [text, f"{rows[(cid, 'top1_agree', scope, lo)]['value']:.3f}"]
        table.add_row(*cells, end_section=scope == "bin" and lo == spans[-1][1])
    return table


def divergence_lines(result: ResultDoc) -> list[str]:
    """The onset per configuration and the null check, in words."""
    section = result["divergence"]
    what = kl_words(section)
    lines = [f"{what}; top-1 agreement and perplexity at the same positions"] if what else []
    lines += bounded_words(section)
    pooled = {
        (r["config"], r["metric"]): r["value"]
        for r in result["summary"]
        if r["probe"] == "divergence" and r["scope"] == "pooled"
    }
    ref_ppl = pooled[(section["reference"], "ppl")]
    reach = {
        r["config"]: r.get("bin")
        for r in result["summary"]
        if r["probe"] == "divergence" and r["scope"] == "pooled" and r["metric"] == "kld_mean"
    }
    for cid, onset in section["onset"].items():
        shown = plain(cid)
        scope = whole_or_positions(reach.get(cid), int(result["run"]["ctx"]))  # partial: the positions
        tail = f"; KL 99.9th percentile ({scope}) {figure(pooled[(cid, 'kld_p999')])}" if (
            (cid, "kld_p999") in pooled
        ) else ""  # fmt: skip
        lines.append(
            f"{shown}: mean KL ({scope}) {figure(pooled[(cid, 'kld_mean')])} nats{tail}; KL 99th percentile "
            f"{figure(pooled[(cid, 'kld_p99')])}; top-1 agreement {pooled[(cid, 'top1_agree')]:.3f}; ppl "
            f"{pooled[(cid, 'ppl')]:.2f} against {plain(section['reference'])}'s {ref_ppl:.2f} "
            f"({scope}: of the first {section['documents']} document(s))"
        )
        if onset is None:
            lines.append(
                f"{shown}: KL does not rise significantly above positions < {section['onset_reference']} "
                "in any later bin"
            )
        else:
            lo, hi = onset["bin"]
            lines.append(
                f"{shown}: KL rises significantly above positions < {section['onset_reference']} from "
                f"positions {lo}–{hi - 1} on (Holm-corrected p = {onset['p_holm']:.2g})"
            )
    null = section.get("null_check")
    if null:
        verdict = "passed" if null["passed"] else "[red]FAILED[/]"
        lines.append(
            f"null check ({plain(section['reference'])} against a second identical context): {verdict}; "
            f"KL nonzero at {null['nonzero_kld']} of {null['positions']} positions, "
            f"max KL {null['max_kld']:.3g}, max NLL gap {null['max_nll_gap']:.3g}"
        )
    return lines


register(DivergenceProbe())


def divergence_figures(result: ResultDoc) -> list[Figure]:
    """Mean KL from the reference by position bin (bootstrap bands, ▲ onset), and top-1
    agreement; x is each bin's upper edge."""
    section = result.get("divergence")
    if not section:
        return []
    summary, reference = result["summary"], section["reference"]
    configs = [c["id"] for c in result["configs"] if c["id"] != reference]
    kl = [s for c in configs if (s := summary_series(summary, "kld_mean", c, scope="bin"))]
    top1 = [s for c in configs if (s := summary_series(summary, "top1_agree", c, scope="bin"))]
    if not kl:
        return []
    markers = []
    for c, onset in (section.get("onset") or {}).items():
        series = next((s for s in kl if s.label == c), None)
        if onset and series and float(onset["bin"][1]) in series.x:
            x = float(onset["bin"][1])
            markers.append(Marker(c, x, series.y[series.x.index(x)], f"onset {c}"))
    axis = "position in the document (tokens, bin upper edge, log2 axis)"
    what = kl_words(section)
    bound = ((result.get("verdict") or {}).get("margins") or {}).get("kld_mean")
    return [
        LineFigure(
            "divergence-kl",
            f"Mean KL divergence from {reference} by position (95% block bootstrap; ▲ onset)"
            + (f"; {what}" if what else ""),
            axis,
            "mean KL (nats)",
            kl,
            markers,
            log2_x=True,
            level=(bound, f"KL bound {bound:g} (the verdict's)") if bound else None,
        ),
        LineFigure(
            "divergence-top1",
            f"Top-1 agreement with {reference} by position (95% block bootstrap"
            + (f"; {sampled_words(section)})" if what else ")"),
            axis,
            "share of positions with the same argmax",
            top1,
            log2_x=True,
        ),
    ]
