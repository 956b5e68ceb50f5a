"""Terminal output of a result document (never needs the model)."""

from __future__ import annotations

import itertools
from typing import Any

from rich.console import Console
from rich.table import Table

from kvprobe.display import plain


def _fmt_ci(value: float, ci: list[float], digits: int = 2) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def needle_table(doc: dict[str, Any]) -> Table:
    """One row per checkpoint; per configuration accuracy with its Wilson 95% interval
    and the difference to the baseline."""
    baseline = doc.get("baseline")
    configs = [c["id"] for c in doc["configs"]]
    acc = {
        (r["config"], r["ctx"]): r
        for r in doc["summary"]
        if r["probe"] == "needle" and r["metric"] == "accuracy"
    }
    table = Table(
        title=f"Needle accuracy (95% Wilson interval), {plain(doc['scenario']['name'])} scenario, "
        f"{plain(doc['run']['mode'])} mode"
    )
    table.add_column("context", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for cid in configs:
        table.add_column(plain(cid) + (" (baseline)" if cid == baseline else ""), justify="right")
        if baseline and cid != baseline:
            table.add_column(f"Δ {plain(cid)}", justify="right")
    for ctx in doc["run"]["checkpoints"]:
        row = [str(ctx)]
        ns = {acc[(c, ctx)]["n"] for c in configs if (c, ctx) in acc}
        row.append("/".join(str(n) for n in sorted(ns)) or "0")
        base = acc.get((baseline, ctx)) if baseline else None
        for cid in configs:
            r = acc.get((cid, ctx))
            row.append(_fmt_ci(r["value"], r["ci"]) if r else "-")
            if baseline and cid != baseline:
                if r and base:
                    delta = r["value"] - base["value"]
                    style = "red" if delta < 0 else ("green" if delta > 0 else "")
                    row.append(f"[{style}]{delta:+.2f}[/]" if style else f"{delta:+.2f}")
                else:
                    row.append("-")
        table.add_row(*row)
    return table


def repetition_table(doc: dict[str, Any]) -> Table:
    """One row per checkpoint and configuration (the text's own continuation first): looping
    continuations, mean seq-rep-4 and compression ratio, and where continuations leave the
    baseline's, each with its 95% interval."""
    rows = {(r["config"], r["ctx"], r["metric"]): r for r in doc["summary"] if r["probe"] == "repetition"}
    tokens = doc["scenario"]["spec"]["repetition"]["tokens"]
    table = Table(title=f"Repetition of {tokens}-token greedy continuations (95% intervals)")
    for col in ("context", "config", "loops", "seq-rep-4", "zlib", "leaves baseline at"):
        table.add_column(col, justify="left" if col == "config" else "right", no_wrap=True)
    for ctx in doc["run"]["checkpoints"]:
        for cid in ["(text)", *(c["id"] for c in doc["configs"])]:
            loop = rows.get((cid, ctx, "loop_rate"))
            if loop is None:
                continue
            rep = rows[(cid, ctx, "seq_rep_4")]
            ratio = rows[(cid, ctx, "compression_ratio")]
            div = rows.get((cid, ctx, "divergence_index"))
            loops = round(loop["value"] * loop["n"])
            style = "red" if loop["value"] >= 0.5 else ""
            table.add_row(
                str(ctx),
                plain(cid),
                f"[{style}]{loops}/{loop['n']}[/]" if style else f"{loops}/{loop['n']}",
                _fmt_ci(rep["value"], rep["ci"]),
                f"{ratio['value']:.2f}",
                f"{div['value']:.0f} [{div['ci'][0]:.0f}, {div['ci'][1]:.0f}]" if div else "",
                end_section=cid == doc["configs"][-1]["id"],
            )
    return table


def _milli(value: float, ci: list[float]) -> str:
    """A KL value and interval in units of 10^-3 nats: short enough for one table cell."""
    return f"{1e3 * value:.3g} [{1e3 * ci[0]:.3g}, {1e3 * ci[1]:.3g}]"


def divergence_table(doc: dict[str, Any]) -> Table:
    """The decay curve, bins x configurations: mean KL from the reference with its 95%
    interval and top-1 agreement, then the pooled row; the onset bin is marked."""
    section = doc["divergence"]
    reference = section["reference"]
    rows = {
        (r["config"], r["metric"], r["scope"], r["bin"][0]): r
        for r in doc["summary"]
        if r["probe"] == "divergence"
    }
    configs = [c["id"] for c in doc["configs"] if c["id"] != reference]
    table = Table(
        title=f"Mean KL divergence from {plain(reference)} by position, in 10⁻³ nats "
        f"(block-bootstrap 95% interval), top-1 agreement; ▲ = onset, the first bin from which "
        f"KL stays significantly above positions < {section['onset_reference']}"
    )
    for col in ("positions", "n", f"ppl {plain(reference)}"):
        table.add_column(col, justify="right", no_wrap=True)
    for cid in configs:
        table.add_column(f"KL {plain(cid)}", justify="right", no_wrap=True)
        table.add_column("top-1", justify="right", no_wrap=True)
    spans = [("bin", lo, f"{lo}–{hi - 1}") for lo, hi in itertools.pairwise(section["bin_edges"])]
    for scope, lo, label in [*spans, ("pooled", 1, "all")]:
        ppl = rows.get((reference, "ppl", scope, lo))
        if ppl is None:
            continue
        cells = [label, str(ppl["n"]), f"{ppl['value']:.2f}"]
        for cid in configs:
            kld = rows[(cid, "kld_mean", scope, lo)]
            onset = section["onset"].get(cid)
            text = _milli(kld["value"], kld["ci"])
            if scope == "bin" and onset is not None and onset["bin"][0] == lo:
                text = f"[bold red]▲ {text}[/]"
            cells += [text, f"{rows[(cid, 'top1_agree', scope, lo)]['value']:.3f}"]
        table.add_row(*cells, end_section=scope == "bin" and lo == spans[-1][1])
    return table


def divergence_lines(doc: dict[str, Any]) -> list[str]:
    """The onset per configuration and the null check, in words."""
    section = doc["divergence"]
    lines = []
    pooled = {
        (r["config"], r["metric"]): r["value"]
        for r in doc["summary"]
        if r["probe"] == "divergence" and r["scope"] == "pooled"
    }
    ref_ppl = pooled[(section["reference"], "ppl")]
    for cid, onset in section["onset"].items():
        shown = plain(cid)
        lines.append(
            f"{shown}: pooled over {section['documents']} document(s): "
            f"mean KL {pooled[(cid, 'kld_mean')]:.4g}, "
            f"99th percentile {pooled[(cid, 'kld_p99')]:.4g}, "
            f"top-1 agreement {pooled[(cid, 'top1_agree')]:.4f}, "
            f"ppl {pooled[(cid, 'ppl')]:.3f} (reference {ref_ppl:.3f})"
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


def print_run_report(doc: dict[str, Any], console: Console) -> None:
    probes = {r["probe"] for r in doc["summary"]}
    if "needle" in probes:
        console.print(needle_table(doc))
    if "repetition" in probes:
        console.print(repetition_table(doc))
    if doc.get("divergence") and "divergence" in probes:
        console.print(divergence_table(doc))
        for line in divergence_lines(doc):
            console.print(line)
    timing = doc["timing"]
    ratio = timing["tokens_evaluated"] / max(1, timing["naive_tokens"])
    console.print(
        f"{timing['tokens_evaluated']:,} tokens evaluated in {timing['wall_s']:.0f} s "
        f"({ratio:.2f} of the {timing['naive_tokens']:,} a one-prompt-per-cell grid would need)"
    )
    for warning in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/] {plain(warning)}")
    verdict = doc.get("verdict")
    if verdict and verdict["sentences"]:
        console.print("[bold]Verdict[/]")
        for sentence in verdict["sentences"]:
            console.print(f"  • {sentence}", markup=False, highlight=False)


MARK_STYLE = {
    "worse": "bold red",
    "better": "green",
    "no significant change": "dim",
    "not testable": "yellow",
}


def print_comparison(report: dict[str, Any], console: Console) -> None:
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
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
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
            ctx = "all" if r.get("scope") == "pooled" else plain(r["ctx"])
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
            f"{f['diff']:+.3g} (p = {f['p']:.2g})"
        )
