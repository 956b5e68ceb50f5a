"""A sweep's terminal report readable at 80 and 200 columns: the committed example sweep, no line
wider than the terminal and no value or header cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import kvprobe

SWEEP = Path(__file__).parents[2] / "results" / "examples" / "sweep-default-smollm2"


@pytest.mark.parametrize("width", [80, 200])
def test_the_sweep_report_fits(width: int) -> None:
    proc = kvprobe("report", str(SWEEP), env={"COLUMNS": str(width)})
    assert proc.returncode == 0, proc.stderr
    assert "per cache and context" in proc.stdout
    for line in proc.stdout.splitlines():
        assert "…" not in line, f"a value or header cut at {width} columns: {line!r}"
        assert len(line.rstrip()) <= width, f"wider than {width} columns: {line!r}"
