"""The table of probes side by side (kvprobe.stats.by_probe), in the terminal and on the page:
one row per probe and test configuration. Shown where a run has two probes or more to compare."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kvprobe.api import by_name
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.display import plain
from kvprobe.stats.by_probe import probe_rows
from kvprobe.views.fit import print_fitted

HEADER = [
    "probe", "config", "n", "reference accuracy", "Δ accuracy", "reference log-prob",
    "Δ answer log-prob [95%]", "effective context", "log-prob drop per doubling", "z²/min",
]  # fmt: skip


def _growth(trend: JsonObject | None) -> str:
    """The probe's log-prob drop per doubling of context, ▲ where growth is shown."""
    if not trend or trend.get("growth") is None:
        return "-"
    ci = trend["growth_ci"]
    return f"{'▲ ' if trend['grows'] else ''}{trend['growth']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _split(metrics: dict[str, JsonObject]) -> tuple[JsonObject | None, JsonObject | None]:
    """The pass/fail metric and the continuous one of a probe's row."""
    binary = next((v for k, v in metrics.items() if by_name(k).binary), None)
    finer = next((v for k, v in metrics.items() if not by_name(k).binary), None)
    return binary, finer


def _ctx(value: int | None) -> str:
    return f"{value:,}" if value is not None else "none"


def probe_cells(result: ResultDoc) -> list[list[str]]:
    rows = probe_rows(result)
    if len({r["probe"] for r in rows}) < 2:
        return []
    cells = []
    for r in rows:
        acc, lp = _split(r["metrics"])
        lp_ci = (
            f"{lp['diff']:+.2f} [{lp['ci'][0]:+.2f}, {lp['ci'][1]:+.2f}]"
            if lp and None not in lp["ci"]
            else "-"
        )
        rate = lp.get("z2_per_minute") if lp else None
        cells.append([
            r["probe"], r["config"], str((lp or acc or {}).get("n", "-")),
            f"{acc['reference']:.2f}" if acc else "-", f"{acc['diff']:+.2f}" if acc else "-",
            f"{lp['reference']:+.2f}" if lp else "-", lp_ci,
            _ctx(r["effective_context"]), _growth(r.get("trend")),
            f"{rate:.0f}" if rate is not None else "-",
        ])  # fmt: skip
    return cells


def title(result: ResultDoc) -> str:
    longest = max(result["run"]["checkpoints"], default=0)
    return (
        f"Probes side by side at {longest:,} tokens (paired against {result.get('baseline')}; effective "
        "context from each probe's own metrics; log-prob drop per doubling of context, nats, 95%, ▲ where "
        "it grows; z²/min: the log-prob effect's evidence per minute of the probe's run time)"
    )


def print_probe_table(result: ResultDoc, console: Console) -> None:
    cells = probe_cells(result)
    if not cells:
        return
    table = Table(title=plain(title(result)))
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("probe", "config") else "right")
    for row in cells:
        table.add_row(*(plain(c) for c in row))
    print_fitted(table, console)
