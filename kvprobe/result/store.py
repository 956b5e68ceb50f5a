"""Result files on disk: written atomically and durably, read back validated and migrated to
the current schema (docs/result-schema.md). Nothing else opens a result file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.api.record import JsonObject
from kvprobe.api.result import SCHEMA_VERSION, ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import note_written, read_input_text
from kvprobe.result.check import checked
from kvprobe.result.migrations import migrate, rebuild
from kvprobe.result.ties import layout_per_layer

MAX_RESULT_BYTES = 1 << 30  # the largest real results are a few MB (per-position arrays are zlib'd)


def default_out_path(created: str, model_name: str, config_ids: list[str], ctx: int) -> Path:
    stamp = created.replace("-", "").replace(":", "").replace("Z", "")
    stem = Path(model_name).stem.replace(" ", "_")
    caches = "+".join(c.replace("=", "").replace(",", "-") for c in config_ids)
    return Path("results") / f"{stamp}-{stem}-{caches}-{ctx}.json"


def finite_json(value: Any, where: str = "$") -> tuple[Any, list[str]]:
    """`value` with every NaN and infinity replaced by null (JSON has neither), and the
    JSON paths where that happened; numpy scalars become plain numbers."""
    if isinstance(value, dict):
        out_d: dict[str, Any] = {}
        found: list[str] = []
        for k, v in value.items():
            out_d[k], sub = finite_json(v, f"{where}.{k}")
            found += sub
        return out_d, found
    if isinstance(value, (list, tuple)):
        out_l: list[Any] = []
        found = []
        for i, v in enumerate(value):
            item, sub = finite_json(v, f"{where}[{i}]")
            out_l.append(item)
            found += sub
        return out_l, found
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None, [where]
    return value, []


def write_result(doc: ResultDoc | JsonObject, path: Path) -> Path:
    """Write atomically and durably: a temporary file in the same folder, fsync'd, renamed,
    and the folder fsync'd. NaN and infinity become null, listed in `non_finite`. If the
    folder cannot take it (disk full, read-only), the result goes to a recovery file in the
    temporary directory and the UserError says where: a finished run is never lost."""
    written = doc.written() if isinstance(doc, ResultDoc) else doc  # a plain document too (a test's)
    clean, non_finite = finite_json({k: v for k, v in written.items() if k != "non_finite"})
    clean["non_finite"] = non_finite
    text = json.dumps(clean, indent=1, allow_nan=False) + "\n"
    try:
        _write_atomically(text, path)
    except OSError as exc:
        recovery = _recover(text, path)
        where = f"saved it to {recovery}" if recovery else "could not save it anywhere else either"
        raise UserError(
            f"cannot write the result to {path} ({exc.strerror or exc}); kvprobe {where}: "
            "free space or choose another --out"
        ) from None
    note_written(path)  # what an interrupt or a failure of the system says it leaves behind
    return path


def _write_atomically(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # best effort: the rename itself survives a crash (not every OS or file system allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _recover(text: str, path: Path) -> Path | None:
    try:
        fd, name = tempfile.mkstemp(prefix=f"kvprobe-recovered-{path.stem}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            with contextlib.suppress(OSError):  # a recovery file that is not synced beats none
                os.fsync(fh.fileno())
        return Path(name)
    except OSError:
        return None


# --- reading ------------------------------------------------------------------------------


def parse_json(text: str) -> Any:
    """Strict JSON, as kvprobe writes it: NaN, Infinity and numbers beyond a float are refused
    (ValueError), and so is nesting deeper than the schema's (RecursionError, ValueError)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (kvprobe writes NaN and infinity as null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond a double (kvprobe writes infinity as null)")
    return value


def schema_problem(doc: Any, *, shown: bool = True) -> str | None:
    """The first thing `doc` breaks, in words naming its JSON path: too deep, a field of the
    wrong type or missing (kvprobe.result.check: the models and the probes' parts of the schema),
    a broken tie between fields (ties; `shown`: those of the report's tables too)."""
    found = checked(doc, shown=shown)
    return found if isinstance(found, str) else None


def validate(doc: Any, path: Path, *, shown: bool = True) -> ResultDoc:
    """The checks every reader relies on (docs/result-schema.md), failing with one line that
    names the first bad field; `shown`: also what the report's tables rely on. The document, typed."""
    found = checked(doc, shown=shown)
    if isinstance(found, str):
        raise UserError(f"result file {path}: {found}; use an intact file or run it again")
    return found


@dataclass(frozen=True)
class Result:
    """A result file, validated, migrated to SCHEMA_VERSION, and typed."""

    path: Path
    doc: ResultDoc
    read_version: int  # the schema version the file was written in

    @classmethod
    def load(cls, path: Path, *, shown: bool = True) -> Result:
        """The file, checked for every reader; `shown` (`kvprobe report`): also for the report's
        tables, whose rows `compare` never reads (the probes' ties with `shown`, kvprobe.result.ties)."""
        text = read_input_text(
            path, "result file", "give a result file of kvprobe run", max_bytes=MAX_RESULT_BYTES
        )
        try:
            raw = parse_json(text)
        except RecursionError:
            raise UserError(f"result file {path} is not a result: it nests far too deep") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"result file {path} is not valid JSON ({str(exc)[:120]})") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
            raise UserError(
                f"result file {path} has schema_version {repr(version)[:40]}; this kvprobe reads versions 1 "
                f"to {SCHEMA_VERSION}: a newer file needs a newer kvprobe"
            )
        doc = validate(raw, path, shown=shown)
        if version == SCHEMA_VERSION and "statistics" in raw:
            return cls(path, doc, version)
        return cls(path, _migrated(raw, version, path, shown=shown), version)


def _migrated(raw: JsonObject, version: int, path: Path, *, shown: bool) -> ResultDoc:
    """An older file brought up to date (kvprobe.result.migrations): what the migration made
    must hold too, since readers see only it; then what the statistics recompute."""
    pending = migrate(raw, version)  # each probe migrates its own parts
    found = checked(raw, shown=shown)
    if not isinstance(found, str):
        rebuild(found, pending)  # the KV layout of a schema-2 file is made here, from its metadata
        found = layout_per_layer(found) or found
    if isinstance(found, str):
        raise UserError(
            f"result file {path} (schema {version}) cannot be read as schema {SCHEMA_VERSION}: "
            f"{found}; run it again"
        )
    return found


def load_result(path: Path) -> ResultDoc:
    """The document of a result file, validated for every reader but the report's tables
    (`compare`, the benchmarks) and migrated (see Result)."""
    return Result.load(path, shown=False).doc
