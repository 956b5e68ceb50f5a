"""Terminal output of a result document and of a comparison (never needs the model); each
probe supplies its own tables."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from kvprobe.api import MatrixColumn, all_probes
from kvprobe.api.record import JsonObject, Row, SummaryRow
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain
from kvprobe.plan.prompt import describe
from kvprobe.probes.divergence.build_check import build_check_sentence
from kvprobe.stats.parts import ComparisonDoc
from kvprobe.views.decision import print_decision, print_folklore
from kvprobe.views.probes import print_probe_table


def print_run_report(result: ResultDoc, console: Console) -> None:
    """The recommendation and its frontier first, then each probe's tables, the cost, the
    warnings, the verdict and the rules of thumb."""
    console.print(f"prompt: {describe(result.get('prompt') or {})}", markup=False, highlight=False)
    if (engine := engine_line(result)) is not None:
        console.print(engine, markup=False, highlight=False, soft_wrap=True)
    if (check := build_check_line(result)) is not None:  # the build's share, before the cache's
        console.print(check, markup=False, highlight=False, soft_wrap=True)
    print_decision(result, console)
    for probe in all_probes():
        for renderable in probe.tables(result):
            console.print(renderable)
    print_probe_table(result, console)
    timing = result["timing"]
    ratio = timing["tokens_evaluated"] / max(1, timing["naive_tokens"])
    console.print(
        f"{timing['tokens_evaluated']:,} tokens evaluated in {timing['wall_s']:.0f} s "
        f"({ratio:.2f} of the {timing['naive_tokens']:,} a one-prompt-per-cell grid would need)"
    )
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {plain(warning)}")
    if result.get("complete") is False:
        console.print(
            f"[yellow]partial result:[/] {plain(result.get('stopped') or 'stopped')}, "
            f"{len(result.get('missing') or [])} units not measured (`kvprobe run --resume` continues it)"
        )
    verdict = result.get("verdict")
    if verdict and verdict["sentences"]:
        console.print("[bold]Verdict[/]")
        for sentence in verdict["sentences"]:
            console.print(f"  • {sentence}", markup=False, highlight=False)
    print_folklore(result, console)


def build_check_line(result: ResultDoc) -> str | None:
    """`--reference in-process`: the server's f16 against kvprobe's own (None without it)."""
    check = (result.get("runtime") or {}).get("build_check")
    return build_check_sentence(check) if check else None


def engine_line(result: ResultDoc) -> str | None:
    """Where the numbers come from, when not from llama.cpp in kvprobe's process: the server's
    build and how it was reached (None for the in-process engine)."""
    runtime = result.get("runtime") or {}
    if runtime.get("engine") != "llama-server":
        return None
    server = runtime.get("server") or {}
    how = "started by kvprobe, one per cache type" if server.get("mode") == "spawn" else "already running"
    return f"engine: llama-server {runtime.get('server_version')} ({how})"


def _at(summary: list[SummaryRow], metric: str, config: str, ctx: int) -> SummaryRow | None:
    """The row, if it has a value and an interval (NaN is stored as null: shown as missing)."""
    return next(
        (r for r in summary if r["metric"] == metric and r["config"] == config and r["ctx"] == ctx
         and r.get("scope", "bin") == "bin" and r.get("value") is not None
         and None not in (r.get("ci") or [0.0, 0.0])),
        None,
    )  # fmt: skip


MATRIX_LEAD = ("run", "model", "config", "context")


def matrix_columns() -> list[MatrixColumn]:
    """Every probe's columns of the many-runs table (kvprobe.api MatrixColumn)."""
    return [c for p in all_probes() for c in p.matrix_columns()]


def matrix_rows(results: Sequence[tuple[str, ResultDoc | JsonObject]]) -> list[list[str]]:
    """One row per (run, configuration, context) with the probes' columns (e.g. accuracy with its
    interval, mean answer log-prob, the mean KL of the position bin that ends there; "-" where a
    run has none)."""
    columns = matrix_columns()
    rows = []
    for name, result in results:
        model = str(result["model"].get("name") or result["model"].get("path") or "?")
        summary = result["summary"]
        for config in [c["id"] for c in result["configs"]]:
            for ctx in result["run"]["checkpoints"]:
                found = [_at(summary, c.metric, config, ctx) for c in columns]
                if any(found):
                    cells = [c.text(r) if r else "-" for c, r in zip(columns, found, strict=True)]
                    rows.append([name, model, config, f"{ctx:,}", *cells])
    return rows


def print_matrix(results: list[tuple[str, ResultDoc]], console: Console) -> None:
    columns = matrix_columns()
    table = Table(title=f"{len(results)} runs: {', '.join(c.title for c in columns)}")
    for col in [*MATRIX_LEAD, *(c.header for c in columns)]:
        table.add_column(col, justify="left" if col in ("run", "model", "config") else "right", no_wrap=True)
    previous = None
    for row in matrix_rows(results):
        if previous is not None and row[0] != previous:
            table.add_section()
        table.add_row(*(plain(c) for c in row))
        previous = row[0]
    console.print(table)


MARK_STYLE = {
    "worse": "bold red",
    "better": "green",
    "no significant change": "dim",
    "not testable": "yellow",
}


def print_comparison(report: ComparisonDoc | JsonObject, console: Console) -> None:
    """One table per probe and metric: old, new, difference with its 95% interval, p, mark."""
    console.print(f"kvprobe compare: {report['pairing']}", markup=False, highlight=False)
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    left = report.get("unmatched", {})
    for side in ("old", "new"):
        if left.get(side):
            console.print(
                f"not compared ({side}): {', '.join(left[side])} (pair one with --map OLD=NEW)",
                markup=False,
                highlight=False,
            )
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in report["rows"]:
        groups.setdefault((row["probe"], row["metric"]), []).append(row)
    for (probe, metric), rows in groups.items():
        table = Table(title=f"{probe}: {metric} ({rows[0]['test']})")
        for col in ("config", "context", "old", "new", "difference [95% CI]", "p", ""):
            table.add_column(col, justify="left" if col in ("config", "") else "right", no_wrap=True)
        for r in rows:
            config = plain(
                r["config_old"]
                if r["config_old"] == r["config_new"]
                else f"{r['config_old']} → {r['config_new']}"
            )
            ctx = "whole document" if r.get("scope") == "pooled" else plain(r["ctx"])
            mark = f"[{MARK_STYLE[r['mark']]}]{r['mark']}[/]"
            table.add_row(
                config, ctx, f"{r['old']:.4g}", f"{r['new']:.4g}",
                f"{r['diff']:+.3g} [{r['ci'][0]:+.3g}, {r['ci'][1]:+.3g}]", f"{r['p']:.2g}", mark,
            )  # fmt: skip
        console.print(table)
    worse = sum(r["mark"] == "worse" for r in report["rows"])
    better = sum(r["mark"] == "better" for r in report["rows"])
    untestable = sum(r["mark"] == "not testable" for r in report["rows"])
    rest = len(report["rows"]) - worse - better - untestable
    console.print(
        f"{worse} worse, {better} better, {rest} without a significant change"
        + (f", {untestable} not testable (NaN: a gate on them fails)" if untestable else "")
    )
    for f in report.get("failures", []):
        where = "all positions" if f.get("scope") == "pooled" else plain(f["ctx"])
        console.print(
            f"[bold red]FAIL[/] {plain(f['rule'])}: {plain(f['probe'])} {plain(f['metric'])} "
            f"{plain(f['config_old'])} → {plain(f['config_new'])} at {where}: "
            f"{f['diff']:+.3g} (p = {f['p']:.2g}; equivalence interval "
            f"{f['ci_equivalence'][0]:+.3g} to {f['ci_equivalence'][1]:+.3g})"
        )
