"""Hostile and mistaken input, as a user meets it: every case is one line on stderr, exit code 2,
no traceback, and nothing already on disk is touched. Then untrusted text on the terminal."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvprobe.cli import COMMANDS
from tests.helpers import BIG, Spec, assert_one_line_error, kvprobe, write_gguf, write_tiny_model


@dataclass(frozen=True)
class World:
    """Files a case can point at: a sandbox folder holding an earlier result."""

    root: Path
    model: Path
    result: Path  # a valid result file (a tiny-model run)


def _file(world: World, name: str, data: bytes | str) -> str:
    path = world.root / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _scenario(world: World, toml: str | bytes) -> str:
    return _file(world, "s.toml", toml)


def _run(world: World, *extra: str) -> list[str]:
    out = world.root / "results" / "new.json"
    return ["run", "--model", str(world.model), "--ctx", "512", "--out", str(out), *extra]


def _result_edit(world: World, **changes: Any) -> str:
    doc = json.loads(world.result.read_text())
    doc = copy.deepcopy(doc) | changes
    return _file(world, "edited.json", json.dumps(doc))


def _big_model(world: World) -> str:
    from gguf import GGMLQuantizationType, LlamaFileType

    spec = Spec(LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0, **BIG)
    return str(write_gguf(world.root / "inputs" / "big-13b.gguf", spec))


_ENDLESS_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def _endless_template_model(world: World) -> str:
    path = world.root / "inputs" / "endless-template.gguf"
    path.parent.mkdir(exist_ok=True)
    return str(write_tiny_model(path, chat_template=_ENDLESS_TEMPLATE))


_TEXT = "The ferry crossed the river at dawn. " * 40
CASES: dict[str, tuple[Callable[[World], list[str]], tuple[str, ...]]] = {
    # run: the model
    "model missing": (lambda w: ["run", "--model", str(w.root / "none.gguf")], ("not found",)),
    "model is a folder": (lambda w: ["run", "--model", str(w.root / "results")], ("is a folder",)),
    "model not GGUF": (lambda w: ["run", "--model", _file(w, "m.gguf", "hello")], ("not a GGUF file",)),
    "model truncated": (
        lambda w: ["run", "--model", _file(w, "t.gguf", w.model.read_bytes()[:3000])],
        ("damaged",),
    ),
    "model architecture llama.cpp cannot load": (
        lambda w: [
            "run",
            "--model",
            str(write_tiny_model(w.root / "inputs" / "x.gguf", arch="nonsense")),
            "--ctx",
            "512",
            "--out",
            str(w.root / "results" / "new.json"),
        ],
        ("could not load",),
    ),
    "model metadata of the wrong type": (
        lambda w: [
            "run",
            "--model",
            str(write_tiny_model(w.root / "inputs" / "y.gguf", context_length="long")),
        ],
        ("context_length", "not a whole number"),
    ),
    # run: options
    "misspelled cache type": (
        lambda w: _run(w, "--cache", "q4_o"),
        ("unknown cache type", "did you mean q4_0"),
    ),
    "--ctx beyond memory": (
        lambda w: ["run", "--model", _big_model(w), "--ctx", "1048576", "--cache", "q4_0"],  # ~1 TiB
        ("needs about", "GiB", "lower --ctx"),
    ),
    "--ctx not a number": (lambda w: _run(w, "--ctx", "8k"), ("--ctx", "whole number")),
    "quantized V cache without flash attention": (
        lambda w: _run(w, "--cache", "q4_0", "--no-flash-attn"),
        ("quantized V cache needs flash attention", "--no-flash-attn"),
    ),
    "--threads 0": (lambda w: _run(w, "--threads", "0"), ("--threads",)),
    "--chat-template /dev/zero": (lambda w: _run(w, "--chat-template", "/dev/zero"), ("character device",)),
    "--chat-template whose nested loops never end": (
        lambda w: _run(w, "--chat-template", _file(w, "loops.jinja", _ENDLESS_TEMPLATE)),
        ("chat template", "too long", "--prompt-format raw"),
    ),
    "a GGUF whose own chat template never ends": (
        lambda w: ["run", "--model", _endless_template_model(w), "--ctx", "512", "--prompt-format", "chat"],
        ("chat template", "too long"),
    ),
    "--prompt-format chat without a template": (
        lambda w: _run(w, "--prompt-format", "chat"),
        ("has no chat template", "--chat-template FILE"),
    ),
    "--system with raw text": (
        lambda w: _run(w, "--prompt-format", "raw", "--system", "Be brief."),
        ("--system needs the chat form",),
    ),
    "scenario prompt.format misspelled": (
        lambda w: _run(w, "--scenario", _scenario(w, '[prompt]\nformat = "chatml"\n')),
        ("prompt.format", "auto, chat, raw"),
    ),
    "--gpu-layers -5": (lambda w: _run(w, "--gpu-layers", "-5"), ("--gpu-layers",)),
    "--out in a read-only folder": (
        lambda w: ["run", "--model", str(w.model), "--out", "/proc/kvprobe-result.json"],
        ("not writable",),
    ),
    "--out under a file": (
        lambda w: ["run", "--model", str(w.model), "--out", _file(w, "plain.txt", "x") + "/sub/r.json"],
        ("cannot create the folder",),
    ),
    "--null-check without the divergence probe": (
        lambda w: _run(w, "--scenario", "repetition", "--null-check"),
        ("--null-check", "divergence"),
    ),
    "divergence probe without a reference": (
        lambda w: _run(w, "--scenario", "divergence", "--baseline", "none", "--cache", "q8_0"),
        ("reference", "--baseline none"),
    ),
    # run: the scenario
    "scenario name misspelled": (
        lambda w: _run(w, "--scenario", "quik"),
        ("not found", "did you mean quick"),
    ),
    "scenario unknown key": (
        lambda w: _run(w, "--scenario", _scenario(w, "[needle]\nper_segmnet = 2\n")),
        ("needle.per_segmnet", "did you mean per_segment"),
    ),
    "scenario wrong type": (
        lambda w: _run(w, "--scenario", _scenario(w, '[plan]\ndocuments = "two"\n')),
        ("plan.documents", "must be a whole number"),
    ),
    "scenario zero": (
        lambda w: _run(w, "--scenario", _scenario(w, "[plan]\ndocuments = 0\n")),
        ("plan.documents",),
    ),
    "scenario negative": (
        lambda w: _run(w, "--scenario", _scenario(w, "[needle]\nper_segment = -1\n")),
        ("needle.per_segment",),
    ),
    "scenario huge": (
        lambda w: _run(w, "--scenario", _scenario(w, "[needle]\nper_segment = 1000000\n")),
        ("needle.per_segment", "between 1 and 256"),
    ),
    "scenario needing more needle values than exist": (
        lambda w: _run(
            w,
            "--scenario",
            _scenario(
                w,
                "[needle]\nvalue_digits = 4\nper_segment = 256\n[plan]\ncheckpoints = "
                + str(list(range(256, 512, 12)))
                + "\n",
            ),
        ),
        ("needle values", "value_digits"),
    ),
    "scenario empty attribute list": (
        lambda w: _run(w, "--scenario", _scenario(w, "[needle]\nattributes = []\n")),
        ("needle.attributes",),
    ),
    "scenario template without {key}": (
        lambda w: _run(w, "--scenario", _scenario(w, '[needle]\ntemplate = "It is {value}."\n')),
        ("needle.template", "{key}"),
    ),
    "scenario template with a stray brace": (
        lambda w: _run(w, "--scenario", _scenario(w, '[needle]\ntemplate = "{key} is {value} {x}."\n')),
        ("needle.template", "in braces"),
    ),
    "scenario not UTF-8": (
        lambda w: _run(w, "--scenario", _scenario(w, b"name = '\xff\xfe'\n")),
        ("not UTF-8",),
    ),
    "scenario path is a folder": (lambda w: _run(w, "--scenario", str(w.root / "results")), ("is a folder",)),
    # run: the haystack
    "haystack empty": (lambda w: _run(w, "--haystack", _file(w, "empty.txt", "")), ("fewer than 50 words",)),
    "haystack too short": (
        lambda w: _run(w, "--haystack", _file(w, "short.txt", "only a few words here")),
        ("fewer than 50 words",),
    ),
    "haystack binary": (
        lambda w: _run(w, "--haystack", _file(w, "bin.txt", b"\x00\x01\x02" * 500 + _TEXT.encode())),
        ("looks binary",),
    ),
    "haystack not UTF-8": (
        lambda w: _run(w, "--haystack", _file(w, "latin.txt", _TEXT.encode() + "caf\xe9".encode("latin-1"))),
        ("UTF-8",),
    ),
    # compare
    "compare truncated JSON": (
        lambda w: ["compare", str(w.result), _file(w, "cut.json", w.result.read_text()[:400])],
        ("not valid JSON",),
    ),
    "compare a JSON list": (
        lambda w: ["compare", str(w.result), _file(w, "list.json", "[1, 2]")],
        ("schema_version",),
    ),
    "compare a future schema": (
        lambda w: ["compare", str(w.result), _result_edit(w, schema_version=99)],
        ("schema_version 99",),
    ),
    "compare malformed --fail-on": (
        lambda w: ["compare", str(w.result), str(w.result), "--fail-on", "accuracy:lots"],
        ("--fail-on", "number"),
    ),
    "compare unknown --fail-on metric": (
        lambda w: ["compare", str(w.result), str(w.result), "--fail-on", "speed:1"],
        ("--fail-on",),
    ),
    "compare --map of unknown ids": (
        lambda w: ["compare", str(w.result), str(w.result), "--map", "q9_9=q4_0"],
        ("--map",),
    ),
    "compare a damaged array": (
        lambda w: ["compare", str(w.result), _damaged_array(w)],
        ("damaged",),
    ),
    # doctor
    "doctor on a folder": (lambda w: ["doctor", str(w.root / "results")], ("is a folder",)),
    "doctor --vram negative": (lambda w: ["doctor", str(w.model), "--vram", "-1"], ("--vram",)),
    "doctor on metadata of the wrong type": (
        lambda w: ["doctor", str(write_tiny_model(w.root / "inputs" / "z.gguf", context_length="long"))],
        ("context_length", "not a whole number"),
    ),
    # quantize
    "quantize onto the source": (
        lambda w: [
            "quantize",
            _copy(w.model, w.root / "inputs" / "m-F32.gguf"),
            "--type",
            "F32",
            "--out-dir",
            str(w.root / "inputs"),
        ],
        ("overwrite the source",),
    ),
    "quantize misspelled type": (
        lambda w: ["quantize", str(w.model), "--type", "q4_k_n", "--out-dir", str(w.root / "inputs")],
        ("not a llama.cpp quant type", "q4_k_m"),
    ),
    # scenarios
    "scenarios with an argument": (lambda w: ["scenarios", "extra"], ("unrecognized arguments",)),
    # numeric options: ranges, not only types (issue 23, 8)
    "--seed negative": (lambda w: _run(w, "--seed", "-1"), ("--seed", "from 0")),
    "--seed beyond 32 bits": (lambda w: _run(w, "--seed", str(2**32)), ("--seed", "4,294,967,295")),
    "--threads beyond ggml's limit": (lambda w: _run(w, "--threads", "100000"), ("--threads", "512")),
    "--gpu-layers beyond int32": (lambda w: _run(w, "--gpu-layers", str(2**40)), ("--gpu-layers",)),
    "--max-contexts 0": (lambda w: _run(w, "--max-contexts", "0"), ("--max-contexts",)),
    "--time-budget negative": (
        lambda w: _run(w, "--time-budget", "-5m"),
        ("--time-budget", "longer than zero"),
    ),
    "--margin of a share at 1": (lambda w: _run(w, "--margin", "accuracy=1"), ("--margin", "below 1")),
    "--margin garbage with --out in a new folder": (
        lambda w: [
            "run",
            "--model",
            str(w.model),
            "--margin",
            "garbage",
            "--out",
            str(w.root / "newdir" / "m.json"),
        ],
        ("--margin",),
    ),
    "doctor --vram nan": (lambda w: ["doctor", str(w.model), "--vram", "nan"], ("--vram",)),
    "doctor --vram inf": (lambda w: ["doctor", str(w.model), "--vram", "inf"], ("--vram",)),
    "quantize --threads 0": (
        lambda w: [
            "quantize",
            str(w.model),
            "--type",
            "Q8_0",
            "--threads",
            "0",
            "--out-dir",
            str(w.root / "q"),
        ],
        ("--threads",),
    ),
    # special files and sizes, from the command line and from a scenario alike (issue 23, 3)
    "--haystack /dev/zero": (lambda w: _run(w, "--haystack", "/dev/zero"), ("character device",)),
    "scenario haystack /dev/zero": (
        lambda w: _run(w, "--scenario", _scenario(w, '[haystack]\nkind = "file"\npath = "/dev/zero"\n')),
        ("haystack file /dev/zero", "character device"),
    ),
    "scenario haystack a named pipe": (
        lambda w: _run(w, "--scenario", _scenario(w, f'[haystack]\nkind = "file"\npath = "{_fifo(w)}"\n')),
        ("named pipe",),
    ),
    "scenario haystack of 65 MiB": (
        lambda w: _run(
            w, "--scenario", _scenario(w, f'[haystack]\nkind = "file"\npath = "{_sparse(w, 65)}"\n')
        ),
        ("MiB", "more than"),
    ),
    "scenario haystack missing": (
        lambda w: _run(w, "--scenario", _scenario(w, '[haystack]\nkind = "file"\npath = "nowhere.txt"\n')),
        ("haystack file nowhere.txt not found",),
    ),
    "scenario /dev/zero": (
        lambda w: _run(w, "--scenario", "/dev/zero"),
        ("scenario /dev/zero", "character device"),
    ),
    "scenario of 2 MiB": (lambda w: _run(w, "--scenario", _sparse(w, 2)), ("scenario", "MiB")),
    "scenario nested too deeply": (
        lambda w: _run(w, "--scenario", _scenario(w, "x = " + "[" * 50_000 + "]" * 50_000 + "\n")),
        ("nested too deeply",),
    ),
    # outputs: never onto an input, never over a file without --force (issue 23, 5)
    "report --html onto the result": (
        lambda w: [
            "report",
            str(w.root / "results" / "earlier.json"),
            "--html",
            str(w.root / "results" / "earlier.json"),
        ],
        ("--html", "also an input"),
    ),
    "report --html onto the result, with --force": (
        lambda w: [
            "report",
            str(w.root / "results" / "earlier.json"),
            "--force",
            "--html",
            str(w.root / "results" / "earlier.json"),
        ],
        ("--html", "also an input"),
    ),
    "report --html over an existing page": (
        lambda w: [
            "report",
            str(w.root / "results" / "earlier.json"),
            "--html",
            _file(w, "page.html", "<p>mine"),
        ],
        ("--html", "already exists", "--force"),
    ),
    "report --png onto a file": (
        lambda w: ["report", str(w.root / "results" / "earlier.json"), "--png", _file(w, "figs", "x")],
        ("--png", "not a folder"),
    ),
    "compare --html onto the old result": (
        lambda w: [
            "compare",
            str(w.root / "results" / "earlier.json"),
            str(w.result),
            "--html",
            str(w.root / "results" / "earlier.json"),
        ],
        ("--html", "also an input"),
    ),
    "compare --map twice": (
        lambda w: ["compare", str(w.result), str(w.result), "--map", "q8_0=q8_0", "--map", "q8_0=q8_0"],
        ("--map", "twice"),
    ),
    "run --out onto the model, with --force": (
        lambda w: ["run", "--model", str(w.model), "--out", str(w.model), "--force"],
        ("--out", "also an input"),
    ),
    "run --html onto the scenario": (
        lambda w: _run(
            w,
            "--scenario",
            _scenario(w, "[plan]\ndocuments = 1\n"),
            "--html",
            str(w.root / "inputs" / "s.toml"),
        ),
        ("--html", "also an input"),
    ),
    "run --html over an existing page": (
        lambda w: _run(w, "--html", _file(w, "page.html", "<p>mine")),
        ("--html", "already exists"),
    ),
    "run --html and --out the same": (
        lambda w: _run(w, "--html", str(w.root / "results" / "new.json")),
        ("--html", "--out"),
    ),
    "quantize --out-dir under a file": (
        lambda w: [
            "quantize",
            str(w.model),
            "--type",
            "Q8_0",
            "--out-dir",
            _file(w, "plain.txt", "x") + "/sub",
        ],
        ("--out-dir",),
    ),
    # sweep
    "sweep file with an unknown key": (
        lambda w: ["sweep", _sweep(w, 'caches = ["q8_0"]\ncontext = [512]\n'), "--out", str(w.root / "sw")],
        ("context", "did you mean contexts"),
    ),
    "sweep with a Ray address of no form": (
        lambda w: [
            "sweep",
            "--cache",
            "q8_0",
            "--executor",
            "ray",
            "--address",
            ":::",
            "--dry-run",
            "--out",
            str(w.root / "sw"),
        ],
        ("--address ':::'", "HOST:PORT"),
    ),
    "sweep file that is /dev/zero": (
        lambda w: ["sweep", "/dev/zero", "--out", str(w.root / "sw")],
        ("character device",),
    ),
    "sweep of a model that is not there": (
        lambda w: [
            "sweep",
            "--model",
            str(w.root / "none.gguf"),
            "--cache",
            "q8_0",
            "--out",
            str(w.root / "sw"),
        ],
        ("no such file",),
    ),
    "sweep whose every cell is excluded": (
        lambda w: [
            "sweep",
            _sweep(w, f'models = ["{w.model}"]\ncaches = ["q8_0"]\n[[exclude]]\nctx = 8192\n'),
            "--out",
            str(w.root / "sw"),
        ],
        ("every cell is excluded",),
    ),
    "sweep into a folder that holds files": (
        lambda w: ["sweep", "--model", str(w.model), "--cache", "q8_0", "--out", str(w.root / "results")],
        ("not empty",),
    ),
    "sweep --resume of a folder that is not a sweep": (
        lambda w: ["sweep", "--resume", str(w.root / "results")],
        ("sweep manifest", "not found"),
    ),
    "sweep --resume with a sweep file too": (
        lambda w: ["sweep", _sweep(w, 'caches = ["q8_0"]\n'), "--resume", str(w.root / "results")],
        ("--resume DIR continues the sweep as it was asked",),
    ),
    "report of a folder that is not a sweep": (
        lambda w: ["report", str(w.root / "results")],
        ("is a folder", "kvprobe sweep"),
    ),
}


def _sweep(world: World, toml: str) -> str:
    return _file(world, "sweep.toml", toml)


def _fifo(world: World) -> str:
    import os

    path = world.root / "inputs" / "pipe.txt"
    os.mkfifo(path)
    return str(path)


def _sparse(world: World, mib: int) -> str:
    """A file of `mib` MiB that costs no disk (a hole)."""
    import os

    path = world.root / "inputs" / f"big-{mib}.txt"
    with path.open("wb") as fh:
        fh.write(b"word " * 20)
    os.truncate(path, mib << 20)
    return str(path)


def _copy(src: Path, dst: Path) -> str:
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return str(dst)


def _damaged_array(world: World) -> str:
    doc = json.loads(world.result.read_text())
    for record in doc["divergence"]["positions"]:
        for name in ("nll", "kld", "top1_agree"):
            if name in record:
                record[name]["zlib_base64"] = "AAAA" + "Zm9v" * 4
    return _file(world, "damaged.json", json.dumps(doc))


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Size, modification time and content hash of every file (the content of the sparse
    multi-GB model files is their header: hashing their holes would take a minute), and every
    folder (a refusal must not create one either)."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            found[str(p.relative_to(root))] = (0, 0, "folder")
        elif p.is_fifo():
            found[str(p.relative_to(root))] = (0, 0, "fifo")
        elif p.is_file():
            st = p.stat()
            with p.open("rb") as fh:
                head = fh.read(1 << 20)
            found[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(head).hexdigest())
    return found


POSITIONALS = {"report": ["r.json"], "compare": ["a.json", "b.json"], "doctor": ["m.gguf"],
               "quantize": ["m.gguf", "--type", "q8_0"]}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_an_unknown_option_in_one_line(command: str) -> None:
    """Every command's parser ends in the same one line, exit 2, naming the option and the help."""
    proc = kvprobe(command, *POSITIONALS.get(command, []), "--no-such-option")
    assert_one_line_error(proc, "unrecognized arguments: --no-such-option", f"kvprobe {command} --help")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case: str, tmp_path: Path, tiny_model_path: Path, tiny_quick_result: Path
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "inputs").mkdir()
    earlier = tmp_path / "results" / "earlier.json"
    earlier.write_text(tiny_quick_result.read_text())
    world = World(tmp_path, tiny_model_path, tiny_quick_result)
    make, words = CASES[case]
    argv = make(world)  # may write the case's own input files
    before = _snapshot(tmp_path)
    proc = kvprobe(*argv)
    assert_one_line_error(proc, *words)
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


# --- untrusted text on the terminal ----------------------------------------------------------

HOSTILE = "[bold red]x[/] \x1b]0;pwned\x07 :smile:"


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    return write_tiny_model(folder / "[bold]m[i]\x1b[31m.gguf", name=HOSTILE)  # no "/" in a file name


def _shown_literally(out: str) -> None:
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\\x1b]0;pwned\\x07" in out  # the control characters are written out instead
    assert "[bold red]x[/]" in out  # markup prints as text


def test_doctor_shows_metadata_literally(hostile_model: Path) -> None:
    proc = kvprobe("doctor", str(hostile_model))
    assert proc.returncode == 0, proc.stderr
    _shown_literally(proc.stdout)
    assert ":smile:" in proc.stdout
    assert "[bold]m[i]\\x1b[31m.gguf" in proc.stdout


def test_run_and_compare_show_names_literally(hostile_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--model", str(hostile_model), "--scenario", "quick", "--ctx", "512", "--cache", "q8_0",
        "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    assert "[bold]m[i]\\x1b[31m.gguf" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["model"]["metadata"]["general.name"] == HOSTILE  # the file keeps the raw text

    for c in doc["configs"]:  # a result file is input too: ids with markup and escapes
        if c["id"] == "q8_0":
            c["id"] = HOSTILE
    for it in doc["items"] + list(doc["divergence"]["positions"]):
        if it["config"] == "q8_0":
            it["config"] = HOSTILE
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    proc = kvprobe("compare", str(out), str(edited))
    assert proc.returncode == 0, proc.stderr
    _shown_literally(proc.stdout)
