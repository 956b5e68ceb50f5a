"""Every file kvprobe reads or writes passes here first: inputs must be regular files of a
bounded size (a FIFO or /dev/zero would hang a reader), outputs are checked before any work
starts (never onto an input, never over an existing file without --force, into a folder that
can take them), and a run's result is locked against a second run writing it too.

Checks change nothing on disk: a folder that does not exist yet is created only when the
first file is written into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvprobe.errors import UserError

MiB = 1 << 20


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def input_file(path: Path, what: str, fix: str, *, max_bytes: int | None = None) -> os.stat_result:
    """The stat of an input that must be a regular file (of at most `max_bytes`); else a
    one-line UserError naming `what`, the real problem and `fix`."""
    try:
        st = path.stat()  # follows symlinks: a link to /dev/zero is /dev/zero
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found: {fix}") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror or exc}): {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file: {fix}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(
            f"{what} {path} is {st.st_size / MiB:,.1f} MiB, more than the {max_bytes / MiB:,.0f} MiB "
            f"kvprobe reads: {fix}"
        )
    return st


def read_input_bytes(path: Path, what: str, fix: str, *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, read with that bound (a file that
    grows while it is read cannot make the read unbounded)."""
    input_file(path, what, fix, max_bytes=max_bytes)
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror or exc}): {fix}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {path} grew past {max_bytes / MiB:,.0f} MiB while it was read: {fix}")
    return data


def read_input_text(path: Path, what: str, fix: str, *, max_bytes: int) -> str:
    """A bounded regular file as UTF-8 text."""
    data = read_input_bytes(path, what, fix, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): {fix}"
        ) from None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@dataclass(frozen=True)
class Output:
    """A path a command will write: `option` names it in messages (`--out`, `--html`)."""

    path: Path
    option: str
    folder: bool = False  # a folder of files (--png DIR), not one file
    may_exist: bool = False  # replaced as part of the command's own state (a journal)


def nearest_existing(path: Path) -> Path:
    """`path`'s nearest ancestor (or itself) that exists."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_folder_writable(folder: Path, option: str, shown: Path) -> None:
    """The folder that will hold `shown` can be created and written: the nearest existing
    ancestor is a folder, and a real write there succeeds (root passes os.access on a
    read-only file system)."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(
            f"cannot create the folder for {option} {shown}: {existing} is a file, not a folder; "
            f"choose another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".kvprobe-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"folder {existing} is not writable ({exc.strerror or exc}): choose another {option}"
        ) from None


def check_outputs(outputs: list[Output], inputs: list[Path], *, force: bool) -> None:
    """Before any work starts: each output is not an input, not another output, not over an
    existing file unless `force`, and its folder can take it. Nothing is created."""
    for i, out in enumerate(outputs):
        path = out.path
        for source in inputs:
            if path.exists() and same_file(path, source):
                raise UserError(
                    f"{out.option} {path} is also an input of this command ({source}): writing it would "
                    "destroy it; choose another path"
                )
        for other in outputs[:i]:
            if path.absolute() == other.path.absolute():
                raise UserError(
                    f"{out.option} {path} is also the {other.option} path: give each output its own path"
                )
        if path.is_symlink() and not path.exists():
            raise UserError(f"{out.option} {path} is a broken link: remove it or choose another path")
        if out.folder:
            if path.exists() and not path.is_dir():
                raise UserError(f"{out.option} {path} is a file, not a folder: give a folder for the files")
            check_folder_writable(path, out.option, path)
            continue
        if path.is_dir():
            raise UserError(f"{out.option} {path} is a folder: give a file name")
        if path.exists():
            if not path.is_file():
                raise UserError(
                    f"{out.option} {path} is {_kind(path.stat().st_mode)}, not a regular file: choose "
                    "another path"
                )
            if not force and not out.may_exist:
                raise UserError(f"{out.option} {path} already exists: choose another name or pass --force")
        check_folder_writable(path.parent, out.option, path)


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def refuse_if_locked(out: Path) -> None:
    """Before any other check of a run onto `out`: a run already writing it is the real
    problem, whatever else its files look like now."""
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(
            f"another kvprobe run is writing {out} ({_holder(path)}): wait for it to finish, or choose "
            "another --out"
        ) from None
    finally:
        os.close(fd)  # closing drops a lock taken here


def _holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text(encoding="utf-8")[:4096])
        return f"pid {int(owner['pid'])}, started {str(owner['started'])[:40]}: {str(owner['command'])[:200]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock file names no owner yet"


class OutputLock:
    """An exclusive lock on a result path (flock on `<out>.lock`), held from validation until
    the run ends: a second run onto the same --out (or the same journal) refuses at once,
    naming the first. The kernel drops the lock with the process, so a killed run leaves
    nothing stale behind; the file itself is removed when the lock is released."""

    def __init__(self, out: Path, owner: dict[str, Any]):
        self.path = lock_path(out)
        self._fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(
                        f"cannot lock {self.path} ({exc.strerror}): choose another --out"
                    ) from None
                raise UserError(
                    f"another kvprobe run is writing {out} ({_holder(self.path)}): wait for it to finish, "
                    "or choose another --out"
                ) from None
            # The file may have been removed by its last holder between our open and our lock:
            # then the lock is on a name nobody else sees, and we try again.
            if self._same_inode(fd):
                self._fd = fd
            else:
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, (json.dumps(owner) + "\n").encode())

    def _same_inode(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a run waiting on the old inode retries
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_atomically(path: Path, data: bytes, option: str) -> None:
    """Write a page or a figure whole or not at all: a temporary file in the same folder,
    fsync'd, then renamed over the target. The folder is created if it is missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write {option} {path} ({exc.strerror or exc}): choose another path"
        ) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a page is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"cannot write {option} {path} ({exc.strerror or exc}): choose another path"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
