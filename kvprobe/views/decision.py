"""The decision, shown: the recommendation, the frontier of quality, memory and speed (a
terminal table, the page's parts and a figure) and the rules of thumb checked. Reads the result
document's `verdict`, and for speed and memory its timing and runtime (kvprobe.stats.decision)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from kvprobe.api import pooled_row
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain, visible
from kvprobe.stats.decision import FrontierRow, frontier, rate, speed_sentence
from kvprobe.stats.equivalence import MAX_ITEMS
from kvprobe.stats.shape import WHOLE, whole_or_positions
from kvprobe.stats.shape import number as figure
from kvprobe.views.figures import Point, Scatter
from kvprobe.views.fit import Units, fit_table, flag_units

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
    if train and train != ctx:  # the training context's memory, where it is another context
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
        Column("quality", "mean KL, nats (whole document)", [_kl_cell(result, r) for r in rows]),
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
    "and better in one, and never one shown worse); KV memory as llama-server allocates it for one sequence"
)


def _title(rows: list[FrontierRow]) -> str:
    """The table's legend; through llama-server, whose figures the server's columns are."""
    if not rows or rows[0]["speed_source"] != "server":
        return TITLE
    said = TITLE.replace("as llama-server", "as a default llama-server") + " (the GGUF layout)"
    if all(r["kv_mib_server"] is not None for r in rows):
        said += " and as each server allocated it in this run (the server's log)"
    return f"{said}; tokens/s: the server's own timings over the whole run"


def decision_head(result: ResultDoc | JsonObject) -> str | None:
    """The decision's first line: at which context, which cache to use (None without one)."""
    rec = (result.get("verdict") or {}).get("recommendation")
    if not rec:
        return None
    kind = "the cheapest cache shown equivalent" if rec["equivalent"] else "no cheaper cache shown equivalent"
    return f"At {rec['ctx']:,} tokens, use {rec['config']}: {kind}"


def _meaning(result: ResultDoc | JsonObject, row: FrontierRow) -> str:
    """What its verdict means, in a few words: equivalent up to where, worse from where, or
    undecided and what would decide it."""
    ref, ctx = result.get("baseline"), result["run"]["ctx"]
    if row["status"] == "reference":
        return "the reference"
    equivalence = ((((result.get("verdict") or {}).get("configs") or {}).get(row["config"]) or {})
                   .get("equivalence") or {})  # fmt: skip
    eff, first = row["effective_context"], equivalence.get("first_worse")
    said = [f"equivalent to {ref} up to {eff:,}"] if eff else []
    if row["status"] == "worse" and first is not None:
        shortest = min(result["run"]["checkpoints"], default=first)
        said.append(
            f"worse than {ref} from {first:,} tokens"
            + (" (the shortest measured)" if first == shortest else "")
        )
    elif row["status"] == "worse":
        said.append(f"worse than {ref}")
    elif eff is None or eff < ctx:
        # Where it is first undecided, and what would decide it there (as the verdict says).
        first_open = next(
            (c for c in equivalence.get("checkpoints") or [] if c["status"] == "undecided"), None
        )
        needed = (first_open or {}).get("items_needed")
        more = ""
        if needed and first_open:
            about = f"more than {MAX_ITEMS:,}" if needed >= MAX_ITEMS else f"about {needed:,}"
            more = f": {about} items at {first_open['ctx']:,} would decide"
        said.append(f"undecided{' beyond' if eff else f' against {ref}'}{more}")
    return ", ".join(said)


def decision_lines(result: ResultDoc | JsonObject) -> list[list[str]]:
    """One line per configuration, as its parts: the name, what its verdict means, the KV memory
    it saves, its llama.cpp flags (the printer joins them with " · " and wraps between parts)."""
    rows = _rows(result)
    lines = []
    for r, saved in zip(rows, _savings(rows), strict=True):
        memory = [] if r["status"] == "reference" else [f"saves {saved} of KV memory"]
        lines.append([r["config"], _meaning(result, r), *memory, r["flags"]])
    return lines


def _wrapped(parts: list[str], name_width: int, width: int) -> list[str]:
    """`name  part · part · part`, broken between parts where the line would pass `width`, the
    continuation indented under the first part (a part longer than a line breaks between words)."""
    indent = " " * (name_width + 2)
    lines = [f"{parts[0]:<{name_width}}  {parts[1]}"]
    for part in parts[2:]:
        if cell_len(lines[-1]) + 3 + cell_len(part) <= width:
            lines[-1] += f" · {part}"
        else:
            lines.extend(_wrap(part, width, indent, first=indent))
    out = []
    for line in lines:  # the first line may pass the width too: its meaning wraps under itself
        out.extend(_wrap(line, width, indent) if cell_len(line) > width else [line])
    return out


def _wrap(text: str, width: int, indent: str, first: str = "") -> list[str]:
    """Between words only (a flag such as -ctk stays whole)."""
    return textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=indent, break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Said:
    """One entry of the decision: its text in one line (what a later report compares), and its
    lines as wrapped at the terminal's width."""

    text: str
    lines: list[str]


def decision_text(result: ResultDoc, width: int) -> tuple[list[Said], list[Said]]:
    """The decision's entries under its heading, wrapped at `width`: its head line and one entry
    per configuration; then what goes with it, the prefill speed and, with --until-decided, where
    each configuration stopped (both empty without a decision)."""
    head = decision_head(result)
    if head is None:
        return [], []
    decided = [Said(plain(head), _wrap(plain(head), width - 1, "    ", first="  "))]
    entries = [[plain(p) for p in parts] for parts in decision_lines(result)]
    name_width = max((cell_len(parts[0]) for parts in entries), default=0)
    for parts in entries:
        lines = [f"  {line}" for line in _wrapped(parts, name_width, width - 2)]
        decided.append(Said(" · ".join(parts), lines))
    said = [s for s in (speed_line(result), stopped_early_line(result)) if s]
    return decided, [Said(s, _wrap(s, width - 1, "  ", first="  ")) for s in said]


def print_decision_lines(result: ResultDoc, console: Console, *, shown: Sequence[str] = ()) -> list[str]:
    """The decision first, under its heading (decision_text); the texts of the entries printed
    (empty without a decision). `shown`: the entries printed when the run decided early, none
    printed again: one line says the decision stands, or the entries that changed follow whole
    (compared as texts, so the terminal's width does not matter)."""
    decided, extra = decision_text(result, console.width)
    if not decided:
        return []
    new = [s for s in decided if s.text not in shown]
    if not shown:
        console.print("[bold]Recommendation[/]")
    elif not new:
        console.print("Recommendation: as printed at the decision above", markup=False, highlight=False)
    else:
        console.print("[bold]Recommendation[/], what changed since the decision above")
    printed = [s for s in new + extra if s.text not in shown]
    for line in (line for s in printed for line in s.lines):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return [s.text for s in printed]


def print_decision(result: ResultDoc, console: Console, *, details: bool = False, lines: bool = True) -> None:
    """The decision's lines (unless `lines` is False: the caller printed them), the
    recommendation's sentence with its intervals where `details` asks, then the frontier table
    (in parts where the terminal is too narrow for every column without cutting a word)."""
    rec = (result.get("verdict") or {}).get("recommendation")
    if not rec or (lines and not print_decision_lines(result, console)):
        return
    if details:  # under the decision's own heading: the same Recommendation, in one sentence
        console.print("[bold]The recommendation in full[/]")
        console.print(f"  {rec['sentence']}", markup=False, highlight=False)
    print_frontier_table(result, console)


def print_frontier_table(result: ResultDoc, console: Console) -> None:
    """The frontier table, in parts where the terminal is too narrow for every column without
    cutting a word (views.fit): each part starts with the configuration, and the table's parts go
    whole, in PARTS' order, each into the last table where it fits or else a new one (quality and
    flags, then memory and speed, at 80 columns); a flag and its value never part."""
    columns = frontier_columns(result)
    table = Table(title=_title(_rows(result)))
    for column in columns:
        left = column.header in ("config", "vs reference", "llama.cpp flags")
        table.add_column(plain(column.header), justify="left" if left else "right")
    for row in zip(*(c.cells for c in columns), strict=True):
        table.add_row(*(_cell(c, x) for c, x in zip(columns, row, strict=True)))
    blocks = [[i for i, c in enumerate(columns) if c.part == part and i > 0] for part in PARTS]
    continued = "Quality, memory and speed per configuration, continued"
    for part in fit_table(table, console.width, blocks=[b for b in blocks if b], continued=continued):
        console.print(part)


PARTS = ("quality", "flags", "memory", "speed")  # the order the parts fill tables in


def _cell(column: Column, text: str) -> str | Units:
    """A cell; the flags as units that wrap between "flag value" pairs only ("-ctk q8_0")."""
    if column.part != "flags":
        return plain(text)
    return Units(flag_units(visible(text)))


def print_folklore(result: ResultDoc, console: Console) -> None:
    lines = (result.get("verdict") or {}).get("folklore") or []
    if not lines:
        return
    console.print("[bold]Rules of thumb (RunLocalAI's and Leeroopedia's guides), checked on this model[/]")
    for f in lines:  # each rule's lines indented under its bullet
        for line in _wrap(
            f"{f['rule']}: {f['finding']} ({f['evidence']})", console.width - 1, "    ", "  • "
        ):
            console.print(line, markup=False, highlight=False)


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
        f"Quality against KV memory at {ctx:,} tokens (each configuration's verdict in the legend)",
        f"KV cache at {ctx:,} tokens (MiB)" if use_bytes else "KV cache (% of f16)",
        "mean KL from the reference (nats)",
        points,
        level=(bound, f"KL bound {bound:g}") if bound else None,
        log_y=True,
    )
