"""The journal writer (kvprobe.result.journal.Journal), directly: nothing on disk before the
first unit, every unit read back as written, a torn last line cut off when a run continues,
and what `--resume` says about a journal of another request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.result.journal import (
    Journal,
    Unit,
    differences,
    identity_hash,
    journal_path,
    key_json,
    read_journal,
)

IDENTITY = {
    "kvprobe": "0.1.0",
    "models_sha256": ["ab" * 32],
    "seed": 0,
    "ctx": 1024,
    "configs": ["f16", "q4_0"],
}


def header(out: Path) -> dict[str, Any]:
    return {"argv": ["--cache", "q4_0"], "cwd": str(out.parent), "out": str(out), "identity": IDENTITY,
            "identity_sha256": identity_hash(IDENTITY), "created": "2026-12-06T00:00:00Z"}  # fmt: skip


def unit(doc: int, step: int, group: int = 0) -> Unit:
    return Unit(doc, step, [], {}, tokens=100 * (doc + 1), seconds=1.25, feed_s=1.0, reduce_s=0.125,
                prefill_s={"f16": 0.5, "q4_0": 0.75}, prefill_tokens=512, prefill_logits=doc == 0,
                group=group)  # fmt: skip


def test_nothing_is_written_before_the_first_unit(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    journal = Journal(journal_path(out), header(out))
    assert not journal.written
    assert not journal_path(out).exists()  # a run that fails first leaves nothing to resume
    journal.ensure()  # a run stopped early: the header alone, resumable
    journal.close()
    saved = read_journal(journal_path(out))
    assert saved.units == []
    assert saved.header["identity"] == IDENTITY


def test_units_read_back_as_written(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    journal = Journal(journal_path(out), header(out))
    written = [unit(0, 0), unit(0, 1), unit(1, 0, group=1)]
    for u in written:
        journal.append(u)
    journal.close()
    saved = read_journal(journal_path(out))
    assert [u.key for u in saved.units] == [(0, 0, 0), (0, 1, 0), (1, 0, 1)]
    assert [u.to_json() for u in saved.units] == [u.to_json() for u in written]
    assert key_json((1, 0, 0)) == [1, 0]  # the two-number form of ungrouped runs' files
    assert key_json((1, 0, 1)) == [1, 0, 1]


def test_a_continued_journal_cuts_a_torn_line_and_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    path = journal_path(out)
    journal = Journal(path, header(out))
    journal.append(unit(0, 0))
    journal.close()
    whole = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b'{"sha256":"0000", "unit": [0, 1], "ite')  # killed in the middle of a write
    saved = read_journal(path)
    assert [u.key for u in saved.units] == [(0, 0, 0)]  # the torn unit is measured again
    assert saved.whole_bytes == whole
    again = Journal(path, saved.header, whole_bytes=saved.whole_bytes)
    again.append(unit(0, 1))
    again.close()
    assert [u.key for u in read_journal(path).units] == [(0, 0, 0), (0, 1, 0)]


def test_the_same_unit_twice_is_refused_naming_the_line(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    journal = Journal(journal_path(out), header(out))
    journal.append(unit(0, 0))
    journal.append(unit(0, 0))
    journal.close()
    with pytest.raises(UserError, match=r"line 3.*unit \[0, 0\] is on line 2 already"):
        read_journal(journal_path(out))


def test_another_request_is_named_field_by_field() -> None:
    now = {**IDENTITY, "ctx": 2048, "configs": ["f16", "q8_0"]}
    said = differences(IDENTITY, now)
    assert said == ['configs (["f16", "q4_0"] then, ["f16", "q8_0"] now)', "ctx (1024 then, 2048 now)"]
    assert identity_hash(IDENTITY) != identity_hash(now)
    assert identity_hash(IDENTITY) == identity_hash(dict(reversed(list(IDENTITY.items()))))  # order-free
