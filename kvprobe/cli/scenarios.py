"""`kvprobe scenarios`: the bundled scenarios, one line each."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from kvprobe.api import selected
from kvprobe.cli.options import Subparsers
from kvprobe.plan.scenario import bundled_scenarios, load_scenario


def add_parser(subparsers: Subparsers) -> None:
    subparsers.add_parser("scenarios", help="list the bundled scenarios")


def cmd_scenarios(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    table = Table(title="Bundled scenarios (kvprobe run --scenario NAME)")
    for col in ("name", "probes", "haystack", "documents", "what the probes do", "description"):
        table.add_column(col)
    for name in bundled_scenarios():
        s = load_scenario(name)
        notes = [note for probe in selected(s.probes) if (note := probe.scenario_note(s))]
        table.add_row(
            name, ", ".join(s.probes), s.haystack.kind, str(s.plan.documents), "; ".join(notes), s.description
        )
    console.print(table)
    return 0
