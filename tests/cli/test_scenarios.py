"""`kvprobe scenarios`: each bundled scenario's name beside its stacked lines, whole at 80 and
at 200 columns."""

from __future__ import annotations

import argparse
import io

import pytest
from rich.cells import cell_len
from rich.console import Console

from kvprobe.cli.scenarios import cmd_scenarios, scenario_lines
from kvprobe.plan.scenario import bundled_scenarios, load_scenario


@pytest.mark.parametrize("width", [80, 200])
def test_scenarios_are_whole_at_80_and_200_columns(width: int) -> None:
    out = io.StringIO()
    assert cmd_scenarios(argparse.Namespace(), Console(file=out, width=width, color_system=None), []) == 0
    text = out.getvalue()
    for line in text.splitlines():
        assert "…" not in line, line  # rich's mark for a cut cell
        assert cell_len(line.rstrip()) <= width, line
    flat = " ".join(text.replace("│", " ").split())
    for name in bundled_scenarios():
        assert f" {name} " in flat
        for said in scenario_lines(load_scenario(name)):
            assert " ".join(said.split()) in flat, said  # every line whole, wrapped between words


def test_a_scenario_says_its_probes_haystack_and_what_they_plant() -> None:
    lines = scenario_lines(load_scenario("default"))
    assert lines[1] == "probes: needle, repetition, divergence; prose haystack, 4 documents"
    assert lines[2].startswith("plants: ")
    assert "needles/segment" in lines[2]
