"""The run journal: what a run has finished, appended unit by unit beside the result file, so
that an interrupted run (Ctrl-C, a crash inside llama.cpp, the OOM killer, a reboot) resumes
where it stopped instead of starting again.

JSON lines. The first line is the header: the command, and the identity of the request (every
input that determines the items, with its hash). Each further line is one finished unit (one
document x checkpoint step, every configuration): its item rows and what each probe
accumulated (`ProbeRun.end_unit`). Every line is flushed and fsync'd before the run goes on.

Every line carries the SHA-256 of the rest of it as its first field (`{"sha256":"<hex>",...}`:
the line without that field is the JSON the writer serialised), so a line that changed is
found. Read back, the header and every unit are checked like a result file (the same schema
for items; each probe checks its own data, `Probe.check_unit_data`), and anything that does not
verify is refused in one line naming the journal line; only a last line torn by a kill (no
newline after it) is dropped, and its unit measured again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprobe.api import all_probes
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import note_written, read_input_bytes, shown_path, system_fix
from kvprobe.result import blocks, schema
from kvprobe.result.blocks import brief, first_problem, too_deep
from kvprobe.result.ties import item_identity, repeated

JOURNAL_VERSION = 2  # 2: a checksum on every line
SUFFIX = ".journal.jsonl"
MAX_JOURNAL_BYTES = 16 << 30  # per-position arrays of a 1M-token run; more is not a journal
CHECKSUM = b'{"sha256":"'  # every line starts so, then 64 hex digits and '",'


def journal_path(out_path: Path) -> Path:
    """The journal of a result file: `<out>.journal.jsonl` beside it."""
    return out_path.with_name(out_path.name + SUFFIX)


def identity_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


UnitKey = tuple[int, int, int]  # (document, checkpoint step, configuration group)


def key_json(key: UnitKey) -> list[int]:
    """[doc, step], or [doc, step, group] past the first group: files of ungrouped runs keep
    the two-number form they always had."""
    return list(key) if key[2] else list(key[:2])


@dataclass
class Unit:
    """One finished unit of work: document `doc` advanced to checkpoint index `step`, in the
    contexts of configuration group `group` (0 unless the run goes in groups, --max-contexts)."""

    doc: int
    step: int
    items: list[dict[str, Any]]
    probe_data: dict[str, Any] = field(default_factory=dict)  # per probe, from ProbeRun.end_unit
    tokens: int = 0  # tokens evaluated in this unit, every context together
    seconds: float = 0.0
    feed_s: float = 0.0  # of which feeding the document (decoding, without the reduction)
    reduce_s: float = 0.0  # of which probes reducing every position's logits
    # Per configuration, the seconds llama_decode took to feed this unit's document segment of
    # `prefill_tokens` tokens: the prefill speed at this depth.
    prefill_s: dict[str, float] = field(default_factory=dict)
    prefill_tokens: int = 0
    prefill_logits: bool = False  # every position's logits were computed (a divergence document)
    group: int = 0

    @property
    def key(self) -> UnitKey:
        return (self.doc, self.step, self.group)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": key_json(self.key),
            "items": self.items,
            "probe_data": self.probe_data,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "feed_s": round(self.feed_s, 3),
            "reduce_s": round(self.reduce_s, 3),
            "prefill_s": {c: round(v, 4) for c, v in self.prefill_s.items()},
            "prefill_tokens": self.prefill_tokens,
            "prefill_logits": self.prefill_logits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        """A unit line that UNIT_LINE accepted."""
        doc, step, *group = data["unit"]
        return cls(
            doc,
            step,
            data["items"],
            data["probe_data"],
            data["tokens"],
            float(data["seconds"]),
            float(data["feed_s"]),
            float(data["reduce_s"]),
            {c: float(v) for c, v in data["prefill_s"].items()},
            data["prefill_tokens"],
            data["prefill_logits"],
            group[0] if group else 0,
        )


class Journal:
    """A journal appended to as units finish. A new one is written only when its first unit
    finishes: a run that fails or is stopped before that leaves nothing to resume, and no file.
    Every line goes out whole or not at all: a write that fails (a full disk) is cut back to
    the last whole line, and the run ends in one line saying what the journal keeps."""

    def __init__(self, path: Path, header: dict[str, Any], *, whole_bytes: int | None = None):
        """A new journal; or, with `whole_bytes`, an existing one continued after its last whole
        line (a line torn by a kill is cut off first)."""
        self.path = path
        self.header = header
        self._fd: int | None = None
        self._resumable = whole_bytes is not None  # its header is on disk
        if whole_bytes is not None:
            self._fd = self._open(os.O_RDWR)
            try:
                os.ftruncate(self._fd, whole_bytes)
                torn = bool(whole_bytes) and os.pread(self._fd, 1, whole_bytes - 1) != b"\n"
            except OSError as exc:
                self.close()
                raise self._failed(exc) from None
            if torn:
                self._write(b"")  # the last whole line lacked its newline

    def _open(self, flags: int) -> int:
        """The journal's descriptor, never through a symbolic link (O_NOFOLLOW): writing the
        journal must not change another file."""
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(
                    f"the journal {shown_path(self.path)} is a symbolic link: kvprobe writes only to the "
                    "file itself; give the file it points to, or remove the link"
                ) from None
            raise self._failed(exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"the journal {shown_path(self.path)} is not a regular file: remove it")
        note_written(self.path, f"continue with `kvprobe run --resume {self.path}`")
        return fd

    @property
    def written(self) -> bool:
        return self._fd is not None

    def ensure(self) -> None:
        """Write the journal now, units or not: a run stopped early can always be resumed. A
        new journal is a new file: an earlier one (--force) is unlinked first, so that a link
        or a hard link at its name is never written through."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        except OSError as exc:
            raise self._failed(exc) from None
        self._fd = self._open(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            self._write(checksummed({"kvprobe_journal": JOURNAL_VERSION, **self.header}).encode())
        except UserError:
            self.close()
            with contextlib.suppress(OSError):
                self.path.unlink()  # a journal without its header could not be resumed
            raise
        self._resumable = True

    def append(self, unit: Unit) -> None:
        self.ensure()
        self._write(checksummed(unit.to_json()).encode())

    def _write(self, line: bytes) -> None:
        """`line` and a newline at the end of the file, synced; a write that fails is cut off
        again (the file keeps whole lines only) and is a one-line UserError."""
        assert self._fd is not None
        data = line + b"\n"
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], end + done)
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> UserError:
        """A journal that cannot be written, in one line saying what it keeps."""
        problem = f"cannot write the journal {shown_path(self.path)} ({exc.strerror or exc})"
        fix = "free space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        if not self._resumable:
            return UserError(f"{problem}; no unit was kept: {system_fix(exc)}")
        return UserError(
            f"{problem}; the units finished before are kept in it and the unit in flight is measured "
            f"again: {fix}, then continue with `kvprobe run --resume {self.path}`"
        )

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def checksummed(record: dict[str, Any]) -> str:
    """The line of `record`: its JSON (NaN as the writer has it) with the SHA-256 of that JSON as
    a first field, so the reader can check the bytes it reads without serialising anything."""
    payload = json.dumps(record, separators=(",", ":"), allow_nan=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return f'{CHECKSUM.decode()}{digest}",{payload[1:]}'


@dataclass(frozen=True)
class SavedRun:
    """A journal read back: its header and the units it finished, in order."""

    path: Path
    header: dict[str, Any]
    units: list[Unit]
    whole_bytes: int = 0  # the file's length up to the end of its last whole line


def _line_schemas() -> tuple[Any, Any]:
    """The header's and a unit line's schema (a unit's items are the result file's items)."""
    seconds = blocks.number(minimum=0)
    identity = blocks.record(
        {
            "kvprobe": blocks.STR,
            "models_sha256": blocks.listing(blocks.STR),
            "scenario_sha256": blocks.STR,
            "haystack_sha256": blocks.STR,  # a haystack file's content (its path is in the scenario)
            "seed": blocks.INT,
            "ctx": blocks.INT,
            "mode": blocks.STR,
            "configs": blocks.listing(blocks.STR),
            "baseline": blocks.nullable(blocks.STR),
            "null_check": blocks.flag(),
            "llama_cpp_python": blocks.nullable(blocks.STR),
            "llama_cpp_build": blocks.nullable(blocks.STR),
            "flash_attn": blocks.flag(),
            "attn_rotation": blocks.flag(),
            "extra_bufts": blocks.flag(),
            "n_gpu_layers": blocks.integer(lo=-1),
            "n_threads": blocks.nullable(blocks.INT),
            "max_contexts": blocks.integer(lo=1, hi=1024),
        }
    )
    header = blocks.record(
        {
            "kvprobe_journal": blocks.integer(lo=JOURNAL_VERSION, hi=JOURNAL_VERSION),
            "argv": blocks.listing(blocks.STR),
            "cwd": blocks.text(minLength=1),
            "out": blocks.text(minLength=1),
            "identity": identity,
            "identity_sha256": blocks.STR,
            "created": blocks.STR,
        },
        ["kvprobe_journal", "argv", "cwd", "out", "identity", "identity_sha256", "created"],
    )
    unit = blocks.record(
        {
            "unit": blocks.listing(blocks.INT, minItems=2, maxItems=3),
            "items": blocks.listing(blocks.ref("item")),
            "probe_data": blocks.of("object"),  # each probe checks its own: Probe.check_unit_data
            "tokens": blocks.INT,
            "seconds": seconds,
            "feed_s": seconds,
            "reduce_s": seconds,
            "prefill_s": blocks.mapping(seconds),
            "prefill_tokens": blocks.INT,
            "prefill_logits": blocks.flag(),
        },
        [
            "unit",
            "items",
            "probe_data",
            "tokens",
            "seconds",
            "feed_s",
            "reduce_s",
            "prefill_s",
            "prefill_tokens",
            "prefill_logits",
        ],
    )
    return header, unit


@functools.lru_cache(maxsize=4)
def _checks(assembled: schema.Built) -> dict[str, blocks.Check]:
    """Per kind of line, its compiled check (with the result schema of the registered probes: a
    unit's items are checked as the file's); first_problem names the field it refuses."""
    header, unit = _line_schemas()
    return {name: blocks.checker(s, assembled.defs) for name, s in (("header", header), ("unit", unit))}


def _schema_problem(kind: str, record: dict[str, Any]) -> str | None:
    if too_deep(record):
        return "it nests lists and objects too deep"
    return first_problem(_checks(schema.built())[kind], record)


def _verified(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record of a line whose checksum holds, or None and what is wrong with it."""
    digest, rest = line[len(CHECKSUM) : len(CHECKSUM) + 64], line[len(CHECKSUM) + 64 :]
    if not line.startswith(CHECKSUM) or not rest.startswith(b'",'):
        return None, "has no checksum"
    payload = b"{" + rest[2:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        return None, "is damaged: its checksum does not match"
    try:
        record = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, "is damaged: not JSON"
    if not isinstance(record, dict):
        return None, "is not a JSON object"
    return record, ""


def _older(line: bytes) -> int | None:
    """The version of a journal from before checksums (its header is plain JSON), if it is one."""
    try:
        header = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    version = header.get("kvprobe_journal") if isinstance(header, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _lines(path: Path, raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of every whole line that verifies, and where the last of them ends; an
    unterminated last line that does not verify (torn by a kill) is dropped. Any other line that
    does not verify is a UserError naming it."""
    pieces = raw.split(b"\n")
    records: list[dict[str, Any]] = []
    whole = 0
    for i, line in enumerate(pieces):
        torn = i == len(pieces) - 1  # no newline after it
        if torn and not line:
            break
        record, problem = _verified(line)
        if record is None:
            if torn:
                break  # the unit is measured again
            version = _older(line) if i == 0 else None
            if version is not None and version != JOURNAL_VERSION:
                raise UserError(
                    f"--resume {path}: a journal of version {version} (from an older kvprobe, without "
                    f"checksums) cannot be verified; start the run again without --resume"
                )
            raise _damaged(path, i + 1, f"the line {problem}")
        records.append(record)
        whole += len(line) + (0 if torn else 1)
    return records, whole


def _damaged(path: Path, line: int, problem: str) -> UserError:
    return UserError(f"--resume {path}: line {line}: {problem}; start the run again without --resume")


def _header_problem(header: dict[str, Any]) -> str | None:
    if header.get("kvprobe_journal") != JOURNAL_VERSION:
        return f"not a kvprobe journal of version {JOURNAL_VERSION}"
    problem = _schema_problem("header", header)
    if problem is not None:
        return problem
    if identity_hash(header["identity"]) != header["identity_sha256"]:
        return "identity_sha256 is not the hash of identity"
    for key in ("cwd", "out"):
        if "\x00" in header[key] or not Path(header[key]).is_absolute():
            return f"{key} must be an absolute path"
    return None


def _unit_problem(record: dict[str, Any]) -> str | None:
    problem = _schema_problem("unit", record)
    if problem is not None:
        return problem
    probes = {p.name: p for p in all_probes()}
    for name, data in record["probe_data"].items():
        if name not in probes:
            return f"probe_data names {brief(name)}, a probe this kvprobe does not have"
        found = probes[name].check_unit_data(data)
        if found is not None:
            return found
    return None


def read_journal(path: Path) -> SavedRun:
    """The header and every unit, each verified (checksum, schema, the probes' own checks); a
    torn last line (a kill during the write) is dropped, anything else unverifiable is a
    UserError naming the line."""
    if not os.path.lexists(path):  # a name too long, or unreadable, is the reader's to say
        raise UserError(f"--resume {path}: no such journal (kvprobe writes <out>{SUFFIX} beside --out)")
    raw = read_input_bytes(
        path, "--resume", "give the journal of an interrupted run", max_bytes=MAX_JOURNAL_BYTES
    )
    records, whole = _lines(path, raw)
    if not records:
        raise UserError(
            f"--resume {path}: not a kvprobe journal of version {JOURNAL_VERSION} (no whole first line)"
        )
    header = records[0]
    if (problem := _header_problem(header)) is not None:
        raise _damaged(path, 1, problem)
    units: list[Unit] = []
    seen: dict[UnitKey, int] = {}
    items = ItemsOnce()
    for number, record in enumerate(records[1:], start=2):
        if (problem := _unit_problem(record)) is not None:
            raise _damaged(path, number, problem)
        unit = Unit.from_json(record)
        if unit.key in seen:
            raise _damaged(path, number, f"unit {key_json(unit.key)} is on line {seen[unit.key]} already")
        if (problem := items.add(unit.items, number)) is not None:
            raise _damaged(path, number, problem)
        seen[unit.key] = number
        units.append(unit)
    return SavedRun(path, header, units, whole)


class ItemsOnce:
    """Each item once in the whole journal, as in a result file (kvprobe.result.ties.items_once)."""

    def __init__(self) -> None:
        self.identity = item_identity()
        self.lines: dict[str, int] = {}

    def add(self, rows: list[dict[str, Any]], line: int) -> str | None:
        for i, row in enumerate(rows):
            key = self.identity(row)
            if key is None:
                continue
            if key in self.lines:
                return f"items[{i}] repeats an item of line {self.lines[key]} ({repeated(key)})"
            self.lines[key] = line
        return None


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The identity fields in which a journal's request and this one differ, shown briefly."""

    def brief(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(set(saved) | set(now))
    return [
        f"{k} ({brief(saved.get(k))} then, {brief(now.get(k))} now)"
        for k in keys
        if saved.get(k) != now.get(k)
    ]
