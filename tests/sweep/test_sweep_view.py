"""A sweep's terminal report and its --dry-run readable at 80 and 200 columns: the committed
example sweep and a dry run on the tests' tiny models, no line wider than the terminal and no
value or header cut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import kvprobe, write_tiny_model

SWEEP = Path(__file__).parents[2] / "results" / "examples" / "sweep-default-smollm2"


@pytest.mark.parametrize("width", [80, 200])
def test_the_sweep_report_fits(width: int) -> None:
    proc = kvprobe("report", str(SWEEP), env={"COLUMNS": str(width)})
    assert proc.returncode == 0, proc.stderr
    assert "per cache and context" in proc.stdout
    for line in proc.stdout.splitlines():
        assert "…" not in line, f"a value or header cut at {width} columns: {line!r}"
        assert len(line.rstrip()) <= width, f"wider than {width} columns: {line!r}"


def _fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert "…" not in line, f"a value or header cut at {width} columns: {line!r}"
        assert len(line.rstrip()) <= width, f"wider than {width} columns: {line!r}"


@pytest.fixture(scope="module")
def two_models(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two models whose names make long cell names (a model's name starts each)."""
    folder = tmp_path_factory.mktemp("dry-models")
    one, two = folder / "long-model-name-one.gguf", folder / "long-model-name-two.gguf"
    one.write_bytes(tiny_model_path.read_bytes())
    write_tiny_model(two, seed=1)
    return [one, two]


@pytest.mark.parametrize("width", [80, 200])
def test_the_dry_run_fits(two_models: list[Path], tmp_path: Path, width: int) -> None:
    """Eight cells with names of 45 characters: at 80 columns the axes their names say leave the
    table; a size or a time never wraps; what every cell shares is said once."""
    args = ["--cache", "f16+q8_0,q4_0", "--ctx", "512", "--scenario", "default,quick", "--split-kv"]
    models = ",".join(map(str, two_models))
    proc = kvprobe(
        "sweep", "--model", models, *args, "--dry-run", "--out", str(tmp_path / "dry"),
        env={"COLUMNS": str(width)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _fits(proc.stdout, width)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│ long-model-name-")]
    assert len(rows) == 8  # a cell a line: its name, memory and time whole on it
    assert all(re.search(r"│ +\d+\.\d\d GiB │ +\d+(\.\d)? (s|min) ", r) for r in rows), rows
    assert ("split-kv" in proc.stdout) == (width == 200)  # the caches' column, where it fits
    assert "every cell to run: ctx 512, format auto" in proc.stdout
    assert not (tmp_path / "dry").exists()


def test_a_decision_grid_cell_without_a_result_says_so() -> None:
    """Model b has no q4_0 row at 1,024: its cell is labelled, not left blank (nor a verdict)."""
    from kvprobe.sweep.merge import SweepRow
    from kvprobe.sweep.view import decision_heatmap

    def row(model: str, config: str, status: str) -> SweepRow:
        return SweepRow(f"{model}-{config}", model, config, 1024, status, 1024, 0.01, 1, 1.0, False)

    rows = [row("a", "q8_0", "equivalent"), row("a", "q4_0", "worse"), row("b", "q8_0", "equivalent")]
    figure = decision_heatmap(rows, 1024)
    assert figure is not None
    assert figure.text is not None
    cells = dict(zip(figure.x_labels, zip(*figure.text, strict=True), strict=True))
    assert cells["q4_0"] == ("worse\n1,024", "no result")
    assert [line[figure.x_labels.index("q4_0")] for line in figure.values] == [2.0, None]
