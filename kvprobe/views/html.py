"""One self-contained HTML page for saved results: the verdict first, then a section per probe
with its figures (SVG, inline as data URIs), then the provenance. No scripts, no network: the
page opens from a file, a mail attachment or a CI artifact the same way."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

from kvprobe.api import all_probes
from kvprobe.infra.display import html_text
from kvprobe.plan.prompt import describe
from kvprobe.views.decision import decision_html, frontier_figure
from kvprobe.views.figures import Figure, LineFigure, render
from kvprobe.views.probes import probe_table_html
from kvprobe.views.terminal import matrix_rows

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.verdict li { margin: .4em 0; } img { max-width: 100%; display: block; margin: 1em 0; }
table { border-collapse: collapse; font-size: .85em; max-width: 100%; }
td, th { border: 1px solid #ddd; padding: 2px 6px; overflow-wrap: anywhere; } /* paths wrap */
th { background: #f4f4f4; text-align: left; } .note { font-size: .9em; white-space: pre-wrap; }
.partial { background: #fff3cd; padding: .5em; }
"""


_e = html_text  # every value on the page is untrusted text from a file


def _img(figure: Figure) -> str:
    data = base64.b64encode(render(figure, "svg")).decode("ascii")
    return f'<img alt="{_e(figure.title)}" src="data:image/svg+xml;base64,{data}">'


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def provenance(result: dict[str, Any]) -> str:
    """Model, runtime, what took effect, host and timing."""
    model, rt, host, timing = (
        result["model"],
        result.get("runtime") or {},
        result.get("host") or {},
        result["timing"],
    )
    general = [
        ("command", result.get("command", "")),
        ("created", result.get("created", "")),
        ("kvprobe", result.get("kvprobe_version", "")),
        ("model", f"{model.get('name')} ({model.get('path')})"),
        ("model sha256", model.get("sha256")),
        (
            "scenario",
            f"{result['scenario'].get('name')} (sha256 {result['scenario'].get('sha256', '')[:16]}…)",
        ),
        (
            "seed, --ctx, mode",
            f"{result['run']['seed']}, {result['run']['ctx']:,}, {result['run'].get('mode')}",
        ),
        ("prompt format", describe(result.get("prompt") or {})),
        ("llama-cpp-python", rt.get("llama_cpp_python")),
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
    applied = "".join(
        f"<tr><td>{_e(c['id'])}</td><td>{_e(c.get('type_k'))}</td><td>{_e(c.get('type_v'))}</td>"
        f"<td>{_e(c.get('flash_attn'))}</td><td>{_e(c.get('attn_rot_k'))}/{_e(c.get('attn_rot_v'))}</td></tr>"
        for c in result["configs"]
    )
    return (
        _table(general)
        + "<p>What llama.cpp reports it applied, per configuration:</p><table><tr><th>config</th><th>K</th>"
        + "<th>V</th><th>flash attention</th><th>rotation K/V</th></tr>"
        + applied
        + "</table>"
    )


def result_sections(result: dict[str, Any]) -> str:
    """The verdict, each probe's figures and notes, and the provenance of one result."""
    parts = []
    if result.get("complete") is False:
        parts.append(
            f'<p class="partial">Partial result ({_e(result.get("stopped"))}): '
            f"{len(result.get('missing') or [])} units were not measured.</p>"
        )
    parts.append(decision_html(result))
    parts.append(probe_table_html(result))
    if (figure := frontier_figure(result)) is not None:
        parts.append(_img(figure))
    sentences = (result.get("verdict") or {}).get("sentences") or []
    if sentences:
        parts.append(
            "<h2>Verdict</h2><ul class='verdict'>" + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>"
        )
    for probe in all_probes():
        figures, notes = probe.figures(result), probe.notes(result)
        if figures or notes:
            parts.append(f"<h2>{_e(probe.name)}</h2>")
            parts += [_img(f) for f in figures]
            parts += [f"<p class='note'>{_e(n)}</p>" for n in notes]
    parts.append("<h2>Provenance</h2>" + provenance(result))
    return "\n".join(parts)


def _document(title: str, body: Sequence[str]) -> str:
    """The page around its body: a title and the style sheet, nothing else."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def page(
    results: Sequence[tuple[str, dict[str, Any]]], on_result: Callable[[int], None] | None = None
) -> str:
    """The whole page for one result, or for several (each in turn, after a matrix).
    `on_result(i)` hears before result i's figures are drawn (progress)."""
    title = "kvprobe: " + ", ".join(name for name, _ in results)
    body = [f"<h1>{_e(title)}</h1>"]
    if len(results) > 1:
        body.append("<h2>Runs side by side</h2>" + matrix(results))
    for i, (name, result) in enumerate(results):
        if on_result is not None:
            on_result(i)
        if len(results) > 1:
            body.append(f"<h1>{_e(name)}</h1>")
        body.append(result_sections(result))
    return _document(title, body)


def matrix(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Accuracy, answer log-prob and mean KL per (run, configuration, context)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in ("run", "model", "config", "context", "accuracy",
                                                  "answer log-prob", "KL (10⁻³ nats)"))  # fmt: skip
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in matrix_rows(results)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def merged(old: Figure, new: Figure) -> list[Figure]:
    """Old and new on the same axes (line figures); heatmaps one after the other."""
    from dataclasses import replace

    if isinstance(old, LineFigure) and isinstance(new, LineFigure):
        series = [replace(s, label=f"old {s.label}") for s in old.series]
        series += [replace(s, label=f"new {s.label}", reference=False) for s in new.series]
        markers = [replace(m, series=f"old {m.series}", label=f"old {m.label}") for m in old.markers]
        markers += [replace(m, series=f"new {m.series}", label=f"new {m.label}") for m in new.markers]
        return [replace(new, title=f"{new.title}: old and new", series=series, markers=markers)]
    return [replace(old, title=f"old: {old.title}"), replace(new, title=f"new: {new.title}")]


def comparison_page(old: tuple[str, dict[str, Any]], new: tuple[str, dict[str, Any]], rows: str) -> str:
    """`kvprobe compare OLD NEW --html`: both verdicts, the comparison's rows, and every figure
    with old and new on the same axes."""
    title = f"kvprobe compare: {old[0]} → {new[0]}"
    body = [f"<h1>{_e(title)}</h1>", rows]
    for label, (name, result) in (("old", old), ("new", new)):
        sentences = (result.get("verdict") or {}).get("sentences") or []
        body.append(f"<h2>Verdict, {label} ({_e(name)})</h2><ul class='verdict'>"
                    + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>")  # fmt: skip
    for probe in all_probes():
        olds = {f.key: f for f in probe.figures(old[1])}
        news = {f.key: f for f in probe.figures(new[1])}
        keys = [k for k in news if k in olds]
        if keys:
            body.append(f"<h2>{_e(probe.name)}</h2>")
            body += [_img(f) for k in keys for f in merged(olds[k], news[k])]
    return _document(title, body)


def comparison_rows(report: dict[str, Any]) -> str:
    """The comparison's rows as a table: old, new, difference with its interval, p, mark."""
    columns = ("metric", "config", "context", "old", "new", "difference [95% CI]", "p", "mark")
    head = "".join(f"<th>{c}</th>" for c in columns)
    cells = []
    for r in report["rows"]:
        config = (
            r["config_old"]
            if r["config_old"] == r["config_new"]
            else f"{r['config_old']} → {r['config_new']}"
        )
        ci = r.get("ci") or [float("nan"), float("nan")]
        values = (f"{r['probe']} {r['metric']}", config, "all" if r.get("scope") == "pooled" else r["ctx"],
                  f"{r['old']:.4g}", f"{r['new']:.4g}", f"{r['diff']:+.3g} [{ci[0]:+.3g}, {ci[1]:+.3g}]",
                  f"{r['p']:.2g}", r["mark"])  # fmt: skip
        cells.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in values) + "</tr>")
    return f"<p>{_e(report['pairing'])}</p><table><tr>{head}</tr>{''.join(cells)}</table>"
