"""The run journal: what a run has finished, appended unit by unit beside the result file, so
that an interrupted run (Ctrl-C, a crash inside llama.cpp, the OOM killer, a reboot) resumes
where it stopped instead of starting again.

JSON lines. The first line is the header: the command, and the identity of the request (every
input that determines the items, with its hash). Each further line is one finished unit (one
document x checkpoint step, every configuration): its item rows and what each probe
accumulated (`ProbeRun.end_unit`). Every line is flushed and fsync'd before the run goes on;
a line torn by a crash is ignored when the journal is read back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.errors import UserError

JOURNAL_VERSION = 1
SUFFIX = ".journal.jsonl"


def journal_path(out_path: Path) -> Path:
    """The journal of a result file: `<out>.journal.jsonl` beside it."""
    return out_path.with_name(out_path.name + SUFFIX)


def identity_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_exact(values: np.ndarray) -> dict[str, Any]:
    """A per-position array bit for bit (float64, bool as uint8): a resumed run's statistics
    must equal an uninterrupted run's, so the journal keeps what the result file rounds."""
    kind = "bool" if values.dtype == np.bool_ else "f8"
    raw = np.ascontiguousarray(values, dtype=np.uint8 if kind == "bool" else "<f8").tobytes()
    return {"kind": kind, "b64": base64.b64encode(raw).decode()}


def decode_exact(record: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(record["b64"])
    if record["kind"] == "bool":
        return np.frombuffer(raw, dtype=np.uint8).astype(bool)
    return np.frombuffer(raw, dtype="<f8").copy()


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
        return {"unit": key_json(self.key), "items": self.items, "probe_data": self.probe_data,
                "tokens": self.tokens, "seconds": round(self.seconds, 3), "feed_s": round(self.feed_s, 3),
                "reduce_s": round(self.reduce_s, 3),
                "prefill_s": {c: round(v, 4) for c, v in self.prefill_s.items()},
                "prefill_tokens": self.prefill_tokens, "prefill_logits": self.prefill_logits}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        doc, step, *group = data["unit"]
        return cls(int(doc), int(step), data["items"], data.get("probe_data") or {},
                   int(data.get("tokens", 0)), float(data.get("seconds", 0.0)),
                   float(data.get("feed_s", 0.0)), float(data.get("reduce_s", 0.0)),
                   {str(c): float(v) for c, v in (data.get("prefill_s") or {}).items()},
                   int(data.get("prefill_tokens", 0)), bool(data.get("prefill_logits", False)),
                   int(group[0]) if group else 0)  # fmt: skip


class Journal:
    """A journal appended to as units finish. A new one is written only when its first unit
    finishes: a run that fails or is stopped before that leaves nothing to resume, and no file."""

    def __init__(self, path: Path, header: dict[str, Any], *, whole_bytes: int | None = None):
        """A new journal; or, with `whole_bytes`, an existing one continued after its last whole
        line (a line torn by a kill is cut off first)."""
        self.path = path
        self.header = header
        self._fh: Any = None
        if whole_bytes is not None:
            with path.open("r+b") as fh:
                fh.truncate(whole_bytes)
                if whole_bytes and not _ends_with_newline(fh, whole_bytes):
                    fh.seek(whole_bytes)
                    fh.write(b"\n")
            self._fh = path.open("a", encoding="utf-8")

    @property
    def written(self) -> bool:
        return self._fh is not None

    def ensure(self) -> None:
        """Write the journal now, units or not: a run stopped early can always be resumed."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w", encoding="utf-8")
            _write_line(self._fh, {"kvprobe_journal": JOURNAL_VERSION, **self.header})

    def append(self, unit: Unit) -> None:
        self.ensure()
        _write_line(self._fh, unit.to_json())

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


def _ends_with_newline(fh: Any, size: int) -> bool:
    fh.seek(size - 1)
    return bool(fh.read(1) == b"\n")


def _write_line(fh: Any, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


@dataclass(frozen=True)
class SavedRun:
    """A journal read back: its header and the units it finished, in order."""

    path: Path
    header: dict[str, Any]
    units: list[Unit]
    whole_bytes: int = 0  # the file's length up to the end of its last whole line


def read_journal(path: Path) -> SavedRun:
    """The header and every whole unit line; a torn last line (a kill during the write) is
    dropped, anything else unreadable is a UserError."""
    try:
        raw = path.read_bytes()
        lines = raw.decode("utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(
            f"--resume {path}: no such journal (kvprobe writes <out>{SUFFIX} beside --out)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--resume {path}: cannot read it ({exc})") from None
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # torn by a kill while it was written: that unit is redone
                break
            raise UserError(
                f"--resume {path}: line {i + 1} is damaged; start the run again without --resume"
            ) from None
        if not isinstance(record, dict):
            raise UserError(f"--resume {path}: line {i + 1} is not a JSON object; start the run again")
        records.append(record)
    # Where the whole lines end: appending resumes there, never after a torn fragment.
    whole = sum(len(line.encode("utf-8")) + 1 for line in lines[: len(records)])
    if not records or records[0].get("kvprobe_journal") != JOURNAL_VERSION:
        raise UserError(f"--resume {path}: not a kvprobe journal of version {JOURNAL_VERSION}")
    try:
        units = [Unit.from_json(r) for r in records[1:]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"--resume {path}: a unit is damaged ({type(exc).__name__}); start the run again"
        ) from None
    return SavedRun(path, records[0], units, min(whole, len(raw)))


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
