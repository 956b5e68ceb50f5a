"""The decision, shown: the recommendation, the frontier of quality, memory and speed (a
terminal table, the page's parts and a figure) and the rules of thumb checked. Reads the result
document's `verdict`, and for speed and memory its timing and runtime (kvprobe.stats.decision)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from kvprobe.api import pooled_row
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain
from kvprobe.stats.decision import FrontierRow, frontier, rate, speed_sentence
from kvprobe.stats.shape import WHOLE, whole_or_positions
from kvprobe.stats.shape import number as figure
from kvprobe.views.figures import Point, Scatter

MIB = 1024 * 1024


def _mib(n: int | None) -> str:
    return f"{n / MIB:,.1f}" if n is not None else "?"


def _speed(row: FrontierRow) -> str:
    if not row["prefill_tokens_per_s"]:
        return "not measured"
    if row["speed_source"] == "server":  # the server's timings: over the whole run, no depth
        return rate(row["prefill_tokens_per_s"])
    lo, hi = row["prefill_depth"]
    logits = ", all logits" if row.get("prefill_all_logits") else ""
    return f"{row['prefill_tokens_per_s']:,.0f} ({lo:,}-{hi:,}{logits})"


def _rows(result: ResultDoc | JsonObject) -> list[FrontierRow]:
    verdict = result.get("verdict") or {}
    if not verdict.get("configs") or not verdict.get("recommendation"):
        return []
    return frontier(result, verdict)


@dataclass(frozen=True)
class Column:
    """One column of the frontier table: its header, its cells, and the part of the table it
    belongs to (a narrow terminal shows the parts as tables of their own, `print_decision`)."""

    part: str  # "config" | "quality" | "memory" | "speed" | "flags"
    header: str
    cells: list[str]


def frontier_cells(result: ResultDoc | JsonObject) -> tuple[list[str], list[list[str]]]:
    """The frontier table as plain text cells: header and rows."""
    columns = frontier_columns(result)
    return [c.header for c in columns], [list(row) for row in zip(*(c.cells for c in columns), strict=True)]


def frontier_columns(result: ResultDoc | JsonObject) -> list[Column]:
    """The frontier table by column. Through llama-server, what the server itself said where
    every row has it: the KV MiB its log reports allocated beside the layout's figures, its
    prefill (and generation) tokens/s from its timings, its GPU memory where NVML saw it."""
    rows = _rows(result)
    ctx = result["run"]["ctx"]
    train = (result.get("model") or {}).get("n_ctx_train") or 0
    from_server = bool(rows) and all(r["kv_mib_server"] is not None for r in rows)
    layout = " (GGUF layout)" if from_server else ""
    columns = [
        Column("config", "config", [r["config"] for r in rows]),
        *_quality_columns(result, rows),
        Column("memory", f"KV MiB at {ctx:,}{layout}", [_mib(r["kv_bytes"]) for r in rows]),
        Column("memory", "saves", _savings(rows)),
    ]
    if from_server:
        columns.append(
            Column("memory", _server_kv_header(result, rows), [f"{r['kv_mib_server']:,.1f}" for r in rows])
        )
    columns.append(
        Column("memory", f"KV MiB at {train:,}{layout}", [_mib(r["kv_bytes_train"]) for r in rows])
    )
    if any(r["vram_mib"] is not None for r in rows):
        vram = [f"{r['vram_mib']:,.0f}" if r["vram_mib"] is not None else "-" for r in rows]
        columns.append(Column("memory", "VRAM MiB (server process, NVML)", vram))
    server = bool(rows) and rows[0]["speed_source"] == "server"
    prefill = "prefill tokens/s (server's timings)" if server else "prefill tokens/s (depth)"
    columns.append(Column("speed", prefill, [_speed(r) for r in rows]))
    if any(r["generation_tokens_per_s"] for r in rows):
        gen = [rate(r["generation_tokens_per_s"]) if r["generation_tokens_per_s"] else "-" for r in rows]
        columns.append(Column("speed", "generation tokens/s (server's timings)", gen))
    columns.append(Column("flags", "llama.cpp flags", [r["flags"] for r in rows]))
    columns.append(Column("quality", "frontier", ["●" if r["frontier"] else "" for r in rows]))
    return columns


def _quality_columns(result: ResultDoc | JsonObject, rows: list[FrontierRow]) -> list[Column]:
    """Status (its level and growth in a few words), effective context, mean KL."""
    stops = ((result.get("verdict") or {}).get("until_decided") or {}).get("stopped") or {}
    statuses = []
    for r in rows:
        stop = stops.get(r["config"])
        shape = (((result.get("verdict") or {}).get("configs") or {}).get(r["config"]) or {}).get("shape")
        # Its level and growth in a few words; a configuration stopped once decided has no curve
        # to speak of growth from, so its status says where it stopped instead.
        status = (shape or {}).get("short") or r["status"]
        if stop:  # --until-decided: its rows end where it was decided
            where = f" at {stop['ctx']:,}" if stop["status"] == "worse" else ""
            status = f"{r['status']} (stopped: decided {stop['status']}{where})"
        statuses.append(status)
    return [
        Column("quality", "vs reference", statuses),
        Column("quality", "effective context",
               [f"{r['effective_context']:,}" if r["effective_context"] else "none" for r in rows]),
        Column("quality", "mean KL (whole document)", [_kl_cell(result, r) for r in rows]),
    ]  # fmt: skip


def _savings(rows: list[FrontierRow]) -> list[str]:
    ref = rows[0] if rows else None
    return [
        f"{100 * (1 - r['kv_bytes'] / ref['kv_bytes']):.0f}%"
        if ref and r["kv_bytes"] is not None and ref["kv_bytes"]
        else f"{100 * (1 - r['relative_size']):.0f}%"
        for r in rows
    ]


def _server_kv_header(result: ResultDoc | JsonObject, rows: list[FrontierRow]) -> str:
    """What the server allocated, and for how many cells: a spawned server holds the run's
    context and a chunk more, and with --swa-full its sliding-window layers hold every cell
    (a default llama-server keeps their window only: the layout's columns)."""
    cells = sorted({r["kv_cells_server"] for r in rows if r["kv_cells_server"]})
    held = f", {'/'.join(f'{c:,}' for c in cells)} cells" if cells else ""
    runtime = result.get("runtime") or {}
    swa = any(((result.get("model") or {}).get("kv_layout") or {}).get("swa_layers") or [])
    full = ", sliding-window layers full" if swa and runtime.get("swa_full") else ""
    return f"KV MiB allocated (server's log{held}{full})"


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


TITLE = (
    "Quality, memory and speed per configuration (● on the frontier: no other is as good in all three "
    "and better in one); KV memory as llama-server allocates it for one sequence"
)


def _title(rows: list[FrontierRow]) -> str:
    """The table's legend; through llama-server, whose figures the server's columns are."""
    if not rows or rows[0]["speed_source"] != "server":
        return TITLE
    said = TITLE.replace("as llama-server", "as a default llama-server") + " (the GGUF layout)"
    if all(r["kv_mib_server"] is not None for r in rows):
        said += " and as each server allocated it in this run (the server's log)"
    return f"{said}; tokens/s: the server's own timings over the whole run"


def print_decision(result: ResultDoc, console: Console) -> None:
    """The recommendation, then the frontier table (in parts where the terminal is too narrow
    for every column without cutting a word)."""
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
    columns = [Column(c.part, plain(c.header), [plain(x) for x in c.cells]) for c in frontier_columns(result)]
    title = _title(_rows(result))
    for i, part in enumerate(split_columns(columns, console.width)):
        widths = _fitted(part, console.width)
        table = Table(title=title if i == 0 else "Quality, memory and speed per configuration, continued")
        for column, width in zip(part, widths, strict=True):
            left = column.header in ("config", "vs reference", "llama.cpp flags")
            table.add_column(column.header, justify="left" if left else "right", width=width)
        for row in zip(*(c.cells for c in part), strict=True):
            table.add_row(*row)
        console.print(table)


def _bounds(column: Column) -> tuple[int, int]:
    """Its narrowest width (the longest word: nothing is cut) and its widest (the longest text)."""
    texts = [column.header, *column.cells]
    words = [cell_len(w) for t in texts for w in t.split()]
    return max(words, default=1), max((cell_len(t) for t in texts), default=1)


def _need(columns: list[Column]) -> int:
    """The narrowest table of these columns: their words, one space each side, the rules."""
    return sum(_bounds(c)[0] for c in columns) + 3 * len(columns) + 1


PARTS = ("quality", "flags", "memory", "speed")  # the order the parts fill tables in


def split_columns(columns: list[Column], width: int) -> list[list[Column]]:
    """The columns in tables that fit `width` without cutting a word, each starting with the
    configuration: the parts go whole, in PARTS' order, each into the last table where it fits
    or else a new one (quality and flags, then memory and speed, at 80 columns); within a table
    the columns keep their order, so where all fit it is the one table of the page."""
    tables: list[list[int]] = []
    for part in PARTS:
        found = [i for i, c in enumerate(columns) if c.part == part]
        if not found:
            continue
        if tables and _need([columns[j] for j in (0, *tables[-1], *found)]) <= width:
            tables[-1].extend(found)
        else:
            tables.append(found)
    return [[columns[0], *(columns[j] for j in sorted(t))] for t in tables]


def _fitted(columns: list[Column], width: int) -> list[int]:
    """Each column's width: its narrowest, and of what room is left a share by how much wider
    its text would be (every column at its widest where the room allows)."""
    bounds = [_bounds(c) for c in columns]
    room = width - _need(columns)
    wants = [hi - lo for lo, hi in bounds]
    if room >= sum(wants):
        return [hi for _, hi in bounds]
    return [
        lo + (want * max(room, 0)) // max(sum(wants), 1) for (lo, _), want in zip(bounds, wants, strict=True)
    ]


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
            f"{rate(r['prefill_tokens_per_s'])} tok/s" if r["prefill_tokens_per_s"] else "",
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
