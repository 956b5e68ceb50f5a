"""Terminal output of a result document and of a comparison (never needs the model); each
probe supplies its own tables."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from kvprobe.api import MatrixColumn, all_probes
from kvprobe.api.record import JsonObject, Row, SummaryRow
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain, visible
from kvprobe.plan.prompt import describe
from kvprobe.probes.divergence.build_check import build_check_sentence
from kvprobe.stats.parts import ComparisonDoc
from kvprobe.views.decision import print_decision, print_decision_lines, print_folklore
from kvprobe.views.fit import fit_table, print_fitted
from kvprobe.views.probes import print_probe_table


def print_run_report(
    result: ResultDoc,
    console: Console,
    *,
    details: bool = False,
    from_run: bool = False,
    path: str | None = None,
    shown: Sequence[str] = (),
) -> None:
    """The decision first (one line per configuration; only a build check, the server's share of
    any difference, before it), then in sections: where the numbers come
    from, the warnings, the frontier table, each probe's tables, the probes side by side and the
    rules of thumb. `details` adds what a user reads only to check the method: the recommendation's
    sentence and the verdict's with their intervals, p-values and fits, the probes' lines beside
    their tables (whatever `Probe.tables` gives that is not a table), the cost against a grid.
    `from_run`: printed at the end of `kvprobe run`, whose header said the prompt already; `path`:
    the result file, named in the line that says where the details are; `shown`: the decision's
    lines a run printed when it decided early (not printed again)."""
    if (check := build_check_line(result)) is not None:  # the build's share, before the cache's
        console.print(check, markup=False, highlight=False)
    print_decision_lines(result, console, shown=shown)
    if not from_run:
        console.print(f"prompt: {describe(result.get('prompt') or {})}", markup=False, highlight=False)
    if (engine := engine_line(result)) is not None:
        console.print(engine, markup=False, highlight=False)
    for warning in [] if from_run else result.get("warnings", []):  # a run said them as it started
        console.print(f"[yellow]warning:[/] {plain(warning)}")
    if result.get("complete") is False:
        console.print(
            f"[yellow]partial result:[/] {plain(result.get('stopped') or 'stopped')}, "
            f"{len(result.get('missing') or [])} units not measured (`kvprobe run --resume` continues it)"
        )
    print_decision(result, console, details=details, lines=False)
    for probe in all_probes():
        for renderable in probe.tables(result):
            if isinstance(renderable, Table):
                print_fitted(renderable, console)
            elif details:
                console.print(renderable)
    print_probe_table(result, console)
    if details:
        print_details(result, console)
    print_folklore(result, console)
    if not details and (result.get("verdict") or {}).get("sentences"):
        where = shlex.quote(visible(path)) if path else "RESULT"  # printed as text: a command to paste
        hint, command = "intervals, p-values and fits:", f"kvprobe report {where} --details"
        # The command whole on a line of its own where both do not fit: never broken inside it.
        fits = len(hint) + 1 + cell_len(command) <= console.width
        said = [f"{hint} {command}"] if fits else [hint, command]
        for line in said:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_details(result: ResultDoc, console: Console) -> None:
    """`--details`: the cost against a one-prompt-per-cell grid, and the verdict's sentences."""
    timing = result["timing"]
    ratio = timing["tokens_evaluated"] / max(1, timing["naive_tokens"])
    console.print(
        f"{timing['tokens_evaluated']:,} tokens evaluated in {timing['wall_s']:.0f} s "
        f"({ratio:.2f} of the {timing['naive_tokens']:,} a one-prompt-per-cell grid would need)"
    )
    verdict = result.get("verdict")
    if verdict and verdict["sentences"]:
        console.print("[bold]Verdict[/]")
        for sentence in verdict["sentences"]:  # each indented under its bullet
            wrapped = textwrap.wrap(
                sentence, console.width - 1, initial_indent="  • ", subsequent_indent="    ",
                break_long_words=False, break_on_hyphens=False,
            )  # fmt: skip
            for line in wrapped:
                console.print(line, markup=False, highlight=False)


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
    """One table, a section per run, where it fits the terminal; else one table per run, titled
    with the run and its model, so that the columns left are the configuration's and the probes'."""
    columns = matrix_columns()
    rows = [[plain(c) for c in row] for row in matrix_rows(results)]
    title = f"{len(results)} runs: {', '.join(c.title for c in columns)}"
    whole = _matrix_table(title, list(MATRIX_LEAD), columns, rows)
    if fit_table(whole, console.width) == [whole]:  # fits as it is
        console.print(whole)
        return
    console.print(title, markup=False, highlight=False)
    for name in dict.fromkeys(row[0] for row in rows):
        own = [row[2:] for row in rows if row[0] == name]
        model = next(row[1] for row in rows if row[0] == name)
        table = _matrix_table(f"{name} ({model})", list(MATRIX_LEAD[2:]), columns, own)
        print_fitted(table, console)


def _matrix_table(title: str, lead: list[str], columns: list[MatrixColumn], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for col in [*lead, *(c.header for c in columns)]:
        table.add_column(col, justify="left" if col in ("run", "model", "config") else "right", no_wrap=True)
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous and "run" in lead:
            table.add_section()
        table.add_row(*row)
        previous = row[0]
    return table


MARK_STYLE = {
    "worse": "bold red",
    "better": "green",
    "no significant change": "dim",
    "not testable": "yellow",
}


def comparison_table(title: str, rows: list[Row], *, stacked: bool) -> Table:
    """One probe's metric: per configuration and context, old, new, the difference with its 95%
    interval, p and the mark; `stacked` puts old → new above the difference, for a narrow
    terminal."""
    values = ("old → new\ndifference [95% CI]",) if stacked else ("old", "new", "difference [95% CI]")
    table = Table(title=title)
    for col in ("config", "context", *values, "p", "change"):
        left = col in ("config", "change")
        table.add_column(col, justify="left" if left else "right", no_wrap=col not in ("config", "change"))
    for r in rows:
        config = plain(
            r["config_old"]
            if r["config_old"] == r["config_new"]
            else f"{r['config_old']} → {r['config_new']}"
        )
        ctx = "whole document" if r.get("scope") == "pooled" else plain(r["ctx"])
        mark = f"[{MARK_STYLE[r['mark']]}]{r['mark']}[/]"
        diff = f"{r['diff']:+.3g} [{r['ci'][0]:+.3g}, {r['ci'][1]:+.3g}]"
        cells = (
            (f"{r['old']:.4g} → {r['new']:.4g}\n{diff}",)
            if stacked
            else (f"{r['old']:.4g}", f"{r['new']:.4g}", diff)
        )
        table.add_row(config, ctx, *cells, f"{r['p']:.2g}", mark)
    return table


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
        title = f"{probe}: {metric} ({rows[0]['test']})"
        parts = fit_table(comparison_table(title, rows, stacked=False), console.width)
        if len(parts) > 1:  # too narrow: old, new and the difference stacked in one column
            parts = fit_table(comparison_table(title, rows, stacked=True), console.width)
        for part in parts:
            console.print(part)
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
