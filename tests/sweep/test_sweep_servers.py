"""`kvprobe sweep` with llama-server binaries as an axis, against the real llama-server on the
tests' tiny GGUF: two "builds" (copies of one binary in two folders: two paths, two cells per
cache) beside the in-process engine; each cell's result names the binary it ran, the merged
report keeps every build's rows apart and names each build's `--version`; a result moved into
another build's place is refused; bad binaries and server arguments are one line before any
cell runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvprobe.engine.server.process import server_version
from kvprobe.infra.errors import UserError
from kvprobe.sweep.cells import expand
from kvprobe.sweep.collect import collect
from kvprobe.sweep.spec import RunOptions, from_command_line, parse_sweep
from kvprobe.sweep.view import grid
from tests.helpers import NEEDLES, assert_one_line_error, kill_left, kvprobe, llama_server_pids

BUILDS = ("build-a", "build-b")  # the folders of the two copies: the servers' labels
CACHES = ("q8_0", "q4_0")
SERVER_ARG = "--no-warmup"  # harmless to the measurement; must reach every spawned server


@dataclass(frozen=True)
class Work:
    folder: Path
    model: Path  # a copy of the tiny model only this module loads: its path finds our servers
    scenario: Path
    binaries: dict[str, Path]  # label -> a copy of the real llama-server

    def axes(self, servers: str | None, caches: str = ",".join(CACHES)) -> dict[str, str | None]:
        return {"models": str(self.model), "caches": caches, "contexts": "512",
                "scenarios": str(self.scenario), "formats": None, "servers": servers}  # fmt: skip


def copy_build(binary: Path, where: Path) -> Path:
    """The binary and the shared libraries beside it (a build's bin/ folder) copied to `where`:
    the same build at another path, however it finds its libraries."""
    where.mkdir(parents=True)
    for path in binary.parent.iterdir():
        if path == binary or (path.name.startswith("lib") and ".so" in path.name):
            shutil.copy2(path, where / path.name, follow_symlinks=False)
    return where / binary.name


@pytest.fixture(scope="module")
def work(llama_server: Path, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Work:
    folder = tmp_path_factory.mktemp("sweep-servers")
    model = Path(shutil.copyfile(tiny_model_path, folder / "tiny.gguf"))
    (folder / "needles.toml").write_text(NEEDLES)
    binaries = {label: copy_build(llama_server, folder / label / "bin") for label in BUILDS}
    return Work(folder, model, folder / "needles.toml", binaries)


def sweep_args(work: Work, out: Path, *extra: str, servers: str | None = None) -> list[str]:
    servers = servers or ",".join([*(str(b) for b in work.binaries.values()), "in-process"])
    return ["sweep", "--model", str(work.model), "--llama-server", servers, "--cache", ",".join(CACHES),
            "--ctx", "512", "--scenario", str(work.scenario), "--threads", "1", "--no-html",
            f"--server-arg={SERVER_ARG}", "--out", str(out), *extra]  # fmt: skip


def result(folder: Path, cell: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "cells" / f"{cell}.json").read_text())
    return doc


@pytest.fixture(scope="module")
def swept(work: Work) -> Path:
    """Two builds and the in-process engine × two caches: six cells, every one done, no server left."""
    folder = work.folder / "sweep"
    proc = kvprobe(*sweep_args(work, folder))
    left = [p for b in work.binaries.values() for p in llama_server_pids(b.resolve(), marker=str(work.model))]
    kill_left(left)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    assert not left, f"llama-server processes left after the sweep: {left}"
    return folder


def test_each_build_is_a_cell_per_cache_that_ran_that_binary(swept: Path, work: Work) -> None:
    cells = json.loads((swept / "sweep.json").read_text())["cells"]
    wanted = [f"tiny_{c}_512_{s}" for s in (*BUILDS, "in-process") for c in CACHES]
    assert list(cells) == wanted
    assert {c["status"] for c in cells.values()} == {"done"}
    for label, binary in work.binaries.items():
        for cache in CACHES:
            cell = f"tiny_{cache}_512_{label}"
            assert cells[cell]["axes"]["server"] == label
            words = cells[cell]["argv"]
            assert words[words.index("--llama-server") + 1] == str(binary)
            runtime = result(swept, cell)["runtime"]
            assert runtime["engine"] == "llama-server"
            assert runtime["server"]["binary"] == str(binary.resolve())  # this copy, not the other
            assert runtime["server"]["server_args"] == [SERVER_ARG]
            assert {c["id"] for c in result(swept, cell)["configs"]} == {"f16", cache}
    for cache in CACHES:
        cell = f"tiny_{cache}_512_in-process"
        assert "server" not in cells[cell]["axes"]
        assert "--llama-server" not in cells[cell]["argv"]
        assert result(swept, cell)["runtime"]["engine"] in (None, "llamacpp")


def test_the_report_keeps_each_build_apart_and_names_its_version(swept: Path) -> None:
    report = collect(swept)
    version = result(swept, f"tiny_q4_0_512_{BUILDS[0]}")["runtime"]["server_version"]
    own = result(swept, "tiny_q4_0_512_in-process")["runtime"]["llama_cpp_python"]
    rows = [f"tiny · {label} ({version})" for label in BUILDS] + [
        f"tiny · in-process (llama-cpp-python {own})"
    ]
    names, configs, cells = grid(report.rows, 512)
    assert names == rows  # one row per build, though both builds print the same --version
    assert configs == list(CACHES)
    assert all(c is not None for line in cells for c in line)
    for label in BUILDS:  # each row holds its own cells' numbers
        row = cells[names.index(f"tiny · {label} ({version})")]
        assert [r.cell for r in row if r is not None] == [f"tiny_{c}_512_{label}" for c in CACHES]
    proc = kvprobe("report", str(swept), env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    assert f"tiny · {BUILDS[1]} ({version})" in proc.stdout
    page = (swept / "report.html").read_text()
    assert f"tiny · {BUILDS[0]} ({version})" in page


def test_a_result_in_the_other_builds_place_is_refused(swept: Path, work: Work, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(swept, tmp_path / "swapped", symlinks=True))
    a, b = (copy / "cells" / f"tiny_q4_0_512_{label}.json" for label in BUILDS)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    for proc in (kvprobe("report", str(copy)), kvprobe("sweep", "--resume", str(copy))):
        line = assert_one_line_error(proc, "is not cell tiny_q4_0_512_build-a's result", "measured through")
        assert f"{work.binaries['build-b'].resolve()}, the cell's {work.binaries['build-a']}" in line


def test_dry_run_names_each_server_and_its_version(work: Work, tmp_path: Path) -> None:
    proc = kvprobe(*sweep_args(work, tmp_path / "dry", "--dry-run"), env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    for label, binary in work.binaries.items():  # each cell's row: its server and that binary's --version
        shown = f"{label} ({server_version(binary)})"
        assert sum(f"_{label} " in line and shown in line for line in proc.stdout.splitlines()) == len(CACHES)
    assert not (tmp_path / "dry").exists()


def test_servers_in_a_sweep_file_take_names_and_relative_paths(work: Work) -> None:
    data = {
        "models": [str(work.model)],
        "caches": ["q4_0"],
        "servers": [{"path": "build-a/bin/llama-server", "name": "cuda"}, "build-b/bin/llama-server"],
        "exclude": [{"server": "build-b/bin/llama-server", "ctx": 8192}],
        "contexts": [512, 8192],
    }
    cells = expand(parse_sweep(data, "s.toml", work.folder))
    assert [c.id for c in cells] == ["tiny_q4_0_512_cuda", "tiny_q4_0_8192_cuda", "tiny_q4_0_512_build-b"]
    assert cells[0].server.path == str(work.binaries["build-a"])


def test_without_the_axis_a_sweep_is_what_it_was(work: Work) -> None:
    """No servers: in-process cells, their names, words and axes as before the axis existed."""
    spec = from_command_line(work.axes(None, "q4_0"), False, RunOptions())
    (cell,) = expand(spec)
    assert cell.id == "tiny_q4_0_512"
    assert "server" not in cell.axes()
    assert "--llama-server" not in cell.argv(spec)
    assert spec.to_dict()["servers"] == [{"path": "in-process", "name": "in-process"}]


def not_llama_server(where: Path) -> Path:
    """An executable named llama-server that is not one."""
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text("#!/bin/sh\necho 'a server, but not llama.cpp'\n")
    where.chmod(0o755)
    return where


def link_to(binary: Path, where: Path) -> Path:
    where.symlink_to(binary)
    return where


BAD: dict[str, tuple[Callable[[Work, Path], str], list[str], tuple[str, ...]]] = {
    "no such binary": (lambda w, t: str(t / "nope" / "llama-server"), [], ("servers[0]", "no such file")),
    "a folder": (lambda w, t: str(w.binaries["build-a"].parent), [], ("servers[0]", "is a folder")),
    "not executable": (lambda w, t: str(w.scenario), [], ("servers[0]", "not an executable file")),
    "not llama-server": (
        lambda w, t: str(not_llama_server(t / "fake" / "llama-server")),
        [],
        ("sweep server llama-server", "printed no llama.cpp version"),
    ),
    "a server argument kvprobe sets": (
        lambda w, t: str(w.binaries["build-a"]),
        ["--server-arg=-ctk"],
        ("sweep cell tiny_q8_0_512_llama-server", "-ctk", "drop that --server-arg"),
    ),
    "one binary by two paths": (
        lambda w, t: f"{w.binaries['build-a']},{link_to(w.binaries['build-a'], t / 'llama-server')}",
        [],
        ("appears twice",),
    ),
    "server arguments without a server": (lambda w, t: "in-process", [], ("server_args", "--llama-server")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_server_axis_is_one_line_before_any_cell(case: str, work: Work, tmp_path: Path) -> None:
    servers, extra, words = BAD[case]
    out = tmp_path / "out"
    proc = kvprobe(*sweep_args(work, out, *extra, servers=servers(work, tmp_path)))
    assert_one_line_error(proc, *words)
    assert not out.exists()


def test_labels_come_from_the_folders_that_tell_binaries_apart(work: Work, tmp_path: Path) -> None:
    """ ".../p/x/bin/llama-server" and ".../q/x/bin/llama-server" are p and q; a name given twice
    to two binaries is refused (their cells' names would clash)."""
    one, two, three = (not_llama_server(tmp_path / d / "x" / "bin" / "llama-server") for d in "pqr")
    spec = from_command_line(work.axes(f"{one},{two}", "q4_0"), False, RunOptions())
    assert [s.name for s in spec.servers] == ["p", "q"]
    spec = from_command_line(work.axes(f"{one},{two},{three},in-process", "q4_0"), False, RunOptions())
    assert [s.name for s in spec.servers] == ["p", "q", "r", "in-process"]
    assert [c.id for c in expand(spec)][-1] == "tiny_q4_0_512_in-process"
    (single,) = from_command_line(work.axes(str(one), "q4_0"), False, RunOptions()).servers
    assert single.name == "llama-server"
    data = {"caches": ["q4_0"], "servers": [{"path": str(one), "name": "x"}, {"path": str(two), "name": "x"}]}
    with pytest.raises(UserError, match="two servers called 'x': give each a name"):
        parse_sweep(data, "s.toml", tmp_path)
