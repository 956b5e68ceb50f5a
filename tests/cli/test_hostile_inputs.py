"""Issue 38, hostile inputs: inputs that cannot change under a run (the model and a haystack
fingerprinted by content and checked at every unit; a journal's identity by content; --resume's
typed options against the journal; duplicated items refused), and every reader bounded (one
reader refuses FIFOs, devices, /proc and /sys and anything past its size; the cache folder;
long text on the terminal; chat templates that allocate in one C call; a report of many files).
Real kvprobe CLI, real llama.cpp, the tiny GGUF; every test fails if its fix is reverted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import fingerprint_input, read_input_bytes
from kvprobe.result.journal import checksummed
from tests.helpers import assert_one_line_error, kvprobe, write_tiny_model

HANG_S = 60  # a regression that hangs fails here instead of hanging the suite
RUN_S = HANG_S * 5  # a run of SCENARIO on the tiny model, or a report of several results
SCENARIO = """
name = "hostile"
probes = ["needle"]
[plan]
documents = 2
chunk = 256
[needle]
per_segment = 2
"""
# Two documents at one checkpoint (512): units (0, 0) and (1, 0).
HAYSTACK = "\n\n".join(
    f"Paragraph {i}. The river ran past the mill, and the miller counted his sacks of grain twice. "
    "Nobody in the village remembered a year as dry as this one, nor a harvest as thin."
    for i in range(40)
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def quick(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command that must answer at once (a refusal, or a report): it may not hang."""
    return kvprobe(*args, env=env, timeout=HANG_S)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "s.toml").write_text(SCENARIO)
    (root / "h.txt").write_text(HAYSTACK)
    (root / "chatml.jinja").write_text(CHATML)
    return {"root": root, "model": tiny_model_path, "scenario": root / "s.toml", "haystack": root / "h.txt"}


def run_args(work: dict[str, Path], model: Path | None = None) -> list[str]:
    return [
        "run", "--model", str(model or work["model"]), "--scenario", str(work["scenario"]), "--ctx", "512",
        "--cache", "q8_0", "--threads", "2", "--no-html",
    ]  # fmt: skip


def journal_units(out: Path) -> list[Any]:
    lines = Path(str(out) + ".journal.jsonl").read_text().splitlines()
    return [json.loads(ln).get("unit") for ln in lines[1:]]


# --- one bounded reader for every input ---------------------------------------------------------


def _fifo(root: Path) -> str:
    path = root / "fifo"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _zero_link(root: Path) -> str:
    path = root / "zero-link"
    if not path.is_symlink():
        path.symlink_to("/dev/zero")
    return str(path)


def _proc_kmsg(root: Path) -> str:
    """/proc/kmsg blocks its reader; where this host has none, another /proc file (regular,
    st_size 0, made as it is read)."""
    return "/proc/kmsg" if os.path.exists("/proc/kmsg") else "/proc/self/status"


HOSTILE_FILES: dict[str, Callable[[Path], str]] = {
    "FIFO": _fifo,
    "link to /dev/zero": _zero_link,
    "/proc file": _proc_kmsg,
}
EXPECTED = {"FIFO": "named pipe", "link to /dev/zero": "character device", "/proc file": "pseudo file system"}


def _scenario_naming(work: dict[str, Path], haystack: str) -> str:
    path = work["root"] / f"scenario-{abs(hash(haystack))}.toml"
    path.write_text(SCENARIO + f'[haystack]\nkind = "file"\npath = "{haystack}"\n')
    return str(path)


def _journal_at(work: dict[str, Path], hostile: str) -> list[str]:
    # --resume R reads R.journal.jsonl: that name is made the hostile file (a link to it).
    out = work["root"] / f"resume-{abs(hash(hostile))}.json"
    journal = Path(str(out) + ".journal.jsonl")
    if not journal.is_symlink():
        journal.symlink_to(hostile)
    return ["run", "--resume", str(out)]


READERS: dict[str, tuple[Callable[[dict[str, Path], str], list[str]], str]] = {
    "--model": (lambda w, h: [*run_args(w, Path(h))], "model file"),
    "--scenario": (lambda w, h: ["run", "--model", str(w["model"]), "--scenario", h], "scenario"),
    "--haystack": (lambda w, h: [*run_args(w), "--haystack", h], "haystack file"),
    "a scenario's [haystack] path": (
        lambda w, h: ["run", "--model", str(w["model"]), "--scenario", _scenario_naming(w, h)],
        "haystack file",
    ),
    "--chat-template": (lambda w, h: [*run_args(w), "--chat-template", h], "chat template"),
    "--resume (the journal)": (_journal_at, "--resume"),
    "report FILE": (lambda w, h: ["report", h], "result file"),
    "compare OLD NEW": (lambda w, h: ["compare", h, h], "result file"),
    "doctor MODEL": (lambda w, h: ["doctor", h], "model file"),
    "sweep --model": (lambda w, h: [*_sweep(w), "--model", h, "--scenario", "quick"], "model file"),
    "sweep --scenario": (lambda w, h: [*_sweep(w), "--model", str(w["model"]), "--scenario", h], "scenario"),
}


def _sweep(work: dict[str, Path]) -> list[str]:
    return ["sweep", "--cache", "q8_0", "--ctx", "512", "--out", str(work["root"] / "sweep"), "--dry-run"]


@pytest.mark.parametrize("hostile", list(HOSTILE_FILES))
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_what_is_not_a_bounded_regular_file(
    work: dict[str, Path], reader: str, hostile: str
) -> None:
    """FIFOs, devices, /proc and /sys: one line naming the file and the problem, never a hang
    (a /proc file is regular with st_size 0; /proc/kmsg blocks its reader)."""
    path = HOSTILE_FILES[hostile](work["root"])
    if not os.path.lexists(path):
        pytest.skip(f"{path} does not exist here")
    command, what = READERS[reader]
    proc = quick(*command(work, path))
    assert_one_line_error(proc, what, EXPECTED[hostile])


def test_the_reader_checks_what_it_opened_and_bounds_what_it_reads(tmp_path: Path) -> None:
    """Opening a FIFO does not wait for a writer (O_NONBLOCK); every file of /proc and /sys is
    refused; a file is read only up to its cap."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    code = (
        "from pathlib import Path\nfrom kvprobe.infra.paths import read_input_bytes\n"
        "from kvprobe.infra.errors import UserError\n"
        f"try:\n    read_input_bytes(Path({str(fifo)!r}), 'x', 'fix', max_bytes=10)\n"
        "except UserError as e:\n    print(e)\n"
    )
    said = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=HANG_S
    )
    assert "named pipe (FIFO)" in said.stdout
    for pseudo in (
        "/proc/self/status",
        "/proc/self/mountinfo",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ):
        if os.path.exists(pseudo):
            with pytest.raises(UserError, match="pseudo file system"):
                read_input_bytes(Path(pseudo), "input", "fix", max_bytes=1 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="more than the"):
        read_input_bytes(big, "input", "fix", max_bytes=50)


@pytest.mark.parametrize("kind", ["FIFO", "link to /dev/zero", "folder"])
def test_a_hostile_cache_file_is_an_empty_cache(tmp_path: Path, tiny_model_path: Path, kind: str) -> None:
    """kvprobe's own cache folder: model-facts.json and kernel-checks.json as a FIFO (every doctor
    and run hung) or a link to /dev/zero (read until memory ran out) are ignored."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("model-facts.json", "kernel-checks.json"):
        target = cache / name
        if kind == "FIFO":
            os.mkfifo(target)
        elif kind == "folder":
            target.mkdir()
        else:
            target.symlink_to("/dev/zero")
    proc = quick("doctor", str(tiny_model_path), env={"KVPROBE_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# --- inputs that cannot change under a run ------------------------------------------------------


def _wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Until the run has frozen itself after its first unit (the test switch's SIGSTOP)."""
    deadline = time.monotonic() + HANG_S * 3
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run never reached its first unit")


def _run_changing(
    args: list[str], change: Callable[[], object], after: str = "0,0"
) -> subprocess.CompletedProcess[str]:
    """The run, frozen after unit `after` is journaled while `change` happens, then let go."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvprobe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "KVPROBE_TEST_STOP_AFTER": f"{after}:stop"},
    )  # fmt: skip
    try:
        _wait_stopped(proc)
        change()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=HANG_S * 3)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("how", ["rewritten in place", "truncated"])
def test_a_model_changed_during_the_run_ends_it_in_one_line(
    work: dict[str, Path], tmp_path: Path, how: str
) -> None:
    """Rewritten: the run went on with other weights (exit 0, the first sha256 recorded);
    truncated: SIGBUS (llama.cpp mapped the file). Now the weights are the process's own, and the
    file's stat is checked at every unit: one line, the finished unit kept in the journal."""
    model = tmp_path / "m.gguf"
    shutil.copyfile(work["model"], model)
    other = write_tiny_model(tmp_path / "other.gguf", seed=7)
    out = tmp_path / "r.json"

    def change() -> None:
        if how == "truncated":
            os.truncate(model, 4096)
        else:
            shutil.copyfile(other, model)  # the same inode, other bytes

    proc = _run_changing([*run_args(work, model), "--out", str(out)], change)
    assert_one_line_error(proc, f"model file {model}", "during the run", "--resume")
    assert not out.exists()
    assert journal_units(out) == [[0, 0]]


def test_a_model_changed_after_the_last_unit_writes_no_result_and_resumes_once_restored(
    work: dict[str, Path], tmp_path: Path
) -> None:
    """The end of the run checks the files again: a result names its model by the sha256 it had
    while it was measured, or is not written."""
    model = tmp_path / "m.gguf"
    shutil.copyfile(work["model"], model)
    other = write_tiny_model(tmp_path / "other.gguf", seed=7)
    out = tmp_path / "r.json"
    proc = _run_changing(
        [*run_args(work, model), "--out", str(out)], lambda: shutil.copyfile(other, model), after="1,0"
    )
    assert_one_line_error(proc, f"model file {model}", "during the run", f"--resume {out}.journal.jsonl")
    assert not out.exists()
    assert journal_units(out) == [[0, 0], [1, 0]]
    shutil.copyfile(work["model"], model)  # put back: the same bytes, so the same model
    resumed = kvprobe("run", "--resume", str(out), timeout=RUN_S)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(out.read_text())["complete"] is True


def test_a_haystack_changed_during_the_run_ends_it(work: dict[str, Path], tmp_path: Path) -> None:
    haystack = tmp_path / "h.txt"
    haystack.write_text(HAYSTACK)
    out = tmp_path / "r.json"
    proc = _run_changing(
        [*run_args(work), "--haystack", str(haystack), "--out", str(out)],
        lambda: haystack.write_text(HAYSTACK.replace("river", "road")),
    )
    assert_one_line_error(proc, f"haystack file {haystack}", "during the run")
    assert journal_units(out) == [[0, 0]]


def test_a_haystack_rewritten_before_resume_is_refused(work: dict[str, Path], tmp_path: Path) -> None:
    """The journal's identity holds the haystack's content, not its path: a resume over other
    text would have mixed items of two haystacks in one result."""
    haystack = tmp_path / "h.txt"
    haystack.write_text(HAYSTACK)
    out = tmp_path / "r.json"
    killed = kvprobe(
        *run_args(work), "--haystack", str(haystack), "--out", str(out), stop="0,0:kill", timeout=RUN_S
    )
    assert killed.returncode == -9
    haystack.write_text(HAYSTACK.replace("river", "road"))
    proc = kvprobe("run", "--resume", str(out), timeout=RUN_S)
    assert_one_line_error(proc, "journal of another request", "haystack_sha256")
    haystack.write_text(HAYSTACK)  # the text the run started with: it resumes
    assert kvprobe("run", "--resume", str(out), timeout=RUN_S).returncode == 0


@pytest.fixture(scope="module")
def killed_journal(work: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run at --ctx 512 on the hostile scenario, killed after its first unit."""
    out = tmp_path_factory.mktemp("killed") / "r.json"
    assert kvprobe(*run_args(work), "--out", str(out), stop="0,0:kill", timeout=RUN_S).returncode == -9
    return Path(str(out) + ".journal.jsonl")


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        (["--ctx", "8192"], "ctx (512 then, 8192 now)"),  # 8192 is --ctx's default
        (["--ctx=8192"], "ctx (512 then, 8192 now)"),
        (["--ct", "8192"], "ctx (512 then, 8192 now)"),  # an abbreviation argparse accepts
        (["--scenario", "default"], '"default" now'),  # --scenario's default
        (["--cache", "q4_0"], "cache"),
    ],
)
def test_resume_refuses_typed_options_the_journal_contradicts(
    killed_journal: Path, typed: list[str], said: str
) -> None:
    """Options given with --resume were compared with their defaults: one equal to its default
    (--ctx 8192, --scenario default) was silently dropped and the journal's used."""
    proc = quick("run", "--resume", str(killed_journal), *typed)
    assert_one_line_error(proc, f"--resume {killed_journal}", "journal of another request", said)


def test_resume_takes_typed_options_that_agree_with_the_journal(
    work: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    assert kvprobe(*run_args(work), "--out", str(out), stop="0,0:kill", timeout=RUN_S).returncode == -9
    scenario = os.path.relpath(work["scenario"], tmp_path)  # the same file, named from elsewhere
    proc = kvprobe(
        "run", "--resume", str(out), "--ctx", "512", "--scenario", scenario, cwd=tmp_path, timeout=RUN_S
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["complete"] is True


# --- duplicated items ---------------------------------------------------------------------------


def test_a_result_whose_items_are_copied_is_refused(tiny_quick_result: Path, tmp_path: Path) -> None:
    """12,500 copies of every item loaded, and the statistics counted each copy."""
    doc = json.loads(tiny_quick_result.read_text())
    doc["items"] = doc["items"] * 12_500
    copied = tmp_path / "copied.json"
    copied.write_text(json.dumps(doc))
    n = len(json.loads(tiny_quick_result.read_text())["items"])
    for command in (["report", str(copied)], ["compare", str(copied), str(tiny_quick_result)]):
        assert_one_line_error(quick(*command), f"result file {copied}", f"items[{n}] repeats items[0]")


def test_a_journal_whose_items_are_copied_is_refused(killed_journal: Path, tmp_path: Path) -> None:
    """A later unit repeating an earlier unit's items (each line's checksum recomputed)."""
    folder = tmp_path / "j"
    folder.mkdir()
    header, first = killed_journal.read_text().splitlines()[:2]
    record = json.loads(first)
    record.pop("sha256")
    record["unit"] = [1, 0]
    head = json.loads(header)
    head.pop("sha256")
    out = folder / "r.json"
    head["out"], head["cwd"] = str(out), str(folder)
    journal = Path(str(out) + ".journal.jsonl")
    journal.write_text("\n".join([checksummed(head), first, checksummed(record)]) + "\n")
    proc = quick("run", "--resume", str(journal))
    assert_one_line_error(proc, f"--resume {journal}: line 3", "repeats an item of line 2")


# --- text from files on the terminal ------------------------------------------------------------


def test_long_unbroken_text_in_a_result_reaches_the_terminal_at_once_and_clipped(
    tiny_quick_result: Path, tmp_path: Path
) -> None:
    """rich's highlighter is quadratic in a word's length: a 300,000-character warning ran for
    minutes. Nothing from a file is highlighted now, and a word is clipped."""
    doc = json.loads(tiny_quick_result.read_text())
    doc["warnings"] = ["W" * 300_000]
    doc["model"]["name"] = "N" * 100_000
    path = tmp_path / "long.json"
    path.write_text(json.dumps(doc))
    started = time.monotonic()
    proc = quick("report", str(path))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert "295,904" in proc.stdout  # the characters of the warning left out
    assert 4096 <= proc.stdout.count("W") < 4200
    assert len(proc.stdout) < 60_000


# --- chat templates that allocate in one C call -------------------------------------------------

PEAK = """
import json, resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "kvprobe", *sys.argv[1:]], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak_mib": peak}))
"""


def with_peak_memory(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """The command, and the peak resident memory of it and every process it ran, in MiB."""
    wrapper = subprocess.run(
        [sys.executable, "-c", PEAK, *args], check=True, capture_output=True, text=True, timeout=HANG_S
    )
    said = json.loads(wrapper.stdout)
    return subprocess.CompletedProcess(args, said["rc"], said["stdout"], said["stderr"]), said["peak_mib"]


ALLOCATING = {
    "center": "{{ 'x'|center(2000000000) }}",
    "doubled with ~": (
        "{% set n = namespace(a='x') %}{% for i in range(40) %}{% set n.a = n.a ~ n.a %}{% endfor %}"
        "{{ n.a|length }}"
    ),
    "ljust": "{{ 'x'.ljust(3000000000) }}",
    "format width": "{{ '%2000000000d' % 1 }}",
}


@pytest.mark.parametrize("name", list(ALLOCATING))
def test_a_template_that_allocates_in_one_call_is_refused_within_bounded_memory(
    work: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """`'x'|center(2000000000)` reached 4 GB before the refusal: the size check and the timer
    cannot stop one C call. Rendering happens in a child process whose memory is bounded."""
    template = tmp_path / "t.jinja"
    template.write_text(ALLOCATING[name])
    proc, peak = with_peak_memory(*run_args(work), "--chat-template", str(template))
    assert_one_line_error(proc, "chat template (file t.jinja", "too much", "--prompt-format raw")
    assert peak < 1024, f"{peak} MiB"


def test_a_gguf_whose_own_template_allocates_is_refused_within_bounded_memory(
    work: dict[str, Path], tmp_path: Path
) -> None:
    model = write_tiny_model(tmp_path / "alloc.gguf", chat_template=ALLOCATING["center"])
    proc, peak = with_peak_memory(*run_args(work, model), "--prompt-format", "chat")
    assert_one_line_error(proc, "chat template (gguf", "too much", "--chat-template FILE")
    assert peak < 1024, f"{peak} MiB"
    doctor, peak = with_peak_memory("doctor", str(model))
    assert doctor.returncode == 0, doctor.stderr
    assert "kvprobe cannot use it" in " ".join(doctor.stdout.split())
    assert peak < 1024, f"{peak} MiB"


def test_a_system_message_holding_the_sentinel_is_blamed_on_the_system_message(work: dict[str, Path]) -> None:
    proc = quick(
        *run_args(work), "--chat-template", str(work["root"] / "chatml.jinja"), "--system",
        "Repeat after me: KvProbe-Sentinel-7f3a: Who? 12.",
    )  # fmt: skip
    assert_one_line_error(proc, "the system message contains", "remove it from --system")
    assert "rewrites the user's message" not in proc.stderr


# --- a report of many results -------------------------------------------------------------------


def test_a_report_of_several_results_says_what_it_is_drawing(tiny_quick_result: Path, tmp_path: Path) -> None:
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"r{i}.json")
        shutil.copyfile(tiny_quick_result, copies[-1])
    proc = kvprobe(
        "report", *map(str, copies), "--html", str(tmp_path / "p.html"), "--png", str(tmp_path / "png"),
        timeout=RUN_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "figures of" in ln]
    assert [ln.split("(")[-1] for ln in lines] == ["1 of 3)", "2 of 3)", "3 of 3)"] * 2


# --- fingerprints -------------------------------------------------------------------------------


def test_a_fingerprint_sees_a_rewrite_that_keeps_size_and_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 1000)
    pin = fingerprint_input(path, "model file", "fix")
    assert pin.changed() is None
    assert pin.verify("fix")[0] is None
    st = path.stat()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were: ctime moved
    assert "was written to" in str(pin.changed())
    problem, now = pin.verify("fix")
    assert "was written to" in str(problem)
    path.write_bytes(b"a" * 1000)  # the same bytes again: the same input, under a new stamp
    problem, now = pin.verify("fix")
    assert problem is None
    assert now.stamp != pin.stamp
    assert now.changed() is None
