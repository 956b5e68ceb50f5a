"""The README's sample output is what its command prints: the block between its markers is the
decision block of `kvprobe report` on the committed main-job result (docs/readme_block.py),
with the host it was measured on."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_the_readme_block_is_the_reports_output() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "readme_block.py"), "--check"], capture_output=True, text=True,
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, "README.md's sample output is stale: run python docs/readme_block.py"


def test_the_block_says_where_it_was_measured() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- main-job-report: begin", 1)[1].split("<!-- main-job-report: end -->", 1)[0]
    assert "Recommendation" in block
    assert "another machine prints slightly different numbers" in block
    assert "results/examples/default-f16-q4_0-8192.json" in block
