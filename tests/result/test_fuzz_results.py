"""Property tests of the result and journal readers (`nox -s fuzz`; KVPROBE_FUZZ_EXAMPLES sets how
many examples). They start from valid inputs, a real result file of the tiny model and a real
journal of a killed run, and mutate them: a field's type, a list's length, nesting, NaN and
infinity, truncation, a changed byte. Each mutant is refused in one line with nothing changed on
disk, or read with the same numbers wherever the mutation did not reach."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvprobe.infra.errors import UserError
from kvprobe.result.journal import checksummed, read_journal
from kvprobe.result.store import load_result
from kvprobe.stats.compare import compare
from tests.helpers import KINDS, kill_after_two_units, mutated_text, result_mutations

pytestmark = pytest.mark.fuzz
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@pytest.fixture(scope="module")
def original(tiny_quick_result: Path) -> tuple[dict[str, Any], str]:
    text = tiny_quick_result.read_text()
    return json.loads(text), text


@pytest.fixture(scope="module")
def compared(original: tuple[dict[str, Any], str]) -> list[dict[str, Any]]:
    """The file compared with itself: what a mutant that kept its items must give too."""
    doc = original[0]
    rows: list[dict[str, Any]] = compare(doc, copy.deepcopy(doc))["rows"]
    return rows


def _check_refusal(path: Path, before: bytes, exc: UserError) -> None:
    assert "\n" not in str(exc)
    assert str(exc).startswith(f"result file {path}")
    assert path.read_bytes() == before


def _same_where_untouched(doc: dict[str, Any], changed: Any, loaded: dict[str, Any]) -> None:
    """Every top-level field the mutation left alone reads back as it was."""
    if not isinstance(changed, dict) or changed.get("schema_version") != doc["schema_version"]:
        return  # another version is migrated: its fields are rebuilt
    for key, value in doc.items():
        if changed.get(key) == value:
            assert loaded[key] == value, key


def _read_mutant(tmp_path: Path, doc: dict[str, Any], text: str, compared: list[dict[str, Any]]) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    before = path.read_bytes()
    try:
        loaded = load_result(path)
    except UserError as exc:
        _check_refusal(path, before, exc)
        return
    try:
        changed = json.loads(text)
    except ValueError:
        changed = None
    written = loaded.written()  # as its file holds it: a typed record never equals the dict it was read from
    _same_where_untouched(doc, changed, written)
    try:
        report = compare(doc, loaded)
    except UserError as exc:  # e.g. no configuration left in common
        refusal = str(exc)
    else:
        refusal = ""
    if refusal:
        assert "\n" not in refusal
        return
    same = ("items", "configs", "baseline", "divergence", "scenario", "model", "run", "runtime")
    if all(written.get(k) == doc.get(k) for k in same):
        assert report["rows"] == compared


@given(data=st.data())
@FIXTURES
def test_a_mutated_field_is_refused_or_read_with_the_same_numbers(
    original: tuple[dict[str, Any], str], compared: list[dict[str, Any]], tmp_path: Path, data: st.DataObject
) -> None:
    doc, _ = original
    _read_mutant(tmp_path, doc, mutated_text(doc, data.draw(result_mutations(doc))), compared)


@given(data=st.data())
@FIXTURES
def test_a_changed_byte_or_a_cut_is_refused_or_read_with_the_same_numbers(
    original: tuple[dict[str, Any], str], compared: list[dict[str, Any]], tmp_path: Path, data: st.DataObject
) -> None:
    doc, text = original
    at = data.draw(st.integers(0, len(text) - 1))
    if data.draw(st.booleans()):
        mutant = text[:at]
    else:
        mutant = (
            text[:at]
            + data.draw(st.sampled_from(list('0123456789{}[]",:.-+eE aZnt\\\n\x00')))
            + text[at + 1 :]
        )
    _read_mutant(tmp_path, doc, mutant, compared)


@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
).map(lambda v: json.dumps(v).encode())))  # fmt: skip
@FIXTURES
def test_arbitrary_bytes_are_refused_in_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        load_result(path)
    _check_refusal(path, data, info.value)


# --- journals ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def journal(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return kill_after_two_units(tiny_model_path, tmp_path_factory.mktemp("killed"))


def _units(saved: Any) -> list[tuple[Any, ...]]:
    return [(u.key, u.items, u.probe_data, u.tokens) for u in saved.units]


def _read(tmp_path: Path, raw: bytes) -> Any:
    """The journal read back, or None where it was refused in one line (and left as it was)."""
    path = tmp_path / "r.json.journal.jsonl"
    path.write_bytes(raw)
    try:
        saved = read_journal(path)
    except UserError as exc:
        saved, refusal = None, str(exc)
    assert path.read_bytes() == raw
    if saved is None:
        assert "\n" not in refusal
        assert refusal.startswith(f"--resume {path}")
    return saved


@given(data=st.data())
@FIXTURES
def test_a_damaged_journal_is_refused_or_read_as_far_as_it_is_whole(
    journal: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    """A changed byte, a cut, lines lost, repeated or swapped, garbage appended: refused, or
    (a torn last line) read as the units before it."""
    lines = journal.split(b"\n")[:-1]
    how = data.draw(st.sampled_from(["byte", "cut", "lose", "repeat", "swap", "append"]))
    raw = journal
    if how == "byte":
        at = data.draw(st.integers(0, len(journal) - 1))
        raw = (
            journal[:at]
            + bytes([data.draw(st.integers(0, 255).filter(lambda b: b != journal[at]))])
            + journal[at + 1 :]
        )
    elif how == "cut":
        raw = journal[: data.draw(st.integers(0, len(journal)))]
    elif how in ("lose", "repeat", "swap"):
        i = data.draw(st.integers(0, len(lines) - 1))
        j = data.draw(st.integers(0, len(lines) - 1))
        changed = list(lines)
        if how == "lose":
            del changed[i]
        elif how == "repeat":
            changed.insert(i, lines[j])
        else:
            changed[i], changed[j] = changed[j], changed[i]
        raw = b"".join(line + b"\n" for line in changed)
    else:
        raw = journal + data.draw(st.binary(min_size=1, max_size=60))
    saved = _read(tmp_path, raw)
    if saved is None:
        return
    whole = _read(tmp_path, journal)
    assert saved.header == whole.header
    units, expected = _units(saved), _units(whole)
    if how in ("byte", "cut", "append"):
        assert units == expected[: len(units)]  # as far as it is whole: a torn last line is redone
    else:  # a whole line lost or moved: its unit is measured again, or restored by its key
        assert all(u in expected for u in units)
        assert len({u[0] for u in units}) == len(units)


@given(data=st.data())
@FIXTURES
def test_a_checksummed_mutant_is_refused_or_read_as_written(
    journal: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    """A line changed and checksummed again (only the schema and the probes' checks are left to
    find it): refused, or read back exactly as it now is."""
    rows = [json.loads(line) for line in journal.split(b"\n")[:-1]]
    n = data.draw(st.integers(0, len(rows) - 1))
    record = {k: v for k, v in rows[n].items() if k != "sha256"}
    m = data.draw(result_mutations(record, KINDS))
    rows[n] = json.loads(mutated_text(record, m).replace("1e999", "1e308"))
    raw = b"".join(checksummed({k: v for k, v in r.items() if k != "sha256"}).encode() + b"\n" for r in rows)
    saved = _read(tmp_path, raw)
    if saved is None:
        return
    header, *units = rows
    assert saved.header == {k: v for k, v in header.items() if k != "sha256"}
    assert [(u.key[:2], u.items, u.probe_data) for u in saved.units] == [
        (tuple(r["unit"][:2]), r["items"], r["probe_data"]) for r in units
    ]
