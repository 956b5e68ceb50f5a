"""kvprobe's memo folder: answers that are slow to get (a model file's header facts, the
kernel check), kept on disk in small JSON files keyed by everything they depend on. It lives in
the user's cache folder ($KVPROBE_CACHE_DIR, else $XDG_CACHE_HOME/kvprobe or ~/.cache/kvprobe);
in kvprobe's own words "cache" means the KV cache, so this is the memo. Best effort both ways:
an unreadable memo is an empty one, an unwritable one costs the work again."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_bytes

CACHE_DIR_ENV = "KVPROBE_CACHE_DIR"
MAX_MEMO_BYTES = 16 << 20  # a cache file is a few KiB per entry; more is not ours


def memo_path(name: str) -> Path:
    base = os.environ.get(CACHE_DIR_ENV)
    if base:
        return Path(base) / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kvprobe" / name


def read_memo(path: Path) -> dict[str, Any]:
    """The cache file's entries; {} for anything that is not a bounded regular file of JSON (a
    FIFO there would hang every command, a link to /dev/zero read until memory ran out)."""
    try:
        data = json.loads(read_input_bytes(path, "cache file", "", max_bytes=MAX_MEMO_BYTES))
    except (UserError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_memo(path: Path, key: str, entry: Any, *, keep: int | None = None) -> None:
    """Add `entry` under `key` (the newest `keep` entries stay), written whole by rename."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_memo(path)
        data.pop(key, None)
        data[key] = entry  # the newest last
        if keep is not None:
            data = dict(list(data.items())[-keep:])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
