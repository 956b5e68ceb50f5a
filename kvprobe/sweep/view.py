"""A sweep, shown: per context a grid of decisions (model × cache), per model its table of
decision, effective context, mean KL, KV memory and prefill speed, the cells that failed or
never ran; on the page also a heatmap per context, a frontier per model and each cell's
provenance; with a llama-server axis each model row names its server and build
(merge.variant). Reads only the merged rows (kvprobe.sweep.merge) and the result documents."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from kvprobe.infra.display import plain
from kvprobe.sweep.collect import SweepReport
from kvprobe.sweep.merge import DECISIONS, Problem, SweepRow, build
from kvprobe.views.figures import Figure, Heatmap, Point, Scatter
from kvprobe.views.fit import print_fitted
from kvprobe.views.layout import Picture, render_page
from kvprobe.views.layout import Table as PageTable  # rich's Table draws the terminal's

MIB = 1024 * 1024
TESTED = DECISIONS[1:]  # what a tested configuration is called: the grid has no reference column


def _ctx(n: int | None) -> str:
    return f"{n:,}" if n else "none"


def _kl(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def _mib(n: int | None) -> str:
    return f"{n / MIB:,.1f}" if n is not None else "?"


def _speed(v: float | None) -> str:
    return f"{v:,.0f}" if v else "-"


def _status(r: SweepRow) -> str:
    return r.status + (" ◀ use" if r.recommended and r.status != "reference" else "")


def models_and_configs(rows: Sequence[SweepRow]) -> tuple[list[str], list[str], list[int]]:
    """The models, the tested configurations and the contexts, in the order they first appear."""
    models = list(dict.fromkeys(r.model for r in rows))
    configs = list(dict.fromkeys(r.config for r in rows if r.status != "reference"))
    contexts = sorted({r.ctx for r in rows})
    return models, configs, contexts


def grid(rows: Sequence[SweepRow], ctx: int) -> tuple[list[str], list[str], list[list[SweepRow | None]]]:
    """At one context: models (rows) × tested configurations (columns), each its row or None.
    A configuration measured in two cells of one model at one context keeps the first."""
    models, configs, _ = models_and_configs(rows)
    at: dict[tuple[str, str], SweepRow] = {}
    for r in rows:
        if r.ctx == ctx and r.status != "reference":
            at.setdefault((r.model, r.config), r)
    return models, configs, [[at.get((m, c)) for c in configs] for m in models]


def per_model_cells(rows: Sequence[SweepRow], model: str) -> list[list[str]]:
    """The model's rows by configuration and context; its reference once per context (every
    cell measures it again beside its own test configurations)."""
    own, seen = [], set()
    for r in rows:
        if r.model == model and (r.status != "reference" or (r.config, r.ctx) not in seen):
            seen.add((r.config, r.ctx))
            own.append(r)
    ordered = sorted(own, key=lambda r: (r.status != "reference", r.config, r.ctx))
    return [
        [
            r.config,
            _ctx(r.ctx),
            _status(r),
            _ctx(r.effective_context),
            _kl(r.kld_mean),
            _mib(r.kv_bytes),
            _speed(r.prefill_tokens_per_s),
            r.cell,
        ]
        for r in ordered
    ]


MODEL_HEADER = [
    "config",
    "context",
    "decision",
    "effective context",
    "mean KL",
    "KV MiB",
    "prefill tok/s",
    "cell",
]


def print_sweep(report: SweepReport, console: Console) -> None:
    rows = report.rows
    m = report.manifest
    console.print(
        f"sweep {plain(m.folder)}: {len(report.results)} of {len(m.cells)} cells with a result; "
        f"{plain(m.command)}",
        highlight=False,
    )
    models, _, contexts = models_and_configs(rows)
    for ctx in contexts:
        names, cols, cells = grid(rows, ctx)
        table = Table(title=f"Decision at {ctx:,} tokens against the f16 reference (effective context)")
        table.add_column("model")
        for c in cols:
            table.add_column(plain(c))
        for name, line in zip(names, cells, strict=True):
            table.add_row(
                plain(name), *(f"{r.status} ({_ctx(r.effective_context)})" if r else "" for r in line)
            )
        print_fitted(table, console)
    for model in models:
        table = Table(title=f"{plain(model)}: per cache and context")
        for col in MODEL_HEADER:
            table.add_column(col, justify="left" if col in ("config", "decision", "cell") else "right")
        for texts in per_model_cells(rows, model):
            table.add_row(*(plain(t) for t in texts))
        print_fitted(table, console)
    print_problems(report.problems, console)


def print_problems(problems: Sequence[Problem], console: Console) -> None:
    if not problems:
        return
    table = Table(title="Cells without a result")
    for col in ("cell", "status", "why"):
        table.add_column(col)
    for p in problems:
        table.add_row(plain(p.cell), plain(p.status), plain(p.why))
    print_fitted(table, console)


def decision_heatmap(rows: Sequence[SweepRow], ctx: int) -> Heatmap | None:
    names, cols, cells = grid(rows, ctx)
    if not names or not cols:
        return None
    values: list[list[float | None]] = [
        [None if r is None else float(TESTED.index(r.status)) for r in line] for line in cells
    ]
    # A cell without a result is said so (hatched on the figure), never left blank.
    text = [["no result" if r is None else _decided(r) for r in line] for line in cells]
    return Heatmap(
        f"sweep-decisions-{ctx}",
        f"Decision at {ctx:,} tokens (cell text: effective context)",
        "cache",
        "model",
        cols,
        names,
        values,
        "decision",
        categories=list(TESTED),
        text=text,
    )


def _decided(row: SweepRow) -> str:
    return f"{row.status}\n{_ctx(row.effective_context)}"


def frontier_figure(rows: Sequence[SweepRow], model: str, index: int) -> Scatter | None:
    """The model's configurations at every context: KV memory against mean KL (logarithmic: KL
    spans orders of magnitude), coloured by the decision; the reference, KL 0, on the bottom edge."""
    points, seen = [], set()
    for r in rows:
        if r.model != model or r.kld_mean is None or r.kv_bytes is None or (r.config, r.ctx) in seen:
            continue  # every cell measures the reference again: one point per context is enough
        seen.add((r.config, r.ctx))
        points.append(Point(f"{r.config} @ {r.ctx:,}", r.kv_bytes / MIB, r.kld_mean, r.status))
    if len(points) < 2:
        return None
    return Scatter(
        f"sweep-frontier-{index + 1}",
        f"{model}: quality against KV memory",
        "KV cache for one sequence (MiB)",
        "mean KL from the reference (nats)",
        points,
        log_y=True,
    )


def provenance_rows(report: SweepReport) -> list[list[str]]:
    out = []
    for cell, doc in report.results.items():
        rt, host, timing = doc.get("runtime") or {}, doc.get("host") or {}, doc.get("timing") or {}
        out.append(
            [
                cell,
                str(host.get("hostname", "")),
                f"{rt.get('backend')}, {rt.get('n_threads')} threads",
                build(doc),  # the llama-server's --version, or kvprobe's own llama-cpp-python
                str((doc.get("model") or {}).get("sha256", ""))[:12],
                f"{timing.get('wall_s', 0):,.0f} s",
                str(doc.get("command", "")),
            ]
        )
    return out


@dataclass(frozen=True)
class ModelView:
    """A model's part of the sweep page: its frontier, and its table by cache and context."""

    name: str
    frontier: Picture | None
    table: PageTable


def sweep_page(report: SweepReport, cell_pages: dict[str, str]) -> str:
    """The whole sweep on one self-contained page; `cell_pages` links each cell's own page."""
    rows, m = report.rows, report.manifest
    models, _, contexts = models_and_configs(rows)
    heatmaps = [Picture(h) for ctx in contexts if (h := decision_heatmap(rows, ctx)) is not None]
    views = []
    for i, model in enumerate(models):
        scatter = frontier_figure(rows, model, i)
        views.append(
            ModelView(
                model,
                Picture(scatter) if scatter is not None else None,
                PageTable(MODEL_HEADER, per_model_cells(rows, model)),
            )
        )
    header = ["cell", "host", "backend", "llama.cpp build", "model sha256", "time", "command"]
    return render_page(
        "sweep.html",
        title=f"kvprobe sweep: {m.spec.name}",
        finished=len(report.results),
        cells=len(m.cells),
        command=m.command,
        heatmaps=heatmaps,
        models=views,
        problems=PageTable(["cell", "status", "why"], [[p.cell, p.status, p.why] for p in report.problems]),
        links=list(cell_pages.items()),
        provenance=PageTable(header, provenance_rows(report)),
    )


def cell_page_links(report: SweepReport, page: Path) -> dict[str, str]:
    """Each cell's own page beside its result, as a link relative to the sweep page: a URL path,
    percent-encoded, so that no folder name (one with "#", or "javascript:") reads as more."""
    links = {}
    for cell, record in report.manifest.cells.items():
        own = (report.manifest.folder / record.out).with_suffix(".html")
        if cell in report.results and own.is_file():
            links[cell] = quote(Path(os.path.relpath(own, page.absolute().parent)).as_posix())
    return links


def every_figure(report: SweepReport) -> list[Figure]:
    models, _, contexts = models_and_configs(report.rows)
    found: list[Any] = [decision_heatmap(report.rows, c) for c in contexts]
    found += [frontier_figure(report.rows, m, i) for i, m in enumerate(models)]
    return [f for f in found if f is not None]
