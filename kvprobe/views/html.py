"""One self-contained HTML page for saved results: the verdict first, then a section per probe
with its figures (SVG, inline as data URIs), then the provenance; and `kvprobe compare --html`'s
page, old and new on the same axes. No scripts, no network: the page opens from a file, a mail
attachment or a CI artifact the same way.

The pages come from Jinja2 templates (kvprobe/views/templates/, kvprobe.views.layout). The few
functions at the top are the only ones here that read the result document; they fill the typed
views below, which are all the templates see."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from kvprobe.api import all_probes
from kvprobe.api.result import ResultDoc
from kvprobe.plan.prompt import describe
from kvprobe.stats.parts import ComparisonDoc
from kvprobe.views.decision import (
    frontier_cells,
    frontier_columns,
    frontier_figure,
    speed_line,
    stopped_early_line,
)
from kvprobe.views.figures import Figure, LineFigure, VerdictLook, config_style, verdict_look
from kvprobe.views.layout import Picture, Swatch, Table, draw, render_page
from kvprobe.views.probes import HEADER as PROBES_HEADER
from kvprobe.views.probes import probe_cells
from kvprobe.views.probes import title as probes_title
from kvprobe.views.terminal import build_check_line, matrix_rows

# --- what the pages read of a result document -------------------------------------------------


def _partial(result: ResultDoc) -> Partial | None:
    if result.get("complete") is not False:
        return None
    return Partial(str(result.get("stopped")), len(result.get("missing") or []))


def _sentences(result: ResultDoc) -> list[str]:
    return [str(s) for s in (result.get("verdict") or {}).get("sentences") or []]


def _decision(result: ResultDoc) -> Decision | None:
    """The recommendation, its speed and early-stop lines, the frontier table, the rules of thumb."""
    verdict = result.get("verdict") or {}
    rec = verdict.get("recommendation")
    if not rec:
        return None
    header, cells = frontier_cells(result)
    folklore = [Rule(f["rule"], f["finding"], f["evidence"]) for f in verdict.get("folklore") or []]
    table = Table(header, cells, swatches=swatches(result))
    return Decision(rec["sentence"], speed_line(result), stopped_early_line(result), table, folklore)


def swatches(result: ResultDoc) -> dict[str, Swatch]:
    """Each configuration's colour and marker (as on every figure), for the tables' first column."""
    baseline = result.get("baseline")
    return {
        str(c["id"]): Swatch(style.colour, style.glyph, style.name)
        for c in result.get("configs") or []
        if (style := config_style(str(c["id"]), reference=c["id"] == baseline))
    }


# What each verdict means for the person choosing, in the badge beside it.
MEANINGS = {
    "reference": "the reference",
    "equivalent": "equivalent: safe to use",
    "worse": "worse: do not use",
    "undecided": "undecided: measure more",
}


def _badges(result: ResultDoc) -> list[Badge]:
    """One badge per configuration, the reference first: its verdict in a word with its icon and
    its grey (never a configuration's colour), and the KV memory it saves (the frontier table's
    "saves")."""
    columns = {c.header: c.cells for c in frontier_columns(result)}
    if "config" not in columns:
        return []
    statuses = {
        cid: str(((v or {}).get("equivalence") or {}).get("status") or "undecided")
        for cid, v in ((result.get("verdict") or {}).get("configs") or {}).items()
    }
    marks = swatches(result)
    badges = []
    for i, cid in enumerate(columns["config"]):
        status = "reference" if cid == result.get("baseline") else statuses.get(cid, "undecided")
        saves = columns.get("saves", [""] * (i + 1))[i]
        said = f"saves {saves} of KV memory" if saves and status != "reference" else ""
        badges.append(
            Badge(cid, status, MEANINGS.get(status, status), verdict_look(status), marks.get(cid), said)
        )
    return badges


def title(name: str, result: ResultDoc) -> str:
    """What a result is, in its page's title: the model, the caches, the context, the day."""
    model = (result.get("model") or {}).get("name") or name
    if weights := result.get("models"):  # the weights-vs-KV design: both weight files, by label
        model = " vs ".join(f"{label} {weights[label].get('name') or label}" for label in ("ref", "test"))
    baseline = result.get("baseline")
    caches = [str(c["id"]) for c in result.get("configs") or []]
    tested = [c for c in caches if c != baseline]
    # Past three, a count: the badges below name each one.
    others = ", ".join(tested) if len(tested) <= 3 else f"{len(tested)} configurations"
    against = f"{others} against {baseline}" if baseline and tested else ", ".join(caches)
    ctx = (result.get("run") or {}).get("ctx")
    at = f" at {ctx:,} tokens" if isinstance(ctx, int) else ""
    return f"{model}: {against}{at}" + (f", {day}" if (day := _day(result.get("created"))) else "")


def _day(created: object) -> str:
    """The run's day as "7 Dec 2026" (an ISO date would break at its hyphens in a heading)."""
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return str(created or "")[:10]
    return f"{when.day} {when:%b %Y}"


def _provenance(name: str, result: ResultDoc) -> list[tuple[str, str]]:
    """Model, runtime, what took effect, host and timing."""
    model, rt, host, timing = (
        result["model"],
        result.get("runtime") or {},
        result.get("host") or {},
        result["timing"],
    )
    scenario, run = result["scenario"], result["run"]
    rows: list[tuple[str, object]] = [
        ("result file", name),
        ("command", result.get("command", "")),
        ("created", result.get("created", "")),
        ("kvprobe", result.get("kvprobe_version", "")),
        ("model", f"{model.get('name')} ({model.get('path')})"),
        ("model sha256", model.get("sha256")),
        ("scenario", f"{scenario.get('name')} (sha256 {scenario.get('sha256', '')[:16]}…)"),
        ("seed, --ctx, mode", f"{run['seed']}, {run['ctx']:,}, {run.get('mode')}"),
        ("prompt format", describe(result.get("prompt") or {})),
        *(
            [("engine", f"llama-server {rt.get('server_version')} ({(rt.get('server') or {}).get('mode')})")]
            if rt.get("engine") == "llama-server"
            else [("llama-cpp-python", rt.get("llama_cpp_python"))]
        ),
        ("llama.cpp build", rt.get("llama_cpp_build")),
        (
            "backend, threads, GPU layers",
            f"{rt.get('backend')}, {rt.get('n_threads')}, {rt.get('n_gpu_layers')}",
        ),
        ("flash attention, rotation", f"{rt.get('flash_attn')}, {rt.get('attn_rotation')}"),
        ("extra buffer types (repack/AMX)", rt.get("extra_bufts", "not recorded")),
        ("n_ctx, n_ubatch, n_seq_max", f"{rt.get('n_ctx')}, {rt.get('n_ubatch')}, {rt.get('n_seq_max')}"),
        ("host", f"{host.get('cpu')}, {host.get('cpu_count')} cores, {host.get('memory_gb')} GB"),
        ("GPUs", ", ".join(str(g.get("name")) for g in host.get("gpus") or []) or "none"),
        ("time", f"{timing.get('wall_s', 0):.0f} s, {timing.get('tokens_evaluated', 0):,} tokens evaluated"),
    ]
    return [(name, str(value)) for name, value in rows]


def _applied(result: ResultDoc, marks: dict[str, Swatch]) -> Table:
    """What llama.cpp reports it applied, per configuration."""
    rows = [
        [str(c["id"]), str(c.get("type_k")), str(c.get("type_v")), str(c.get("flash_attn")),
         f"{c.get('attn_rot_k')}/{c.get('attn_rot_v')}"]
        for c in result["configs"]
    ]  # fmt: skip
    return Table(["config", "K", "V", "flash attention", "rotation K/V"], rows, swatches=marks)


def _comparison(report: ComparisonDoc) -> tuple[str, Table]:
    """The comparison's pairing, and its rows: old, new, difference with its interval, p, mark."""
    rows = []
    for r in report["rows"]:
        config = (
            r["config_old"]
            if r["config_old"] == r["config_new"]
            else f"{r['config_old']} → {r['config_new']}"
        )
        lo, hi = r.get("ci") or [float("nan"), float("nan")]
        context = "whole document" if r.get("scope") == "pooled" else str(r["ctx"])
        diff = f"{r['diff']:+.3g} [{lo:+.3g}, {hi:+.3g}]"
        old, new = f"{r['old']:.4g}", f"{r['new']:.4g}"
        rows.append(
            [
                f"{r['probe']} {r['metric']}",
                str(config),
                context,
                old,
                new,
                diff,
                f"{r['p']:.2g}",
                str(r["mark"]),
            ]
        )
    header = ["metric", "config", "context", "old", "new", "difference [95% CI]", "p", "mark"]
    return str(report["pairing"]), Table(header, rows)


# --- the views the templates get -------------------------------------------------------------


@dataclass(frozen=True)
class Partial:
    stopped: str  # why the run stopped
    missing: int  # units not measured


@dataclass(frozen=True)
class Rule:
    """A rule of thumb from the source documents, checked on this model."""

    rule: str
    finding: str
    evidence: str


@dataclass(frozen=True)
class Badge:
    """A configuration's verdict at a glance: its name (with its colour and marker), the verdict
    word in the verdict's look (figures.VERDICTS), what it means, the memory it saves."""

    config: str
    status: str
    meaning: str
    look: VerdictLook
    swatch: Swatch | None
    saves: str


@dataclass(frozen=True)
class Decision:
    sentence: str
    speed: str | None
    stopped: str | None  # --until-decided: what stopped once decided
    frontier: Table
    folklore: list[Rule]


@dataclass(frozen=True)
class Section:
    """A probe's figures and notes."""

    probe: str
    pictures: list[Picture]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ResultView:
    """Everything the page shows of one result, in the page's order."""

    name: str
    title: str  # the model, the caches, the context, the day
    badges: list[Badge]
    partial: Partial | None
    build_check: str | None  # --reference in-process: the server's build against kvprobe's
    decision: Decision | None
    probes_title: str
    probes: Table | None  # the probes side by side, where there are two or more
    frontier: Picture | None
    sentences: list[str]
    sections: list[Section]
    provenance: list[tuple[str, str]]
    applied: Table

    def pictures(self) -> list[Picture]:
        own = [self.frontier] if self.frontier is not None else []
        return own + [p for s in self.sections for p in s.pictures]


def result_view(name: str, result: ResultDoc) -> ResultView:
    """One result's view: its figures made (as data), not yet drawn."""
    cells = probe_cells(result)
    sections = []
    for probe in all_probes():
        figures, notes = probe.figures(result), probe.notes(result)
        if figures or notes:
            sections.append(Section(probe.name, [Picture(f) for f in figures], [str(n) for n in notes]))
    frontier = frontier_figure(result)
    return ResultView(
        name=name,
        title=title(name, result),
        badges=_badges(result),
        partial=_partial(result),
        build_check=build_check_line(result),
        decision=_decision(result),
        probes_title=probes_title(result) if cells else "",
        probes=Table(PROBES_HEADER, cells) if cells else None,
        frontier=Picture(frontier) if frontier is not None else None,
        sentences=_sentences(result),
        sections=sections,
        provenance=_provenance(name, result),
        applied=_applied(result, swatches(result)),
    )


def page(results: Sequence[tuple[str, ResultDoc]], on_result: Callable[[int], None] | None = None) -> str:
    """The whole page for one result, or for several (each in turn, after a matrix).
    `on_result(i)` hears before result i's figures are drawn (progress)."""
    views = [result_view(name, result) for name, result in results]
    for i, view in enumerate(views):
        if on_result is not None:
            on_result(i)
        draw(view.pictures())
    header = ["run", "model", "config", "context", "accuracy", "answer log-prob", "KL (10⁻³ nats)"]
    heading = views[0].title if len(views) == 1 else f"kvprobe: {len(views)} results"
    return render_page(
        "report.html",
        title=heading,
        results=views,
        matrix=Table(header, matrix_rows(list(results))) if len(results) > 1 else None,
    )


def merged(old: Figure, new: Figure) -> list[Figure]:
    """Old and new on the same axes (line figures); heatmaps one after the other."""
    if isinstance(old, LineFigure) and isinstance(new, LineFigure):
        series = [replace(s, label=f"old {s.label}") for s in old.series]
        series += [replace(s, label=f"new {s.label}") for s in new.series]  # each in its one colour
        markers = [replace(m, series=f"old {m.series}", label=f"old {m.label}") for m in old.markers]
        markers += [replace(m, series=f"new {m.series}", label=f"new {m.label}") for m in new.markers]
        return [replace(new, title=f"{new.title}: old and new", series=series, markers=markers)]
    return [replace(old, title=f"old: {old.title}"), replace(new, title=f"new: {new.title}")]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: old or new, its file's name and its verdict."""

    label: str
    name: str
    sentences: list[str]


def comparison_page(old: tuple[str, ResultDoc], new: tuple[str, ResultDoc], report: ComparisonDoc) -> str:
    """`kvprobe compare OLD NEW --html`: both verdicts, the comparison's rows, and every figure
    with old and new on the same axes."""
    pairing, rows = _comparison(report)
    sections = []
    for probe in all_probes():
        olds = {f.key: f for f in probe.figures(old[1])}
        news = {f.key: f for f in probe.figures(new[1])}
        keys = [k for k in news if k in olds]
        if keys:
            sections.append(Section(probe.name, [Picture(f) for k in keys for f in merged(olds[k], news[k])]))
    return render_page(
        "compare.html",
        title=f"kvprobe compare: {old[0]} → {new[0]}",
        pairing=pairing,
        rows=rows,
        sides=[
            Side(label, name, _sentences(result)) for label, (name, result) in [("old", old), ("new", new)]
        ],
        sections=sections,
    )
