"""A damaged journal is never trusted: every line carries a checksum, the header and every unit
are checked like a result file, each probe checks its own data, and `--resume` refuses what it
cannot verify in one line naming the journal and the line. Only a last line torn by a kill is
dropped, and its unit measured again. On a real journal of the tiny model, killed after two
units."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvprobe.infra.errors import UserError
from kvprobe.probes.divergence.probe import DivergenceProbe, DivergenceRun, unit_data_problem
from kvprobe.result.exact import decode_exact, encode_exact
from kvprobe.result.journal import JOURNAL_VERSION, SavedRun, checksummed, identity_hash, read_journal
from tests.helpers import RESUME_SCENARIO, kill_after_two_units, kvprobe

Record = dict[str, Any]


@pytest.fixture(scope="module")
def killed(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """A real journal, and the folder its run started in."""
    folder = tmp_path_factory.mktemp("killed")
    return kill_after_two_units(tiny_model_path, folder), folder


def records(raw: bytes) -> list[Record]:
    return [json.loads(line) for line in raw.decode().splitlines()]


def written(records: list[Record]) -> bytes:
    """The journal of these records, each line checksummed as kvprobe writes it."""
    return b"".join(
        checksummed({k: v for k, v in r.items() if k != "sha256"}).encode() + b"\n" for r in records
    )


def edited(raw: bytes, line: int, change: Callable[[Record], None]) -> bytes:
    """The journal with line `line` (1-based) changed and checksummed again: only the checks
    behind the checksum can find what is wrong."""
    rows = records(raw)
    change(rows[line - 1])
    return written(rows)


def refused(tmp_path: Path, raw: bytes, *words: str) -> str:
    journal = tmp_path / "r.json.journal.jsonl"
    journal.write_bytes(raw)
    with pytest.raises(UserError) as info:
        read_journal(journal)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--resume {journal}")
    for word in words:
        assert word in message
    assert journal.read_bytes() == raw  # reading changes nothing
    return message


def test_the_journal_reads_back_as_written(killed: tuple[bytes, Path], tmp_path: Path) -> None:
    raw, _ = killed
    rows = records(raw)
    assert all(set(r) >= {"sha256"} for r in rows)
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(raw)
    saved = read_journal(journal)
    assert saved.header["kvprobe_journal"] == JOURNAL_VERSION == 2
    assert saved.header["cwd"] == str(Path.cwd())
    assert [u.key for u in saved.units] == [(0, 0, 0), (0, 1, 0)]
    assert [u.items for u in saved.units] == [r["items"] for r in rows[1:]]
    assert saved.whole_bytes == len(raw)
    assert written(rows) == raw  # the checksum is over the very bytes of the rest of the line


def test_every_line_is_its_checksum_and_the_json_the_writer_made() -> None:
    line = checksummed({"unit": [0, 1], "x": float("nan")})
    payload = '{"unit":[0,1],"x":NaN}'
    assert line == '{"sha256":"' + hashlib.sha256(payload.encode()).hexdigest() + '",' + payload[1:]


def test_an_older_journal_is_refused(killed: tuple[bytes, Path], tmp_path: Path) -> None:
    rows = records(killed[0])
    old = [
        {**{k: v for k, v in r.items() if k != "sha256"}, **({"kvprobe_journal": 1} if i == 0 else {})}
        for i, r in enumerate(rows)
    ]
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in old)
    refused(tmp_path, raw, "version 1", "start the run again without --resume")


@pytest.mark.parametrize("line", [1, 2, 3])
def test_a_changed_byte_is_found_on_every_line(killed: tuple[bytes, Path], tmp_path: Path, line: int) -> None:
    raw = killed[0]
    lines = raw.split(b"\n")
    target = lines[line - 1]
    at = target.index(b'"', 90) + 1  # inside the record, past the checksum
    lines[line - 1] = target[:at] + (b"X" if target[at : at + 1] != b"X" else b"Y") + target[at + 1 :]
    refused(tmp_path, b"\n".join(lines), f"line {line}:", "checksum does not match")


def test_a_torn_last_line_is_dropped(killed: tuple[bytes, Path], tmp_path: Path) -> None:
    raw = killed[0]
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(raw + b'{"sha256":"00ab","unit":[1,0],"items":[{"probe":"nee')
    saved = read_journal(journal)
    assert [u.key for u in saved.units] == [(0, 0, 0), (0, 1, 0)]
    assert saved.whole_bytes == len(raw)  # appending resumes after the last whole line
    cut = raw[: len(raw) - 40]  # the last unit torn: measured again
    journal.write_bytes(cut)
    assert [u.key for u in read_journal(journal).units] == [(0, 0, 0)]


def _items_of_one_field(r: Record) -> None:
    r["items"] = [{"probe": "needle"}]


def _header_without(key: str) -> Callable[[Record], None]:
    return lambda r: r.pop(key)


@pytest.mark.parametrize(
    ("line", "change", "words"),
    [
        (2, _items_of_one_field, ("line 2: missing items[0].config",)),
        (
            2,
            lambda r: r["items"][0].update(correct="yes"),
            ("line 2: items[0].correct must be true or false",),
        ),
        (2, lambda r: r["items"][0].update(ctx=1.5), ("items[0].ctx must be a whole number, not 1.5",)),
        (2, lambda r: r.update(probe_data="x"), ("line 2: probe_data must be an object, not a string",)),
        (2, lambda r: r.update(probe_data={"echo": []}), ('"echo", a probe this kvprobe does not have',)),
        (2, lambda r: r.update(probe_data={"needle": []}), ("probe_data.needle: this probe keeps nothing",)),
        (2, lambda r: r["probe_data"].update(divergence="x"), ("probe_data.divergence must be a list",)),
        (2, lambda r: r["probe_data"]["divergence"][0].pop("nll"), ("probe_data.divergence[0] must hold",)),
        (
            2,
            lambda r: r["probe_data"]["divergence"][1]["kld"].update(b64="!!"),
            ("probe_data.divergence[1].kld does not decode",),
        ),
        (
            2,
            lambda r: r["probe_data"]["divergence"][1].update(kld=encode_exact(np.zeros(3))),
            ("probe_data.divergence[1] has arrays of different lengths",),
        ),
        (2, lambda r: r.update(unit=[0]), ("unit must hold at least 2 entries",)),
        (2, lambda r: r.update(seconds=-1.0), ("seconds must be at least 0",)),
        (3, lambda r: r.update(unit=[0, 0]), ("line 3: unit [0, 0] is on line 2 already",)),
        (1, _header_without("cwd"), ("line 1: missing cwd",)),
        (1, _header_without("argv"), ("line 1: missing argv",)),
        (1, _header_without("identity"), ("line 1: missing identity",)),
        (1, lambda r: r.update(argv="--ctx 1536"), ("line 1: argv must be a list, not a string",)),
        (1, lambda r: r.update(argv=["--ctx", 1536]), ("line 1: argv[1] must be text, not 1536",)),
        (1, lambda r: r.update(out=7), ("line 1: out must be text, not 7",)),
        (1, lambda r: r.update(cwd="relative/folder"), ("line 1: cwd must be an absolute path",)),
        (1, lambda r: r.update(created=None), ("line 1: created must be text, not null",)),
        (1, lambda r: r["identity"].update(seed=7), ("identity_sha256 is not the hash of identity",)),
        (
            1,
            lambda r: r.update(
                identity={**r["identity"], "max_contexts": "3"},
                identity_sha256=identity_hash({**r["identity"], "max_contexts": "3"}),
            ),
            ("identity.max_contexts must be a whole number",),
        ),
        (1, lambda r: r.update(kvprobe_journal=3), ("not a kvprobe journal of version 2",)),
    ],
)
def test_a_checksummed_but_wrong_line_is_refused(
    killed: tuple[bytes, Path],
    tmp_path: Path,
    line: int,
    change: Callable[[Record], None],
    words: tuple[str, ...],
) -> None:
    refused(tmp_path, edited(killed[0], line, change), *words)


def test_resume_refuses_a_damaged_journal_in_one_line_and_touches_nothing(
    killed: tuple[bytes, Path], tmp_path: Path
) -> None:
    """`kvprobe run --resume` as the user meets it: the options come from the damaged header."""
    raw, folder = killed
    out = tmp_path / "r.json"
    header = records(raw)[0]
    header["out"] = str(out)  # the same run, resumed from this folder
    header["argv"] = [a if a != str(folder / "r.json") else str(out) for a in header["argv"]]
    rows = [header, *records(raw)[1:]]
    rows[1]["items"] = [{"probe": "needle"}]
    journal = Path(str(out) + ".journal.jsonl")
    journal.write_bytes(written(rows))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = kvprobe("run", "--resume", str(journal), cwd=folder)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"--resume {journal}: line 2: missing items[0].config" in lines[0]
    assert journal.read_bytes() == written(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no result, no page


def _divergence_run(tiny_model: Any) -> DivergenceRun:
    """The divergence probe's state for a run of the resume scenario, as a run starts it."""
    import tomllib

    from kvprobe.api import RunSetup
    from kvprobe.plan.scenario import parse_scenario

    scenario = parse_scenario(tomllib.loads(RESUME_SCENARIO), "resume.toml")
    setup = RunSetup(tiny_model, scenario, 1536, 0, "onepass", [1024, 1536], [], "f16", True)
    return DivergenceProbe().start(setup)


def test_the_restore_path_refuses_data_of_the_wrong_shape(
    killed: tuple[bytes, Path], tiny_model: Any
) -> None:
    """Behind the journal's own checks: the probe refuses, as it restores, what it did not write."""
    data = records(killed[0])[1]["probe_data"]["divergence"]
    run = _divergence_run(tiny_model)
    run.replay_unit(data)
    kept = run.recorder.records[("q8_0", 0)].kld  # type: ignore[union-attr]
    assert [len(a) for a in kept] == [len(decode_exact(data[1]["kld"]))] == [1024]
    for bad, words in (
        ("x", "probe_data.divergence must be a list"),
        (None, "holds no divergence data"),
        (
            [{**data[0], "kld": data[1]["kld"], "top1_agree": data[1]["top1_agree"]}],
            "exactly where it is not",
        ),
    ):
        with pytest.raises(UserError, match=words):
            _divergence_run(tiny_model).replay_unit(bad)
    assert unit_data_problem(data, "f16") is None
    assert unit_data_problem(data, "q8_0") is not None  # the reference has no KL of its own


def test_saved_runs_hold_only_what_verified(killed: tuple[bytes, Path], tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(killed[0])
    saved = read_journal(journal)
    assert isinstance(saved, SavedRun)
    assert all(isinstance(u.doc, int) and isinstance(u.seconds, float) for u in saved.units)
