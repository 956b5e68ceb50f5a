"""The decision, shown: the recommendation, the frontier of quality, memory and speed (a
terminal table, the page's parts and a figure) and the rules of thumb checked. Reads only the
result document's `verdict`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kvprobe.api import pooled_row
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain
from kvprobe.stats.decision import FrontierRow, frontier, speed_sentence
from kvprobe.stats.shape import WHOLE, whole_or_positions
from kvprobe.stats.shape import number as figure
from kvprobe.views.figures import Point, Scatter

MIB = 1024 * 1024


def _mib(n: int | None) -> str:
    return f"{n / MIB:,.1f}" if n is not None else "?"


def _speed(row: FrontierRow) -> str:
    if not row["prefill_tokens_per_s"]:
        return "not measured"
    lo, hi = row["prefill_depth"]
    logits = ", all logits" if row.get("prefill_all_logits") else ""
    return f"{row['prefill_tokens_per_s']:,.0f} ({lo:,}-{hi:,}{logits})"


def _rows(result: ResultDoc | JsonObject) -> list[FrontierRow]:
    verdict = result.get("verdict") or {}
    if not verdict.get("configs") or not verdict.get("recommendation"):
        return []
    return frontier(result, verdict)


def frontier_cells(result: ResultDoc | JsonObject) -> tuple[list[str], list[list[str]]]:
    """The frontier table as plain text cells: header and rows."""
    rows = _rows(result)
    ctx = result["run"]["ctx"]
    train = (result.get("model") or {}).get("n_ctx_train") or 0
    ref = rows[0] if rows else None
    header = [
        "config", "vs reference", "effective context", "mean KL (whole document)", f"KV MiB at {ctx:,}",
        "saves", f"KV MiB at {train:,}", "prefill tokens/s (depth)", "llama.cpp flags", "frontier",
    ]  # fmt: skip
    stops = ((result.get("verdict") or {}).get("until_decided") or {}).get("stopped") or {}
    cells = []
    for r in rows:
        saves = (
            f"{100 * (1 - r['kv_bytes'] / ref['kv_bytes']):.0f}%"
            if ref and r["kv_bytes"] is not None and ref["kv_bytes"]
            else f"{100 * (1 - r['relative_size']):.0f}%"
        )
        eff = r["effective_context"]
        stop = stops.get(r["config"])
        shape = (((result.get("verdict") or {}).get("configs") or {}).get(r["config"]) or {}).get("shape")
        # Its level and growth in a few words; a configuration stopped once decided has no curve
        # to speak of growth from, so its status says where it stopped instead.
        status = (shape or {}).get("short") or r["status"]
        if stop:  # --until-decided: its rows end where it was decided
            where = f" at {stop['ctx']:,}" if stop["status"] == "worse" else ""
            status = f"{r['status']} (stopped: decided {stop['status']}{where})"
        cells.append([
            r["config"], status, f"{eff:,}" if eff else "none",
            _kl_cell(result, r),
            _mib(r["kv_bytes"]), saves, _mib(r["kv_bytes_train"]), _speed(r), r["flags"],
            "●" if r["frontier"] else "",
        ])  # fmt: skip
    return header, cells


def _kl_cell(result: ResultDoc | JsonObject, r: JsonObject) -> str:
    """Mean KL over the whole document, or over the positions it covers where that is less."""
    if r["kld_mean"] is None:
        return "-"
    found = pooled_row(result.get("summary") or [], r["config"])
    scope = whole_or_positions((found or {}).get("bin"), int(result["run"]["ctx"]))
    # Through a llama-server: the KL over the top n + tail, a lower bound of the full KL.
    bound = "≥ " if (result.get("divergence") or {}).get("kl") == "top_n_tail" else ""
    return bound + figure(r["kld_mean"]) + ("" if scope == WHOLE else f" ({scope})")


def stopped_early_line(result: ResultDoc) -> str | None:
    """--until-decided in one line: the design, and each configuration stopped once decided."""
    early = (result.get("verdict") or {}).get("until_decided")
    if not early:
        return None
    looks = early["looks"]
    stops = early.get("stopped") or {}
    names = {"obrien-fleming": "O'Brien–Fleming", "pocock": "Pocock"}
    spending = names.get(early["spending"], early["spending"])
    design = f"{spending} alpha spending over {looks} looks, one per document"
    decided = result["run"].get("decided")  # a default run decided early, stopping nothing (run/decided)
    if not stops and decided:
        found = [f"{c} {d['status']}" + (f" at {d['ctx']:,}" if d["status"] == "worse" else "")
                 for c, d in decided["configs"].items()]  # fmt: skip
        return f"Decided early ({design}): {', '.join(found)}, on document {decided['look']} of {looks}."
    if not stops:
        return f"Until decided ({design}): no configuration was decided before the end, every one ran to it."
    parts = []
    for config, stop in stops.items():
        what = f"worse at {stop['ctx']:,}" if stop["status"] == "worse" else "equivalent at every checkpoint"
        later = "" if not stop.get("measured_steps") else ", measured below it to the end"
        parts.append(f"{config} ({what}, on document {stop['look']} of {looks}{later})")
    known = [s["saved_s"] for s in stops.values() if s.get("saved_s") is not None]
    saved = f"; about {sum(known):,.0f} s of decoding not spent" if known else ""
    tested = sum(1 for c in result.get("configs", []) if c["id"] != result.get("baseline"))
    rest = " The others ran to the end." if len(stops) < tested else ""
    return f"Stopped early, once decided ({design}): {'; '.join(parts)}{saved}.{rest}"


def print_decision(result: ResultDoc, console: Console) -> None:
    """The recommendation, then the frontier table."""
    verdict = result.get("verdict") or {}
    rec = verdict.get("recommendation")
    if not rec:
        return
    console.print("[bold]Recommendation[/]")
    console.print(f"  {rec['sentence']}", markup=False, highlight=False)
    if speed := speed_line(result):
        console.print(f"  {speed}", markup=False, highlight=False)
    if early := stopped_early_line(result):
        console.print(f"  {early}", markup=False, highlight=False)
    header, cells = frontier_cells(result)
    table = Table(
        title="Quality, memory and speed per configuration (● on the frontier: no other is as good in "
        "all three and better in one); KV memory as llama-server allocates it for one sequence"
    )
    for col in header:
        table.add_column(
            col, justify="left" if col in ("config", "vs reference", "llama.cpp flags") else "right"
        )
    for row in cells:
        table.add_row(*(plain(c) for c in row))
    console.print(table)


def print_folklore(result: ResultDoc, console: Console) -> None:
    lines = (result.get("verdict") or {}).get("folklore") or []
    if not lines:
        return
    console.print("[bold]Rules of thumb from the source documents, checked on this model[/]")
    for f in lines:
        console.print(f"  • {f['rule']}: {f['finding']} ({f['evidence']})", markup=False, highlight=False)


def speed_line(result: ResultDoc) -> str | None:
    """The recommendation's prefill speed in one sentence, where it was measured."""
    return speed_sentence(result, _rows(result))


def frontier_figure(result: ResultDoc) -> Scatter | None:
    """KV memory at the run's context against mean KL from the reference, one point per
    configuration, coloured by its equivalence status, with its prefill speed beside it."""
    verdict = result.get("verdict") or {}
    rows = [r for r in _rows(result) if r["kld_mean"] is not None]
    if len(rows) < 2:
        return None
    use_bytes = all(r["kv_bytes"] is not None for r in rows)
    points = [
        Point(
            r["config"],
            r["kv_bytes"] / MIB if use_bytes else 100 * r["relative_size"],
            r["kld_mean"],
            r["status"],
            f"{r['prefill_tokens_per_s']:,.0f} tok/s" if r["prefill_tokens_per_s"] else "",
        )
        for r in rows
    ]
    bound = (verdict.get("margins") or {}).get("kld_mean")
    ctx = result["run"]["ctx"]
    return Scatter(
        "frontier",
        f"Quality against KV memory at {ctx:,} tokens (colour: equivalence to the reference)",
        f"KV cache at {ctx:,} tokens (MiB)" if use_bytes else "KV cache (% of f16)",
        "mean KL from the reference (nats)",
        points,
        level=(bound, f"KL bound {bound:g}") if bound else None,
        log_y=True,
    )
