"""Issue 38, hostile sweep folders and untrusted text, as an attacker would try them: a copied
sweep folder resumed, a manifest that points a cell elsewhere, results swapped between cells or
shared by two, FIFOs and /proc files where a sweep reads, damaged manifests; and bidirectional
controls in every text that reaches the terminal or a page. Every case is the real CLI on the
tests' tiny GGUFs: one line on stderr naming the problem and the fix, exit 2, nothing written
outside the paths the command was asked to write, no hang (each command has 60 s)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra.display import plain, visible
from kvprobe.views.layout import ENVIRONMENT
from tests.helpers import assert_one_line_error, examples, kvprobe, snapshot, write_tiny_model

LIMIT_S = 60  # a command that takes longer has hung
CELLS = ["tiny_q8_0_512", "tiny2_q8_0_512"]
HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}
BIDI = "\u202e\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d\u200e\u200f\u061c"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`kvprobe ARGS`; a command still running after LIMIT_S fails the test (it hung)."""
    return kvprobe(*args, env=env, timeout=LIMIT_S)


def manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "sweep.json").read_text())
    return data


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    (folder / "sweep.json").write_text(json.dumps(data, indent=1) + "\n")


@pytest.fixture(scope="module")
def models(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_model_path, folder / "tiny.gguf")
    write_tiny_model(folder / "tiny2.gguf", seed=1)
    return folder


def sweep_words(models: Path, out: Path, *extra: str) -> list[str]:
    both = f"{models / 'tiny.gguf'},{models / 'tiny2.gguf'}"
    return ["sweep", "--model", both, "--cache", "q8_0", "--ctx", "512", "--scenario", "quick",
            "--threads", "1", "--no-html", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep: two models, one cache, one context, every cell done."""
    folder = tmp_path_factory.mktemp("sweeps") / "A"
    proc = cli(*sweep_words(models, folder))
    assert proc.returncode == 0, proc.stderr
    assert {c["status"] for c in manifest(folder)["cells"].values()} == {"done"}
    return folder


def copy_of(finished: Path, to: Path) -> Path:
    shutil.copytree(finished, to, symlinks=True)  # as `cp -a`
    return to


# --- 1. outputs written only where they were meant to go --------------------------------------


def test_a_copied_sweep_resumes_into_itself_and_leaves_the_original_alone(
    finished: Path, tmp_path: Path
) -> None:
    before = snapshot(finished)
    copy = copy_of(finished, tmp_path / "B")
    (copy / "cells" / f"{CELLS[0]}.json").unlink()
    proc = cli("sweep", "--resume", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(finished) == before  # the original: not one byte, not one file more
    assert json.loads((copy / "cells" / f"{CELLS[0]}.json").read_text())["complete"] is True
    assert f"--out {copy / 'cells' / CELLS[0]}.json" in (copy / "cells" / f"{CELLS[0]}.log").read_text()


def test_every_path_a_manifest_holds_is_relative_to_its_folder(finished: Path) -> None:
    for folder in (finished, *(p.parent for p in examples("results/examples/*/sweep.json"))):
        for cell, record in manifest(folder)["cells"].items():
            assert record["out"] == f"cells/{cell}.json", folder
            assert record["argv"][-2:] == ["--out", record["out"]], folder  # the folder's own, wherever it is


def test_a_schema_1_manifest_with_an_absolute_out_resumes_into_its_own_folder(
    finished: Path, tmp_path: Path
) -> None:
    """Manifests written before this fix hold each cell's absolute --out: it is read as the
    cell's own file in the folder the manifest is found in, never as a place to write."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = copy_of(finished, tmp_path / "old")
    data = manifest(copy)
    for cell, record in data["cells"].items():
        record["argv"][-1] = str(elsewhere / "cells" / f"{cell}.json")
    write_manifest(copy, data)
    (copy / "cells" / f"{CELLS[1]}.json").unlink()
    proc = cli("sweep", "--resume", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert not any(elsewhere.iterdir())
    assert json.loads((copy / "cells" / f"{CELLS[1]}.json").read_text())["complete"] is True
    assert manifest(copy)["cells"][CELLS[1]]["argv"][-1] == f"cells/{CELLS[1]}.json"  # saved relative


def _out_outside(data: dict[str, Any], outside: Path) -> None:
    data["cells"][CELLS[0]]["out"] = str(outside / "x.json")


def _out_upwards(data: dict[str, Any], outside: Path) -> None:
    data["cells"][CELLS[0]]["out"] = f"../{outside.name}/x.json"


def _out_of_another_cell(data: dict[str, Any], outside: Path) -> None:
    data["cells"][CELLS[0]]["out"] = f"cells/{CELLS[1]}.json"


def _html_outside(data: dict[str, Any], outside: Path) -> None:
    data["cells"][CELLS[0]]["argv"][-2:-2] = ["--html", str(outside / "x.html")]


def _words_of_another_model(data: dict[str, Any], outside: Path) -> None:
    data["cells"][CELLS[0]]["argv"] = data["cells"][CELLS[1]]["argv"]


POINTED_ELSEWHERE: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "out outside the folder": _out_outside,
    "out up out of the folder": _out_upwards,
    "out of another cell": _out_of_another_cell,
    "an --html page outside": _html_outside,
    "the words of another cell": _words_of_another_model,
}


@pytest.mark.parametrize("case", sorted(POINTED_ELSEWHERE))
def test_a_manifest_cannot_point_a_cell_anywhere_but_its_own_file(
    case: str, finished: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = copy_of(finished, tmp_path / "sw")
    data = manifest(copy)
    POINTED_ELSEWHERE[case](data, outside)
    write_manifest(copy, data)
    (copy / "cells" / f"{CELLS[0]}.json").unlink()  # so that --resume would run the cell
    before = snapshot(copy, outside)
    assert_one_line_error(
        cli("report", str(copy), "--png", str(tmp_path / "png")), "sweep manifest", f"cells.{CELLS[0]}"
    )
    assert_one_line_error(
        cli("sweep", "--resume", str(copy)), "sweep manifest", f"cells.{CELLS[0]}", "restore"
    )
    assert snapshot(copy, outside) == before
    assert not (tmp_path / "png").exists()


def _link_out(copy: Path, outside: Path) -> None:
    target = outside / "precious.json"
    shutil.copy(copy / "cells" / f"{CELLS[0]}.json", target)
    (copy / "cells" / f"{CELLS[0]}.json").unlink()
    (copy / "cells" / f"{CELLS[0]}.json").symlink_to(target)


def _link_cells_folder(copy: Path, outside: Path) -> None:
    shutil.copytree(copy / "cells", outside / "cells")
    shutil.rmtree(copy / "cells")
    (copy / "cells").symlink_to(outside / "cells")
    (outside / "cells" / f"{CELLS[0]}.json").unlink()  # the cell --resume would run


@pytest.mark.parametrize("place", [_link_out, _link_cells_folder], ids=["result a link", "cells a link"])
def test_a_link_in_a_sweep_folder_is_never_written_through(
    place: Callable[[Path, Path], None], finished: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = copy_of(finished, tmp_path / "sw")
    place(copy, outside)
    before = snapshot(copy, outside)
    assert_one_line_error(cli("sweep", "--resume", str(copy)), "is a link", "move the file away")
    assert_one_line_error(cli("report", str(copy)), "is a link")
    assert snapshot(copy, outside) == before


def cut_short(result: Path) -> dict[str, Any]:
    """The result as a run stopped early would have left it (complete: false)."""
    doc: dict[str, Any] = json.loads(result.read_text())
    doc["complete"], doc["stopped"] = False, "interrupted"
    return doc


def test_run_cell_replaces_only_the_cells_own_earlier_file(finished: Path, tmp_path: Path) -> None:
    """What a Ray worker runs (no manifest check before it): a link, or a file that is not the
    cell's own result, in the cell's place fails the cell and stays as it was; --force is for
    the cell's own earlier file only."""
    from kvprobe.sweep.cell_run import FAILED, run_cell

    argv = manifest(finished)["cells"][CELLS[0]]["argv"]
    outside = tmp_path / "precious.json"
    outside.write_text(json.dumps({"complete": False, "mine": "not a sweep's"}))

    def link(out: Path) -> None:
        out.symlink_to(outside)

    def stranger(out: Path) -> None:
        out.write_text(outside.read_text())

    def other_cells(out: Path) -> None:
        out.write_text(json.dumps(cut_short(finished / "cells" / f"{CELLS[1]}.json")))

    for name, make in (("link", link), ("stranger", stranger), ("other cell's", other_cells)):
        out = tmp_path / name / "cells" / f"{CELLS[0]}.json"
        out.parent.mkdir(parents=True)
        make(out)
        before = snapshot(out.parent, outside)
        outcome = run_cell(CELLS[0], argv, out)
        assert outcome.status == FAILED, name
        assert "replaces only the cell's own earlier files" in (outcome.error or ""), name
        assert snapshot(out.parent, outside) == before, name
    assert outside.read_text() == json.dumps({"complete": False, "mine": "not a sweep's"})
    own = tmp_path / "own" / "cells" / f"{CELLS[0]}.json"  # its own run, cut short, no journal
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps(cut_short(finished / "cells" / f"{CELLS[0]}.json")))
    assert run_cell(CELLS[0], argv, own).status == "done"
    assert json.loads(own.read_text())["complete"] is True


# --- 2. sweep cells checked against their cell --------------------------------------------------


def _swap(copy: Path) -> None:
    a, b = (copy / "cells" / f"{c}.json" for c in CELLS)
    a.rename(copy / "t")
    b.rename(a)
    (copy / "t").rename(b)


def _hard_link(copy: Path) -> None:
    a, b = (copy / "cells" / f"{c}.json" for c in CELLS)
    b.unlink()
    os.link(a, b)


@pytest.mark.parametrize(
    ("spoil", "words"),
    [(_swap, ("is not cell", "its model is", "the cell's")), (_hard_link, ("share one result file",))],
    ids=["swapped", "one file for two cells"],
)
def test_a_result_in_another_cells_place_is_refused_by_report_and_resume(
    spoil: Callable[[Path], None], words: tuple[str, ...], finished: Path, tmp_path: Path
) -> None:
    copy = copy_of(finished, tmp_path / "sw")
    spoil(copy)
    before = snapshot(copy)
    assert_one_line_error(cli("report", str(copy)), *words, "put each cell's own result back")
    assert_one_line_error(cli("sweep", "--resume", str(copy)), *words)
    assert snapshot(copy) == before


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["--cache", "q4_0", "--ctx", "512"], "its caches are f16, q4_0, the cell's f16, q8_0"),
        (["--cache", "q8_0", "--ctx", "1024"], "its context is 1024, the cell's 512"),
        (
            ["--cache", "q8_0", "--ctx", "512", "--scenario", "default"],
            "its scenario is default, the cell's quick",
        ),
        (["--cache", "q8_0", "--ctx", "512", "--prompt-format", "raw"], None),  # what auto chose: its own
    ],
    ids=["caches", "context", "scenario", "the format auto chose"],
)
def test_a_result_of_another_run_of_the_cells_model_is_refused(
    words: list[str], said: str | None, finished: Path, models: Path, tmp_path: Path
) -> None:
    copy = copy_of(finished, tmp_path / "sw")
    out = copy / "cells" / f"{CELLS[0]}.json"
    run = cli("run", "--model", str(models / "tiny.gguf"), "--scenario", "quick", "--threads", "1",
              "--no-html", "--out", str(out), "--force", *words)  # fmt: skip
    assert run.returncode == 0, run.stderr
    if said is None:
        assert cli("report", str(copy)).returncode == 0
        return
    before = snapshot(copy)
    assert_one_line_error(cli("report", str(copy)), f"is not cell {CELLS[0]}'s result", said)
    assert snapshot(copy) == before


def test_a_weights_vs_kv_cell_with_split_kv_is_read_as_its_own(models: Path, tmp_path: Path) -> None:
    """The 2x2 design names each configuration per weights ("ref:q4_0", "test:k=q4_0,v=f16"):
    still the cell's own caches."""
    folder = tmp_path / "sw"
    pair = f"{models / 'tiny.gguf'}+{models / 'tiny2.gguf'}"
    proc = cli("sweep", "--model", pair, "--cache", "q4_0", "--split-kv", "--ctx", "512",
               "--scenario", "quick", "--threads", "1", "--no-html", "--out", str(folder))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = cli("report", str(folder))
    assert report.returncode == 0, report.stderr
    assert "1 of 1 cells with a result" in report.stdout


def test_a_model_that_changed_during_the_sweep_is_refused(models: Path, tmp_path: Path) -> None:
    """Two cells of one model path that measured different files: not one model's numbers."""
    model = tmp_path / "m.gguf"
    shutil.copy(models / "tiny.gguf", model)
    folder = tmp_path / "sw"
    proc = cli("sweep", "--model", str(model), "--cache", "q8_0", "--ctx", "512,1024", "--scenario", "quick",
               "--threads", "1", "--no-html", "--out", str(folder))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shutil.copy(models / "tiny2.gguf", model)  # the file rewritten, then one cell measured again
    cell = folder / "cells" / "m_q8_0_1024.json"
    again = cli("run", "--model", str(model), "--cache", "q8_0", "--ctx", "1024", "--scenario", "quick",
                "--threads", "1", "--no-html", "--force", "--out", str(cell))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert_one_line_error(
        cli("report", str(folder)), f"model {model} was not the same file in cells m_q8_0_512 and m_q8_0_1024"
    )


# --- 3. every reader in a sweep folder bounded ---------------------------------------------------


@pytest.mark.parametrize("name", [f"{CELLS[0]}.json", f"{CELLS[0]}.json.journal.jsonl", f"{CELLS[0]}.log",
                                  f"{CELLS[0]}.attempt.json", "../sweep.json"])  # fmt: skip
def test_a_fifo_in_a_sweep_folder_hangs_neither_report_nor_resume(
    name: str, finished: Path, tmp_path: Path
) -> None:
    copy = copy_of(finished, tmp_path / "sw")
    fifo = copy / "cells" / name
    (copy / "cells" / f"{CELLS[0]}.json").unlink()  # the cell --resume runs
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    report, resume = cli("report", str(copy)), cli("sweep", "--resume", str(copy))
    if name.endswith((".json", "sweep.json")) and "attempt" not in name:
        assert_one_line_error(report, "named pipe")
        assert_one_line_error(resume, "named pipe")
        return
    for proc in (report, resume):  # a journal, a log or an attempt record that is a FIFO: no hang
        assert "Traceback" not in proc.stderr
        assert proc.returncode in (0, 1), proc.stderr
    cell = manifest(copy)["cells"][CELLS[0]]
    if name.endswith(".attempt.json"):  # kvprobe's own record of the cell, written by rename
        assert cell["status"] == "done", cell
        return
    assert cell["status"] == "failed", cell
    assert "named pipe" in cell["error"], cell
    assert fifo.is_fifo()  # a log or journal: never written through, never replaced


@pytest.mark.parametrize("key", ["models", "scenarios"])
def test_a_proc_file_as_a_sweeps_model_or_scenario_is_one_line_in_seconds(key: str, tmp_path: Path) -> None:
    """/proc files are regular, of size 0, and may block (/proc/kmsg): refused when read."""
    toml = tmp_path / "s.toml"
    toml.write_text(f'{key} = ["/proc/kmsg"]\ncaches = ["q8_0"]\ncontexts = [512]\n')
    assert_one_line_error(
        cli("sweep", str(toml), "--out", str(tmp_path / "sw"), "--dry-run"), f"{key}[0]", "/proc/kmsg"
    )
    assert not (tmp_path / "sw").exists()


# --- 4. a damaged manifest: one line naming the JSON path ----------------------------------------


def _set(*path: str | int, to: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for step in path[:-1]:
            data = data[step]  # type: ignore[index]
        data[path[-1]] = to  # type: ignore[index]

    return change


def _drop_scenario(data: dict[str, Any]) -> None:
    del data["cells"][CELLS[0]]["axes"]["scenario"]


DAMAGED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "axes a string": (_set("cells", CELLS[0], "axes", to="x"), f"cells.{CELLS[0]}.axes must be an object"),
    "axes a list": (_set("cells", CELLS[0], "axes", to=[]), f"cells.{CELLS[0]}.axes must be an object"),
    "axes without scenario": (_drop_scenario, f"missing cells.{CELLS[0]}.axes.scenario"),
    "out a number": (_set("cells", CELLS[0], "out", to=5), f"cells.{CELLS[0]}.out must be text"),
    "seconds as text": (
        _set("cells", CELLS[0], "seconds", to="12"),
        f"cells.{CELLS[0]}.seconds must be a number",
    ),
    "attempts as text": (
        _set("cells", CELLS[0], "attempts", to="1"),
        f"cells.{CELLS[0]}.attempts must be a whole",
    ),
    "contexts as text": (_set("spec", "contexts", to=["1024"]), "spec.contexts[0] must be a whole number"),
    "a status of no kind": (_set("cells", CELLS[0], "status", to="won"), f"cells.{CELLS[0]}.status must be"),
    "a cell of no spec": (_set("cells", "extra", to={}), "cells.extra"),
    "a model path made relative": (_set("spec", "models", 0, "path", to="tiny.gguf"), "spec.models[0].path"),
    "a key of no kind": (_set("spec", "run", "threds", to=2), "spec.run has a key kvprobe does not write"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_manifest_is_one_line_naming_the_json_path(
    case: str, finished: Path, tmp_path: Path
) -> None:
    change, said = DAMAGED[case]
    copy = copy_of(finished, tmp_path / "sw")
    data = manifest(copy)
    change(data)
    write_manifest(copy, data)
    before = snapshot(copy)
    for proc in (cli("report", str(copy)), cli("sweep", "--resume", str(copy))):
        assert_one_line_error(proc, "sweep manifest", said, "start a new sweep")
    assert snapshot(copy) == before


# --- 5. untrusted text: nothing that can hide or reorder text reaches a terminal or a page ------


def hidden_in(text: str) -> list[str]:
    """The characters of `text` that could hide or reorder what is shown (tab and newline aside)."""
    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in HIDDEN and c not in "\t\n"})


def page_text(page: Path) -> str:
    """The page and every SVG figure inlined in it, decoded."""
    html = page.read_text(encoding="utf-8")
    figures = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)
    return html + "".join(base64.b64decode(f).decode("utf-8") for f in figures)


def on_page(text: str) -> str:
    """`text` as every page's template prints a value (kvprobe.views.layout)."""
    return ENVIRONMENT.from_string("{{ text }}").render(text=text)


def test_visible_writes_out_every_character_that_can_hide_or_reorder_text() -> None:
    every = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in HIDDEN)
    for show in (visible, on_page, plain):
        assert hidden_in(show(every)) == [], show.__name__
    for ch in BIDI:
        assert visible(f"a{ch}b") == f"a\\u{ord(ch):04x}b"
    assert visible("\x1b[31m\x9b") == "\\x1b[31m\\x9b"  # C0 and C1 as before
    assert visible("\U000e0041\ud800\u2028") == "\\U000e0041\\ud800\\u2028"
    assert visible("é 日本 ─ Ω\tx\n") == "é 日本 ─ Ω\tx\n"  # printable text of any script stays as it is


def test_bidi_controls_in_a_result_reach_neither_the_terminal_nor_the_page(
    tiny_quick_result: Path, tmp_path: Path
) -> None:
    doc = json.loads(tiny_quick_result.read_text())
    doc["warnings"] = [f"evil{BIDI}warning"]
    doc["command"] = f"kvprobe run --out \u202eexe.json{BIDI}"
    doc["scenario"]["name"] = f"quick\u2066{BIDI}"
    doc["model"]["name"] = "tiny\u202e.gguf"
    doc["model"]["path"] = "/models/\u2067tiny.gguf"
    doc["verdict"]["sentences"] = [f"{s}\u202e" for s in doc["verdict"]["sentences"]]
    result = tmp_path / "r\u202e.json"
    result.write_text(json.dumps(doc, ensure_ascii=False))
    proc = cli("report", str(result), "--html", str(tmp_path / "p.html"))
    assert proc.returncode == 0, proc.stderr
    assert hidden_in(proc.stdout + proc.stderr) == []
    assert "\\u202e" in proc.stdout
    assert hidden_in(page_text(tmp_path / "p.html")) == []
    assert "\\u202e" in page_text(tmp_path / "p.html")


def test_a_scenario_name_with_bidi_controls_is_written_out(tiny_model_path: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'name = "q{BIDI}"\nprobes = ["needle"]\n[plan]\ndocuments = 1\n', encoding="utf-8")
    out = tmp_path / "r.json"
    proc = cli("run", "--model", str(tiny_model_path), "--cache", "q8_0", "--ctx", "512", "--scenario",
               str(scenario), "--threads", "1", "--no-html", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["scenario"]["name"] == f"q{BIDI}"  # the file keeps what it said
    assert hidden_in(proc.stdout + proc.stderr) == []
    report = cli("report", str(out), "--html", str(tmp_path / "p.html"))
    assert hidden_in(report.stdout + report.stderr + page_text(tmp_path / "p.html")) == []
    assert "q\\u202e" in report.stdout


def test_a_gguf_general_name_with_bidi_controls_is_written_out_by_doctor(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", name=f"tiny{BIDI}model")
    proc = cli("doctor", str(model))
    assert proc.returncode == 0, proc.stderr
    assert hidden_in(proc.stdout) == []
    assert "tiny\\u202e\\u2066" in proc.stdout


def test_sweep_model_names_and_commands_with_bidi_controls_are_written_out(
    models: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "ti\u2067ny.gguf"  # a file name: in the command line, the cell's words, the pages
    shutil.copy(models / "tiny.gguf", odd)
    sweep = tmp_path / "s\u202e.toml"
    sweep.write_text(
        f'models = [{{path = "{models / "tiny2.gguf"}", name = "na\u202eme"}}, "{odd}"]\ncaches = ["q8_0"]\n'
        'contexts = [512]\nscenarios = ["quick"]\n[run]\nthreads = 1\nhtml = false\n',
        encoding="utf-8",
    )
    folder = tmp_path / "sw"
    dry = cli("sweep", str(sweep), "--out", str(folder), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "na\\u202eme" in dry.stdout
    ran = cli("sweep", str(sweep), "--out", str(folder))
    assert ran.returncode == 0, ran.stderr
    report = cli("report", str(folder), "--html", str(tmp_path / "p.html"))
    assert report.returncode == 0, report.stderr
    shown = dry.stdout + ran.stdout + ran.stderr + report.stdout + report.stderr
    assert hidden_in(shown) == []
    assert hidden_in(page_text(tmp_path / "p.html")) == []
    assert "s\\u202e.toml" in report.stdout  # the sweep's command, as typed
    assert "na\\u202eme" in page_text(tmp_path / "p.html")


def test_a_held_locks_text_is_written_out(tiny_model_path: Path, tmp_path: Path) -> None:
    """The lock file's text is another process's: its command may say anything."""
    out = tmp_path / "r.json"
    owner = {"pid": 1, "started": "now", "command": f"kvprobe {BIDI}x"}
    code = (
        "import time\nfrom pathlib import Path\nfrom kvprobe.infra.paths import OutputLock\n"
        f"lock = OutputLock(Path({str(out)!r}), {owner!r})\nprint('held', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        proc = cli(
            "run", "--model", str(tiny_model_path), "--cache", "q8_0", "--ctx", "512", "--out", str(out)
        )
        line = assert_one_line_error(proc, "another kvprobe run is writing", "kvprobe \\u202e\\u2066")
        assert hidden_in(line) == []
    finally:
        holder.kill()
        holder.wait(timeout=LIMIT_S)
