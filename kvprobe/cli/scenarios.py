"""`kvprobe scenarios`: the bundled scenarios, each its name beside a few stacked lines (what it
is, its probes and haystack, what the probes plant), readable at 80 columns."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from kvprobe.api import selected
from kvprobe.cli.options import Subparsers
from kvprobe.plan.scenario import Scenario, bundled_scenarios, load_scenario
from kvprobe.views.fit import print_fitted


def add_parser(subparsers: Subparsers) -> None:
    subparsers.add_parser("scenarios", help="list the bundled scenarios")


def scenario_lines(s: Scenario) -> list[str]:
    """Its description; its probes, haystack and documents; what its probes plant, if anything."""
    notes = [note for probe in selected(s.probes) if (note := probe.scenario_note(s))]
    documents = f"{s.plan.documents} document{'s' if s.plan.documents != 1 else ''}"
    lines = [s.description, f"probes: {', '.join(s.probes)}; {s.haystack.kind} haystack, {documents}"]
    return [*lines, *(["plants: " + "; ".join(notes)] if notes else [])]


def cmd_scenarios(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    table = Table(title="Bundled scenarios (kvprobe run --scenario NAME)", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what it measures")
    for name in bundled_scenarios():
        table.add_row(name, "\n".join(scenario_lines(load_scenario(name))))
    print_fitted(table, console, markup=False)
    return 0
